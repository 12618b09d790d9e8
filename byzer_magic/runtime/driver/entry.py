"""The Ray Job's entrypoint: ``python -m byzer_magic.runtime.driver.entry <job_dir>``.

It runs on the cluster, so the job outlives the notebook that submitted it: it tokenises the job's
input into a token cache (once; a resumed job reuses it), plans the steps, and runs the worker group
with Ray Train's TorchTrainer. Its last act is ``result.json``, which the job API reads.
"""
from __future__ import annotations

import json
import math
import sys
import time
import traceback
from pathlib import Path

from byzer_magic.errors import ByzerError
from byzer_magic.runtime.worker import data
from byzer_magic.runtime.config import resolve_ds_config
from byzer_magic.runtime.jobfiles import JobFiles
from byzer_magic.runtime.worker.metrics import read_metrics
from byzer_magic.runtime.kernel.plan import step_counts


def _source_dataset(spec: dict):
    import ray.data  # noqa: PLC0415

    files = JobFiles(spec["job_dir"])
    if spec.get("data_dir"):
        from byzer_magic.runtime.tables import load_text  # noqa: PLC0415

        return load_text(spec["data_dir"], wholetext=True).rename_columns({"value": "text"})
    return ray.data.read_parquet(str(files.input_dir), columns=None)


def checkpoint_dir_of(spec: dict) -> Path:
    """``checkpoint_saving_path/<name>`` when the user chose a checkpoint folder, else the job folder's."""
    chosen = spec["train_args"].get("checkpoint_saving_path")
    return Path(chosen).expanduser() / spec["name"] if chosen else JobFiles(spec["job_dir"]).checkpoint_dir


def plan_job(spec: dict, *, cluster_gpus: float) -> dict:
    """Tokenise (cached), count, and lay out the run: the config every worker receives."""
    files = JobFiles(spec["job_dir"])
    args = spec["train_args"]
    keep = spec.get("keep_partition_num", False)
    if not (files.tokens_dir / "_SUCCESS").exists():
        ds = _source_dataset(spec)
        data.build_token_cache(ds, files.tokens_dir, tokenizer_path=spec["tokenizer_path"],
                               text_column=args["text_column"], partition_column="part" if keep else None)
    documents, tokens = data.count_tokens(files.tokens_dir)
    use_gpu = spec["use_gpu"] if spec.get("use_gpu") is not None else cluster_gpus > 0
    user = spec.get("ds_config") or {}
    micro = int(user.get("train_micro_batch_size_per_gpu", 1))
    gas = int(user.get("gradient_accumulation_steps", 1))
    world = spec["num_workers"]
    sequences, per_epoch, _ = step_counts(tokens, args["max_length"], world, micro, gas,
                                          args["steps_per_epoch"], args["epoches"])
    if per_epoch == 0:
        raise ByzerError(f"the input has {tokens} tokens ({sequences} sequences of {args['max_length']}): too few "
                         f"for {world} worker(s) x micro-batch {micro} x accumulation {gas}; add data or lower "
                         f"max_length / num_gpus")
    total = per_epoch * args["epoches"]
    ds_config, notes = resolve_ds_config(user, on_gpu=use_gpu, total_steps=total, warmup_ratio=args["warmup_ratio"])
    if ds_config.get("tensorboard", {}).get("enabled"):
        # DeepSpeed's own monitor (lr, and its timers) goes beside our scalars, not into the cwd.
        ds_config["tensorboard"].update(output_path=str(files.tensorboard_dir), job_name="deepspeed")
    plan = dict(spec, ds_config=ds_config, notes=notes, use_gpu=use_gpu, micro_batch=micro, total_steps=total,
                steps_per_epoch_planned=per_epoch, documents=documents, tokens=tokens,
                tokens_dir=str(files.tokens_dir), checkpoint_dir=str(checkpoint_dir_of(spec)),
                model_dir=str(files.model_dir))
    files.write_json("plan.json", {k: v for k, v in plan.items()})
    return plan


def run(job_dir: str) -> int:
    import ray  # noqa: PLC0415
    from ray.train import FailureConfig, RunConfig, ScalingConfig  # noqa: PLC0415
    from ray.train.torch import TorchTrainer  # noqa: PLC0415

    from byzer_magic.runtime.worker.loop import train_loop  # noqa: PLC0415

    files = JobFiles(job_dir)
    spec = files.read_json("job.json")
    if spec is None:
        print(f"error: no job.json in {job_dir}: not a byzer-magic job folder", file=sys.stderr, flush=True)
        return 2
    started = time.time()
    result = {"name": spec["name"], "submission_id": spec["submission_id"], "status": "FAILED", "steps": 0, "final_loss": None,
              "model_dir": str(files.model_dir), "checkpoint_dir": str(checkpoint_dir_of(spec)),
              "tensorboard_dir": str(files.tensorboard_dir)}
    try:
        ray.init(address="auto", logging_level="ERROR")
        plan = plan_job(spec, cluster_gpus=ray.cluster_resources().get("GPU", 0))
        for note in plan["notes"]:
            print(f"[{spec['name']}] note: {note}", flush=True)
        print(f"[{spec['name']}] {plan['documents']} documents, {plan['tokens']} tokens; "
              f"{plan['total_steps']} steps on {spec['num_workers']} {'GPU' if plan['use_gpu'] else 'CPU'} "
              f"worker(s)", flush=True)
        trainer = TorchTrainer(
            train_loop, train_loop_config=plan,
            scaling_config=ScalingConfig(num_workers=spec["num_workers"], use_gpu=plan["use_gpu"],
                                         resources_per_worker={"CPU": spec.get("cpus_per_worker", 1)}),
            run_config=RunConfig(name=spec["name"], storage_path=str(files.ray_train_dir),
                                 failure_config=FailureConfig(max_failures=spec["train_args"]["max_failures"])))
        trainer.fit()
        logged = read_metrics(files.root)  # rank 0's log is the record (Ray keeps metrics with checkpoints)
        last = logged.iloc[-1] if len(logged) else None
        result.update(status="SUCCEEDED", steps=0 if last is None else int(last["step"]),
                      final_loss=None if last is None or math.isnan(last["loss"]) else float(last["loss"]))
        return 0
    except ByzerError as err:
        result["error"] = str(err)
        print(f"[{spec['name']}] error: {err}", file=sys.stderr, flush=True)
        return 1
    except Exception as err:  # the job failed: keep the reason where the notebook finds it
        result["error"] = f"{type(err).__name__}: {err}"
        if _head_gone():  # not the job's fault: it is resumable like any job its head lost
            result["status"] = "LOST"
        traceback.print_exc()
        return 1
    finally:
        result["seconds"] = round(time.time() - started, 1)
        files.write_json("result.json", result)


def _head_gone() -> bool:
    """True when the head this driver is connected to no longer accepts connections on its GCS port."""
    import socket  # noqa: PLC0415

    import ray  # noqa: PLC0415

    if not ray.is_initialized():
        return False
    try:
        host, port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=3).close()
        return False
    except (OSError, ValueError):
        return True


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
