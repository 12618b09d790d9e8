"""Remote Ray clusters (issue #15 item 3): the three address forms, and a real two-node cluster started
here (tests/support/two_nodes.py) whose nodes do not have byzer-magic, nor sentencepiece (which the job
needs to tokenise), installed. A child process plays the kernel and submits through the Jobs API at
``http://127.0.0.1:<port>``: the job ships byzer-magic (``py_modules``) and sentencepiece (``pip``,
found missing by the pre-flight task on each node), and trains with one worker on each node. A job
whose folder the second node cannot see (a tmpfs over it, in that node's own mount namespace) is
refused before it is submitted, naming that node."""
from __future__ import annotations

import os
import secrets
import subprocess
import textwrap

import pytest

from byzer_magic.errors import ByzerError
from byzer_magic.runtime.remote import parse_address


@pytest.mark.parametrize("given, kind, value", [
    ("ray://head:10001", "client", "ray://head:10001"),
    ("10.0.0.5:6379", "gcs", "10.0.0.5:6379"),
    (" 127.0.0.1:6379 ", "gcs", "127.0.0.1:6379"),
    ("http://head.example.com:8265", "dashboard", "http://head.example.com:8265"),
    ("https://head:443/", "dashboard", "https://head:443"),
    ("HTTP://[::1]:8265", "dashboard", "http://[::1]:8265"),
])
def test_the_three_address_forms(given, kind, value):
    parsed = parse_address(given)
    assert (parsed.kind, parsed.value) == (kind, value)


@pytest.mark.parametrize("given, hint", [
    ("htp://head:8265", 'did you mean "http"'), ("head", "a host and a port are needed"),
    ("http://head", "a host and a port are needed"), ("head:99999", "a port is 1-65535"), ("auto", "a host and a port"),
    ("ray://head:10001/x", "a host and a port"), ("$(id):1", "a host and a port"),
])
def test_a_bad_address_names_the_three_forms(given, hint):
    with pytest.raises(ByzerError, match="ray://host:10001 .Ray Client., host:6379 .the GCS. or http://host:8265") as err:
        parse_address(given)
    assert hint.lower() in str(err.value).lower()


def test_the_requirements_a_job_ships_are_the_job_sides():
    """What the pre-flight checks on each node (and ships through pip when missing): byzer-magic's own
    requirements from its metadata, without the test extra, the notebook-only ones and Ray itself."""
    from byzer_magic.runtime.preflight import job_requirements

    names = {req.split("<")[0].split(">")[0].split("[")[0].split("=")[0] for req in job_requirements()}
    assert {"torch", "deepspeed", "transformers", "sentencepiece", "pyarrow"} <= names, names
    assert not names & {"ray", "ipython", "ipywidgets", "jupyterlab", "lark", "pytest", "playwright"}, names


KERNEL = """
from byzer_magic import DeepSpeedTrain, ParallelConfig, TrainArgs
from byzer_magic.errors import ByzerError
from byzer_magic.runtime import cluster
import ray

def job(name, prefix):
    return DeepSpeedTrain(ParallelConfig(num_workers=2, name=name, local_path_prefix=prefix, train_args=TrainArgs(
        model_path=%(model)r, data_dir=%(text)r, steps_per_epoch=4, max_length=32, checkpoint_every=2)))

def where_byzer_magic_comes_from():
    import byzer_magic, ray
    return ray.get_runtime_context().get_node_id(), byzer_magic.__file__
"""


@pytest.mark.parametrize("printed_first", [True, False])
def test_the_gcs_address_is_read_from_either_order_of_the_job_log(printed_first):
    from byzer_magic.runtime.remote import reported_gcs

    lines = ["byzer-magic-gcs=10.0.0.5:6379",
             'Running entrypoint for job raysubmit_x: echo "byzer-magic-gcs=$RAY_ADDRESS"']
    log = "INFO job_manager.py:581 -- Runtime env is setting up.\n" + "\n".join(
        lines if printed_first else lines[::-1]) + "\n"
    assert reported_gcs(log) == "10.0.0.5:6379"
    assert reported_gcs(lines[1]) is None


def test_a_submission_waits_for_a_new_heads_job_agent(monkeypatch):
    """A head that has just started answers "No available agent" until its job agent registers (the
    two-node test met it connecting through the dashboard): every submission waits for it, other
    errors are raised at once. The client stands in for the answers Ray gave."""
    from byzer_magic.runtime import remote

    class Client:
        def __init__(self, answers):
            self.answers, self.calls = list(answers), 0

        def submit_job(self, **job):
            self.calls += 1
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    monkeypatch.setattr(remote.time, "sleep", lambda s: None)
    busy = RuntimeError("Request failed with status code 500: No available agent to submit job, please try again later..")
    client = Client([busy, busy, "raysubmit_1"])
    assert remote.submit_job(client, entrypoint="echo") == "raysubmit_1" and client.calls == 3
    client = Client([RuntimeError("Job with submission_id x already exists.")])
    with pytest.raises(RuntimeError, match="already exists"):
        remote.submit_job(client, entrypoint="echo")
    client = Client([busy] * 3)
    with pytest.raises(RuntimeError, match="No available agent"):
        remote.submit_job(client, agent_wait=0, entrypoint="echo")
    assert client.calls == 1


