"""Real-browser tests: JupyterLab on 127.0.0.1 started by the test, headless Debian Chromium through
Playwright. Screenshots go to test-artifacts/."""
from __future__ import annotations

import pytest

from tests.support.browser import (cell_outputs_text, chromium, jupyterlab, open_notebook, run_all_cells,
                                   screenshot, write_notebook)

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
