"""The Ray Job's entrypoint: ``python -m byzer_magic.runtime.driver.entry <job_dir>``.

It runs on the cluster, so the job outlives the notebook that submitted it: it reads the job's
``JobSpec``, tokenises the input into the token store (once; a resumed job reuses it), lays out the
run (``plan.json``) and runs the worker group with Ray Train. A failure a restart can fix (a lost
worker or node) restarts the group from the last checkpoint, up to ``max_failures`` times; any other
failure (out of memory, a config error, a full disk, a loss that is not finite) ends the job at once
with its reason. Its last act is ``result.json``, which the job API reads.
"""
from __future__ import annotations

import sys
import time
import traceback

from byzer_magic.errors import ByzerError
from byzer_magic.runtime import job_env
from byzer_magic.runtime.driver import attempts
from byzer_magic.runtime.driver.inputs import small_local_input, source_dataset
from byzer_magic.runtime.driver.layout import lay_out
from byzer_magic.runtime.driver.tokenise import build_store
from byzer_magic.runtime.jobfiles import JobFiles
from byzer_magic.runtime.ownership import JobFolderBusy, JobLease
from byzer_magic.runtime.spec import JobLayout, JobSpec
from byzer_magic.runtime.token_store import TokenStore, is_built


def plan_job(spec: JobSpec, files: JobFiles, *, cluster_gpus: float) -> JobLayout:
    """Tokenise (once), count, and lay out the run: what every worker receives."""
    if not is_built(files.tokens_dir):
        print(f"[{spec.job.name}] tokenising the input", flush=True)
    partitions = build_store(lambda: source_dataset(spec, files), files.tokens_dir,
                             tokenizer_path=spec.model.tokenizer_path, text_column=spec.data.text_column,
                             by_partition=spec.data.keep_partition_num,
                             read_here=lambda: small_local_input(spec))
    use_gpu = spec.parallel.use_gpu if spec.parallel.use_gpu is not None else cluster_gpus > 0
    layout = lay_out(spec, TokenStore.open(files.tokens_dir), use_gpu=use_gpu, store_dir=str(files.tokens_dir),
                     model_dir=str(files.model_dir), partitions=partitions)
    if layout.ds_config.get("tensorboard", {}).get("enabled"):
        # DeepSpeed's own monitor (lr, and its timers) goes beside our scalars, not into the cwd.
        layout.ds_config["tensorboard"].update(output_path=str(files.tensorboard_dir), job_name="deepspeed")
    files.write_json("plan.json", layout.to_json())
    return layout


def run(job_dir: str) -> int:
    import ray  # noqa: PLC0415

    files = JobFiles(job_dir)
    raw = files.read_json("job.json")
    if raw is None:
        print(f"error: no job.json in {job_dir}: not a byzer-magic job folder", file=sys.stderr, flush=True)
        return 2
    spec = JobSpec.from_json(raw)
    name = spec.job.name
    lease = JobLease(files.root, owner=spec.job.submission_id)
    try:  # one training per folder: a second head or a double submit stops here (runtime/ownership.py)
        lease.acquire()
    except JobFolderBusy as err:
        print(f"[{name}] error: {err}", file=sys.stderr, flush=True)
        return 1  # the folder is another run's: write nothing into it
    started = time.time()
    result = attempts.Result(name=name, submission_id=spec.job.submission_id, model_dir=str(files.model_dir),
                             checkpoint_dir=str(spec.checkpoint_dir), tensorboard_dir=str(files.tensorboard_dir))
    try:
        ray.init(address="auto", logging_level="ERROR")
        layout = plan_job(spec, files, cluster_gpus=ray.cluster_resources().get("GPU", 0))
        for note in layout.notes:
            print(f"[{name}] note: {note}", flush=True)
        c = layout.corpus
        print(f"[{name}] {c.documents:,} documents, {c.tokens:,} tokens ({c.eval_documents:,} documents, "
              f"{c.eval_tokens:,} tokens held out); {layout.total_steps:,} steps of {layout.tokens_per_step:,} "
              f"tokens on {spec.parallel.num_workers} {'GPU' if layout.use_gpu else 'CPU'} worker(s)", flush=True)
        result.planned(layout, spec.training.epoches)
        with job_env.handed_to_workers(files.root):  # a remote node's workers need the keys too
            attempts.run_with_restarts(spec, layout, files)
        result.finished(files, layout, spec.training.epoches)
        return 0
    except ByzerError as err:
        result.failed(str(err))
        print(f"[{name}] error: {err}", file=sys.stderr, flush=True)
        return 1
    except Exception as err:  # the job failed: keep the reason where the notebook finds it
        result.failed(f"{type(err).__name__}: {err}", lost=attempts.head_gone())
        traceback.print_exc()
        return 1
    finally:
        result.seconds = round(time.time() - started, 1)
        files.write_json("result.json", result.to_json())
        lease.release()


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
