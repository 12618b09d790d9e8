"""``tensorboard.start_for_job``: what rank 0 calls when the DeepSpeed config enables TensorBoard (a
real server on 127.0.0.1 for the job's ``tensorboard/`` folder, its address printed for the job's log)."""
from __future__ import annotations

import json
import urllib.request

from byzer_magic.runtime import tensorboard


def test_start_for_job_serves_the_jobs_folder_on_the_loopback(tmp_path, capsys):
    import psutil

    job_dir = tmp_path / "job-tb"
    job_dir.mkdir()
    url = tensorboard.start_for_job(job_dir)
    try:
        printed = capsys.readouterr().out
        assert url and url.startswith("http://127.0.0.1:") and f"[job-tb] TensorBoard: {url}" in printed
        with urllib.request.urlopen(url + "data/environment", timeout=10) as response:
            assert json.load(response)["data_location"] == str((job_dir / "tensorboard").resolve())
        server = tensorboard.find(job_dir / "tensorboard")
        ips = {c.laddr.ip for c in psutil.Process(server.pid).net_connections("inet") if c.status == "LISTEN"}
        assert ips == {"127.0.0.1"}, ips
        assert tensorboard.start_for_job(job_dir) == url  # a second call reuses it
    finally:
        tensorboard.stop(job_dir / "tensorboard")
