"""`pip install byzer-magic` alone is a kernel extension: JupyterLab and jupyter-server-proxy are the
`[lab]` extra, and the extension, its magics and widgets work in an IPython where they cannot be
imported. No Ray here."""
from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
SERVER_SIDE = {"jupyterlab", "jupyter-server-proxy"}


def test_jupyterlab_and_the_proxy_are_an_extra():
    requirements = [Requirement(r) for r in importlib.metadata.requires("byzer-magic")]
    base = {r.name for r in requirements if r.marker is None}
    assert not SERVER_SIDE & base and {"ipython", "ipywidgets", "ray"} <= base
    lab = {r.name for r in requirements if r.marker is not None and r.marker.evaluate({"extra": "lab"})}
    assert SERVER_SIDE <= lab
    test = [r for r in requirements if r.marker is not None and r.marker.evaluate({"extra": "test"})]
    assert any(r.name == "byzer-magic" and "lab" in r.extras for r in test)  # the tests drive JupyterLab


def test_extension_works_in_an_ipython_without_jupyter_server(tmp_path):
    """A plain IPython in which jupyterlab, jupyter_server and jupyter_server_proxy cannot be imported:
    the extension loads, its help and a job monitor work, TensorBoard's URL is the direct one."""
    script = textwrap.dedent(f"""
        import sys
        for name in ("jupyterlab", "jupyter_server", "jupyter_server_proxy", "notebook"):
            sys.modules[name] = None  # import fails, as where they are not installed
        sys.path.insert(0, {str(ROOT)!r})
        from IPython.testing.globalipapp import start_ipython
        ip = start_ipython()
        ip.run_line_magic("load_ext", "byzer_magic")
        ip.run_line_magic("byzerllm", "help")
        from byzer_magic.runtime.kernel.jobs import JobHandle
        from byzer_magic.runtime.worker.metrics import MetricsWriter
        from byzer_magic.widgets import JobMonitor, frame_url
        from tests.support.jobs import write_job_folder

        class Done(JobHandle):
            def status(self):
                return "SUCCEEDED"

        job_dir = write_job_folder({str(tmp_path / "demo")!r}, "demo", total_steps=3)
        writer = MetricsWriter(job_dir)
        for step in (1, 2, 3):
            writer.log(step, loss=3.0 / step, lr=1e-3, grad_norm=1.0, tokens_per_s=10.0, tokens=step, epoch=0)
        writer.close()
        monitor = JobMonitor(Done("demo", job_dir))
        print(monitor.static_text())
        print(frame_url(6006, environ={{}}))
        loaded = [m for m in ("jupyterlab", "jupyter_server", "jupyter_server_proxy") if sys.modules.get(m)]
        print("server-side modules:", loaded)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "%byzerllm export" in done.stdout and "JobMonitor(demo: SUCCEEDED · 3 / 3" in done.stdout
    assert "http://127.0.0.1:6006/" in done.stdout and "server-side modules: []" in done.stdout
