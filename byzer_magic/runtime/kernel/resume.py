"""Resume a stopped, failed or lost job from its latest checkpoint, in the same folder: the same token
cache, the same metrics file and TensorBoard run (continued from the checkpoint's step)."""
from __future__ import annotations

from dataclasses import asdict

from byzer_magic.errors import ByzerError
from byzer_magic.runtime import cluster
from byzer_magic.runtime.worker.checkpoint import latest_tag
from byzer_magic.runtime.config import ParallelConfig, parse_ds_config, resolve_ds_config
from byzer_magic.runtime.kernel.jobs import JobHandle
from byzer_magic.runtime.kernel.ray_job import submit_ray_job
from byzer_magic.runtime.kernel.submit import job_dir_for


def resume(name: str, *, local_path_prefix: str | None = None, train_args: dict | None = None,
           ds_config: dict | str | None = None, ray_address: str | None = None) -> JobHandle:
    """Submit job ``name`` again; it continues from its latest checkpoint. ``train_args`` and
    ``ds_config`` override what the job was started with."""
    info = cluster.connect(ray_address)
    job_dir = job_dir_for(name, local_path_prefix)
    handle = JobHandle(name, job_dir)
    spec = handle.spec
    if not spec:
        raise ByzerError(f"no job named {name!r} under {job_dir.parent} to resume")
    status = handle.status()
    if status in ("PENDING", "RUNNING"):
        raise ByzerError(f"job {name} is still {status.lower()}: stop it first (%byzerllm stop {name})")
    if train_args:
        spec["train_args"].update(train_args)
    if ds_config is not None:
        spec["ds_config"] = parse_ds_config(ds_config)
    _, spec["notes"] = resolve_ds_config(spec["ds_config"], on_gpu=bool(spec["use_gpu"]))
    attempt = int(spec.get("attempt", 0)) + 1
    spec.update(attempt=attempt, submission_id=f"{name}-r{attempt}", cluster=info.address)
    tag = latest_tag(handle.checkpoint_dir)
    spec["resumed_from"] = str(handle.checkpoint_dir / tag) if tag else None
    handle.files.write_json("job.json", spec)
    (job_dir / "plan.json").unlink(missing_ok=True)  # re-planned with the overrides
    submit_ray_job(spec, info)
    return JobHandle(name, job_dir)


def resume_job(config: ParallelConfig, statement_keys: set[str]) -> JobHandle:
    """``run command as LLM ... and resume="true"``: the statement's own parameters override."""
    if not config.name:
        raise ByzerError('resume="true" needs the name of the job to resume (name="...")')
    defaults = ParallelConfig().train_args
    given = {key.split(".", 2)[2] for key in statement_keys if key.startswith("sfft.")}
    overrides = {k: v for k, v in asdict(config.train_args).items()
                 if k in given or (k in ("model_path", "data_dir") and v != getattr(defaults, k))}
    return resume(config.name, local_path_prefix=config.local_path_prefix, train_args=overrides,
                  ds_config=config.ds_config if "deepspeedConfig" in statement_keys else None)
