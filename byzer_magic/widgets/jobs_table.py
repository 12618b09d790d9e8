"""The table of ``%byzerllm jobs``: plain HTML (not a widget), so that it stays in the saved notebook,
and plain text in a terminal."""
from __future__ import annotations

import html
from typing import Iterable

from byzer_magic.runtime.kernel.jobs import JobHandle

COLUMNS = (("name", "name"), ("status", "status"), ("started", "started"), ("steps", "steps done / total"),
           ("last_loss", "last loss"), ("tokens_per_s", "tokens/s"))
_COLORS = {"RUNNING": "#0d6efd", "SUCCEEDED": "#198754", "FAILED": "#dc3545", "STOPPED": "#fd7e14"}


class JobsTable:
    """``rows``: one ``JobHandle.summary()`` per job."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def _repr_html_(self) -> str:
        if not self.rows:
            return "<p class='byzer-jobs'>No jobs yet.</p>"
        head = "".join(f"<th style='text-align:left'>{html.escape(title)}</th>" for _, title in COLUMNS)
        body = []
        for row in self.rows:
            cells = []
            for key, _ in COLUMNS:
                value = _text(row.get(key))
                style = f" style='color:{_COLORS[value]}'" if key == "status" and value in _COLORS else ""
                cells.append(f"<td{style}>{html.escape(value)}</td>")
            body.append(f"<tr>{''.join(cells)}</tr>")
        return f"<table class='byzer-jobs'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    def __repr__(self) -> str:
        if not self.rows:
            return "No jobs yet."
        table = [[title for _, title in COLUMNS]] + [[_text(row.get(key)) for key, _ in COLUMNS]
                                                     for row in self.rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table)


def _text(value) -> str:
    if value is None or value != value:  # None or NaN
        return ""
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def jobs_table(handles: Iterable[JobHandle]) -> JobsTable:
    """A table of the jobs (name, status, started, steps done / total, last loss, tokens/s)."""
    return JobsTable([handle.summary() for handle in handles])
