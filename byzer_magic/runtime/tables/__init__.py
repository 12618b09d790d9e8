"""Tables are Ray Datasets: load files, run SQL over them, repartition them.

- ``paths.py``: which files a path names (local, ``file://``, ``s3://`` and other pyarrow filesystems).
- ``text.py``: ``load text`` (lines or whole files, in pieces; encodings); ``formats.py``: json, parquet, csv.
- ``spark.py``: Spark SQL -> DuckDB (sqlglot), positions kept; ``sql.py``: running a select on Ray.
- ``repartition.py``, ``core.py`` (known schemas, Ray Data's settings, previews), ``errors.py``.
"""
from byzer_magic.runtime.tables.core import (TEXT_SCHEMA, TableSummary, cheap_count, configure_ray_data,
                                             describe, schema_of)
from byzer_magic.runtime.tables.errors import SqlError, data_error, sql_error
from byzer_magic.runtime.tables.formats import load_csv, load_json, load_parquet
from byzer_magic.runtime.tables.paths import expand_paths, resolve
from byzer_magic.runtime.tables.repartition import repartition
from byzer_magic.runtime.tables.spark import DIALECTS, translate
from byzer_magic.runtime.tables.sql import run_sql
from byzer_magic.runtime.tables.text import DEFAULT_CHUNK_SIZE, codec_name, load_text, load_text_checked

__all__ = ["TEXT_SCHEMA", "TableSummary", "cheap_count", "configure_ray_data", "describe", "schema_of",
           "SqlError", "data_error", "sql_error", "load_csv", "load_json", "load_parquet", "expand_paths",
           "resolve", "repartition", "DIALECTS", "translate", "run_sql", "DEFAULT_CHUNK_SIZE", "codec_name",
           "load_text", "load_text_checked"]
