"""Real-browser tests: JupyterLab on 127.0.0.1 started by the test, headless Debian Chromium through
Playwright. Screenshots go to test-artifacts/."""
from __future__ import annotations

import pytest

from tests.support.browser import (cell_outputs_text, chromium, jupyterlab, open_notebook, output_of,
                                   run_all_cells, screenshot, write_notebook)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


def test_ipywidgets_render_in_jupyterlab(tmp_path):
    """The base every notebook UI test stands on: ipywidgets 8 widgets render in JupyterLab 4."""
    write_notebook(tmp_path / "slider.ipynb", [
        "import ipywidgets as widgets\n"
        "slider = widgets.IntSlider(value=7, min=0, max=10, description='demo')\n"
        "slider",
        "slider.value = 9  # a change from the kernel reaches the view",
    ])
    with jupyterlab(tmp_path) as lab, chromium() as browser:
        page = open_notebook(browser, lab, "slider.ipynb")
        run_all_cells(page)
        slider = page.locator(".widget-slider").first
        slider.wait_for(state="visible", timeout=30_000)
        readout = page.locator(".widget-slider .widget-readout").first
        page.wait_for_function("el => el.innerText.trim() === '9'", arg=readout.element_handle(), timeout=10_000)
        assert "demo" in page.locator(".widget-slider .widget-label").first.inner_text()
        assert not any("Error displaying widget" in text for text in cell_outputs_text(page))
        assert screenshot(page, "ipywidgets-slider").stat().st_size > 10_000


MONITOR_NOTEBOOK = [
    # A job folder written by the runtime's MetricsWriter while the notebook watches it; the status
    # is the notebook's (no Ray here; the real-training test does the same with a Ray job).
    """import json, pathlib, threading, time
from byzer_magic.runtime.jobfiles import JobFiles
from byzer_magic.runtime.jobs import JobHandle
from byzer_magic.runtime.metrics import MetricsWriter
from byzer_magic.widgets import JobMonitor, tensorboard_frame

class DemoJob(JobHandle):
    state = "RUNNING"
    def status(self):
        return self.state

JOB = pathlib.Path("demo-job").resolve()
JOB.mkdir()
JobFiles(JOB).write_json("job.json", {"name": "demo", "submitted_at": time.strftime("%Y-%m-%d %H:%M:%S")})
JobFiles(JOB).write_json("plan.json", {"total_steps": 40})
job = DemoJob("demo", JOB)
writer = MetricsWriter(JOB)

def log(step):
    writer.log(step, loss=6.0 / step ** 0.5, lr=1e-3, grad_norm=1.0, tokens_per_s=900.0, tokens=128 * step,
               epoch=0, total_steps=40)

for step in range(1, 6):
    log(step)

def train():
    while not pathlib.Path("go").exists():  # the test says when: after it saw the first 5 steps
        time.sleep(0.1)
    for step in range(6, 41):
        time.sleep(0.25)
        log(step)
    writer.close()
    job.state = "SUCCEEDED\"""",
    "monitor = JobMonitor(job, refresh=0.5)\nmonitor",
    "threading.Thread(target=train, daemon=True).start()",
    "tensorboard_frame(JOB / 'tensorboard', height=500)",
]


def _progress_percent(page) -> float:
    width = page.eval_on_selector(".widget-hprogress .progress-bar", "el => el.style.width || '0%'")
    return float(width.rstrip("%") or 0)


def test_monitor_and_tensorboard_render_and_update(tmp_path, monkeypatch):
    """The job monitor's curve and progress bar advance in the browser while the job writes metrics,
    and TensorBoard, reached through jupyter-server-proxy, shows the loss scalar."""
    home = tmp_path / "home"
    write_notebook(tmp_path / "monitor.ipynb", MONITOR_NOTEBOOK)
    with jupyterlab(tmp_path, env={"BYZER_MAGIC_HOME": str(home)}) as lab, chromium() as browser:
        page = open_notebook(browser, lab, "monitor.ipynb")
        run_all_cells(page)
        plot = page.locator("svg.byzer-loss-plot").first
        plot.wait_for(state="visible", timeout=30_000)
        assert int(plot.get_attribute("data-points")) == 5 and _progress_percent(page) == 5 * 100 / 40
        (tmp_path / "go").touch()
        page.wait_for_function("() => +document.querySelector('svg.byzer-loss-plot').getAttribute('data-points') > 5",
                               timeout=60_000)

        page.wait_for_function("() => document.querySelector('svg.byzer-loss-plot')"
                               ".getAttribute('data-points') === '40'", timeout=120_000)
        page.get_by_text("SUCCEEDED", exact=True).first.wait_for(timeout=60_000)
        assert _progress_percent(page) == 100
        assert page.locator("svg.byzer-loss-plot polyline.smoothed").count() == 1

        frame = page.locator("iframe.byzer-tensorboard")
        frame.wait_for(state="attached", timeout=120_000)
        assert frame.get_attribute("src").startswith("/proxy/"), frame.get_attribute("src")
        frame.scroll_into_view_if_needed()
        board = page.frame_locator("iframe.byzer-tensorboard")
        board.get_by_text("train/loss").first.wait_for(timeout=120_000)
        page.wait_for_timeout(1500)  # let the charts draw before the picture
        screenshot(output_of(page, "JobMonitor(job"), "job-monitor")
        screenshot(frame, "tensorboard-frame")

    # The kernel was shut down with the server: its unkept TensorBoard went with it.
    from byzer_magic.runtime import tensorboard

    monkeypatch.setenv("BYZER_MAGIC_HOME", str(home))
    assert tensorboard.list_servers() == []
