"""Real-browser tests: JupyterLab on 127.0.0.1 started by the test, headless Debian Chromium through
Playwright. Screenshots go to test-artifacts/."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import nbformat
import pytest

from tests.support.browser import (cell_outputs_text, chromium, jupyterlab, open_notebook, output_of,
                                   run_all_cells, screenshot, wait_all_cells_ran, write_notebook)
from tests.support.faults import freeze, thaw, worker_pids
from tests.support.notebooks import with_parameters

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
from byzer_magic.runtime.kernel.jobs import JobHandle
from byzer_magic.runtime.worker.metrics import MetricsWriter
from byzer_magic.runtime.spec import JobSection, JobSpec
from byzer_magic.widgets import JobMonitor, tensorboard_frame

class DemoJob(JobHandle):
    state = "RUNNING"
    def status(self):
        return self.state

JOB = pathlib.Path("demo-job").resolve()
JOB.mkdir()
JobFiles(JOB).write_json("job.json", JobSpec(job=JobSection(name="demo", submitted_at=time.strftime("%Y-%m-%d %H:%M:%S"))).to_json())
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


# ---- The monitoring notebook, with real training -------------------------------------------------------

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "monitoring.ipynb"
# 10-80 ms a step on 2 CPU workers: the stop (at the first checkpoint, step 20) lands mid-run, and the
# resumed part, held while the re-attached monitor is first looked at, takes seconds to watch.
STEPS = 600


def _cell(page, source: str):
    """The code cell whose source contains ``source_start`` (a ``Locator``); one line of it: the
    editor's lines are separate elements, whose text joins without a line break."""
    return page.locator(".jp-CodeCell").filter(
        has=page.locator(".jp-InputArea", has_text=source)).first


def _plot_points(cell) -> int:
    plot = cell.locator("svg.byzer-loss-plot")
    return int(plot.first.get_attribute("data-points") or 0) if plot.count() else -1


def _progress(cell) -> float:
    bar = cell.locator(".widget-hprogress .progress-bar")
    if not bar.count():
        return -1.0
    return float((bar.first.evaluate("el => el.style.width") or "0%").rstrip("%") or 0)


def _until(page, what: str, check, timeout: float, context=lambda: ""):
    """Poll ``check()`` until it returns a truthy value (returned), while the page lives."""
    started = time.time()
    while time.time() < started + timeout:
        value = check()
        if value:
            print(f"{what}: after {time.time() - started:.1f} s")
            return value
        page.wait_for_timeout(500)
    raise AssertionError(f"{what}: not within {timeout} s\n{context()}")


