"""``ByzerMagic``: the ``%%byzerllm`` cell magic, the ``%byzerllm`` line magic and their settings.

Thin IPython glue: statements run in ``language.session.Session`` (one per kernel), sub-commands live
in ``magics/cmd/`` (a module and a parser each), tables are shown by ``magics.display``, and what Ray and
DeepSpeed say about themselves goes to Python logging (``magics.quiet``). Every ``ByzerError`` becomes an
IPython ``UsageError``: the cell fails with its one- or two-line message and no traceback.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from traitlets import Bool, Enum, Int, Unicode, observe

from byzer_magic.errors import ByzerError
from byzer_magic.language.session import Session, TableResult
from byzer_magic.magics import cmd, quiet
from byzer_magic.runtime.kernel.jobs import JobHandle

_HELP = """\
Byzer statements in a notebook: load text, shape it with SQL, pretrain LLMs on Ray + DeepSpeed.

Cell magic:
  %%byzerllm [-o NAME]
  load text.`/data/raw/**/*.txt` where wholetext="true" as trainData;
  select value as text, file from trainData as newTrainData;
  run newTrainData as TableRepartition.`` where partitionNum="4" and partitionCols="file" as final;
  !byzerllm setup sfft;
  !byzerllm setup "num_gpus=4";
  set ds_config='''{...}''';            -- then ${ds_config} in later statements
  run command as LLM.`` where pretrainedModelType="sfft/llama2" and inputTable="final" and ...;

  The cell's value is its last statement's result; a table shows as a pandas DataFrame of its first
  ByzerMagic.max_rows rows. -o NAME binds the cell's last table (a ray.data.Dataset) to NAME.
  Tables, variables and setup live across the cells of the kernel. ${name} falls back to the
  notebook's Python variables when no `set` defines it.

Line magic:
{commands}

Settings (%config ByzerMagic.<name> = value):
  ray_address    Ray cluster to use; "" = $RAY_ADDRESS, else an embedded local head
  max_rows       rows shown for a table (default 10)
  jobs_dir       default folder for training jobs; "" = ~/byzer_magic/jobs
  progress_bars  show Ray Data progress bars and logs (default False)
  verbose        show Ray's and DeepSpeed's own warnings in cells (default False: Python logging)
  sql_dialect    "spark" (default: Spark SQL, as Byzer users write it) or "duckdb"
