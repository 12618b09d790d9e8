"""A Byzer session: the tables, variables and setup that live across the cells of one kernel.

``Session.run_cell(text)`` parses the whole cell first, so a syntax error anywhere runs nothing. Then
the statements run in order. A statement that fails leaves no trace of itself: each one checks its
input and builds its result before it binds anything (a table, a variable, a setting), and the
statements before it keep their effects. Tables are lazy Ray Datasets, so an error that only shows
when rows flow (a bad cast in a row, a file that vanished) surfaces where the rows are read: in the
cell's preview, or in training.

``${name}`` is substituted when a statement runs, in paths, option values, SQL and ``set`` values.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from byzer_magic.errors import ByzerError, did_you_mean
from byzer_magic.language.statements import (LoadStatement, Option, RunStatement, SelectStatement,
                                             SetStatement, SetupStatement, Span, Statement)
from byzer_magic.runtime.home import default_jobs_dir

if TYPE_CHECKING:
    import ray.data

    from byzer_magic.runtime.cluster import ClusterInfo

# Keys of `!byzerllm setup "key=value";`: name -> (type, what it means). The training runtime reads
# them from ``Session.setup``; add a key here when the runtime learns to use it.
VALID_SETUP_KEYS: dict[str, tuple[type, str]] = {
    "num_gpus": (int, "GPUs to train on, one training worker each"),
    "num_cpus_per_worker": (float, "CPUs reserved for each training worker"),
    "use_gpu": (bool, "train on GPUs (true) or on CPUs (false)"),
}
# `!byzerllm setup MODE;` -> what it selects; stored as ``setup[MODE] = True``.
SETUP_MODES: dict[str, str] = {"sfft": "full-parameter pretraining (for later `run ... as LLM`)"}
LOAD_FORMATS: dict[str, tuple[str, ...]] = {"text": ("wholetext",)}  # format -> its options
TRANSFORMS = ("TableRepartition", "LLM")
REPARTITION_OPTIONS = ("partitionNum", "partitionCols")


@dataclass(frozen=True)
class TableResult:
    """A statement's result that is a table: its name in the session and its Dataset."""
    name: str
    dataset: "ray.data.Dataset"


def statement_name(statement: Statement) -> str:
    """How messages name a statement (the parser names them the same way)."""
    if isinstance(statement, SetupStatement):
        return "!byzerllm setup"
    if isinstance(statement, RunStatement):
        return f"run ... as {statement.transform}"
    return statement.kind