def test_the_dashboard_reports_the_gcs_address(ray_cluster):
    """A one-line Ray Job prints the GCS address (remote.py gcs_from_dashboard); Ray's job log also
    holds the entrypoint itself, ``$RAY_ADDRESS`` unexpanded, which is not the answer."""
    from byzer_magic.runtime.remote import gcs_from_dashboard

    assert gcs_from_dashboard(ray_cluster.dashboard_url) == ray_cluster.address


@pytest.mark.slow
def test_a_job_on_a_two_node_cluster_without_byzer_magic(tmp_path):
    from tests.support.kernels import Kernel
    from tests.support.tiny import make_tiny_llama_dir, stdlib_text_files, train_sentencepiece
    from tests.support.two_nodes import TwoNodes, can_unshare, node_python

    python = node_python(tmp_path, leave_out=("sentencepiece",))
    lacks = subprocess.run([str(python), "-c", textwrap.dedent("""
        import importlib.util as u, ray
        print([m for m in ("byzer_magic", "sentencepiece") if u.find_spec(m)], ray.__version__)""")],
        cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split("]")
    import ray
    assert lacks[0] == "[" and lacks[1].strip() == ray.__version__, lacks  # neither installed; the same Ray

    tokenizer = train_sentencepiece(tmp_path / "tok")
    model = make_tiny_llama_dir(tmp_path / "llama", tokenizer)
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(p.read_text() for p in stdlib_text_files(3)))
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    hidden = tmp_path / "unshared"  # on the second node: an empty tmpfs
    hidden.mkdir()
    nodes = TwoNodes(tmp_path, python, token, hidden=hidden if can_unshare() else None)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
        "BYZER_MAGIC_HOME": str(tmp_path / "home"), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
        "HF_TOKEN": secrets.token_hex(8)}  # a secret the workers need: the nodes' environment lacks it
    kernel = Kernel(env, cwd=tmp_path)  # outside the repository, as a notebook on another machine is
    try:
        nodes.start()
        head = next(n["node_id"] for n in nodes.nodes() if n["is_head_node"])
        second = next(n["node_id"] for n in nodes.nodes() if not n["is_head_node"])
        kernel.ok(KERNEL % {"model": str(model), "text": str(text)})

        # The dashboard's address, as Ray's Jobs documentation writes it; byzer-magic reaches every node.
        address, url, embedded, shipped = kernel.ok(textwrap.dedent(f"""
            info = cluster.connect({nodes.dashboard!r})
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On
            task = ray.remote(num_cpus=0)(where_byzer_magic_comes_from)
            shipped = ray.get([task.options(scheduling_strategy=On(n, soft=False)).remote() for n in {[head, second]!r}])
            out = [info.address, info.dashboard_url, info.embedded, shipped]"""))
        assert (address, url, embedded) == (nodes.gcs, nodes.dashboard, False)
        assert [node for node, _ in shipped] == [head, second]
        assert all("runtime_resources" in path for _, path in shipped), shipped  # from py_modules

        if nodes.hidden is not None:
            refused = kernel.ok(f"try:\n    job('unshared', {str(hidden)!r}).submit()\n    out = 'submitted'\n"
                                f"except ByzerError as err:\n    out = str(err)")
            assert f"the job folder {hidden / 'unshared'} is not shared storage every node reaches" in refused
            assert f"id {second[:12]}) cannot use the job folder: FileNotFoundError" in refused, refused
            assert f"id {head[:12]})" not in refused, refused

        status, steps, logs, runtime_env, worker_nodes = kernel.ok(textwrap.dedent(f"""
            handle = job("two-nodes", {str(tmp_path / "jobs")!r}).submit()
            status = handle.wait(timeout=600)
            from ray.job_submission import JobSubmissionClient
            from ray.util.state import list_actors
            workers = list_actors(address=info.dashboard_url, filters=[("class_name", "=", "RayTrainWorker")],
                                  detail=True, raise_on_missing_output=False)
            logs = handle.logs()
            import re
            handed = sorted(set(re.findall(r"\\[(W-\\d)-two-nodes\\] from the job's driver: HF_TOKEN", logs)))
            out = [status, handle.metrics()["step"].tolist(), logs[-6000:] + str(handed),
                   JobSubmissionClient(info.dashboard_url).get_job_info(handle.submission_id).runtime_env,
                   sorted(w.node_id for w in workers)]"""), timeout=900)
        assert status == "SUCCEEDED", logs
        assert steps == [1, 2, 3, 4]
        assert logs.endswith("['W-0', 'W-1']"), logs[-600:]  # HF_TOKEN reached both workers
        assert env["HF_TOKEN"] not in logs and env["HF_TOKEN"] not in str(runtime_env)
        assert worker_nodes == sorted([head, second]), worker_nodes  # one training worker on each node
        assert any("sentencepiece" in req for req in runtime_env["pip"]["packages"]), runtime_env
        assert runtime_env["py_modules"] and runtime_env["py_modules"][0].startswith("gcs://"), runtime_env

        # The two other forms reach the same cluster.
        for form in (nodes.gcs, nodes.client):
            assert kernel.ok(f"info = cluster.connect({form!r})\nout = [info.dashboard_url, "
                             f"ray.get(ray.remote(num_cpus=0)(where_byzer_magic_comes_from).remote())[0] != '']") \
                == [nodes.dashboard, True], form
    finally:
        kernel.close()
        nodes.stop()
