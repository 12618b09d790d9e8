"""Experiment trackers (`report_to`): a real MLflow server on 127.0.0.1 receives the run's params and
metrics and a resume continues the same run; W&B offline writes its run files in the job folder; a
tracker that fails never stops training; a misspelt tracker or a missing server is refused in the
kernel before anything launches. No Ray here: rank 0's MetricsWriter is driven directly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from byzer_magic.errors import ByzerError
from byzer_magic.language.llm_params import parse_llm_options
from byzer_magic.language.parser import parse_cell
from byzer_magic.runtime.config import ParallelConfig, TrainArgs
from byzer_magic.runtime.kernel import job_spec
from byzer_magic.runtime.network import free_ports
from byzer_magic.runtime.spec import JobSection, JobSpec, TrackingSection
from byzer_magic.runtime.worker.metrics import MetricsWriter, read_metrics
from byzer_magic.runtime.worker.trackers import MLFLOW_RUN_FILE, WANDB_RUN_FILE, Tracker


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` on a free port of 127.0.0.1 with a SQLite store; its URL."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_ports(1)[0]
    log = open(root / "server.log", "wb")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner workers
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1", "--backend-store-uri",
                             f"sqlite:///{root}/mlflow.db", "--default-artifact-root", str(root / "artifacts")],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600  # the server's start is slow on a loaded machine
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        log.close()


def _spec(job_dir: Path, **tracking) -> JobSpec:
    job_dir.mkdir(parents=True, exist_ok=True)
    return JobSpec(job=JobSection(name=job_dir.name, job_dir=str(job_dir)), tracking=TrackingSection(**tracking))


def _log(writer: MetricsWriter, steps, *, eval_at=()) -> None:
    for step in steps:
        held = {"eval_loss": 3.0 - step / 10, "eval_perplexity": 20.0 - step} if step in eval_at else {}
        writer.log(step, epoch=0, loss=4.0 - step / 10, lr=1e-4 * step, grad_norm=1.5, tokens_per_s=1000.0 + step,
                   tokens=step * 512, total_steps=8, **held)


def test_mlflow_params_metrics_and_resume(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    job_dir = tmp_path / "sfft-mlflow"
    spec = _spec(job_dir, report_to="tensorboard,mlflow", mlflow_tracking_uri=mlflow_server,
                 mlflow_experiment="byzer-test")
    spec.data.max_length = 128
    writer = MetricsWriter(job_dir, spec=spec)
    _log(writer, range(1, 6), eval_at=(5,))
    writer.close()

    client = MlflowClient(mlflow_server)
    run_id = (job_dir / MLFLOW_RUN_FILE).read_text().strip()
    run = client.get_run(run_id)
    assert run.info.run_name == "sfft-mlflow" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "byzer-test"
    params = run.data.params
    assert params["max_length"] == "128" and params["report_to"] == "tensorboard,mlflow"
    assert params["job"] == "sfft-mlflow" and params["num_workers"] == "1" and params["seed"] == "42"
    loss = client.get_metric_history(run_id, "loss")
    assert [m.step for m in loss] == [1, 2, 3, 4, 5] and loss[-1].value == pytest.approx(3.5)
    assert [m.step for m in client.get_metric_history(run_id, "eval_loss")] == [5]
    assert {"lr", "grad_norm", "tokens_per_s", "eval_perplexity"} <= set(run.data.metrics)
    assert (job_dir / "tensorboard").is_dir() and len(read_metrics(job_dir)) == 5

    # Resumed from a checkpoint at step 3: the lost attempt had logged steps 4 and 5 already.
    writer = MetricsWriter(job_dir, resume_step=3, spec=spec)
    _log(writer, range(4, 9), eval_at=(8,))
    writer.close()
    assert (job_dir / MLFLOW_RUN_FILE).read_text().strip() == run_id
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(1, 9))  # none twice
    assert [m.step for m in client.get_metric_history(run_id, "eval_loss")] == [5, 8]
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert client.get_run(run_id).info.status == "FINISHED"
    assert list(read_metrics(job_dir)["step"]) == list(range(1, 9))


def test_a_tracker_that_cannot_reach_its_server_does_not_stop_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    job_dir = tmp_path / "sfft-down"
    spec = _spec(job_dir, report_to="mlflow", mlflow_tracking_uri=f"http://127.0.0.1:{free_ports(1)[0]}")
    writer = MetricsWriter(job_dir, spec=spec)
    started = time.monotonic()
    _log(writer, range(1, 6))
    assert time.monotonic() - started < 1  # queued, never waiting for the server
    writer.close()
    out = capsys.readouterr().out
    assert out.count("warning: mlflow could not start") == 1 and "training goes on" in out
    assert list(read_metrics(job_dir)["step"]) == [1, 2, 3, 4, 5]
    assert not (job_dir / "tensorboard").exists()  # report_to does not list it


class _Flaky(Tracker):
    name = "flaky"

    def _open(self):
        self.sent = []

    def _send(self, step, values):
        if step in (2, 3):
            raise ConnectionError("server down")
        self.sent.append(step)

    def _finish(self):
        self.finished = True


def test_a_tracker_failing_midway_warns_once_and_goes_on(tmp_path, capsys):
    tracker = _Flaky(_spec(tmp_path / "sfft-flaky"), tmp_path / "sfft-flaky")
    for step in range(1, 6):
        tracker.log(step, {"loss": 1.0})
    tracker.close()
    assert tracker.sent == [1, 4, 5] and tracker.finished
    out = capsys.readouterr().out
    assert out.count("warning:") == 1 and "flaky failed at step 2 (ConnectionError: server down)" in out


def test_wandb_offline_writes_its_files_in_the_job_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    job_dir = tmp_path / "sfft-wandb"
    spec = _spec(job_dir, report_to="wandb", wandb_project="byzer-test")  # wandb_mode: offline by default
    spec.data.max_length = 256
    writer = MetricsWriter(job_dir, spec=spec)
    _log(writer, range(1, 4), eval_at=(3,))
    writer.close()
    assert not writer.trackers[0].warned, capsys.readouterr().out[-3000:]
    run_id = (job_dir / WANDB_RUN_FILE).read_text().strip()
    (run_dir,) = (job_dir / "wandb").glob(f"offline-run-*-{run_id}")
    records = list(_wandb_records(run_dir / f"run-{run_id}.wandb"))
    assert records[-1].WhichOneof("record_type") == "exit"  # written whole when close() returns
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert run.run_id == run_id and run.display_name == "sfft-wandb" and run.project == "byzer-test"
    assert config["max_length"] == 256 and config["report_to"] == "wandb" and config["job"] == "sfft-wandb"
    history = [{(item.nested_key[0] if item.nested_key else item.key): json.loads(item.value_json)
                for item in r.history.item} for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["_step"] for h in history] == [1, 2, 3] and history[-1]["loss"] == pytest.approx(3.7)
    assert history[-1]["eval_loss"] == pytest.approx(2.7)
    assert list(read_metrics(job_dir)["step"]) == [1, 2, 3]


def _wandb_records(path: Path):
    """The records of a W&B run log (``run-<id>.wandb``: a 7-byte header, then LevelDB-log blocks of
    32 KiB holding records of a 7-byte header, checksum, length and kind, each a protobuf ``Record``)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


