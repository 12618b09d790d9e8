"""kernel/jobs.py's honest states against a real HTTP server on 127.0.0.1 that answers as Ray's Jobs API
does (Ray's own JobSubmissionClient talks to it): transient errors are retried, LOST only when the head
answers that it does not know the job and nothing holds its folder, a failed stop is reported."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from byzer_magic.errors import ByzerError
from byzer_magic.runtime import ownership
from byzer_magic.runtime.jobfiles import JobFiles
from byzer_magic.runtime.kernel import jobs
from byzer_magic.runtime.kernel.jobs import JobHandle, JobsApiError, JobStatus


class FakeJobsApi:
    """``script[(method, path)]``: a list of (code, body) answers, the last one repeated."""

    def __init__(self):
        self.script: dict[tuple[str, str], list] = {}
        self.seen: list[tuple[str, str]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, method):
                api.seen.append((method, self.path))
                if self.path == "/api/version":
                    code, body = 200, {"ray_version": "2.60.0", "version": "2.60.0", "ray_commit": "x",
                                       "session_name": "s"}
                else:
                    answers = api.script.get((method, self.path), [(404, "Job does not exist")])
                    code, body = answers.pop(0) if len(answers) > 1 else answers[0]
                data = (json.dumps(body) if not isinstance(body, str) else body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._answer("GET")

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._answer("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def calls(self, method: str, path: str) -> int:
        return self.seen.count((method, path))


def details(status: str, job_id: str | None = None) -> dict:
    return {"type": "SUBMISSION", "status": status, "entrypoint": "python -m x", "submission_id": "demo",
            "job_id": job_id}


@pytest.fixture
def api(monkeypatch):
    fake = FakeJobsApi()
    monkeypatch.setattr(jobs, "_dashboard_url", lambda: fake.url)
    monkeypatch.setattr(jobs, "BACKOFF_S", 0.01)
    yield fake
    fake.server.shutdown()


@pytest.fixture
def job(tmp_path):
    job_dir = tmp_path / "demo"
    job_dir.mkdir()
    return JobHandle("demo", job_dir)


def test_job_status_is_a_typed_str():
    assert JobStatus.RUNNING == "RUNNING" and f"{JobStatus.LOST}" == "LOST" and str(JobStatus.FAILED) == "FAILED"
    assert JobStatus.STOPPED.lower() == "stopped" and {"RUNNING": 1}[JobStatus.RUNNING] == 1
    assert JobStatus.SUCCEEDED in jobs.TERMINAL and not JobStatus.PENDING.is_terminal()
    assert json.dumps([JobStatus.SUCCEEDED]) == '["SUCCEEDED"]'


def test_transient_errors_are_retried(api, job):
    api.script[("GET", "/api/jobs/demo")] = [(503, "busy"), (502, "bad gateway"), (200, details("RUNNING"))]
    status = job.status()
    assert status is JobStatus.RUNNING and api.calls("GET", "/api/jobs/demo") == 3


def test_an_api_that_keeps_failing_is_an_error_not_lost(api, job):
    api.script[("GET", "/api/jobs/demo")] = [(500, "internal error")]
    with pytest.raises(JobsApiError, match=r"did not answer \(read the status of job demo\) after 4 tries"):
        job.status()
    assert api.calls("GET", "/api/jobs/demo") == jobs.RETRIES


def test_an_unreachable_api_is_an_error_not_lost(monkeypatch, job):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setattr(jobs, "_dashboard_url", lambda: f"http://127.0.0.1:{port}")
    monkeypatch.setattr(jobs, "BACKOFF_S", 0.01)
    with pytest.raises(JobsApiError, match="after 4 tries"):
        job.status()


def test_lost_only_when_the_head_does_not_know_it_and_nothing_holds_the_folder(api, job):
    assert job.status() is JobStatus.LOST  # the head answers 404 and the folder has no result, no lease
    with ownership.JobLease(job.job_dir, "demo", interval=60):  # its driver still runs (another head)
        assert job.status() is JobStatus.RUNNING
        with pytest.raises(ByzerError, match="cannot stop job demo: it is RUNNING on a Ray head this kernel "
                                             "does not reach"):
            job.stop(timeout=1)
    with ownership.job_lock(job.job_dir):
        ownership.claim(job.job_dir, "demo")  # submitted, its driver not started yet
    assert job.status() is JobStatus.PENDING
    ownership.release_claim(job.job_dir, "demo")
    JobFiles(job.job_dir).write_json("result.json", {"submission_id": "demo", "status": "FAILED",
                                                      "error": "loss is not finite at step 7"})
    assert job.status() is JobStatus.FAILED
    assert job.stop(timeout=1) is JobStatus.FAILED  # nothing left to stop


def test_a_failed_stop_is_reported(api, job):
    api.script[("GET", "/api/jobs/demo")] = [(200, details("RUNNING"))]
    api.script[("POST", "/api/jobs/demo/stop")] = [(500, "could not signal the driver")]
    with pytest.raises(JobsApiError, match="could not stop job demo: the Ray Jobs API did not answer"):
        job.stop(timeout=1)
    api.script[("POST", "/api/jobs/demo/stop")] = [(400, "bad request")]
    with pytest.raises(JobsApiError, match="could not stop job demo: the Ray Jobs API failed to stop job demo"):
        job.stop(timeout=1)
    api.script[("POST", "/api/jobs/demo/stop")] = [(200, {"stopped": True})]
    with pytest.raises(ByzerError, match="was asked to stop but is still RUNNING after 1 s"):
        job.stop(timeout=1)


def test_a_stop_that_works(api, job):
    api.script[("GET", "/api/jobs/demo")] = [(200, details("RUNNING")), (200, details("STOPPED"))]
    api.script[("POST", "/api/jobs/demo/stop")] = [(200, {"stopped": True})]
    assert job.stop(timeout=5) is JobStatus.STOPPED


def test_logs_and_ray_job_id(api, job):
    assert job.logs() == "" and job.ray_job_id() is None  # the head does not know it
    api.script[("GET", "/api/jobs/demo")] = [(200, details("RUNNING", job_id="03000000"))]
    api.script[("GET", "/api/jobs/demo/logs")] = [(503, "busy"), (200, {"logs": "a\nb\nc\n"})]
    assert job.ray_job_id() == "03000000" and job.logs(tail=2) == "b\nc"


def test_result_carries_every_key_of_result_json(api, job):
    JobFiles(job.job_dir).write_json("result.json", {
        "submission_id": "demo", "status": "SUCCEEDED", "steps": 12, "final_loss": 2.5, "tokens_trained": 49152,
        "corpus_tokens": 50000, "epochs": 1, "trained_share": 0.98, "eval_loss": 2.7, "seconds": 31.0})
    row = job.result()
    assert row["status"] is JobStatus.SUCCEEDED and row["steps"] == 12 and row["final_loss"] == 2.5
    assert {k: row[k] for k in ("tokens_trained", "corpus_tokens", "epochs", "trained_share", "eval_loss")} == {
        "tokens_trained": 49152, "corpus_tokens": 50000, "epochs": 1, "trained_share": 0.98, "eval_loss": 2.7}
    JobFiles(job.job_dir).write_json("result.json", {"submission_id": "demo-r1", "status": "FAILED"})
    assert "tokens_trained" not in job.result()  # another attempt's result is not this submission's


def test_list_jobs_does_not_hide_an_api_failure(api, tmp_path):
    api.script[("GET", "/api/jobs/")] = [(503, "busy"), (200, [])]
    assert jobs.list_jobs(tmp_path) == []
    api.script[("GET", "/api/jobs/")] = [(500, "down")]
    with pytest.raises(JobsApiError, match="list jobs"):
        jobs.list_jobs(tmp_path)
