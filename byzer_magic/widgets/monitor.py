"""``JobMonitor``: a job's status, progress, speed and live loss curve, with its paths, logs,
TensorBoard and a Stop button.

Everything it shows comes from the job API (``JobHandle``): the curve from the job folder's metrics,
so a monitor created later, even in another kernel, shows the whole run so far. A daemon thread
polls while the job runs; the kernel stays free for other cells. Its output also carries a static
picture of the same (``widgets/static.py``), updated when the status changes, so that the saved
notebook shows how the run ended: at once when a wait in this kernel sees the end
(runtime/kernel/job_watchers.py), since the notebook may be saved right after that cell.
"""
from __future__ import annotations

import html
import threading
import time

import ipywidgets as widgets

from byzer_magic.runtime.kernel import job_watchers
from byzer_magic.runtime.kernel.jobs import TERMINAL, JobHandle
from byzer_magic.widgets.loss_plot import LossPlot
from byzer_magic.widgets.static import StaticFallback

_COLORS = {"PENDING": "#6c757d", "RUNNING": "#0d6efd", "SUCCEEDED": "#198754", "FAILED": "#dc3545",
           "STOPPED": "#fd7e14", "LOST": "#6c757d"}
_BAR = {"RUNNING": "info", "SUCCEEDED": "success", "FAILED": "danger", "STOPPED": "warning", "LOST": "warning"}
_CONFIRM_SECONDS = 5  # a second click within this time stops the job: one stray click must not end a week


