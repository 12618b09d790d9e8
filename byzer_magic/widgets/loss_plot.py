"""The live loss curve: raw points and a smoothed line, drawn as SVG (no plotting library needed,
and the saved notebook keeps a picture that any browser shows)."""
from __future__ import annotations

import html
import math
from typing import Sequence

import ipywidgets as widgets

from byzer_magic.widgets.static import StaticFallback

WIDTH, HEIGHT = 720, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 60, 14, 24, 34
MAX_DRAWN = 800  # a week-long run logs 10^5+ steps: draw a bounded number of points


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased so that the first points
    are not pulled towards zero."""
    out, last, count = [], 0.0, 0
    for value in values:
        count += 1
        last = last * weight + (1 - weight) * value
        out.append(last / (1 - weight ** count) if weight < 1 else values[0])
    return out


def loss_svg(points: Sequence[tuple[int, float]], *, smoothing: float = 0.6, log_scale: bool = False,
             width: int = WIDTH, height: int = HEIGHT, held_out: Sequence[tuple[int, float]] = ()) -> str:
    """An SVG of ``points`` (step, loss): the raw points faint, the smoothed line strong; ``held_out``
    (step, held-out loss) as a second series, orange."""
    usable = [(s, v) for s, v in points if math.isfinite(v) and (v > 0 or not log_scale)]
    evals = [(s, math.log10(v) if log_scale else v) for s, v in held_out
             if math.isfinite(v) and (v > 0 or not log_scale)]
    head = (f'<svg class="byzer-loss-plot" data-points="{len(usable)}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" '
            'style="font: 11px sans-serif; background: white">')
    if not usable:
        return (head + f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#888">'
                'waiting for the first logged step</text></svg>')
    steps = [s for s, _ in usable]
    ys = [math.log10(v) if log_scale else v for _, v in usable]
    smoothed = smooth(ys, smoothing)
    x0, x1 = min(steps + [s for s, _ in evals]), max(steps + [s for s, _ in evals])
    y0, y1 = min(ys + [y for _, y in evals]), max(ys + [y for _, y in evals])
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM

    def px(step: float) -> float:
        return _LEFT + (step - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return _TOP + (y1 - y) / (y1 - y0) * plot_h

    parts = [head, _axes(x0, x1, y0, y1, px, py, log_scale, width, height)]
    raw = _decimate(list(zip(steps, ys)))
    parts.append(f'<polyline class="raw" fill="none" stroke="#6baed6" stroke-opacity="0.45" stroke-width="1" '
                 f'points="{_path(raw, px, py)}"/>')
    if len(usable) <= 200:  # single points are readable only while there are few
        parts.extend(f'<circle class="point" cx="{px(s):.1f}" cy="{py(y):.1f}" r="2" fill="#6baed6" fill-opacity="0.7"/>'
                     for s, y in raw)
    every = max(1, math.ceil(len(steps) / MAX_DRAWN))  # a smooth line loses nothing by sampling
    line = list(zip(steps, smoothed))[::every] + ([(steps[-1], smoothed[-1])] if (len(steps) - 1) % every else [])
    parts.append(f'<polyline class="smoothed" fill="none" stroke="#08519c" stroke-width="2" '
                 f'points="{_path(line, px, py)}"/>')
    if evals:
        parts.append(f'<polyline class="held-out" fill="none" stroke="#e6550d" stroke-width="2" '
                     f'points="{_path(evals, px, py)}"/>')
        parts.extend(f'<circle class="held-out-point" cx="{px(s):.1f}" cy="{py(y):.1f}" r="3" fill="#e6550d"/>'
                     for s, y in evals)
    last_step, last_loss = usable[-1]
    held = f" · held-out {_unlog(evals[-1][1], log_scale):.4g}" if evals else ""
    parts.append(f'<text x="{width - _RIGHT}" y="{_TOP - 8}" text-anchor="end" fill="#333">'
                 f'step {last_step}: loss {last_loss:.4g} (smoothed {_unlog(smoothed[-1], log_scale):.4g}){held}</text>')
    return "".join(parts) + "</svg>"


def _unlog(y: float, log_scale: bool) -> float:
    return 10 ** y if log_scale else y


def _path(points, px, py) -> str:
    return " ".join(f"{px(s):.1f},{py(y):.1f}" for s, y in points)


def _decimate(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """At most about MAX_DRAWN points; each bucket keeps its lowest and highest (spikes stay visible)."""
    if len(points) <= MAX_DRAWN:
        return points
    size = math.ceil(len(points) / (MAX_DRAWN // 2))
    out = []
    for i in range(0, len(points), size):
        bucket = points[i:i + size]
        low, high = min(bucket, key=lambda p: p[1]), max(bucket, key=lambda p: p[1])
        out.extend(sorted({low, high}))
    return out


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    span = high - low
    step = 10 ** math.floor(math.log10(span / count))
    for factor in (1, 2, 5, 10):
        if span / (step * factor) <= count:
            step *= factor
            break
    first = math.ceil(low / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((high - first) / step + 1e-9) + 1)]


def _axes(x0, x1, y0, y1, px, py, log_scale, width, height) -> str:
    parts = [f'<rect x="{_LEFT}" y="{_TOP}" width="{width - _LEFT - _RIGHT}" '
             f'height="{height - _TOP - _BOTTOM}" fill="none" stroke="#ccc"/>']
    for y in _ticks(y0, y1):
        label = f"{10 ** y:.3g}" if log_scale else f"{y:.4g}"
        parts.append(f'<line x1="{_LEFT}" x2="{width - _RIGHT}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#eee"/>'
                     f'<text x="{_LEFT - 6}" y="{py(y) + 4:.1f}" text-anchor="end" fill="#555">{label}</text>')
    for x in _ticks(x0, x1):
        if x == int(x):
            parts.append(f'<text x="{px(x):.1f}" y="{height - _BOTTOM + 14}" text-anchor="middle" '
                         f'fill="#555">{int(x)}</text>')
    parts.append(f'<text x="{_LEFT + (width - _LEFT - _RIGHT) / 2}" y="{height - 4}" text-anchor="middle" '
                 f'fill="#333">step</text>')
    parts.append(f'<text x="14" y="{_TOP + (height - _TOP - _BOTTOM) / 2}" fill="#333" text-anchor="middle" '
                 f'transform="rotate(-90 14 {_TOP + (height - _TOP - _BOTTOM) / 2})">'
                 f'{html.escape("loss (log)" if log_scale else "loss")}</text>')
    return "".join(parts)


class LossPlot(StaticFallback, widgets.VBox):
    """The curve plus its controls: log scale, smoothing. ``set_points`` redraws only on change; shown
    without a kernel, the output is the SVG itself."""

    def __init__(self, points: Sequence[tuple[int, float]] = (), held_out: Sequence[tuple[int, float]] = ()):
        self.points: list[tuple[int, float]] = list(points)
        self.held_out: list[tuple[int, float]] = list(held_out)
        self.log_scale = widgets.Checkbox(value=False, description="log scale", indent=False,
                                          layout=widgets.Layout(width="110px"))
        self.smoothing = widgets.FloatSlider(value=0.6, min=0.0, max=0.99, step=0.01, description="smoothing",
                                             readout_format=".2f", layout=widgets.Layout(width="300px"))
        self.svg = widgets.HTML(layout=widgets.Layout(overflow="auto"))
        self.log_scale.observe(lambda _: self.redraw(), "value")
        self.smoothing.observe(lambda _: self.redraw(), "value")
        super().__init__([widgets.HBox([self.log_scale, self.smoothing]), self.svg])
        self.redraw()

    def set_points(self, points: Sequence[tuple[int, float]], held_out: Sequence[tuple[int, float]] = ()) -> None:
        points, held_out = list(points), list(held_out)
        if points != self.points or held_out != self.held_out:
            self.points, self.held_out = points, held_out
            self.redraw()

    def redraw(self) -> None:
        self.svg.value = loss_svg(self.points, smoothing=self.smoothing.value, log_scale=self.log_scale.value,
                                  held_out=self.held_out)

    def static_html(self) -> str:
        return self.svg.value

    def static_text(self) -> str:
        if not self.points:
            return "loss curve: no step logged yet"
        step, value = self.points[-1]
        held = f", held-out loss {self.held_out[-1][1]:.4g} at step {self.held_out[-1][0]}" if self.held_out else ""
        return f"loss curve: {len(self.points)} points, step {step}: loss {value:.4g}{held}"
