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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from byzer_magic.errors import MAX_PARTITIONS, ByzerError, check_count, did_you_mean
from byzer_magic.language import values
from byzer_magic.language.values import at as _at, find as _find
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
# format -> its options (docs/LANGUAGE.md, "Loading files"); the readers are in runtime/tables/.
LOAD_FORMATS: dict[str, tuple[str, ...]] = {
    "text": ("wholetext", "encoding", "chunkSize"),
    "json": (),
    "parquet": (),
    "csv": ("header", "delimiter", "encoding", "inferSchema"),
}
SET_TYPES = ("text", "sql", "defaultParam")  # `set x=... where type="..."`
SQL_DIALECTS = ("spark", "duckdb")
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
    it. ``output`` shows notes and what a blocking run prints as it goes. ``jobs_dir`` is the default
    folder for jobs (None: ``runtime.home.default_jobs_dir()``). ``sql_dialect``: ``"spark"`` (selects
    are Spark SQL, translated for DuckDB) or ``"duckdb"``.
    """

    def __init__(self, *, connect: Callable[[], "ClusterInfo"] | None = None,
                 namespace: Mapping[str, Any] | None = None, output: Callable[[object], None] = print,
                 jobs_dir: str | Path | None = None, sql_dialect: str = "spark"):
        self.tables: dict[str, ray.data.Dataset] = {}
        self.variables: dict[str, str] = {}
        self.setup: dict[str, Any] = {}
        self.namespace = namespace if namespace is not None else {}
        self.output = output
        self.show_job: Callable[[object], None] | None = None  # shows a running job (the magics: its monitor)
        self.jobs_dir = Path(jobs_dir) if jobs_dir else default_jobs_dir()
        self.sql_dialect = sql_dialect  # "spark" (Byzer's) or "duckdb": how selects are read
        self.last_table: TableResult | None = None  # the last table made by the latest cell
        self._connect = connect or _default_connect
        self._cluster: ClusterInfo | None = None
        self._cell_lines: list[str] = []

    # ------------------------------------------------------------------------------ running
    def run_cell(self, text: str) -> object:
        """Run a cell's statements; the result of the last one (a ``TableResult`` for a table)."""
        from byzer_magic.language.parser import parse_cell  # noqa: PLC0415

        statements = parse_cell(text, self._dialect())
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
        arguments = values.load_arguments(options)
        path_span = _find(st.span, "`" + st.path.split("\n")[0], shift=1)
        path = self.interpolate(st.path, path_span)
        self.ensure_ray()
        note = None
        try:
            if fmt == "text":
                ds, note = tables.load_text_checked(path, wholetext=arguments.pop("wholetext", False),
                                                    **arguments)
            else:
                ds = {"json": tables.load_json, "parquet": tables.load_parquet, "csv": tables.load_csv}[fmt](
                    path, **arguments)
        except ByzerError as err:
            raise _at(err, path_span)
        if note:
            print(f"note: {st.alias}: {note}")
        return self.set_table(st.alias, ds)

    def _select(self, st: SelectStatement) -> TableResult:
        from byzer_magic.runtime import tables  # noqa: PLC0415

        sql = self.interpolate(st.sql, st.sql_span)
        self.ensure_ray()
        try:
            ds = tables.run_sql(sql, self.tables, dialect=self._dialect())
        except tables.SqlError as err:
            if err.sql_line is not None:
                err.line, err.column, err.source_line = values.text_position(
                    self._cell_lines, st.sql_span, st.sql, st.sql, sql, err.sql_line, err.sql_column)
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
        n = values.positive(options["partitionNum"], int)
        try:  # a count past the bound would hold the kernel for minutes before failing
            check_count("partitionNum", n, high=MAX_PARTITIONS)
        except ByzerError as err:
            raise values.at(err, options["partitionNum"].span) from None
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
        options = self._options(st.options, ("type",), "set")
        kind = options.get("type")
        name = kind.value.strip() if kind else "text"
        if kind is not None and name.lower() in ("shell", "conf"):
            what = "run shell commands" if name.lower() == "shell" else "set Spark configuration"
            raise _at(ByzerError(f'type="{name}" is not supported: a set does not {what} here (Byzer did, on '
                                 "its server); run it in a Python cell and use the result as ${name}; types: "
                                 f"{', '.join(SET_TYPES)}"), kind.span)
        found = next((t for t in SET_TYPES if t.lower() == name.lower()), None)
        if found is None:
            raise _at(ByzerError(f'unknown set type "{name}"{did_you_mean(name, SET_TYPES)}; types: '
                                 f"{', '.join(SET_TYPES)}"), kind.span)
        if found == "defaultParam" and st.name in self.variables:
            return  # a default: an earlier set wins
        value = self.interpolate(st.value, st.value_span or st.span)
        self.variables[st.name] = self._scalar(st, value) if found == "sql" else value

    def _scalar(self, st: SetStatement, sql: str) -> str:
        """The one value that ``sql`` returns (``set ... where type="sql"``), as text."""
        from byzer_magic.runtime import tables  # noqa: PLC0415

        self.ensure_ray()
        try:
            ds = tables.run_sql(sql, self.tables, dialect=self._dialect())
            columns = tables.schema_of(ds).names
            rows = ds.take(2) if len(columns) == 1 else []
        except tables.SqlError as err:
            if err.sql_line is not None and st.value_span is not None:
                err.line, err.column, err.source_line = values.text_position(
                    self._cell_lines, st.value_span, st.value_raw, st.value, sql, err.sql_line, err.sql_column)
            raise
        except Exception as exc:
            error = tables.data_error(exc)
            if error is None:
                raise
            raise error from None
        where = 'a set with type="sql" binds one value'
        if len(columns) != 1:
            raise ByzerError(f"{where}: the query returns {len(columns)} columns ({', '.join(columns)})")
        if len(rows) != 1:
            raise ByzerError(f"{where}: the query returns {'no rows' if not rows else 'more than one row'}")
        value = rows[0][columns[0]]
        if value is None:
            raise ByzerError(f"{where}: the query returns NULL (coalesce(..., '') gives a default)")
        return str(value)

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
        self.setup[key] = values.boolean(option) if kind is bool else raw if kind is str else \
            values.positive(option, kind)
        return dict(self.setup)

    # ---------------------------------------------------------------------------- options
    def _options(self, options: tuple[Option, ...], valid: tuple[str, ...], what: str) -> dict[str, Option]:
        """The options by key, interpolated; an unknown key is an error located at it."""
        found: dict[str, Option] = {}
        for option in options:
            if option.key not in valid:
                hint = did_you_mean(option.key, valid)
                known = f"for {what}{hint}; options: {', '.join(valid)}" if valid else f"({what} takes none)"
                raise _at(ByzerError(f'unknown option "{option.key}" {known}'), option.span)
            found[option.key] = replace(option, value=self.interpolate(option.value, option.span))
        return found

    def _dialect(self) -> str:
        if self.sql_dialect not in SQL_DIALECTS:
            hint = did_you_mean(self.sql_dialect, SQL_DIALECTS)
            raise ByzerError(f'unknown SQL dialect "{self.sql_dialect}"{hint}; %config ByzerMagic.sql_dialect '
                             f"takes: {', '.join(SQL_DIALECTS)}")
        return self.sql_dialect


def _default_connect() -> "ClusterInfo":
    from byzer_magic.runtime import cluster, tables  # noqa: PLC0415

    info = cluster.connect()
    tables.configure_ray_data(single_machine=info.embedded)
    return info
