"""%%byzerllm and %byzerllm in a real IPython shell on a real Ray head, cells typed as users type them."""
from __future__ import annotations

import json
import shlex
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
from IPython.core.error import UsageError

# The first three ```sql cells of the original user document (byzer-llm-pretrain.zh.md), verbatim.
DOC_LOAD_SELECT = """-- 加载收集到的文本数据
load text.`file:///home/byzerllm/data/raw_data/*`
where wholetext="true" as trainData;

select value as text,file from trainData  as newTrainData;
"""

DOC_TRAIN = """
-- 把数据切割成24份，因为我们后续要用24块卡来训练
-- 这里需要保证 Byzer引擎的所在服务器至少有24+CPU 可用，否则可能会导致
-- 任务hang住
run newTrainData as TableRepartition.`` where partitionNum="24" and partitionCols="file" as finalTrainData;


--设置环境，比如总共使用 24 块卡做预训练
!byzerllm setup sfft;
!byzerllm setup "num_gpus=24";


-- 指定原始的模型进行二次预训练
run command as LLM.`` where 
-- 给训练起个名字
name="sfft-wiliam-llama2-pretrain"
and localPathPrefix="/home/byzerllm/models/sfft/jobs"
and pretrainedModelType="sfft/llama2"
-- 原始模型
and localModelDir="/home/byzerllm/models/Llama-2-7b-chat-hf"
-- and localDataDir="/home/byzerllm/data/raw_data"

-- 异步执行，因为这种训练往往需要几天几周甚至几个月。用户可以在
-- Ray Dashboard 找到 tensorboard 的地址，然后观察Loss
and detached="true"
and keepPartitionNum="true"

-- 配置deepspeed, 可选
-- and deepspeedConfig='''${ds_config}'''

-- 用来做预训练的数据
and inputTable="finalTrainData"
and outputTable="llama2_cn"
and model="command"

-- 一些特殊的预训练参数
and `sfft.int.max_length`="128"
-- 一些异构服务器网络设备号命名不统一，会导致ncll通信失败，这里设置为true就好
and `sfft.bool.setup_nccl_socket_ifname_by_ip`="true"
;
"""

DOC_DS_CONFIG = """set ds_config='''
{
  "gradient_accumulation_steps": 1,
  "train_micro_batch_size_per_gpu": 1,
  "prescale_gradients": false,
  "zero_allow_untested_optimizer": true,
  "optimizer": {
    "type": "AdamW",
    "params": {
      "lr": 1e-8,
      "eps": 1.0e-8,
      "betas": [
        0.9,
        0.95
      ],
      "weight_decay": 0.1
    }
  },
  "tensorboard": {
    "enabled": true
  },
  "zero_optimization": {
    "stage": 3,
    "offload_optimizer": {
         "device": "cpu"         
     },           
    "offload_param": {
         "device": "cpu"
    },
    "contiguous_gradients": true,
    "allgather_bucket_size": 1e8,
    "reduce_bucket_size": 1e8,
    "overlap_comm": true,
    "reduce_scatter": true
  },
  "steps_per_print": 16,
  "gradient_clipping": 1.0,
  "wall_clock_breakdown": true,
  "bf16": {
    "enabled": true
  }
}
''';
"""


def _with_paths(cell: str, text_files: Path, tmp: Path) -> str:
    """Only the paths change: the data folder, the job folder and the model folder."""
    return (cell.replace("file:///home/byzerllm/data/raw_data/*", f"file://{text_files}/*")
                .replace("/home/byzerllm/models/sfft/jobs", str(tmp / "jobs"))
                .replace("/home/byzerllm/models/Llama-2-7b-chat-hf", str(tmp / "model"))
                .replace("/home/byzerllm/data/raw_data", str(text_files)))


@pytest.fixture
def fake_llm(monkeypatch):
    """Stand in for `run ... as LLM` (training is tested elsewhere): record what the session hands over."""
    calls = []
    module = types.ModuleType("byzer_magic.language.llm_run")

    def run_llm(session, statement, **kwargs):
        calls.append((session, statement, kwargs))
        return "submitted"

    module.run_llm = run_llm
    monkeypatch.setitem(sys.modules, "byzer_magic.language.llm_run", module)
    return calls