# -- the kernel: refused before anything launches --------------------------------------------------------

def _options(extra: str):
    cell = f'run command as LLM.`` where pretrainedModelType="sfft/llama2" and inputTable="docs" {extra};'
    return parse_llm_options(parse_cell(cell)[-1].options, setup={"num_gpus": 1}, tables={"docs": object()})


def test_a_misspelt_tracker_is_refused_with_did_you_mean():
    with pytest.raises(ByzerError, match='report_to: unknown tracker \'mlfow\' \\(did you mean "mlflow"\\?\\)'):
        TrainArgs(report_to="tensorboard,mlfow")
    with pytest.raises(ByzerError) as info:
        _options('and `sfft.str.report_to`="tensorboard,mlfow"')
    assert 'did you mean "mlflow"' in str(info.value) and "tensorboard, mlflow, wandb, or none" in str(info.value)
    assert info.value.line == 1
    with pytest.raises(ByzerError, match="none stands alone"):
        TrainArgs(report_to="none,wandb")
    with pytest.raises(ByzerError, match="wandb_mode must be one of offline, online"):
        TrainArgs(wandb_mode="on")
    with pytest.raises(ByzerError, match="holds a password"):
        TrainArgs(mlflow_tracking_uri="http://me:secret@mlflow:5000")
    assert _options('and `sfft.str.report_to`="none"').config.train_args.report_to == "none"


