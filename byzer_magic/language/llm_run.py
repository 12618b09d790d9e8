"""``run command as LLM.`` where ...``: validate the statement, then submit (detached) or train
(blocking) through the runtime's ``DeepSpeedTrain``, the same path as the Python API."""
from __future__ import annotations

from typing import Any, Callable

from byzer_magic.language.llm_params import LLMRun, parse_llm_options
from byzer_magic.language.statements import RunStatement


def run_llm(session, statement: RunStatement, *, show_job: Callable[[object], None] | None = None) -> Any:
    """Run the statement; returns the job's handle (detached), the result (blocking) or the plan.

    The language shows nothing itself: ``show_job(handle)`` (the magics pass one that displays the live
    monitor) is called once a blocking run has started; progress lines are printed too, so that a
    notebook run headless (nbconvert, CI) keeps a readable log."""
    show, blocking_output = show_job, print
    from byzer_magic.runtime.kernel.submit import DeepSpeedTrain  # noqa: PLC0415

    session.last_llm_statement = statement  # for %byzerllm plan
    tables = {name.lower(): ds for name, ds in session.tables.items()}
    run = parse_llm_options(statement.options, setup=session.setup, tables=_CaseInsensitive(tables))
    cluster = session.ensure_ray()  # only once the statement is valid: a bad cell connects to nothing
    config = run.config
    config.local_path_prefix = config.local_path_prefix or str(session.jobs_dir)
    dst = DeepSpeedTrain(config, ray_address=cluster.address if not cluster.embedded else None)
    if run.dry_run:
        return dst.plan()
    if run.resume:
        from byzer_magic.runtime.kernel.resume import resume_job  # noqa: PLC0415

        handle = resume_job(config, statement_keys={o.key for o in statement.options})
    else:
        handle = None
    _say_hardware(blocking_output, config)
    if run.detached:
        handle = handle or dst.submit()
        _say_submitted(blocking_output, handle)
        _bind_output_table(session, config.output_table, handle)
        return handle
    if handle is None:
        result = dst.train(progress=_progress_printer(blocking_output, show))
    else:
        result = _wait_blocking(handle, blocking_output, show)
    _bind_output_table(session, config.output_table, result.name if hasattr(result, "name") else handle)
    return result


class _CaseInsensitive(dict):
    """Table names are case-insensitive, as in SQL."""

    def __contains__(self, key) -> bool:
        return super().__contains__(str(key).lower())

    def __getitem__(self, key):
        return super().__getitem__(str(key).lower())


def _say_hardware(output, config) -> None:
    import ray  # noqa: PLC0415

    gpus = ray.cluster_resources().get("GPU", 0)
    if config.use_gpu is False or gpus == 0:
        output(f"No GPU in the cluster: training on {config.num_workers} CPU worker(s) with gloo, in fp32.")


def _say_submitted(output, handle) -> None:
    for note in handle.spec.job.notes:
        output(f"note: {note}")
    output(f"Submitted job {handle.name} (detached): files in {handle.job_dir}. "
           f"Follow it with %byzerllm attach {handle.name}")


def _progress_printer(output, show=None) -> Callable:
    """Print a line per logged step range while a blocking run goes (about 10 lines a run); the
    first call also shows the job's live monitor through ``show``."""
    state = {"printed": 0, "status": None}

    def progress(handle) -> None:
        if show is not None and state["status"] is None:
            show(handle)
        status = handle.status()
        if status != state["status"]:
            state["status"] = status
            if status == "RUNNING" and state["printed"] == 0:
                for note in handle.spec.job.notes:
                    output(f"note: {note}")
        metrics = handle.metrics()
        if not len(metrics):
            return
        total = handle.total_steps or 0
        every = max(1, total // 10)
        for row in metrics.itertuples():
            if row.step > state["printed"] and (row.step % every == 0 or row.step == total):
                output(f"step {row.step}/{total or '?'}  loss {row.loss:.4f}  "
                       f"{getattr(row, 'tokens_per_s', 0) or 0:,.0f} tokens/s")
                state["printed"] = row.step

    return progress


def _wait_blocking(handle, output, show=None):
    from byzer_magic.runtime.kernel.submit import TrainResult  # noqa: PLC0415

    try:
        status = handle.wait(progress=_progress_printer(output, show))
    except KeyboardInterrupt:
        handle.stop()
        raise
    return TrainResult.of(handle, status)


def _bind_output_table(session, name: str | None, handle_or_name) -> None:
    """``outputTable``: a one-row table read from the job when it is queried (so a detached job's
    row is current whenever the table is used)."""
    if not name:
        return
    import ray.data  # noqa: PLC0415

    from byzer_magic.runtime.kernel.jobs import JobHandle  # noqa: PLC0415

    handle = handle_or_name if isinstance(handle_or_name, JobHandle) else None
    if handle is None:
        from byzer_magic.runtime.kernel.jobs import get_job  # noqa: PLC0415

        handle = get_job(handle_or_name, session.jobs_dir)
    row_of = _RowReader(handle.name, str(handle.job_dir))
    session.set_table(name, ray.data.range(1).map_batches(row_of, batch_format="pandas"))


class _RowReader:
    """Picklable: runs in a Ray task each time the output table is read."""

    def __init__(self, name: str, job_dir: str):
        self.name, self.job_dir = name, job_dir

    def __call__(self, _batch):
        import pandas as pd  # noqa: PLC0415

        from byzer_magic.runtime.kernel.jobs import JobHandle  # noqa: PLC0415

        return pd.DataFrame([JobHandle(self.name, self.job_dir).result()])


__all__ = ["run_llm", "LLMRun"]
