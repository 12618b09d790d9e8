"""The README's main job, notebooks/quickstart.ipynb, executed once in a real kernel (nbclient) on the
test session's embedded Ray head: the user guide's cells, a detached job found and finished, the
exported model loaded with transformers. The same run then checks what the saved notebook holds: cells
free of Ray's and DeepSpeed's own chatter, the monitor's last state as a picture that nbconvert's HTML
shows in a browser without a kernel, and every checkpoint of the job exported to a loadable folder."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pytest

from tests.support.notebooks import execute_notebook

pytestmark = pytest.mark.slow
NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "quickstart.ipynb"
STEPS, EVERY = 12, 5  # checkpoints at steps 5, 10 and 12 (the end)
# What Ray and DeepSpeed say about themselves in a kernel; it belongs in Python logging, not in a cell.
CHATTER = ("worker processes have been started", "(raylet)", "[WARNING]", "Setting accelerator",
           "Setting ds_accelerator", "Gathering sharded weights", "Loading checkpoint shards")


@pytest.fixture(scope="module")
def quickstart(ray_cluster, tmp_path_factory):
    """The executed notebook (saved as JupyterLab saves: no widget state) and its job's folder."""
    root = tmp_path_factory.mktemp("quickstart")
    env = {"BYZER_DEMO_DIR": str(root / "demo"), "BYZER_DEMO_STEPS": str(STEPS),
           "BYZER_DEMO_CHECKPOINT_EVERY": str(EVERY)}
    notebook = execute_notebook(NOTEBOOK, env=env, cwd=root, timeout=1200, save_to=root / "quickstart.ipynb",
                                store_widget_state=False)
    jobs = [p for p in (root / "demo" / "jobs").iterdir() if p.is_dir()]  # not the hidden .lock files
    assert len(jobs) == 1, jobs
    return {"notebook": notebook, "path": root / "quickstart.ipynb", "job_dir": jobs[0], "root": root}


def _outputs(notebook):
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            yield out


def test_quickstart_notebook_trains_and_exports(quickstart):
    texts = "\n".join("".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
                      for out in _outputs(quickstart["notebook"]))
    assert "bf16 is not used on the CPU" in texts          # the guide's config, adapted and said so
    assert "CPU worker(s) with gloo" in texts
    assert "status: SUCCEEDED" in texts
    assert "SUCCEEDED" in texts and str(STEPS) in texts    # the outputTable row
    assert (quickstart["job_dir"] / "model" / "model.safetensors").exists()
    assert f"checkpoint exported to {quickstart['job_dir'] / 'exports' / f'step-{EVERY}'}" in texts


def test_quickstart_cells_are_quiet(quickstart):
    """No cell shows Ray's worker-pool warnings or DeepSpeed's accelerator notice (magics/quiet.py)."""
    said = [(i, "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", "")))
            for i, cell in enumerate(quickstart["notebook"].cells) for out in cell.get("outputs", [])]
    noisy = [(i, text[:300]) for i, text in said if any(word in text for word in CHATTER)]
    assert not noisy, noisy


def test_every_checkpoint_exports_to_a_loadable_folder(quickstart, shell, tmp_path):
    """`%byzerllm export NAME --step N` on the finished job: each checkpoint (ZeRO-3 here) becomes a
    folder that from_pretrained loads; the last one is the model the job exported itself, an earlier
    one is not; a step without a checkpoint is refused naming those there are."""
    import torch
    from IPython.core.error import UsageError
    from transformers import AutoModelForCausalLM

    job_dir = quickstart["job_dir"]
    final = AutoModelForCausalLM.from_pretrained(job_dir / "model")
    last = shell.run_line_magic("byzerllm", f"export {job_dir.name} --to {tmp_path / 'last'}")
    early = shell.run_line_magic("byzerllm", f"export {job_dir.name} --step 10 --to {tmp_path / 'ten'}")
    assert json.loads((Path(last) / "byzer_export.json").read_text())["step"] == STEPS
    last_model, ten_model = (AutoModelForCausalLM.from_pretrained(p) for p in (last, early))
    final_weights = final.state_dict()
    for key, value in last_model.state_dict().items():
        torch.testing.assert_close(value, final_weights[key])
    assert not torch.equal(ten_model.state_dict()["model.norm.weight"], final_weights["model.norm.weight"])

    evaluated = json.loads((job_dir / "final_eval.json").read_text())  # the workers' loss of the final weights
    batch = torch.from_numpy(np.load(job_dir / evaluated["batch"]))
    with torch.no_grad():
        assert last_model(input_ids=batch, labels=batch).loss.item() == pytest.approx(evaluated["loss"], abs=1e-4)
    assert (Path(last) / "tokenizer.model").exists() or (Path(last) / "tokenizer.json").exists()
    with pytest.raises(UsageError, match=rf"no checkpoint of step 7; its checkpoints: {EVERY}, 10, {STEPS}"):
        shell.run_line_magic("byzerllm", f"export {job_dir.name} --step 7")


@pytest.mark.browser
def test_saved_quickstart_shows_the_curve_without_a_kernel(quickstart):
    """The saved notebook, converted by nbconvert to HTML and opened in headless Chromium with no kernel
    and no network: the monitor's output is its last state, SUCCEEDED with the whole loss curve."""
    from nbconvert import HTMLExporter

    from tests.support.browser import chromium, screenshot

    saved = nbformat.read(quickstart["path"], as_version=4)
    assert "widgets" not in saved.metadata
    body, _ = HTMLExporter().from_notebook_node(saved)
    page_path = quickstart["root"] / "quickstart.html"
    page_path.write_text(body)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        # Offline, as a viewer may be: the page's CDN scripts (require.js, MathJax) fail at once.
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                   else route.abort())
        page.goto(page_path.as_uri(), wait_until="domcontentloaded")
        monitor = page.locator(".byzer-job-monitor").first
        monitor.wait_for(state="visible", timeout=30_000)
        assert monitor.get_attribute("data-status") == "SUCCEEDED"
        plot = monitor.locator("svg.byzer-loss-plot")
        assert plot.get_attribute("data-points") == str(STEPS) and plot.is_visible()
        assert plot.locator("polyline.smoothed").count() == 1 and plot.bounding_box()["height"] > 100
        assert "width:100.0%" in monitor.locator(".byzer-progress").get_attribute("style")
        screenshot(monitor, "quickstart-saved-monitor")
