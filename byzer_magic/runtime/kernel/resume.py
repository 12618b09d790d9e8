"""Resume a stopped, failed or lost job from its latest checkpoint, in the same folder: the same token
cache, the same metrics file and TensorBoard run (continued from the checkpoint's step)."""
from __future__ import annotations

from dataclasses import asdict

from byzer_magic.errors import ByzerError, did_you_mean
from byzer_magic.runtime import cluster
from byzer_magic.runtime.spec import JobSpec, check_value, sfft_fields
from byzer_magic.runtime.worker.checkpoint import latest_tag
from byzer_magic.runtime.config import ParallelConfig, parse_ds_config, resolve_ds_config
from byzer_magic.runtime.kernel.job_spec import check_trackers, tracking_uri
from byzer_magic.runtime.kernel.jobs import JobHandle
from byzer_magic.runtime.kernel.ray_job import submit_ray_job
from byzer_magic.runtime.kernel.submit import job_dir_for
from byzer_magic.runtime.ownership import check_free, claim, job_lock, release_claim


# What decides which tokens a step trains: a resume that changes one of them would repeat or skip data.
_DATA_POSITION = ("max_length", "shuffle", "seed", "eval_ratio", "data_dir", "model_path", "tokenizer_path",
                  "text_column")


def resume(name: str, *, local_path_prefix: str | None = None, train_args: dict | None = None,
           ds_config: dict | str | None = None, ray_address: str | None = None) -> JobHandle:
    """Submit job ``name`` again; it continues from its latest checkpoint. ``train_args`` and
    ``ds_config`` override what the job was started with, except what decides the data position
    (``_DATA_POSITION`` and the batch shape), which is refused once a checkpoint exists."""
    info = cluster.connect(ray_address)
    job_dir = job_dir_for(name, local_path_prefix)
    handle = JobHandle(name, job_dir)
    spec = handle.spec
    if not spec:
        raise ByzerError(f"no job named {name!r} under {job_dir.parent} to resume")
    with job_lock(job_dir):  # one submit or resume of a name at a time (runtime/ownership.py)
        status = handle.status()
        if status in ("PENDING", "RUNNING"):
            raise ByzerError(f"job {name} is still {status.lower()}: stop it first (%byzerllm stop {name})")
        check_free(job_dir)
        before = _batch_shape(spec)
        changed = _apply_overrides(spec, train_args or {}, ds_config)
        spec.tracking.mlflow_tracking_uri = tracking_uri(spec.tracking)  # as a first submit reads it
        check_trackers(spec.tracking)  # a tracker added on resume, or one whose package has gone
        tag = latest_tag(handle.checkpoint_dir, say=print)  # the user is told of a damaged one passed over
        if tag:
            changed += [f"{what} {old} -> {new}" for what, old, new in zip(("micro-batch", "accumulation"), before,
                                                                           _batch_shape(spec)) if old != new]
            if changed:
                raise ByzerError(f"job {name} has a checkpoint ({tag}) trained with other batches: resuming with "
                                 f"{'; '.join(changed)} would repeat or skip data. Resume without these changes, or "
                                 f"start a new job from this one's weights (localModelDir=\"{handle.model_dir}\" "
                                 f"once it has exported, or a new name)")
        _, spec.job.notes = resolve_ds_config(spec.deepspeed.config, on_gpu=bool(spec.parallel.use_gpu))
        spec.job.attempt += 1
        spec.job.submission_id, spec.job.cluster = f"{name}-r{spec.job.attempt}", info.address
        spec.job.resumed_from = str(handle.checkpoint_dir / tag) if tag else None
        claim(job_dir, spec.job.submission_id)
        try:
            handle.files.write_json("job.json", spec.to_json())
            (job_dir / "plan.json").unlink(missing_ok=True)  # re-planned with the overrides
            submit_ray_job(spec.job, info)
        except BaseException:
            release_claim(job_dir, spec.job.submission_id)
            raise
    return JobHandle(name, job_dir)


def _apply_overrides(spec: JobSpec, train_args: dict, ds_config) -> list[str]:
    """Set the overrides on their sections (checked like any argument); the changes that move the data."""
    known, changed = sfft_fields(), []
    for key, value in train_args.items():
        if key not in known:
            raise ByzerError(f"unknown training argument {key!r}{did_you_mean(key, known)}")
        section_name, f = known[key]
        section = getattr(spec, section_name)
        value = check_value(f, value)
        if key in _DATA_POSITION and getattr(section, key) != value:
            changed.append(f"{key} {getattr(section, key)!r} -> {value!r}")
        setattr(section, key, value)
    if ds_config is not None:
        spec.deepspeed.config = parse_ds_config(ds_config)
    return changed


def _batch_shape(spec: JobSpec) -> tuple[int, int]:
    cfg, _ = resolve_ds_config(spec.deepspeed.config, on_gpu=bool(spec.parallel.use_gpu))
    return int(cfg["train_micro_batch_size_per_gpu"]), int(cfg["gradient_accumulation_steps"])


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
