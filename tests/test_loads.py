"""load json / parquet / csv / text through a real IPython shell on the embedded head: options,
encodings (a real GB18030 file), and big files read in pieces."""
from __future__ import annotations

import json
import random
import re

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from IPython.core.error import UsageError

from byzer_magic.runtime.tables.text import decode, read_piece

ZH = ["预训练语料：第一行", "百川与骆驼", "混合 ASCII and 中文 text", "", "最后一行"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loads")
    rows = [{"instruction": f"q{i}", "output": f"a{i}", "n": i} for i in range(6)]
    (root / "json").mkdir()
    for part in range(2):
        (root / "json" / f"part-{part}.json").write_text(
            "".join(json.dumps(r) + "\n" for r in rows[part * 3:part * 3 + 3]))
    (root / "json" / "_SUCCESS").write_text("")  # Spark's marker: skipped
    (root / "parquet").mkdir()
    for part in range(2):
        pq.write_table(pa.Table.from_pylist(rows[part * 3:part * 3 + 3]), root / "parquet" / f"p{part}.parquet")
    (root / "parquet" / "_SUCCESS").write_text("")
    (root / "with_header.csv").write_text("name,count,text\nx,1,hello\ny,2,\"a, b\"\n")
    (root / "plain.tsv").write_text("1\tone\n2\ttwo\n3\tthree\n")
    (root / "zh.txt").write_bytes(("\n".join(ZH) + "\n").encode("gb18030"))
    lines = [f"line {i} " + "x" * (i * 37 % 500) for i in range(2000)]  # ~500 kB, lines up to 500 bytes
    (root / "big.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


# ---------------------------------------------------------------------------- pieces (no Ray)
@pytest.mark.parametrize("data", [b"ab\ncdef\n\ng\r\nhijklmnop\nq", b"\n\n\n", b"no newline at all", b"x\n",
                                  "百川\n骆驼\n".encode("gb18030"), b""])
def test_pieces_hold_every_line_once(tmp_path, data):
    path = tmp_path / "f"
    path.write_bytes(data)
    fs = pafs.LocalFileSystem()
    for chunk in range(1, len(data) + 2):
        pieces = [read_piece(fs, str(path), s, min(s + chunk, len(data)), len(data))
                  for s in range(0, len(data), chunk)]
        assert b"".join(pieces) == data, chunk
        filled = [p for p in pieces if p]
        assert all(p.endswith(b"\n") for p in filled[:-1]), chunk  # whole lines only


def test_decode_counts_replaced_bytes():
    raw = "百川".encode("gb18030")
    assert decode(raw, "gb18030") == ("百川", 0)
    text, bad = decode(b"ok " + raw + b"\xff", "utf-8")  # some GB18030 byte pairs are valid UTF-8
    assert text.startswith("ok ") and text.endswith("\ufffd") and 1 < bad <= len(raw) + 1


@pytest.mark.parametrize("wholetext", [True, False])
def test_read_tasks_get_smaller_towards_the_end_and_keep_the_rows(tmp_path, monkeypatch, wholetext):
    """tables/text.py _read_tasks with the CPUs' count: every byte in one piece, in order; the last tasks
    smaller, none below the floor but the very last; the same rows as without (wholetext: the pieces at
    multiples of the chunk size, each a row; lines: every line once, in order)."""
    from byzer_magic.runtime.tables import text
    from byzer_magic.runtime.tables.paths import resolve

    rng = random.Random(1)
    for i in range(12):
        (tmp_path / f"f{i:02d}.txt").write_text("".join(f"{i} {'y' * rng.randrange(90)}\n"
                                                        for _ in range(rng.randrange(1, 400))))
    (tmp_path / "f99.txt").write_text("")
    files, chunk, floor = resolve(str(tmp_path)), 16 * 1024, 2 * 1024
    monkeypatch.setattr(text, "MIN_TASK_BYTES", floor)

    def rows(tasks):
        return [row for task in tasks for row in text._read_task(
            pa.Table.from_pylist([task]), filesystem=files.filesystem, prefix="", wholetext=wholetext,
            encoding="utf-8").column("value").to_pylist()]

    plain, guided = (text._read_tasks(files, chunk, wholetext=wholetext, slots=slots) for slots in (0, 2))
    sizes = [sum(e - s for s, e in zip(t["starts"], t["ends"])) for t in guided]
    assert len(guided) > len(plain) and max(sizes) <= chunk and sizes[-2] < chunk / 2
    pieces = [(p, s, e) for t in guided for p, s, e in zip(t["paths"], t["starts"], t["ends"])]
    for path, size in zip(files.paths, files.sizes):
        mine = [(s, e) for p, s, e in pieces if p == path]
        assert mine[0][0] == 0 and mine[-1][1] == size and all(a[1] == b[0] for a, b in zip(mine, mine[1:]))
        assert not wholetext or all(s % chunk == 0 for s, _ in mine)
    assert rows(guided) == rows(plain)
    if not wholetext:  # lines are cut anywhere: no task below the floor but the last
        assert min(sizes[:-1]) >= floor
        assert rows(guided) == [line for p in files.paths for line in open(p).read().splitlines()]


# ---------------------------------------------------------------------------- formats, on Ray
def test_json_lines_folder(byzer, data):
    frame = byzer(f"load json.`file://{data}/json` as sft;\n"
                  'select concat(instruction, "\\n", output) as text, n from sft order by n as t;')
    assert list(frame["text"]) == [f"q{i}\na{i}" for i in range(6)] and list(frame["n"]) == list(range(6))


def test_parquet_folder(byzer, data):
    frame = byzer(f"load parquet.`{data}/parquet/*.parquet` as p;\nselect sum(n) as total, count(*) as rows from p as s;")
    assert frame.to_dict("records") == [{"total": 15, "rows": 6}]


def test_csv_header_delimiter_and_types(byzer, data):
    frame = byzer(f'load csv.`{data}/with_header.csv` where header="true" as c;')
    assert list(frame.columns) == ["name", "count", "text"] and list(frame["text"]) == ["hello", "a, b"]
    assert list(frame["count"]) == ["1", "2"]  # strings, as Spark reads csv without inferSchema
    typed = byzer(f'load csv.`{data}/with_header.csv` where header="true" and inferSchema="true" as c;')
    assert list(typed["count"]) == [1, 2]
    plain = byzer(f'load csv.`{data}/plain.tsv` where delimiter="\\t" as p;\n'
                  "select concat(_c0, ':', _c1) as text from p as q;")
    assert sorted(plain["text"]) == ["1:one", "2:two", "3:three"]  # no order without an order by


@pytest.mark.parametrize("cell, at, message", [
    ('load csv.`{d}/plain.tsv` where delimiter="::" as p;', "delimiter", "delimiter must be one character"),
    ('load csv.`{d}/plain.tsv` where header="yes" as p;', "header", 'header must be "true" or "false"'),
    ('load text.`{d}/zh.txt` where encoding="gb1830" as p;', "encoding",
     'unknown encoding "gb1830" (did you mean "gb18030"?)'),
    ('load text.`{d}/zh.txt` where encoding="utf-16" as p;', "encoding", "is not ASCII-compatible"),
    ('load text.`{d}/zh.txt` where chunkSize="big" as p;', "chunkSize", 'chunkSize must be a size such as "64m"'),
    ('load json.`{d}/json` where header="true" as p;', "header", 'unknown option "header" (load json takes none)'),
    ("load jsonl.`{d}/json` as p;", "jsonl", 'unknown format "jsonl" (did you mean "json"?); formats: text, json, '
                                             "parquet, csv"),
])
def test_bad_load_options_are_located(byzer, data, cell, at, message):
    cell = cell.format(d=data)
    with pytest.raises(UsageError) as info:
        byzer(cell)
    first = str(info.value).split("\n")[0]
    assert first.startswith(f"in `load` line 1, column {cell.index(at) + 1}: ") and message in first, first


# ---------------------------------------------------------------------------------- encodings
def test_gb18030_read_with_its_encoding(byzer, data, capsys):
    frame = byzer(f'load text.`{data}/zh.txt` where encoding="gb18030" as zh;')
    assert list(frame["value"]) == ZH
    assert "note:" not in capsys.readouterr().out
    whole = byzer(f'load text.`{data}/zh.txt` where wholetext="true" and encoding="GB18030" as zh;')
    assert list(whole["value"]) == ["\n".join(ZH) + "\n"]


def test_non_utf8_is_reported_in_the_cell(byzer, data, capsys):
    raw = (data / "zh.txt").read_bytes()
    expected = decode(raw, "utf-8")[1]
    assert expected > 0
    byzer(f"load text.`{data}/*.txt` as zh;")
    out = capsys.readouterr().out
    note = next(line for line in out.splitlines() if line.startswith("note: zh: "))
    assert f"{data}/zh.txt ({expected:,} of {len(raw):,} bytes)" in note, note
    assert "1 file not valid utf-8" in note and "big.txt" not in note
    assert 'write encoding="gb18030"' in note


# --------------------------------------------------------------------------- big files, pieces
def _expected_pieces(text: bytes, chunk: int) -> list[bytes]:
    """Each line goes to the piece its first byte falls in (the reference for text.py's split)."""
    pieces: dict[int, bytes] = {}
    start = 0
    for line in text.splitlines(keepends=True):
        pieces[start // chunk] = pieces.get(start // chunk, b"") + line
        start += len(line)
    return list(pieces.values())


def test_wholetext_splits_a_big_file_at_line_ends(byzer, data):
    raw = (data / "big.txt").read_bytes()
    byzer(f'load text.`{data}/big.txt` where wholetext="true" and chunkSize="16k" as big;', line="-o big_ds")
    from IPython import get_ipython

    ds = get_ipython().user_ns["big_ds"]
    values = [row["value"].encode() for row in ds.iter_rows()]
    assert sorted(values) == sorted(_expected_pieces(raw, 16 * 1024))
    assert len(values) == -(-len(raw) // (16 * 1024)) and max(map(len, values)) <= 16 * 1024 + 500
    assert {row["file"] for row in ds.iter_rows()} == {str(data / "big.txt")}
    # A job's small localDataDir is read in its driver (driver/inputs.py): the same rows, in file order.
    from byzer_magic.runtime.tables.paths import resolve
    from byzer_magic.runtime.tables.text import read_text_here

    here = [t for table in read_text_here(resolve(f"{data}/big.txt"), wholetext=True, chunk_size=16 * 1024)
            for t in table.column("value").to_pylist()]
    assert [t.encode() for t in here] == _expected_pieces(raw, 16 * 1024) and "".join(here).encode() == raw


def test_tokenising_reads_one_piece_per_task(ray_cluster, data, tmp_path):
    """The job's tokenising (driver/tokenise.py) runs a task per piece of load_text, whatever its batch
    size: fused into one task, a 1 GB corpus was read whole into one process's memory."""
    from byzer_magic.runtime.driver.tokenise import tokenised
    from byzer_magic.runtime.tables import load_text
    from tests.support.tiny import train_sentencepiece

    tokenizer = str(train_sentencepiece(tmp_path / "tok"))
    pieces = -(-(data / "big.txt").stat().st_size // (64 * 1024))
    (tmp_path / "pieces").mkdir()
    ds = tokenised(load_text(f"{data}/big.txt", wholetext=True, chunk_size=64 * 1024).rename_columns(
        {"value": "text"}), {"tokenizer_path": tokenizer, "text_column": "text",
                             "pieces_dir": str(tmp_path / "pieces")}).materialize()
    assert re.search(rf"\b{pieces} tasks executed", ds.stats()), ds.stats()
    assert ds.count() == pieces  # a row per piece, naming the files of its ids
    assert len(list((tmp_path / "pieces").glob("*.bin"))) == pieces


def test_store_from_tasks_equals_the_store_tokenised_here(ray_cluster, data, tmp_path):
    """The tasks' pieces (driver/tokenise.py), joined in the input's order, give the store the driver
    builds by tokenising the same rows itself: the same ids, documents and order; the pieces are gone."""
    import numpy as np

    from byzer_magic.runtime.driver.tokenise import build_store
    from byzer_magic.runtime.tables import load_text
    from byzer_magic.runtime.tables.paths import resolve
    from byzer_magic.runtime.tables.text import read_text_here
    from byzer_magic.runtime.token_store import TokenStore
    from tests.support.tiny import train_sentencepiece

    tokenizer = str(train_sentencepiece(tmp_path / "tok"))
    files = tmp_path / "corpus"
    files.mkdir()
    for name in ("big.txt", "plain.tsv", "with_header.csv"):
        (files / name).write_bytes((data / name).read_bytes())
    files = str(files)
    chunk = 32 * 1024  # big.txt in 16 pieces, read by 16 tasks
    kwargs = {"tokenizer_path": tokenizer, "text_column": "value", "by_partition": False}
    build_store(lambda: load_text(files, wholetext=True, chunk_size=chunk), tmp_path / "tasks", **kwargs)
    build_store(None, tmp_path / "here", read_here=lambda: read_text_here(resolve(files), wholetext=True,
                                                                          chunk_size=chunk), **kwargs)
    tasks, here = TokenStore.open(tmp_path / "tasks"), TokenStore.open(tmp_path / "here")
    assert tasks.documents == here.documents > 16 and np.array_equal(tasks.offsets, here.offsets)
    assert np.array_equal(tasks.tokens, here.tokens) and tasks.tokens.dtype == np.uint16
    assert not (tmp_path / "tasks.pieces").exists()


def test_lines_stream_in_pieces(byzer, data):
    lines = (data / "big.txt").read_text().splitlines()
    byzer(f'load text.`{data}/big.txt` where chunkSize="8k" as lines;', line="-o lines_ds")
    from IPython import get_ipython

    ds = get_ipython().user_ns["lines_ds"]
    assert "MapBatches(_read_task)" in str(ds) and ds.count() == len(lines)
    assert sorted(r["value"] for r in ds.iter_rows()) == sorted(lines)
    counted = byzer("select count(*) as n, max(length(value)) as longest from lines as c;")
    assert counted.to_dict("records") == [{"n": 2000, "longest": max(map(len, lines))}]


def test_missing_paths_name_the_path(byzer, data):
    with pytest.raises(UsageError, match=re.escape(f"no files match {data}/nope/*.json")):
        byzer(f"load json.`{data}/nope/*.json` as j;")