"""


@magics_class
class ByzerMagic(Magics):
    """Runs ``%%byzerllm`` cells and ``%byzerllm`` sub-commands; configure with ``%config ByzerMagic``."""

    ray_address = Unicode("", help="Ray cluster address; empty: $RAY_ADDRESS, else the embedded local "
                                   "head that byzer-magic starts and reuses.").tag(config=True)
    max_rows = Int(10, help="How many rows of a table a cell shows.").tag(config=True)
    jobs_dir = Unicode("", help="Default folder for training jobs (localPathPrefix); empty: "
                                "~/byzer_magic/jobs or $BYZER_MAGIC_JOBS.").tag(config=True)
    progress_bars = Bool(False, help="Show Ray Data's progress bars and INFO logs.").tag(config=True)
    verbose = Bool(False, help="Show Ray's and DeepSpeed's own warnings in cells; off: they go to Python "
                               "logging (byzer_magic.ray, byzer_magic.deepspeed).").tag(config=True)
    sql_dialect = Enum(["spark", "duckdb"], "spark", help="How selects are read: Spark SQL (as Byzer users "
                       "write it; translated for DuckDB) or DuckDB's own SQL.").tag(config=True)
    tensorboard_proxy_url = Unicode("", help="URL template for embedded TensorBoard behind a proxy, with "
                                             "%PORT% for its port; empty: $TENSORBOARD_PROXY_URL, "
                                             "jupyter-server-proxy, or 127.0.0.1.").tag(config=True)

    def __init__(self, shell=None, **kwargs):
        super().__init__(shell=shell, **kwargs)
        self.cluster = None  # ClusterInfo once connected
        quiet.set_verbose(self.verbose)
        quiet.quiet_deepspeed()
        self.session = self._new_session()
        type(self).byzerllm.__doc__ = self.help_text()  # `%byzerllm?` lists every registered command

    # ------------------------------------------------------------------------------ magics
    @line_cell_magic
    def byzerllm(self, line: str, cell: str | None = None):
        """(replaced by help_text() when the extension loads)"""
        if cell is None:
            try:
                return cmd.run_command(self, line)
            except ByzerError as err:
                raise UsageError(str(err)) from None
        output = _output_name(line)
        try:
            result = self.session.run_cell(cell)
            if output:
                if self.session.last_table is None:
                    raise ByzerError(f"-o {output}: the cell made no table to bind")
                self.shell.user_ns[output] = self.session.last_table.dataset
            if isinstance(result, TableResult):
                from byzer_magic.magics.display import table_frame  # noqa: PLC0415

                return table_frame(result, self.max_rows)
            if isinstance(result, JobHandle):  # a detached run: its live monitor
                return self.monitor(result)
            return result
        except ByzerError as err:
            raise UsageError(str(err)) from None

    # ----------------------------------------------------------------------------- helpers
    def help_text(self) -> str:
        return _HELP.replace("{commands}", cmd.summaries())

    def monitor(self, handle: JobHandle):
        """The live monitor of a job (the widgets render what the job API reports)."""
        from byzer_magic.widgets import JobMonitor  # noqa: PLC0415

        return JobMonitor(handle, proxy_url=self.tensorboard_proxy_url or None)

    def reset(self) -> None:
        """A fresh session: no tables, variables or setup (the Ray connection stays)."""
        self.session = self._new_session()

    def connect(self):
        """Connect to Ray once (print where), as configured; called on the first statement that needs it."""
        if self.cluster is None:
            from byzer_magic.runtime import cluster, tables  # noqa: PLC0415

            quiet.quiet_ray()  # before ray.init starts the thread that prints what raylets push
            info = cluster.connect(self.ray_address or None)
            tables.configure_ray_data(self.progress_bars, single_machine=info.embedded)
            print(info.describe())
            self.cluster = info
        return self.cluster

    def _new_session(self) -> Session:
        from IPython.display import display  # noqa: PLC0415

        namespace = self.shell.user_ns if self.shell is not None else {}
        session = Session(connect=self.connect, namespace=namespace, output=display,
                          jobs_dir=self.jobs_dir or None, sql_dialect=self.sql_dialect)
        session.show_job = lambda handle: display(self.monitor(handle))
        return session

    @observe("jobs_dir")
    def _jobs_dir_changed(self, change) -> None:
        from byzer_magic.runtime.home import default_jobs_dir  # noqa: PLC0415

        self.session.jobs_dir = Path(change["new"]) if change["new"] else default_jobs_dir()

    @observe("sql_dialect")
    def _sql_dialect_changed(self, change) -> None:
        self.session.sql_dialect = change["new"]

    @observe("verbose")
    def _verbose_changed(self, change) -> None:
        quiet.set_verbose(change["new"])

    @observe("progress_bars")
    def _progress_bars_changed(self, change) -> None:
        if self.cluster is not None:
            from byzer_magic.runtime import tables  # noqa: PLC0415

            tables.configure_ray_data(change["new"], single_machine=self.cluster.embedded)


def _output_name(line: str) -> str | None:
    """``-o NAME`` / ``--output NAME`` from the ``%%byzerllm`` line."""
    try:
        words = shlex.split(line)
    except ValueError as err:
        raise UsageError(f"%%byzerllm {line}: {err}") from None
    name = None
    while words:
        word = words.pop(0)
        if word in ("-o", "--output") and words and words[0].isidentifier():
            name = words.pop(0)
        elif word in ("-o", "--output"):
            raise UsageError(f"{word} needs a Python variable name; usage: %%byzerllm [-o NAME]")
        else:
            raise UsageError(f'unknown %%byzerllm argument "{word}"; usage: %%byzerllm [-o NAME]')
    return name