class JobMonitor(StaticFallback, widgets.VBox):
    """Watch one job. ``refresh`` is the polling interval in seconds; ``proxy_url`` is passed to the
    TensorBoard frame (see ``tensorboard_frame``)."""

    def __init__(self, handle: JobHandle, refresh: float = 2.0, *, proxy_url: str | None = None,
                 start: bool = True):
        self.handle = handle
        self.refresh = refresh
        self.proxy_url = proxy_url
        self.status: str | None = None
        self.plot_data: list[tuple[int, float]] = []
        self.error: str | None = None
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._confirm_until = 0.0
        self._thread: threading.Thread | None = None

        self.title = widgets.HTML(f"<b>{html.escape(handle.name)}</b>")
        self.status_label = widgets.Label(layout=widgets.Layout(margin="0 0 0 12px"))
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="steps",
                                            layout=widgets.Layout(width="420px"))
        self.progress_text = widgets.Label()
        self.speed = widgets.Label()
        self.plot = LossPlot()
        self.paths = widgets.HTML(_paths_html(handle))
        self.stop_button = widgets.Button(description="Stop", icon="stop", button_style="danger",
                                          tooltip="stop the job and its workers; checkpoints stay")
        self.logs_button = widgets.ToggleButton(description="Logs", icon="align-left", value=False)
        self.tensorboard_button = widgets.Button(description="TensorBoard", icon="line-chart")
        self.logs = widgets.Textarea(layout=widgets.Layout(width="100%", height="260px", display="none"))
        self.tensorboard_box = widgets.VBox()
        self.message = widgets.HTML()

        self.stop_button.on_click(self._on_stop)
        self.logs_button.observe(self._on_logs, "value")
        self.tensorboard_button.on_click(self._on_tensorboard)
        super().__init__([
            widgets.HBox([self.title, self.status_label]),
            widgets.HBox([self.progress, self.progress_text]),
            self.speed, self.plot, self.paths,
            widgets.HBox([self.stop_button, self.logs_button, self.tensorboard_button]),
            self.message, self.logs, self.tensorboard_box])
        self.refresh_now()
        job_watchers.on_end(handle.job_dir, self._job_ended)
        if start and self.status not in TERMINAL:
            self._thread = threading.Thread(target=self._poll, name=f"byzer-monitor-{handle.name}", daemon=True)
            self._thread.start()

    # -- updating -------------------------------------------------------------------------------------

    def refresh_now(self) -> None:
        """Read the job's status and metrics once and update every widget (what the thread does)."""
        with self._lock:
            status = self.handle.status()
            metrics = self.handle.metrics()
            steps = [int(s) for s in metrics["step"]] if len(metrics) else []
            losses = [float(v) for v in metrics["loss"]] if len(metrics) else []
            points = list(zip(steps, losses))
            held_out = ([(int(r.step), float(r.eval_loss)) for r in metrics.itertuples() if r.eval_loss == r.eval_loss]
                        if "eval_loss" in metrics else [])
            self.plot.set_points(points, held_out)
            self._show_status(status)
            self._show_progress(status, metrics)
            if self.logs_button.value:
                self._load_logs()
            changed = status != self.status
            self.status, self.plot_data = status, points  # last: readers see a finished update
        if changed:
            self.refresh_static()

    def _show_status(self, status: str) -> None:
        self.status_label.value = status
        self.status_label.style.text_color = _COLORS.get(status, "black")
        self.status_label.style.font_weight = "bold"
        if status in TERMINAL:
            self.stop_button.disabled = True
            self.stop_button.description = "Stop"

    def _show_progress(self, status: str, metrics) -> None:
        step = int(metrics["step"].iloc[-1]) if len(metrics) else 0
        total = self.handle.total_steps
        if not total and len(metrics) and "total_steps" in metrics:
            total = int(metrics["total_steps"].iloc[-1])
        self.progress.max = max(total or step, 1)
        self.progress.value = min(step, self.progress.max)
        self.progress.bar_style = _BAR.get(status, "")

        started = _started(self.handle, metrics)
        times = metrics["time"].tolist() if len(metrics) else []
        now = times[-1] if status in TERMINAL and times else time.time()
        parts = [f"{step} / {total or '?'}"]
        if started:
            parts.append(f"elapsed {_duration(now - started)}")
        eta = _eta(metrics, total) if status == "RUNNING" else None
        if eta is not None:
            parts.append(f"ETA {_duration(eta)}")
        self.progress_text.value = " · ".join(parts)

        if len(metrics):
            last = metrics.iloc[-1]
            speed = [f"loss {float(last['loss']):.4g}"]
            if "tokens_per_s" in last and last["tokens_per_s"] == last["tokens_per_s"]:
                speed.insert(0, f"{float(last['tokens_per_s']):,.0f} tokens/s")
            if "eval_loss" in metrics and metrics["eval_loss"].notna().any():
                speed.append(f"held-out loss {float(metrics['eval_loss'].dropna().iloc[-1]):.4g}")
            if "tokens" in last and last["tokens"] == last["tokens"]:
                speed.append(_tokens_seen(int(last["tokens"]), self.handle.layout))
            if "epoch" in last and last["epoch"] == last["epoch"]:
                speed.append(f"epoch {int(last['epoch'])}")
            self.speed.value = " · ".join(speed)
        else:
            self.speed.value = "no step logged yet"

    def _poll(self) -> None:
        interval = self.refresh
        while not self._closed.wait(interval):
            began = time.time()
            try:
                self.refresh_now()
                self.error = None
            except Exception as err:  # a half-written file, Ray briefly unreachable: try again next time
                self.error = f"{type(err).__name__}: {err}"
                self.message.value = f'<span style="color:#dc3545">{html.escape(self.error)}</span>'
            if self.status in TERMINAL:
                return
            # Reading a long run's metrics takes time: never spend more than a fifth of it polling.
            interval = max(self.refresh, 5 * (time.time() - began))

    def _job_ended(self, _status: str) -> None:
        """A wait in this kernel saw the job end: show it now, not at the polling thread's next turn (the
        cell that waited may be the notebook's last before it is saved)."""
        if not self._closed.is_set() and self.status not in TERMINAL:
            self.refresh_now()

    @property
    def polling(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop polling and close the widgets."""
        self._closed.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.plot.close()
        super().close()

    # -- without a kernel ---------------------------------------------------------------------------------

    def static_html(self) -> str:
        """The monitor as plain HTML: title, status, progress, speed, the curve and the paths."""
        status = self.status_label.value or "?"
        share = 100 * self.progress.value / max(self.progress.max, 1)
        bar = _COLORS.get(status, "#0d6efd") if status != "RUNNING" else "#0dcaf0"
        return (f"<div class='byzer-job-monitor byzer-static' data-status='{html.escape(status)}' "
                "style='font-family:sans-serif;font-size:13px'>"
                f"<div><b>{html.escape(self.handle.name)}</b> <span style='margin-left:12px;font-weight:bold;"
                f"color:{_COLORS.get(status, 'black')}'>{html.escape(status)}</span></div>"
                "<div style='margin:4px 0'><span style='display:inline-block;vertical-align:middle;width:420px;"
                "height:12px;background:#e9ecef;border-radius:3px;overflow:hidden'><span class='byzer-progress' "
                f"style='display:block;height:100%;width:{share:.1f}%;background:{bar}'></span></span> "
                f"<span>{html.escape(self.progress_text.value)}</span></div>"
                f"<div>{html.escape(self.speed.value)}</div>{self.plot.static_html()}{self.paths.value}"
                f"<div style='color:#888;font-size:11px'>as of {time.strftime('%Y-%m-%d %H:%M:%S')}; "
                f"live in a notebook: <code>%byzerllm attach {html.escape(self.handle.name)}</code></div></div>")

    def static_text(self) -> str:
        parts = [f"{self.handle.name}: {self.status_label.value or '?'}", self.progress_text.value]
        if self.plot_data:
            parts.append(self.speed.value)
        return f"JobMonitor({' · '.join(p for p in parts if p)})"

    # -- buttons ----------------------------------------------------------------------------------------

    def _on_stop(self, _button=None) -> None:
        if time.time() > self._confirm_until:
            self._confirm_until = time.time() + _CONFIRM_SECONDS
            self.stop_button.description = "Click again to stop"
            return
        self._confirm_until = 0.0
        self.stop_button.disabled = True
        self.stop_button.description = "Stopping…"
        self.message.value = f"Stopping {html.escape(self.handle.name)}; checkpoints stay."
        threading.Thread(target=self._stop, daemon=True).start()

    def _stop(self) -> None:
        try:
            status = self.handle.stop()
            self.message.value = f"{html.escape(self.handle.name)}: {status}"
        except Exception as err:
            self.message.value = f'<span style="color:#dc3545">stop failed: {html.escape(str(err))}</span>'
            self.stop_button.disabled = False
        self.stop_button.description = "Stop"
        self.refresh_now()

    def _on_logs(self, change) -> None:
        self.logs.layout.display = "" if change["new"] else "none"
        if change["new"]:
            threading.Thread(target=self._load_logs, daemon=True).start()  # Ray's log API can be slow

    def _load_logs(self) -> None:
        try:
            self.logs.value = self.handle.logs(tail=200) or "(no log lines yet)"
        except Exception as err:
            self.logs.value = f"could not read the logs: {err}"

    def _on_tensorboard(self, _button=None) -> None:
        from byzer_magic.widgets.tensorboard_frame import tensorboard_frame  # noqa: PLC0415

        if not self.tensorboard_box.children:
            self.tensorboard_box.children = [tensorboard_frame(self.handle.tensorboard_dir,
                                                               proxy_url=self.proxy_url)]


def _tokens_seen(tokens: int, layout) -> str:
    """``N tokens seen of M (x%)``: M is the training split times the epochs (plan.json)."""
    planned = layout.corpus.train_tokens * (layout.total_steps // max(layout.steps_per_epoch, 1)) if layout else 0
    return f"{tokens:,} tokens seen of {planned:,} ({tokens / planned:.1%})" if planned else f"{tokens:,} tokens seen"


def _paths_html(handle: JobHandle) -> str:
    rows = [("job folder", handle.job_dir), ("checkpoints", handle.checkpoint_dir), ("model", handle.model_dir),
            ("TensorBoard logs", handle.tensorboard_dir), ("metrics", handle.files.metrics_file)]
    # Aligned here: a viewer's own table style (nbconvert's right-aligns cells) must not move the paths.
    cells = "".join(f"<tr><td style='padding-right:8px;color:#555;text-align:left'>{name}</td>"
                    f"<td style='text-align:left'><code>{html.escape(str(path))}</code></td></tr>"
                    for name, path in rows)
    return f"<table class='byzer-job-paths' style='font-size:12px'>{cells}</table>"


def _started(handle: JobHandle, metrics) -> float | None:
    submitted = handle.spec.job.submitted_at if handle.spec else None
    if submitted:
        try:
            return time.mktime(time.strptime(submitted, "%Y-%m-%d %H:%M:%S"))
        except (TypeError, ValueError):
            pass
    return float(metrics["time"].iloc[0]) if len(metrics) else None


def _eta(metrics, total: int | None) -> float | None:
    """Seconds left, at the pace of the last (up to) 50 logged steps."""
    if not total or len(metrics) < 2:
        return None
    recent = metrics.tail(50)
    steps = float(recent["step"].iloc[-1] - recent["step"].iloc[0])
    seconds = float(recent["time"].iloc[-1] - recent["time"].iloc[0])
    if steps <= 0 or seconds <= 0:
        return None
    return max(total - float(recent["step"].iloc[-1]), 0) * seconds / steps


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    days, seconds = divmod(seconds, 86400)
    text = f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return f"{days}d {text}" if days else text