def test_mlflow_needs_a_tracking_uri_and_its_package(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ByzerError, match="report_to=mlflow needs a tracking server: set sfft.str.mlflow_tracking_uri"):
        _options('and `sfft.str.report_to`="tensorboard,mlflow"')
    run = _options('and `sfft.str.report_to`="mlflow" and `sfft.str.mlflow_tracking_uri`="http://127.0.0.1:5000"')
    assert run.config.train_args.mlflow_tracking_uri == "http://127.0.0.1:5000"

    # The kernel's MLFLOW_TRACKING_URI, read at submit, goes into job.json.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    config = ParallelConfig(train_args=TrainArgs(report_to="mlflow", data_dir=str(tmp_path)))
    job_spec.check_inputs(config)
    spec = job_spec.build_job_spec(config, name="j", job_dir=tmp_path / "j", use_gpu=False, tokenizer_path="t",
                                   cluster_address="", notes=[], get_model_file=None)
    assert JobSpec.from_json(json.loads(json.dumps(spec.to_json()))).tracking.mlflow_tracking_uri == \
        "http://tracking.example:5000"

    real = job_spec.importlib.util.find_spec
    monkeypatch.setattr(job_spec.importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ByzerError, match=r"report_to=wandb needs the wandb package: pip install 'byzer-magic\[wandb\]'"):
        job_spec.check_trackers(TrainArgs(report_to="wandb"))


def test_wandb_online_needs_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    with pytest.raises(ByzerError, match="needs a W&B API key"):
        job_spec.check_trackers(TrainArgs(report_to="wandb", wandb_mode="online"))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    job_spec.check_trackers(TrainArgs(report_to="wandb", wandb_mode="online"))


def test_an_old_job_json_without_the_tracking_section_loads_with_defaults():
    raw = JobSpec().to_json()
    del raw["tracking"]
    tracking = JobSpec.from_json(raw).tracking
    assert tracking.report_to == "tensorboard" and tracking.wandb_mode == "offline"


def test_resume_checks_the_trackers_it_is_given(ray_cluster, tmp_path, monkeypatch):
    """A tracker added on resume is checked as at a first submit, before anything is submitted; the
    kernel's MLFLOW_TRACKING_URI is read then too and kept in job.json."""
    from byzer_magic.runtime.kernel.resume import resume

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job_dir = tmp_path / "jobs" / "tracked"
    job_dir.mkdir(parents=True)
    spec = JobSpec(job=JobSection(name="tracked", job_dir=str(job_dir), submission_id="tracked"))
    (job_dir / "job.json").write_text(json.dumps(spec.to_json()))
    with pytest.raises(ByzerError, match="report_to=mlflow needs a tracking server"):
        resume("tracked", local_path_prefix=str(tmp_path / "jobs"), train_args={"report_to": "tensorboard,mlflow"})
    with pytest.raises(ByzerError, match='did you mean "wandb"'):
        resume("tracked", local_path_prefix=str(tmp_path / "jobs"), train_args={"report_to": "wandbb"})
    assert JobSpec.from_json(json.loads((job_dir / "job.json").read_text())).tracking.report_to == "tensorboard"
    assert not (job_dir / "owner.json").exists()  # refused before the job was claimed or submitted