class HoldResumedWorkers(threading.Thread):
    """Freezes the workers of the job's first resumed attempt (``<name>-r1``) as soon as both have
    recorded themselves, and lets them go on at ``release()`` (or after ``timeout`` seconds)."""

    def __init__(self, job, workers: int = 2, timeout: float = 900):
        super().__init__(daemon=True)
        self.job, self.workers, self.timeout = job, workers, timeout
        self.held: list[int] = []
        self._released = threading.Event()
        self.start()

    def run(self) -> None:
        from byzer_magic.runtime.kernel.jobs import JobHandle

        deadline = time.time() + self.timeout
        while not self._released.is_set() and time.time() < deadline:
            attempt = JobHandle(self.job.name, self.job.job_dir)
            if attempt.submission_id.endswith("-r1") and len(pids := worker_pids(attempt)) == self.workers:
                freeze(pids.values())
                self.held = list(pids.values())
                break
            time.sleep(0.05)
        self._released.wait(max(0.0, deadline - time.time()))
        thaw(self.held)

    def release(self) -> None:
        self._released.set()
        self.join(timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_monitoring_notebook_trains_and_the_monitor_follows(ray_cluster, tmp_path, request):
    """notebooks/monitoring.ipynb (small sizes injected), run in JupyterLab: a real 2-worker job is
    submitted, watched, stopped, resumed and re-attached. The re-attached monitor's curve grows and its
    progress bar advances to the end, and TensorBoard in the output shows the loss scalar."""
    from byzer_magic.runtime import tensorboard
    from byzer_magic.runtime.kernel.jobs import get_job

    job_name = time.strftime("browser-demo-%Y%m%d-%H%M%S")
    notebook = with_parameters(nbformat.read(NOTEBOOK, as_version=4),
                               {"STEPS": STEPS, "MAX_LENGTH": 64, "CHECKPOINT_EVERY": 20, "JOB": job_name})
    nbformat.write(notebook, tmp_path / "monitoring.ipynb")
    # The lab's kernels inherit the test session's BYZER_MAGIC_HOME: they use its Ray head.
    env = {"BYZER_DEMO_DIR": str(tmp_path / "demo"), "BYZER_DEMO_TIMEOUT": "900"}
    with jupyterlab(tmp_path, env=env) as lab, chromium() as browser:
        page = open_notebook(browser, lab, "monitoring.ipynb", viewport=(1300, 1100))
        run_all_cells(page, wait=False)

        def outputs() -> str:
            return "\n----\n".join(cell_outputs_text(page))[-4000:] + "\n" + lab.log()[-2000:]

        # The detached run returns at once with its monitor; the notebook goes on meanwhile.
        submitted = _cell(page, "run command as LLM.``")
        _until(page, "the run cell's monitor", lambda: _plot_points(submitted) >= 0, 600, outputs)
        assert "Submitted job" in submitted.locator(".jp-Cell-outputArea").inner_text()

        holder = HoldResumedWorkers(get_job(job_name))
        request.addfinalizer(holder.release)  # a failing test must not leave the workers frozen
        attached = _cell(page, "%byzerllm attach $JOB")
        _until(page, "points in the attached monitor", lambda: _plot_points(attached) > 0, 600, outputs)
        _until(page, "the attached monitor's status STOPPED",
               lambda: "STOPPED" in attached.locator(".jp-Cell-outputArea").inner_text(), 600, outputs)
        stopped_at = _plot_points(attached)

        # The resumed attempt's workers are held (SIGSTOP) from the moment they exist until the
        # re-attached monitor has been looked at: on a fast machine as on a slow one, it is seen mid-run.
        reattached = _cell(page, "# A new notebook")
        held = _until(page, "the resumed attempt's workers", lambda: holder.held, 600, outputs)
        try:
            # Re-attached after the resume: the whole curve so far (from the checkpoint back), running.
            first = _until(page, "the re-attached monitor", lambda: _plot_points(reattached) > 0
                           and "RUNNING" in reattached.locator(".jp-Cell-outputArea").inner_text()
                           and (_plot_points(reattached), _progress(reattached)), 300, outputs)
            print(f"stopped at {stopped_at} points; re-attached with {first[0]} points, progress {first[1]}%; "
                  f"held {held}")
            assert min(stopped_at, 5) <= first[0] < STEPS, (first, stopped_at)
            screenshot(reattached.locator(".jp-Cell-outputArea"), "job-monitor-training-running")
        finally:
            holder.release()
        _until(page, "the re-attached curve growing", lambda: _plot_points(reattached) > first[0], 600, outputs)
        _until(page, "the re-attached monitor at the end", lambda: _plot_points(reattached) == STEPS
               and "SUCCEEDED" in reattached.locator(".jp-Cell-outputArea").inner_text(), 600, outputs)
        assert _progress(reattached) == 100 > first[1], (first, _progress(reattached))
        assert reattached.locator("svg.byzer-loss-plot polyline.smoothed").count() == 1

        frame = page.locator("iframe.byzer-tensorboard").first
        frame.wait_for(state="attached", timeout=120_000)
        assert frame.get_attribute("src").startswith("/proxy/"), frame.get_attribute("src")
        frame.scroll_into_view_if_needed()
        from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

        board = page.frame_locator("iframe.byzer-tensorboard").first
        try:
            # TensorBoard draws only the cards in view, and the eval group comes first: filter the tags
            # as a user would, so the train/loss card is the one in view.
            board.get_by_role("combobox", name="Filter tags (regex)").fill("^train/loss$", timeout=180_000)
            board.get_by_text("train/loss").filter(visible=True).first.wait_for(timeout=180_000)
        except PlaywrightTimeoutError:
            shown = board.locator("body").inner_text(timeout=10_000)
            screenshot(frame, "tensorboard-without-the-loss")
            raise AssertionError(f"TensorBoard's page shows no train/loss; it shows: {shown[:3000]!r}\n"
                                 f"{outputs()}") from None

        wait_all_cells_ran(page, timeout=600)  # the last cells: wait for the end, the result row
        texts = cell_outputs_text(page)
        assert any(f"{job_name}: SUCCEEDED" in text for text in texts), outputs()
        assert not any(bad in text for text in texts for bad in ("Error displaying widget", "Traceback",
                                                                 "UsageError")), outputs()
        reattached.scroll_into_view_if_needed()
        page.wait_for_timeout(1000)
        screenshot(reattached.locator(".jp-Cell-outputArea"), "job-monitor-training")
        page.wait_for_timeout(2000)  # let TensorBoard draw its charts before the picture
        screenshot(frame, "tensorboard-training")
        logdir = get_job(job_name).tensorboard_dir

    assert get_job(job_name).status() == "SUCCEEDED"
    # The kernel went with the server, and its TensorBoard (not kept) with it.
    assert tensorboard.find(logdir) is None