def test_user_doc_cells_run_verbatim(shell, text_files, tmp_path, fake_llm):
    load_select, train, ds_config = (_with_paths(c, text_files, tmp_path)
                                     for c in (DOC_LOAD_SELECT, DOC_TRAIN, DOC_DS_CONFIG))

    first = shell.run_cell("%%byzerllm\n" + load_select)
    assert first.success, first.error_in_exec
    frame = first.result
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == ["text", "file"]
    assert len(frame) == 10  # ByzerMagic.max_rows
    assert "table newTrainData" in repr(frame) and "text: string, file: string" in repr(frame)
    assert "<b>newTrainData</b>" in frame._repr_html_()

    second = shell.run_cell("%%byzerllm\n" + train)
    assert second.success, second.error_in_exec
    assert second.result == "submitted"
    session, statement, _ = fake_llm[0]
    assert session.setup == {"sfft": True, "num_gpus": 24}
    options = {o.key: o.value for o in statement.options}
    assert options["inputTable"] == "finalTrainData" and options["sfft.int.max_length"] == "128"
    # 24 hash partitions by file, planned lazily (test_tables runs and checks a keyed repartition).
    plan = session.table("finalTrainData")._logical_plan.dag
    assert (plan.num_outputs, plan.keys) == (24, ["file"])

    third = shell.run_cell("%%byzerllm\n" + ds_config)
    assert third.success, third.error_in_exec
    config = json.loads(session.variables["ds_config"])
    assert config["zero_optimization"]["stage"] == 3 and config["bf16"] == {"enabled": True}


def test_llm_gets_interpolated_options(byzer, fake_llm, shell):
    shell.user_ns["model_type"] = "sfft/llama2"  # a notebook variable, for ${model_type}
    byzer("set ds_config='''{\"train_micro_batch_size_per_gpu\": 1}''';\n"
          "run command as LLM.`` where pretrainedModelType=\"${model_type}\"\n"
          "and deepspeedConfig='''${ds_config}''';")
    options = {o.key: o.value for o in fake_llm[0][1].options}
    assert options == {"pretrainedModelType": "sfft/llama2",
                       "deepspeedConfig": '{"train_micro_batch_size_per_gpu": 1}'}


def test_llm_not_yet_available(byzer, monkeypatch):
    monkeypatch.setitem(sys.modules, "byzer_magic.language.llm_run", None)  # as if not written yet
    with pytest.raises(UsageError, match=r"line 1, column 1: `run \.\.\. as LLM` is not yet available"):
        byzer('run command as LLM.`` where noSuchParameter="x";')


def test_output_variable_and_persistence_across_cells(byzer, shell, text_files):
    byzer(f"load text.`{text_files}/*.py` as lines;\nset pattern='%import%';", line="-o raw")
    import ray.data

    assert isinstance(shell.user_ns["raw"], ray.data.Dataset)
    frame = byzer("select value, file from lines where value like '${pattern}' as imports;", line="-o imports")
    assert frame["value"].str.contains("import").all()
    assert isinstance(shell.user_ns["imports"], ray.data.Dataset)
    shell.user_ns["min_length"] = 60  # ${name} falls back to the notebook's Python variables
    frame = byzer("select value from imports where length(value) >= ${min_length} as longer")
    assert (frame["value"].str.len() >= 60).all()
    with pytest.raises(UsageError, match="-o nothing: the cell made no table"):
        byzer("set x='1';", line="-o nothing")
    with pytest.raises(UsageError, match="needs a Python variable name"):
        byzer("set x='1';", line="-o")


def test_max_rows_is_configurable(byzer, shell, text_files):
    shell.run_line_magic("config", "ByzerMagic.max_rows = 3")
    try:
        assert len(byzer(f"load text.`{text_files}/*.py` as lines;")) == 3
    finally:
        shell.run_line_magic("config", "ByzerMagic.max_rows = 10")
    assert len(byzer("select * from lines as again;")) == 10


def test_tables_listing_and_reset(byzer, shell, text_files):
    byzer(f"load text.`{text_files}/*.py` where wholetext=\"true\" as docs;\n"
          "select file, count(*) as n from docs group by file as counts;\n"
          "select file from docs where file like '%mime%' as lazy;")
    listing = shell.run_line_magic("byzerllm", "tables")
    assert listing[["table", "schema"]].values.tolist() == [["docs", "value: string, file: string"],
                                                            ["counts", "file: string, n: int64"],
                                                            ["lazy", "file: string"]]
    assert listing["rows"][1] == 20 and pd.isna(listing["rows"][2])  # counted only when cheap
    shell.run_line_magic("byzerllm", "reset")
    assert shell.run_line_magic("byzerllm", "tables") is None


def test_help(shell, capsys):
    shell.run_cell("%byzerllm?")
    out = capsys.readouterr().out
    for text in ("%%byzerllm [-o NAME]", "%byzerllm tables", "%byzerllm reset", "ByzerMagic.<name>",
                 "max_rows"):
        assert text in out
    shell.run_line_magic("byzerllm", "help")
    assert "%byzerllm tables" in capsys.readouterr().out
    with pytest.raises(UsageError, match=r'unknown %byzerllm command "tabels" \(did you mean "tables"\?\)'):
        shell.run_line_magic("byzerllm", "tabels")


