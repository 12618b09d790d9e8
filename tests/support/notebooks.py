"""Real kernels for tests: execute a notebook headless with nbclient (parameters injected, the kernel's
environment extended), or drive one kernel cell by cell and kill it when the test says.

    executed = execute_notebook("notebooks/monitoring.ipynb", env={"BYZER_DEMO_DIR": str(tmp_path)},
                                parameters={"STEPS": 20}, save_to=tmp_path / "executed.ipynb")
    assert "SUCCEEDED" in "".join(output_texts(executed))

    with running_kernel() as kernel:
        kernel.run("%load_ext byzer_magic")
        print(kernel.run("%byzerllm jobs"))
        kernel.kill()  # as the OOM killer would: no atexit, no goodbye

Kernels inherit this process's environment (tests/conftest.py has set ``BYZER_MAGIC_HOME`` there), so
they talk to the test session's embedded Ray head.
"""
from __future__ import annotations

import contextlib
import copy
import os
import queue
import re
import signal
import time
from pathlib import Path

import nbformat

PARAMETERS_TAG = "parameters"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
INJECTED_TAG = "injected-parameters"


class CellError(AssertionError):
    """A cell raised: the error's name, value and traceback, with the code that ran."""


def with_parameters(notebook, parameters: dict) -> nbformat.NotebookNode:
    """A copy of ``notebook`` with a cell assigning ``parameters`` (Python literals) right after the
    cell tagged ``parameters`` (papermill's convention), or first if none is tagged."""
    notebook = copy.deepcopy(notebook)
    if not parameters:
        return notebook
    source = "# Parameters injected by the test\n" + "".join(f"{k} = {v!r}\n" for k, v in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED_TAG]})
    at = next((i + 1 for i, c in enumerate(notebook.cells) if PARAMETERS_TAG in c.metadata.get("tags", [])), 0)
    notebook.cells.insert(at, cell)
    return notebook


def execute_notebook(path: str | os.PathLike, *, env: dict[str, str] | None = None,
                     parameters: dict | None = None, cwd: str | os.PathLike | None = None,
                     timeout: float = 600, save_to: str | os.PathLike | None = None,
                     kernel_name: str = "python3", store_widget_state: bool = True) -> nbformat.NotebookNode:
    """Run every cell of the notebook at ``path`` in a new kernel and return the executed notebook.

    ``env`` is added to the kernel's environment; ``parameters`` are injected (see ``with_parameters``);
    ``timeout`` is per cell; the executed copy is written to ``save_to`` also when a cell fails. A
    failing cell raises ``CellError`` naming the cell and the last outputs. ``store_widget_state=False``
    saves it as JupyterLab does by default: without the widgets' state in its metadata, so that a viewer
    without a kernel (nbconvert's HTML) shows each widget's static picture."""
    from nbclient import NotebookClient  # noqa: PLC0415
    from nbclient.exceptions import CellExecutionError  # noqa: PLC0415

    notebook = with_parameters(nbformat.read(path, as_version=4), parameters or {})
    cwd = Path(cwd or Path(path).parent).resolve()
    client = NotebookClient(notebook, timeout=timeout, kernel_name=kernel_name, store_widget_state=store_widget_state,
                            resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute(env={**os.environ, **(env or {})}, cwd=str(cwd))
    except CellExecutionError as err:
        raise CellError(_ANSI.sub("", f"{path}: {err}")[-6000:]) from None
    finally:
        if save_to is not None:
            nbformat.write(notebook, save_to)
    return notebook


def output_texts(notebook) -> list[str]:
    """Each code cell's text outputs (streams, text/plain results, errors), joined per cell."""
    texts = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        parts = []
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                parts.append(output.text)
            elif output.output_type in ("execute_result", "display_data"):
                parts.append(output.get("data", {}).get("text/plain", ""))
            elif output.output_type == "error":
                parts.append(f"{output.ename}: {output.evalue}")
        texts.append("\n".join(parts))
    return texts


class Kernel:
    """One real IPython kernel (jupyter_client), run cell by cell."""

    def __init__(self, *, env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None,
                 startup_timeout: float = 120):
        from jupyter_client.manager import KernelManager  # noqa: PLC0415

        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(env={**os.environ, **(env or {})}, cwd=str(cwd or os.getcwd()))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=startup_timeout)

    @property
    def pid(self) -> int:
        return self.manager.provisioner.pid

    def run(self, code: str, *, timeout: float = 300) -> str:
        """Run ``code`` as a cell; its printed text and its value's text/plain. A cell that raises
        fails with ``CellError``."""
        outputs: list[str] = []
        error: list[str] = []

        def on_output(message) -> None:
            kind, content = message["header"]["msg_type"], message["content"]
            if kind == "stream":
                outputs.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                outputs.append(content["data"].get("text/plain", "") + "\n")
            elif kind == "error":
                error.append("\n".join(content["traceback"]))

        try:
            reply = self.client.execute_interactive(code, timeout=timeout, output_hook=on_output,
                                                    allow_stdin=False)
        except (TimeoutError, queue.Empty):
            raise CellError(f"cell did not finish in {timeout} s:\n{code}\noutput so far:\n{''.join(outputs)}")
        if reply["content"]["status"] != "ok":
            raise CellError(_ANSI.sub("", f"cell failed:\n{code}\n{''.join(outputs)}\n"
                                          f"{''.join(error) or reply['content']}"))
        return "".join(outputs)

    def kill(self) -> None:
        """Kill the kernel process at once (SIGKILL): no atexit handler, no shutdown message."""
        self.client.stop_channels()
        self.manager.signal_kernel(signal.SIGKILL)
        deadline = time.time() + 30
        while self.manager.is_alive() and time.time() < deadline:
            time.sleep(0.1)
        self.manager.cleanup_resources()

    def shutdown(self) -> None:
        if self.manager.is_alive():
            self.client.stop_channels()
            self.manager.shutdown_kernel(now=False)


@contextlib.contextmanager
def running_kernel(**kwargs):
    """A ``Kernel``, shut down at the end unless the test killed it."""
    kernel = Kernel(**kwargs)
    try:
        yield kernel
    finally:
        with contextlib.suppress(Exception):
            kernel.shutdown()
