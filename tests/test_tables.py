"""runtime.tables on a real Ray head: loading text, DuckDB SQL (batchwise and materialised), repartition."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from byzer_magic.errors import ByzerError
from byzer_magic.runtime import tables
from byzer_magic.runtime.tables import sql as sql_module


def _lines(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def _top(text_files: Path) -> list[Path]:
    return sorted(p for p in text_files.glob("*.py") if not p.name.startswith("."))


def _all(text_files: Path) -> list[Path]:
    return sorted(p for p in text_files.rglob("*.py") if not p.name.startswith("."))


@pytest.fixture(scope="module")
def loaded(ray_cluster, text_files):
    """(wholetext table of every file, per-line table of the top folder)."""
    tables.configure_ray_data(single_machine=True)
    whole = tables.load_text(f"file://{text_files}/**/*.py", wholetext=True)
    lines = tables.load_text(str(text_files / "*.py"), wholetext=False)
    return whole, lines


# --------------------------------------------------------------------------------- paths (no Ray)
def test_paths_glob_doublestar_folder_and_file_scheme(text_files):
    top = [str(p) for p in _top(text_files)]
    assert tables.expand_paths(str(text_files / "*.py")) == top
    assert tables.expand_paths(f"file://{text_files}/*.py") == top
    everything = sorted(map(str, _all(text_files)))
    assert sorted(tables.expand_paths(f"{text_files}/**/*.py")) == everything
    assert sorted(tables.expand_paths(str(text_files))) == everything  # a folder: its files, not hidden ones
    assert tables.expand_paths(str(text_files / "nested" / "*")) == sorted(
        str(p) for p in (text_files / "nested" / "json").glob("*.py"))  # a matched folder: its files


@pytest.mark.parametrize("path, message", [
    ("/no/such/folder/*.txt", "no files match /no/such/folder/*.txt"),
    ("file:///no/such/file.txt", "no files to load: file:///no/such/file.txt does not exist"),
])
def test_missing_paths_name_the_path(path, message):
    with pytest.raises(ByzerError, match="^" + message.replace(".", r"\.").replace("*", r"\*")):
        tables.expand_paths(path)


# ------------------------------------------------------------------------------------------ load
def test_load_wholetext_one_row_per_file(loaded, text_files):
    whole, _ = loaded
    df = whole.to_pandas()
    assert list(df.columns) == ["value", "file"]
    assert sorted(df["file"]) == sorted(map(str, _all(text_files)))
    for row in df.itertuples():
        assert row.value == Path(row.file).read_text(encoding="utf-8")


def test_load_lines_one_row_per_line(loaded, text_files):
    _, lines = loaded
    df = lines.to_pandas()
    expected = [(line, str(p)) for p in _top(text_files) for line in _lines(p)]
    assert sorted(zip(df["value"], df["file"])) == sorted(expected)
    assert "" in set(df["value"])  # empty lines are rows, as in Spark's text source


# ------------------------------------------------------------------------------------------- SQL
@pytest.mark.parametrize("sql, row_wise", [
    ("select value as text, file from t where length(value) > 10", True),
    ("select concat(file, ':', upper(value)) as x from t x where value like '%import%'", True),
    ("select count(*) from t", False),
    ("select file, count(*) from t group by file", False),
    ("select distinct file from t", False),
    ("select value from t order by value", False),
    ("select value from t limit 3", False),
    ("select value, row_number() over () from t", False),
    ("select a.value from t a join u b using (file)", False),
    ("select value from t union all select value from u", False),
    ("select value from t where file in (select file from u)", False),
    ("with x as (select value from t) select * from x", False),
])
def test_row_wise_detection(sql, row_wise):
    assert sql_module.is_row_wise(sql_module.parse(sql)) is row_wise


def test_projection_and_filter_run_batchwise(loaded):
    whole, lines = loaded
    ds = tables.run_sql("select value as text, file, length(value) as n from trainData "
                        "where length(value) > 2000", {"trainData": whole})
    assert "MapBatches(_query_batch)" in str(ds)  # no materialisation, a per-batch DuckDB query
    assert ds.schema().names == ["text", "file", "n"]
    df = ds.to_pandas()
    src = whole.to_pandas()
    assert sorted(df["file"]) == sorted(src.loc[src["value"].str.len() > 2000, "file"])
    assert (df["n"] == df["text"].str.len()).all()
    # Spark SQL's back-quoted identifiers, as Byzer users write them, mean the same to DuckDB.
    quoted = tables.run_sql("select `value` as `text`, `file` from `trainData` where length(`value`) > 2000",
                            {"trainData": whole}).to_pandas()
    assert sorted(quoted["file"]) == sorted(df["file"]) and list(quoted.columns) == ["text", "file"]


def test_concat_group_join_union(loaded, text_files):
    whole, lines = loaded
    named = {"files": whole, "Lines": lines}
    src = lines.to_pandas()

    counts = tables.run_sql("select file, count(*) as n from lines group by file order by n desc, file",
                            named).to_pandas()
    expected = src.groupby("file").size().reset_index(name="n").sort_values(["n", "file"],
                                                                            ascending=[False, True])
    pd.testing.assert_frame_equal(counts.reset_index(drop=True), expected.reset_index(drop=True),
                                  check_dtype=False)

    joined = tables.run_sql("select f.file, c.n, concat(f.file, '#', c.n) as tag from files f "
                            "join (select file, count(*) as n from lines group by file) c on f.file = c.file",
                            named).to_pandas()
    assert sorted(joined["file"]) == sorted(map(str, _top(text_files)))
    assert (joined["tag"] == joined["file"] + "#" + joined["n"].astype(str)).all()

    union = tables.run_sql("select file from files union all select file from lines", named)
    assert union.count() == whole.count() + len(src)


@pytest.mark.parametrize("sql, message, line, column", [
    ("select valu from t", 'Referenced column "valu" not found', 1, 8),
    ("select value\nfrom t\nwhere lenght(value) > 3", 'lenght does not exist! Did you mean "length"?', 3, 7),
    ("select value frm t", 'syntax error at or near "t"', 1, 18),
    ("select value from tt", 'unknown table tt (did you mean "t"?); tables: t', 1, 19),
])
def test_sql_errors_are_immediate_and_located(loaded, sql, message, line, column):
    with pytest.raises(tables.SqlError) as info:
        tables.run_sql(sql, {"t": loaded[1]})
    assert message in info.value.message
    assert (info.value.sql_line, info.value.sql_column) == (line, column)


def test_bad_rows_surface_as_sql_error_when_read(loaded):
    ds = tables.run_sql("select value::int as n from t", {"t": loaded[1]})
    with pytest.raises(ByzerError, match="Conversion Error"):
        tables.describe(ds)


# ----------------------------------------------------------------------------------- repartition
def _blocks(ds) -> list[pd.DataFrame]:
    import ray

    return [ray.get(ref).to_pandas() for bundle in ds.iter_internal_ref_bundles() for ref in bundle.block_refs]


def test_repartition_keeps_keys_together(loaded, text_files):
    lines = loaded[1]
    parts = tables.repartition(lines, 4, ["FILE"]).materialize()  # columns match case-insensitively
    blocks = _blocks(parts)
    assert len(blocks) == 4
    owner = {}
    for i, block in enumerate(blocks):
        for file in set(block["file"]):
            assert owner.setdefault(file, i) == i, f"{file} is split over blocks {owner[file]} and {i}"
    assert sum(map(len, blocks)) == lines.count()
    assert len(owner) == len(_top(text_files))


def test_repartition_without_keys_gives_n_blocks(loaded):
    assert tables.repartition(loaded[0], 3).materialize().num_blocks() == 3


def test_repartition_unknown_column(loaded):
    with pytest.raises(ByzerError, match=r'unknown column fil \(did you mean "file"\?\); columns: value, file'):
        tables.repartition(loaded[0], 2, ["fil"])


def test_describe_counts_only_when_cheap(loaded):
    lazy = tables.run_sql("select value, file from t where value <> ''", {"t": loaded[1]})
    summary = tables.describe(lazy, 3)
    assert summary.row_count is None and len(summary.head) == 3  # counting would read every row
    assert summary.schema.names == ["value", "file"]
    assert tables.describe(lazy.materialize(), 2).row_count == lazy.count()
