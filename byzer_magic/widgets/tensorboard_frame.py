"""TensorBoard embedded in the notebook: start or reuse the server for a log folder, then show it in
an iframe whose URL works where the browser is (TensorBoard's ``notebook.py`` is the model).

The server listens on 127.0.0.1 of the machine that runs the kernel, which is rarely where the browser
runs, so the URL goes, in this order, through: the ``proxy_url`` argument (``ByzerMagic.
tensorboard_proxy_url``), ``$TENSORBOARD_PROXY_URL`` (TensorBoard's convention; ``%PORT%`` is replaced),
jupyter-server-proxy under the Jupyter server's base URL (``<base_url>proxy/<port>/``), and last
``http://127.0.0.1:<port>/`` (a browser on the same machine).
"""
from __future__ import annotations

import html
import importlib.util
import json
import os
import threading
import time
from pathlib import Path
from typing import Mapping

import ipywidgets as widgets

from byzer_magic.runtime import tensorboard
from byzer_magic.widgets.static import StaticFallback


def frame_url(port: int, proxy_url: str | None = None, *, environ: Mapping[str, str] | None = None,
              base_url: str | None = None, server_proxy: bool | None = None) -> str:
    """The URL for the iframe of the server on ``port`` (see the module's docstring for the order).
    ``base_url`` and ``server_proxy`` are found out when not given."""
    environ = os.environ if environ is None else environ
    proxy = proxy_url or environ.get("TENSORBOARD_PROXY_URL")
    if proxy:
        return proxy.replace("%PORT%", str(port))
    if server_proxy is None:
        server_proxy = importlib.util.find_spec("jupyter_server_proxy") is not None
    if base_url is None:
        base_url = jupyter_base_url(environ)
    if server_proxy and base_url is not None:
        # Absolute from the server's root: a relative src would resolve against the notebook's own
        # path (/lab/tree/...), not the server's base.
        return "/" + f"{base_url.strip('/')}/proxy/{port}/".lstrip("/")
    return f"http://127.0.0.1:{port}/"


def jupyter_base_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The base URL of the Jupyter server that started this kernel (``/`` by default,
    ``/user/<name>/`` on JupyterHub); None when no Jupyter server started it (nbclient, VS Code,
    a terminal IPython), where a ``/proxy/`` URL would lead nowhere."""
    environ = os.environ if environ is None else environ
    if environ.get("JUPYTERHUB_SERVICE_PREFIX"):
        return environ["JUPYTERHUB_SERVICE_PREFIX"]
    parent = environ.get("JPY_PARENT_PID")  # set by jupyter_client for the kernels it launches
    if not parent:
        return None
    for info in _running_servers():
        if str(info.get("pid")) == parent:
            return info.get("base_url") or "/"
    return None


def _running_servers() -> list[dict]:
    try:
        from jupyter_core.paths import jupyter_runtime_dir  # noqa: PLC0415
    except ImportError:
        return []
    servers = []
    for path in Path(jupyter_runtime_dir()).glob("jpserver-*.json"):
        try:
            servers.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return servers


class TensorBoardFrame(StaticFallback, widgets.VBox):
    """A message ("Launching TensorBoard…", then what happened) and the iframe once the server answers
    and has scalars to show. The server starts in a thread, so that the cell returns at once;
    ``wait()`` blocks until the frame is shown or the start failed (``background=False``: the
    constructor does)."""

    def __init__(self, logdir: str | os.PathLike, *, keep: bool = False, proxy_url: str | None = None,
                 height: int = 640, background: bool = True):
        self.logdir = str(logdir)
        self.keep = keep
        self.proxy_url = proxy_url
        self.height = height
        self.result: tensorboard.StartResult | None = None
        self.url: str | None = None
        self.message = widgets.HTML(f"Launching TensorBoard for <code>{html.escape(self.logdir)}</code>…")
        self.frame = widgets.HTML()
        self._done = threading.Event()
        super().__init__([self.message, self.frame])
        if background:
            threading.Thread(target=self._start, daemon=True, name="byzer-tensorboard").start()
        else:
            self._start()

    def _when_scalars(self, info: tensorboard.ServerInfo, link: str) -> None:
        """Return once the server has scalars to show (a job not yet running has written none); the
        frame is shown only then, since TensorBoard's page does not notice data that comes later."""
        delay = 0.5
        while not tensorboard.has_scalars(info.port):
            if tensorboard.find(info.logdir) is None:
                raise RuntimeError(f"the TensorBoard server for {info.logdir} has stopped")
            self.message.value = (f"{html.escape(self.result.message)} · waiting for the job's first "
                                  f"TensorBoard events · {link}")
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)
        self.message.value = f"{html.escape(self.result.message)} · {link}"

    def wait(self, timeout: float | None = None) -> tensorboard.StartResult | None:
        """The start's result, once the frame is shown or the start failed (None if still starting)."""
        self._done.wait(timeout)
        return self.result

    def _start(self) -> None:
        try:
            self.result = tensorboard.start(self.logdir, keep=self.keep)
            if isinstance(self.result, (tensorboard.Launched, tensorboard.Reused)):
                self.url = frame_url(self.result.info.port, self.proxy_url)
                link = f'<a href="{html.escape(self.url)}" target="_blank">open in a new tab</a>'
                self.message.value = f"{html.escape(self.result.message)} · {link}"
                self._when_scalars(self.result.info, link)
                self.frame.value = (f'<iframe class="byzer-tensorboard" src="{html.escape(self.url)}" '
                                    f'width="100%" height="{self.height}" frameborder="0"></iframe>')
            else:
                self.message.value = (f'<pre style="color:#dc3545; white-space:pre-wrap">'
                                      f"{html.escape(self.result.message)}</pre>")
        except Exception as err:  # shown in the output: a thread's exception would go nowhere
            self.message.value = f'<pre style="color:#dc3545">TensorBoard: {html.escape(repr(err))}</pre>'
        finally:
            self._done.set()
            self.refresh_static()

    def static_html(self) -> str:
        """Without a kernel the server is gone: what it served and how to see it again."""
        return (f"<div class='byzer-tensorboard-static byzer-static'>{self.message.value}<br>"
                f"<span style='color:#888'>TensorBoard for <code>{html.escape(self.logdir)}</code> is served "
                "by the notebook's kernel; run <code>%byzerllm tensorboard NAME</code> (or <code>tensorboard "
                f"--logdir {html.escape(self.logdir)}</code>) to see it again.</span></div>")

    def static_text(self) -> str:
        return f"TensorBoard for {self.logdir}" + (f" at {self.url}" if self.url else "")


def tensorboard_frame(logdir: str | os.PathLike, *, keep: bool = False, proxy_url: str | None = None,
                      height: int = 640, background: bool = True) -> TensorBoardFrame:
    """TensorBoard for ``logdir`` in the output (``keep=True``: the server outlives the kernel)."""
    return TensorBoardFrame(logdir, keep=keep, proxy_url=proxy_url, height=height, background=background)