def test_connects_once_and_says_where(shell, capsys):
    from byzer_magic.magics.magic import ByzerMagic

    magic = ByzerMagic(shell=shell)  # a fresh instance, as in a new kernel
    info = magic.connect()
    assert magic.connect() is info
    out = capsys.readouterr().out
    assert out.count("dashboard http://127.0.0.1:") == 1


def test_extension_reload(shell):
    shell.run_line_magic("unload_ext", "byzer_magic")
    assert "byzerllm" not in shell.magics_manager.magics["cell"]
    shell.run_line_magic("load_ext", "byzer_magic")
    assert "byzerllm" in shell.magics_manager.magics["cell"]
    assert sum(type(c).__name__ == "ByzerMagic" for c in shell.configurables) == 1


# -- sub-commands: a parser each ------------------------------------------------------------------------

def _job_folder(shell, name: str, **kwargs) -> Path:
    from byzer_magic.magics.magic import ByzerMagic
    from tests.support.jobs import write_job_folder

    magic = shell.find_cell_magic("byzerllm").__self__
    assert isinstance(magic, ByzerMagic)
    return write_job_folder(magic.session.jobs_dir / name, name, **kwargs)


def test_sub_commands_parse_their_arguments(shell, capsys):
    from byzer_magic.runtime import tensorboard

    from torch.utils.tensorboard import SummaryWriter

    job_dir = _job_folder(shell, "parse-demo")
    with SummaryWriter(str(job_dir / "tensorboard")) as events:  # the frame shows once there are scalars
        events.add_scalar("train/loss", 2.5, 1)
    try:  # one server: the second line reuses the first one's
        for line, started in (("tensorboard --keep parse-demo", tensorboard.Launched),
                              ("tensorboard parse-demo --keep", tensorboard.Reused)):
            frame = shell.run_line_magic("byzerllm", line)  # --keep is an option, never the job's name
            assert frame.keep and frame.logdir == str(job_dir / "tensorboard")
            assert isinstance(frame.wait(60), started), frame.message.value
    finally:
        tensorboard.stop(job_dir / "tensorboard")
    with pytest.raises(UsageError, match=r"^%byzerllm attach: the following arguments are required: NAME; "
                                         r"usage: %byzerllm attach NAME$"):
        shell.run_line_magic("byzerllm", "attach")
    with pytest.raises(UsageError, match=r"%byzerllm export: argument --step: invalid int value: 'last'"):
        shell.run_line_magic("byzerllm", "export parse-demo --step last")
    with pytest.raises(UsageError, match=r"%byzerllm stop: unrecognized arguments: --now"):
        shell.run_line_magic("byzerllm", "stop parse-demo --now")
    with pytest.raises(UsageError, match=r"no job named 'parse-dem' \(did you mean"):
        shell.run_line_magic("byzerllm", "attach parse-dem")
    capsys.readouterr()
    assert shell.run_line_magic("byzerllm", "logs --help") is None  # help, and nothing runs
    assert "-f, --follow" in capsys.readouterr().out


def test_logs_follow_streams_the_job_log_once(shell, ray_cluster, capsys, monkeypatch):
    """`%byzerllm logs -f` prints the last lines, then what the job writes as Ray streams it, each line
    once, and returns when the job ends; the whole log is downloaded once, not every few seconds."""
    import time

    from ray.job_submission import JobSubmissionClient

    from byzer_magic.runtime.kernel.jobs import JobHandle

    name = time.strftime("logs-demo-%H%M%S")
    _job_folder(shell, name)
    script = "import time\nfor i in range(8):\n    print(f'line {i}', flush=True)\n    time.sleep(0.5)\n"
    client = JobSubmissionClient(ray_cluster.dashboard_url)
    client.submit_job(entrypoint=f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}", submission_id=name)
    downloads = []
    logs = JobHandle.logs
    monkeypatch.setattr(JobHandle, "logs", lambda self, tail=None: downloads.append(1) or logs(self, tail))
    deadline = time.time() + 60
    while "line 0" not in client.get_job_logs(name) and time.time() < deadline:
        time.sleep(0.2)
    capsys.readouterr()
    shell.run_line_magic("byzerllm", f"logs -f {name}")
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("line ")] == [f"line {i}" for i in range(8)]
    assert client.get_job_status(name).is_terminal() and len(downloads) == 1
