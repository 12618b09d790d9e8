"""Loads from s3:// against a real S3 API server on 127.0.0.1 (moto's server mode, started here): the
notebook's AWS_* settings reach the Ray workers that read the objects."""
from __future__ import annotations

import io
import json
import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from IPython.core.error import UsageError

DOCS = {"docs/a.txt": "alpha one\nalpha two\n", "docs/b.txt": "beta\n", "docs/sub/c.txt": "gamma\n",
        "docs/.hidden.txt": "never\n"}


@pytest.fixture(scope="module")
def s3_bucket():
    boto3 = pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    patch = pytest.MonkeyPatch()
    for key, value in {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret",
                       "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        patch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
    client.create_bucket(Bucket="corpus")
    objects = dict(DOCS)
    objects["sft/part-0.json"] = "".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n"
                                         for i in range(3))
    objects["sft/_SUCCESS"] = ""
    objects["csv/t.csv"] = "id,text\n1,hello\n2,world\n"
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": ["p", "q"], "n": [1, 2]}), buffer)
    for key, body in objects.items():
        client.put_object(Bucket="corpus", Key=key, Body=body.encode() if isinstance(body, str) else body)
    client.put_object(Bucket="corpus", Key="pq/x.parquet", Body=buffer.getvalue())
    yield "corpus"
    patch.undo()
    server.stop()


def test_text_glob_folder_and_lines(byzer, s3_bucket):
    whole = byzer('load text.`s3://corpus/docs/*.txt` where wholetext="true" as docs;')
    assert sorted(zip(whole["file"], whole["value"])) == [("s3://corpus/docs/a.txt", DOCS["docs/a.txt"]),
                                                          ("s3://corpus/docs/b.txt", DOCS["docs/b.txt"])]
    lines = byzer("load text.`s3://corpus/docs` as lines;")  # a folder: every file below it, not hidden ones
    assert sorted(lines["value"]) == ["alpha one", "alpha two", "beta", "gamma"]
    deep = byzer("load text.`s3://corpus/**/*.txt` as deep;")
    assert sorted(set(deep["file"])) == ["s3://corpus/docs/a.txt", "s3://corpus/docs/b.txt",
                                         "s3://corpus/docs/sub/c.txt"]


def test_json_parquet_csv(byzer, s3_bucket):
    sft = byzer('load json.`s3://corpus/sft` as sft;\nselect concat(instruction, "\\n", output) as text '
                "from sft order by text as t;")
    assert list(sft["text"]) == ["q0\na0", "q1\na1", "q2\na2"]
    table = byzer("load parquet.`s3://corpus/pq/x.parquet` as p;")
    assert table.to_dict("records") == [{"text": "p", "n": 1}, {"text": "q", "n": 2}]
    csv = byzer('load csv.`s3://corpus/csv/t.csv` where header="true" as c;')
    assert csv.to_dict("records") == [{"id": "1", "text": "hello"}, {"id": "2", "text": "world"}]


def test_missing_objects_name_the_path(byzer, s3_bucket):
    with pytest.raises(UsageError, match=r"line 1, column 12: no files match s3://corpus/docs/\*\.md"):
        byzer("load text.`s3://corpus/docs/*.md` as t;")
    with pytest.raises(UsageError, match=r"no files to load: s3://corpus/nothing does not exist"):
        byzer("load text.`s3://corpus/nothing` as t;")
