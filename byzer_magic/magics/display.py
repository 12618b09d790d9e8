"""How a table shows in a notebook: its name, row count (when cheap), schema and first rows."""
from __future__ import annotations

import html

import pandas as pd

from byzer_magic.language.session import TableResult
from byzer_magic.errors import ByzerError


class TableFrame(pd.DataFrame):
    """The first rows of a table, as a pandas DataFrame whose display also names the table, counts
    its rows (when Ray knows the count without reading) and lists its schema. Operations on it give
    plain DataFrames."""

    _metadata = ["table_name", "row_count", "schema_text"]

    @property
    def _constructor(self):
        return pd.DataFrame

    def header(self) -> str:
        rows = f"{self.row_count:,} rows" if self.row_count is not None else "rows not counted (lazy)"
        shown = f"first {len(self)}" if self.row_count is None or len(self) < self.row_count else "all"
        return f"table {self.table_name} · {rows} · {self.schema_text} · {shown} shown"

    def __repr__(self) -> str:
        return self.header() + "\n" + pd.DataFrame(self).__repr__()

    def _repr_html_(self) -> str:
        rows = f"{self.row_count:,} rows" if self.row_count is not None else "rows not counted (lazy)"
        head = (f"<div><b>{html.escape(self.table_name)}</b> · {rows} · "
                f"<code>{html.escape(self.schema_text)}</code></div>")
        return head + (pd.DataFrame(self)._repr_html_() or "")


def table_frame(result: TableResult, max_rows: int) -> TableFrame:
    """Read the table's first ``max_rows`` rows (and what is cheap to know about it)."""
    from byzer_magic.runtime import tables  # noqa: PLC0415

    try:
        summary = tables.describe(result.dataset, max_rows)
    except ByzerError as err:
        err.message = f"while reading table {result.name}: {err.message}"
        raise
    frame = TableFrame(summary.head)
    frame.table_name = result.name
    frame.row_count = summary.row_count
    frame.schema_text = schema_text(summary.schema)
    return frame


def schema_text(schema) -> str:
    return ", ".join(f"{field.name}: {field.type}" for field in schema)