class Session:
    """Tables (name -> Ray Dataset), ``set`` variables and setup, across cells.

    ``connect`` is called once, on the first statement that needs Ray, and returns the cluster's
    ``ClusterInfo``. ``namespace`` (the notebook's variables) backs ``${name}`` when no ``set`` defines
    it. ``output`` shows what a blocking run prints as it goes. ``jobs_dir`` is the default folder for
    jobs (None: ``runtime.home.default_jobs_dir()``).
    """

    def __init__(self, *, connect: Callable[[], "ClusterInfo"] | None = None,
                 namespace: Mapping[str, Any] | None = None, output: Callable[[object], None] = print,
                 jobs_dir: str | Path | None = None):
        self.tables: dict[str, ray.data.Dataset] = {}
        self.variables: dict[str, str] = {}
        self.setup: dict[str, Any] = {}
        self.namespace = namespace if namespace is not None else {}
        self.output = output
        self.show_job: Callable[[object], None] | None = None  # shows a running job (the magics: its monitor)
        self.jobs_dir = Path(jobs_dir) if jobs_dir else default_jobs_dir()
        self.last_table: TableResult | None = None  # the last table made by the latest cell
        self._connect = connect or _default_connect
        self._cluster: ClusterInfo | None = None
        self._cell_lines: list[str] = []

    # ------------------------------------------------------------------------------ running
    def run_cell(self, text: str) -> object:
        """Run a cell's statements; the result of the last one (a ``TableResult`` for a table)."""
        from byzer_magic.language.parser import parse_cell  # noqa: PLC0415

        statements = parse_cell(text)
        self._cell_lines = text.split("\n")
        self.last_table = None
        result = None
        for statement in statements:
            result = self.run_statement(statement)
            if isinstance(result, TableResult):
                self.last_table = result
        return result

    def run_statement(self, statement: Statement) -> object:
        """Run one parsed statement; its errors are located at it."""
        handler = {LoadStatement: self._load, SelectStatement: self._select, RunStatement: self._run,
                   SetStatement: self._set, SetupStatement: self._setup}[type(statement)]
        try:
            return handler(statement)
        except ByzerError as err:
            span = statement.span
            raise err.located(statement=statement_name(statement), line=span.line, column=span.column,
                              source_line=span.source_line) from None

    def ensure_ray(self) -> "ClusterInfo":
        """Connect to Ray (once per session)."""
        if self._cluster is None:
            self._cluster = self._connect()
        return self._cluster

    # ------------------------------------------------------------------------------- tables
    def table(self, name: str) -> "ray.data.Dataset":
        """The table called ``name`` (case-insensitive, as in SQL)."""
        for key, ds in self.tables.items():
            if key.lower() == name.lower():
                return ds
        listing = ", ".join(sorted(self.tables)) or "none yet"
        raise ByzerError(f"unknown table {name}{did_you_mean(name, self.tables)}; tables: {listing}")

    def set_table(self, name: str, ds: "ray.data.Dataset") -> TableResult:
        """Bind ``name`` to ``ds``, replacing a table of the same name in any case."""
        for key in [k for k in self.tables if k.lower() == name.lower()]:
            del self.tables[key]
        self.tables[name] = ds
        return TableResult(name, ds)

    def interpolate(self, text: str, span: Span | None = None) -> str:
        """``text`` with ``${name}`` replaced from ``set`` variables, then the notebook's namespace."""
        from byzer_magic.language.interpolation import interpolate  # noqa: PLC0415

        return interpolate(text, self.variables, self.namespace, span=span)

    # --------------------------------------------------------------------------- statements
    def _load(self, st: LoadStatement) -> TableResult:
        from byzer_magic.runtime import tables  # noqa: PLC0415

        fmt = st.format.lower()
        if fmt not in LOAD_FORMATS:
            raise _at(ByzerError(f'unknown format "{st.format}"{did_you_mean(st.format, LOAD_FORMATS)}; '
                                 f"formats: {', '.join(LOAD_FORMATS)}"), _find(st.span, st.format))
        options = self._options(st.options, LOAD_FORMATS[fmt], f"load {fmt}")
        wholetext = self._bool(options["wholetext"]) if "wholetext" in options else False
        path_span = _find(st.span, "`" + st.path.split("\n")[0], shift=1)
        path = self.interpolate(st.path, path_span)
        self.ensure_ray()
        try:
            ds = tables.load_text(path, wholetext=wholetext)
        except ByzerError as err:
            raise _at(err, path_span)
        return self.set_table(st.alias, ds)

    def _select(self, st: SelectStatement) -> TableResult:
        from byzer_magic.runtime import tables  # noqa: PLC0415

        sql = self.interpolate(st.sql, st.sql_span)
        self.ensure_ray()
        try:
            ds = tables.run_sql(sql, self.tables)
        except tables.SqlError as err:
            if err.sql_line is not None:
                err.line, err.column, err.source_line = self._sql_position(st, sql, err.sql_line,
                                                                           err.sql_column)
            raise
        return self.set_table(st.alias, ds)

    def _run(self, st: RunStatement) -> object:
        transform = next((t for t in TRANSFORMS if t.lower() == st.transform.lower()), None)
        if transform is None:
            raise _at(ByzerError(f'unknown transform "{st.transform}"{did_you_mean(st.transform, TRANSFORMS)}'
                                 f"; transforms: {', '.join(TRANSFORMS)}"), _find(st.span, st.transform))
        if transform == "LLM":
            return self._run_llm(st)
        return self._repartition(st)

    def _repartition(self, st: RunStatement) -> TableResult:
        from byzer_magic.runtime import tables  # noqa: PLC0415

        options = self._options(st.options, REPARTITION_OPTIONS, "TableRepartition")
        if "partitionNum" not in options:
            raise ByzerError('TableRepartition needs partitionNum="N" (the number of partitions)')
        if not st.alias:
            raise ByzerError("TableRepartition needs `as NAME` to name its result")
        n = self._positive(options["partitionNum"], int)
        cols_option = options.get("partitionCols")
        cols = [c.strip() for c in cols_option.value.split(",") if c.strip()] if cols_option else None
        try:
            source = self.table(st.input)
        except ByzerError as err:
            raise _at(err, _find(st.span, st.input))
        self.ensure_ray()
        try:
            ds = tables.repartition(source, n, cols)
        except ByzerError as err:
            span = cols_option.span if cols_option else st.span
            raise err.located(line=span.line, column=span.column, source_line=span.source_line)
        return self.set_table(st.alias, ds)

    def _run_llm(self, st: RunStatement) -> object:
        try:
            llm_run = importlib.import_module("byzer_magic.language.llm_run")
        except ModuleNotFoundError as exc:
            if exc.name != "byzer_magic.language.llm_run":
                raise
            raise ByzerError("`run ... as LLM` is not yet available") from None
        options = tuple(replace(o, value=self.interpolate(o.value, o.span)) for o in st.options)
        return llm_run.run_llm(self, replace(st, options=options), show_job=self.show_job)

    def _set(self, st: SetStatement) -> None:
        self.variables[st.name] = self.interpolate(st.value, st.span)

    def _setup(self, st: SetupStatement) -> dict[str, Any]:
        value = self.interpolate(st.value, st.span).strip()
        if "=" not in value:
            mode = value.lower()
            if mode not in SETUP_MODES:
                raise _at(ByzerError(f'unknown setup "{value}"{did_you_mean(value, SETUP_MODES)}; setups: '
                                     f'{", ".join(SETUP_MODES)}, or "key=value" with a key of: '
                                     f'{", ".join(VALID_SETUP_KEYS)}'), _find(st.span, value))
            self.setup[mode] = True
            return dict(self.setup)
        key, _, raw = (part.strip() for part in value.partition("="))
        if key not in VALID_SETUP_KEYS:
            raise _at(ByzerError(f'unknown setup key "{key}"{did_you_mean(key, VALID_SETUP_KEYS)}; '
                                 f"keys: {', '.join(VALID_SETUP_KEYS)}"), _find(st.span, key))
        kind = VALID_SETUP_KEYS[key][0]
        option = Option(key, raw, _find(st.span, key))
        parsed = self._bool(option) if kind is bool else raw if kind is str else self._positive(option, kind)
        self.setup[key] = parsed
        return dict(self.setup)

    # ---------------------------------------------------------------------------- options
    def _options(self, options: tuple[Option, ...], valid: tuple[str, ...], what: str) -> dict[str, Option]:
        """The options by key, interpolated; an unknown key is an error located at it."""
        found: dict[str, Option] = {}
        for option in options:
            if option.key not in valid:
                hint = did_you_mean(option.key, valid)
                raise _at(ByzerError(f'unknown option "{option.key}" for {what}{hint}; options: '
                                     f"{', '.join(valid)}"), option.span)
            found[option.key] = replace(option, value=self.interpolate(option.value, option.span))
        return found

    @staticmethod
    def _positive(option: Option, kind: type) -> int | float:
        pattern = r"\+?\d+" if kind is int else r"\+?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"
        text = option.value.strip()
        if re.fullmatch(pattern, text) and kind(text) > 0:
            return kind(text)
        noun = "a positive whole number" if kind is int else "a positive number"
        raise _at(ByzerError(f'{option.key} must be {noun}, not "{option.value}"'), option.span)

    @staticmethod
    def _bool(option: Option) -> bool:
        text = option.value.strip().lower()
        if text in ("true", "false"):
            return text == "true"
        raise _at(ByzerError(f'{option.key} must be "true" or "false", not "{option.value}"'), option.span)

    def _sql_position(self, st: SelectStatement, sql: str, sql_line: int, sql_column: int | None):
        """Cell line, column and line text of a position in the (interpolated) SQL text."""
        line = st.sql_span.line + sql_line - 1
        sql_text = sql.split("\n")[sql_line - 1] if sql_line <= sql.count("\n") + 1 else ""
        offset = st.sql_span.column - 1 if sql_line == 1 else 0
        cell_text = self._cell_lines[line - 1] if 0 < line <= len(self._cell_lines) else ""
        source = cell_text if sql == st.sql else cell_text[:offset] + sql_text
        return line, (offset + sql_column) if sql_column else None, source


def _find(span: Span, word: str, shift: int = 0) -> Span:
    """Where ``word`` first appears on the statement's first line, after its start (else ``span``)."""
    at = span.source_line.lower().find(word.lower(), span.column - 1) if word else -1
    return Span(span.line, at + 1 + shift, span.source_line) if at >= 0 else span


def _at(err: ByzerError, span: Span) -> ByzerError:
    return err.located(line=span.line, column=span.column, source_line=span.source_line)


def _default_connect() -> "ClusterInfo":
    from byzer_magic.runtime import cluster, tables  # noqa: PLC0415

    info = cluster.connect()
    tables.configure_ray_data(single_machine=info.embedded)
    return info
