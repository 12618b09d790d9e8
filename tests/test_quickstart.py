"""The README's main job, notebooks/quickstart.ipynb, executed in a real kernel (nbclient) on the
test session's embedded Ray head: the user guide's cells, a detached job found and finished, and the
exported model loaded with transformers."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow
NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_trains_and_exports(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("BYZER_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.setenv("BYZER_DEMO_STEPS", "12")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    texts = "\n".join(
        "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells for out in cell.get("outputs", []))
    assert "bf16 is not used on the CPU" in texts          # the guide's config, adapted and said so
    assert "CPU worker(s) with gloo" in texts
    assert "status: SUCCEEDED" in texts
    assert "SUCCEEDED" in texts and "12" in texts          # the outputTable row
    jobs = list((tmp_path / "demo" / "jobs").iterdir())
    assert len(jobs) == 1 and (jobs[0] / "model" / "model.safetensors").exists()
