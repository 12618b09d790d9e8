"""A job outlives the kernel that submitted it. Kernel A (a real IPython kernel) submits a detached run
through ``%%byzerllm`` and is killed; kernel B, a fresh one as after a restart, lists the job, attaches
and sees the curve so far, then follows it to the end. Both kernels inherit the test session's
``BYZER_MAGIC_HOME``, so they share its embedded Ray head."""
from __future__ import annotations

import re
import shutil
import time

import psutil
import pytest

from tests.support.notebooks import running_kernel
from tests.support.tiny import make_tiny_llama_dir, stdlib_text_files, train_sentencepiece

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

STEPS = 600  # 10-80 ms a step: seconds to a minute of training, kernel B attaches while it runs


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("restart-assets")
    text = root / "text"
    text.mkdir()
    for path in stdlib_text_files(20):
        shutil.copyfile(path, text / path.name)
    model_dir = make_tiny_llama_dir(root / "Llama-2-tiny-hf", train_sentencepiece(root / "tok"))
    return {"text": text, "model_dir": model_dir}


def _submit_cell(name: str, assets) -> str:
    return f"""%%byzerllm
load text.`file://{assets['text']}/*.py` where wholetext="true" as trainData;
select value as text, file from trainData as newTrainData;
run newTrainData as TableRepartition.`` where partitionNum="2" and partitionCols="file" as finalTrainData;
!byzerllm setup sfft;
!byzerllm setup "num_gpus=2";
run command as LLM.`` where
name="{name}"
and pretrainedModelType="sfft/llama2"
and localModelDir="{assets['model_dir']}"
and inputTable="finalTrainData"
and detached="true"
and keepPartitionNum="true"
and `sfft.int.max_length`="32"
and `sfft.int.steps_per_epoch`="{STEPS}"
and `sfft.int.log_every`="1"
and `sfft.int.checkpoint_every`="{STEPS}";
"""


def _wait_for_steps(job, n: int, timeout: float) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        logged = len(job.metrics())
        if logged >= n or job.status() in ("SUCCEEDED", "FAILED", "STOPPED", "LOST"):
            return logged
        time.sleep(0.5)
    raise AssertionError(f"job {job.name} logged {len(job.metrics())} step(s) in {timeout} s "
                         f"(status {job.status()}):\n{job.logs(tail=30)}")


def test_job_survives_a_killed_kernel_and_a_new_kernel_reattaches(ray_cluster, assets, tmp_path):
    import byzer_magic

    name = time.strftime("restart-%Y%m%d-%H%M%S")
    with running_kernel(cwd=tmp_path) as kernel_a:
        kernel_a.run("%load_ext byzer_magic")
        out = kernel_a.run(_submit_cell(name, assets), timeout=420)
        assert f"Submitted job {name} (detached)" in out, out
        assert "JobMonitor" in out, out  # a detached submission shows its monitor
        # The cell returned at once: the job has not even started training.
        assert byzer_magic.get_job(name).status() in ("PENDING", "RUNNING")
        pid = kernel_a.pid
        kernel_a.kill()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    # The job goes on without the kernel that submitted it. A new kernel (started now, so that it
    # attaches as soon as there is a curve) finds it by name.
    with running_kernel(cwd=tmp_path) as kernel_b:
        kernel_b.run("%load_ext byzer_magic")
        job = byzer_magic.get_job(name)
        so_far = _wait_for_steps(job, 3, timeout=480)
        assert so_far >= 3, job.logs(tail=30)
        table = kernel_b.run("%byzerllm jobs")
        row = next((line for line in table.splitlines() if line.startswith(name)), None)
        assert row is not None, table
        assert re.search(rf"\b(RUNNING|SUCCEEDED)\b.*\b\d+/{STEPS}\b", row), row

        kernel_b.run(f"monitor = get_ipython().run_line_magic('byzerllm', 'attach {name}')\nmonitor")
        first = kernel_b.run("print(len(monitor.plot_data), monitor.status, monitor.polling)").split()
        points, status = int(first[0]), first[1]
        print(f"steps logged before attaching: {so_far}; the attached monitor: {first}")
        assert points >= so_far, first  # the whole curve so far, read from the job's folder
        if status == "RUNNING":
            assert first[2] == "True", first  # and it follows the job from there

        # The end: the job succeeds, and the monitor (polling in the background) shows all of it.
        end = kernel_b.run(f"import byzer_magic\nprint(byzer_magic.get_job({name!r}).wait(timeout=600))",
                           timeout=660)
        assert end.strip().endswith("SUCCEEDED"), end + job.logs(tail=30)
        last = kernel_b.run(
            "import time\n"
            "deadline = time.time() + 60\n"
            "while monitor.polling and time.time() < deadline:\n"
            "    time.sleep(0.5)\n"
            "print(monitor.status, len(monitor.plot_data), monitor.progress.value, monitor.progress.max,\n"
            "      monitor.polling, [s for s, _ in monitor.plot_data] == list(range(1, %d)))" % (STEPS + 1),
            timeout=120).split()
        assert last == ["SUCCEEDED", str(STEPS), str(STEPS), str(STEPS), "False", "True"], last

