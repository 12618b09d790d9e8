"""Real-browser test helpers: a JupyterLab server on 127.0.0.1 (a free port, a token, a root folder of
the test's choosing, its own runtime/settings folders) and headless Debian Chromium driven by
Playwright (``executable_path``: no browser is downloaded).

    with jupyterlab(tmp_path) as lab, chromium() as browser:
        page = open_notebook(browser, lab, "demo.ipynb")
        run_all_cells(page)
        page.wait_for_selector(".widget-slider")
        screenshot(page, "demo")
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from byzer_magic.runtime.network import free_ports

CHROMIUM = os.environ.get("BYZER_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@dataclass
class JupyterLab:
    """A running JupyterLab; ``url`` ends with ``/``."""
    url: str
    token: str
    root_dir: Path
    process: subprocess.Popen
    state_dir: Path
    log_path: Path
    env: dict = field(default_factory=dict)

    def page_url(self, path: str) -> str:
        return f"{self.url}lab/tree/{path}?token={self.token}"

    def api(self, path: str, method: str = "GET") -> dict | None:
        request = urllib.request.Request(f"{self.url}api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20) -> None:
        """Shut the server (and its kernels) down; kill it if it does not go."""
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.api("shutdown", method="POST")
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(5)
        shutil.rmtree(self.state_dir, ignore_errors=True)


def start_jupyterlab(root_dir: str | os.PathLike, *, timeout: float = 90,
                     env: dict[str, str] | None = None) -> JupyterLab:
    """Start JupyterLab serving ``root_dir`` on 127.0.0.1 and wait until its API answers.

    Its runtime, settings and workspace folders are private, so a user's JupyterLab state never leaks
    into a test; the app is exposed as ``window.jupyterapp`` so that tests can run its commands.
    ``env`` is added to the server's environment (its kernels inherit it)."""
    port, token = free_ports(1)[0], secrets.token_hex(16)
    state = Path(tempfile.mkdtemp(prefix="bm-lab-"))
    settings = state / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # No "would you like news?" toast over the page (and no network access attempted).
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # Every cell rendered, also off screen: JupyterLab's default skips rendering those (their text reads
    # as empty) and a long notebook's outputs would depend on where the page is scrolled.
    notebook_settings = state / "settings" / "@jupyterlab" / "notebook-extension"
    notebook_settings.mkdir(parents=True)
    (notebook_settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    full_env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
                "JUPYTER_CONFIG_DIR": str(state / "config"), **(env or {})}
    full_env.pop("JUPYTERHUB_SERVICE_PREFIX", None)
    log_path = state / "jupyterlab.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={Path(root_dir).resolve()}", "--LabApp.expose_app_in_browser=True",
               f"--LabApp.user_settings_dir={state / 'settings'}", f"--LabApp.workspaces_dir={state / 'workspaces'}",
               "--LabApp.extension_manager=readonly"]  # it would query PyPI otherwise
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
        command.append("--allow-root")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=full_env, cwd=root_dir, start_new_session=True)
    lab = JupyterLab(f"http://127.0.0.1:{port}/", token, Path(root_dir), process, state, log_path, full_env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {process.returncode}:\n{lab.log()[-3000:]}")
        with contextlib.suppress(OSError, ValueError):
            if lab.api("status") is not None:
                return lab
        time.sleep(0.3)
    lab.stop()
    raise TimeoutError(f"JupyterLab did not answer within {timeout} s:\n{lab.log()[-3000:]}")


@contextlib.contextmanager
def jupyterlab(root_dir: str | os.PathLike, **kwargs):
    lab = start_jupyterlab(root_dir, **kwargs)
    try:
        yield lab
    finally:
        with contextlib.suppress(OSError):  # kept beside the test's files: its kernels' stderr is in it
            shutil.copyfile(lab.log_path, Path(root_dir) / "jupyterlab.log")
        lab.stop()


@contextlib.contextmanager
def chromium(*, headless: bool = True):
    """A Playwright ``Browser`` on Debian's Chromium."""
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=headless)
        try:
            yield browser
        finally:
            browser.close()


def write_notebook(path: str | os.PathLike, cells: list[str]) -> Path:
    """A notebook of code cells, with the Python 3 kernel named (no kernel-choice dialog)."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = Path(path)
    nbformat.write(notebook, path)
    return path


def open_notebook(browser, lab: JupyterLab, path: str, *, timeout: float = 90, viewport=(1400, 1000)):
    """A new page with the notebook open and its kernel idle."""
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    page.goto(lab.page_url(path))
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=timeout * 1000)
    wait_kernel_idle(page, timeout=timeout)
    return page


def wait_kernel_idle(page, *, timeout: float = 120) -> None:
    """Until the current notebook's kernel exists and is idle (after running cells: until they ran)."""
    page.wait_for_function(
        """() => {
            const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
            const kernel = panel && panel.sessionContext && panel.sessionContext.session
                           && panel.sessionContext.session.kernel;
            return !!kernel && kernel.status === 'idle' && !panel.sessionContext.hasNoKernel;
        }""", timeout=timeout * 1000, polling=200)


def run_all_cells(page, *, wait: bool = True, timeout: float = 120) -> None:
    """Run every cell of the current notebook (JupyterLab's own command), then wait until the kernel
    is idle and every cell has its execution count."""
    # Not awaited in the page: the command's promise settles only when the last cell has run.
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    if wait:
        wait_all_cells_ran(page, timeout=timeout)


def wait_all_cells_ran(page, *, timeout: float = 120) -> None:
    """Until the kernel is idle and every code cell has its execution count (the kernel flickers to
    idle between queued cells: the counts say when the last one has run)."""
    page.wait_for_function(
        """() => {
            const panel = window.jupyterapp.shell.currentWidget;
            const cells = panel.content.widgets.filter(c => c.model.type === 'code');
            return panel.sessionContext.session.kernel.status === 'idle'
                   && cells.every(c => c.model.executionCount !== null);
        }""", timeout=timeout * 1000, polling=250)


def cell_outputs_text(page) -> list[str]:
    """The text of each code cell's output area, in order (for messages when a check fails)."""
    return page.eval_on_selector_all(".jp-CodeCell .jp-Cell-outputArea", "nodes => nodes.map(n => n.innerText)")


def screenshot(target, name: str) -> Path:
    """A screenshot of a page or of one element (a Playwright ``Locator``) at
    ``test-artifacts/<name>.png`` (kept by CI as an artifact)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    target.screenshot(path=str(path))
    return path


def output_of(page, text: str):
    """The output area of the code cell whose source contains ``text`` (a ``Locator``)."""
    cell = page.locator(".jp-CodeCell").filter(has=page.locator(".jp-InputArea", has_text=text)).first
    return cell.locator(".jp-Cell-outputArea")
