"""``DeepSpeedTrain``: check a run, lay out its folder, and submit it as a Ray Job.

Blocking and detached runs share this one path: ``train()`` is ``submit()`` followed by waiting (an
interrupt stops the job). Everything that can be checked before the job starts is checked here, in
seconds, so that a mistake never surfaces minutes later inside a worker.
"""
from __future__ import annotations

import getpass
import glob
import os
import re
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

from byzer_magic.errors import ByzerError, did_you_mean
from byzer_magic.runtime import cluster
from byzer_magic.runtime.config import ParallelConfig, resolve_ds_config
from byzer_magic.runtime.home import default_jobs_dir
from byzer_magic.runtime.jobfiles import JobFiles
from byzer_magic.runtime.kernel.job_input import save_input
from byzer_magic.runtime.kernel.job_spec import build_job_spec, check_inputs
from byzer_magic.runtime.kernel.jobs import JobHandle
from byzer_magic.runtime.kernel.ray_job import submit_ray_job
from byzer_magic.runtime.ownership import claim, job_lock, release_claim

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # fullmatch: `$` would let a final newline in


def default_name() -> str:
    return f"sfft-{getpass.getuser()}-{time.strftime('%Y%m%d-%H%M%S')}"


def job_dir_for(name: str, prefix: str | None) -> Path:
    """``<prefix>/<name>``, refusing names that would escape the prefix or reach a shell."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise ByzerError(f"invalid job name {name!r}: use letters, digits, '.', '_' and '-' "
                         f"(starting with a letter or digit)")
    root = Path(prefix).expanduser() if prefix else default_jobs_dir()
    if not root.is_absolute():
        root = Path.cwd() / root
    root = root.resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise ByzerError(f"job name {name!r} would escape localPathPrefix {root}")
    return path


@dataclass
class TrainResult:
    """A finished blocking run: the outputTable's row, and the logged steps."""
    name: str
    status: str
    model_dir: str
    checkpoint_dir: str
    tensorboard_dir: str
    steps: int
    final_loss: float | None
    eval_loss: float | None = None
    tokens_trained: int | None = None
    corpus_tokens: int | None = None
    epochs: int | None = None
    trained_share: float | None = None
    metrics: object = None  # pandas DataFrame of the logged steps

    @classmethod
    def of(cls, handle: JobHandle, status: str) -> "TrainResult":
        """The result of ``handle``'s run, or a ``ByzerError`` with its reason when it did not succeed."""
        row = handle.result()
        if status != "SUCCEEDED":
            raise ByzerError(f"job {handle.name} {status.lower()}: {row.get('error') or handle.logs(tail=5)}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in known}, metrics=handle.metrics())


class DeepSpeedTrain:
    """Pretraining on Ray Train + DeepSpeed. ``train()`` blocks; ``submit()`` returns a JobHandle."""

    def __init__(self, config: ParallelConfig, *, ray_address: str | None = None):
        self.config = config
        self.ray_address = ray_address
        self._handle: JobHandle | None = None

    @property
    def workers(self) -> list:
        """The user document's ``ray.get([w.train.remote() for w in dst.workers])`` (kernel/seed_workers.py)."""
        from byzer_magic.runtime.kernel.seed_workers import SeedWorker  # noqa: PLC0415

        return [SeedWorker(self, rank) for rank in range(self.config.num_workers)]

    def submitted(self) -> JobHandle:
        """This run's job, submitted on the first call."""
        if self._handle is None:
            self._handle = self.submit()
        return self._handle

    # -- checks ---------------------------------------------------------------------------------
    def _check_resources(self, use_gpu: bool | None) -> bool:
        import ray  # noqa: PLC0415

        total = ray.cluster_resources()
        gpus, cpus, n = total.get("GPU", 0), total.get("CPU", 0), self.config.num_workers
        use_gpu = gpus > 0 if use_gpu is None else use_gpu
        if use_gpu and n > gpus:
            raise ByzerError(f"num_gpus={n} but the cluster has {int(gpus)} GPU(s): lower num_gpus or add nodes")
        need = n * self.config.cpus_per_worker
        if not use_gpu and need > cpus:
            raise ByzerError(f"{n} CPU worker(s) need {need:g} CPU slots but the cluster has {cpus:g}: "
                             f"lower num_gpus (the worker count)")
        return use_gpu

    def _tokenizer_path(self) -> tuple[str, list[str]]:
        """The tokenizer's resolved path, checked against the model's vocabulary now (not after the corpus
        is tokenised): its notes."""
        cfg, args = self.config, self.config.train_args
        path = args.tokenizer_path or args.model_path
        if not path:
            raise ByzerError("a model trained from scratch needs a tokenizer: set sfft.str.tokenizer_path "
                             "(a SentencePiece tokenizer.model or a Hugging Face tokenizer folder)")
        from byzer_magic.runtime.tokenizer import load_tokenizer  # noqa: PLC0415
        from byzer_magic.runtime.tokenizer_fit import check_tokenizer_fits  # noqa: PLC0415

        tokenizer = load_tokenizer(path)  # fails now, with the path, if it is not a tokenizer
        notes = []
        if args.model_path:
            notes = check_tokenizer_fits(tokenizer, args.model_path, tokenizer_path=path)
        elif cfg.get_model is None:
            notes = check_tokenizer_fits(tokenizer, dict(cfg.model_config or {}), model_type=cfg.model_type,
                                         tokenizer_path=path)
        return str(Path(path).expanduser().resolve()), notes

    def _check_model(self) -> None:
        from byzer_magic.runtime.models import registry  # noqa: PLC0415

        cfg, args = self.config, self.config.train_args
        if args.model_path:
            path = Path(args.model_path).expanduser()
            if not (path / "config.json").exists():
                raise ByzerError(f"localModelDir {path} is not a model folder (no config.json there)")
        elif cfg.get_model is None:
            valid = registry.model_config_keys(cfg.model_type)  # an unknown type fails here
            for key in cfg.model_config or {}:
                if key not in valid:
                    raise ByzerError(f"modelConfig: unknown key {key!r}{did_you_mean(key, valid)}; "
                                     f"valid: {', '.join(sorted(valid))}")

    def plan(self, measure: bool | None = None):
        """What the run will cost (tokens, steps, memory, advice) without training: see docs/PLAN.md."""
        from byzer_magic.runtime.kernel.plan import plan_run  # noqa: PLC0415

        cluster.connect(self.ray_address)
        return plan_run(self.config, measure=measure)

    def _preflight(self) -> tuple[list[str], int | None]:
        """Stop, in seconds, what cannot work (memory, positions, a tokenizer that does not fit the model);
        a config predicted much slower than one that fits is a warning, and the run goes on (the user
        decides). Also returns the largest micro-batch that fits a GPU (for the driver's default batch)."""
        from byzer_magic.runtime.kernel.plan import check_launchable, plan_run  # noqa: PLC0415

        plan = plan_run(self.config, measure=False, count=False)
        check_launchable(plan)
        return [plan.warning] if plan.warning else [], plan.max_micro

    # -- the job --------------------------------------------------------------------------------
    def submit(self) -> JobHandle:
        """Check the run, leave its input in the job folder, and submit it as a Ray Job."""
        cfg, args = self.config, self.config.train_args
        check_inputs(cfg)
        info = cluster.connect(self.ray_address)
        name = cfg.name or default_name()
        job_dir = job_dir_for(name, cfg.local_path_prefix)
        files = JobFiles(job_dir)
        if (job_dir / "job.json").exists():  # said at once; checked again under the lock below
            raise ByzerError(f"a job named {name!r} already exists ({job_dir}); choose another name, or resume it")
        use_gpu = self._check_resources(cfg.use_gpu)
        _, notes = resolve_ds_config(cfg.ds_config, on_gpu=use_gpu)  # invalid configs stop here
        self._check_model()
        tokenizer_path, tokenizer_notes = self._tokenizer_path()
        notes += tokenizer_notes
        if cfg.input_table is not None:
            columns = cfg.input_table.schema().names
            if args.text_column not in columns:
                raise ByzerError(f"inputTable {cfg.input_table_name or ''} has no `{args.text_column}` column "
                                 f"(columns: {', '.join(columns)}); select ... as text first")
        elif not glob.glob(os.path.expanduser(args.data_dir.removeprefix("file://")), recursive=True):
            raise ByzerError(f"localDataDir {args.data_dir} does not exist")

        plan_notes, max_micro = self._preflight()
        with job_lock(job_dir):  # one submit of a name at a time, across kernels (runtime/ownership.py)
            if (job_dir / "job.json").exists():
                raise ByzerError(f"a job named {name!r} already exists ({job_dir}); choose another name, or resume it")
            job_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            claim(job_dir, name)
            try:
                if cfg.input_table is not None:
                    save_input(cfg.input_table, files, args.text_column, cfg.keep_partition_num)
                get_model_file = None
                if cfg.get_model is not None:
                    from ray import cloudpickle  # noqa: PLC0415

                    get_model_file = str(job_dir / "get_model.pkl")
                    with open(get_model_file, "wb") as f:
                        cloudpickle.dump(cfg.get_model, f)
                spec = build_job_spec(cfg, name=name, job_dir=job_dir, use_gpu=use_gpu, tokenizer_path=tokenizer_path,
                                      cluster_address=info.address, notes=notes + plan_notes,
                                      get_model_file=get_model_file)
                spec.deepspeed.max_micro_batch = max_micro
                files.write_json("job.json", spec.to_json())
                submit_ray_job(spec.job, info)
            except BaseException as err:
                release_claim(job_dir, name)
                # Nothing was started (the Jobs API or a node's pre-flight refused it): leave no half job.
                if isinstance(err, ByzerError) or not (job_dir / "job.json").exists():
                    import shutil  # noqa: PLC0415

                    shutil.rmtree(job_dir, ignore_errors=True)
                raise
        return JobHandle(name, job_dir)

    def train(self, progress: Callable[[JobHandle], None] | None = None) -> TrainResult:
        """Submit and wait; an interrupt (Ctrl-C, the notebook's stop button) stops the job."""
        handle = self.submitted()
        try:
            status = handle.wait(progress=progress)
        except KeyboardInterrupt:
            handle.stop()
            raise
        return TrainResult.of(handle, status)
