"""A hostile corpus: each cell is refused by the real magic with one located line (a UsageError), fast,
in bounded memory, before anything connects to Ray or starts a job (no Ray head is needed: connecting
is made to fail the test)."""
from __future__ import annotations

import re
import time
import tracemalloc

import pytest
from IPython.core.error import UsageError

BASE = """!byzerllm setup "num_gpus=2";
run command as LLM.`` where name="hostile"
and pretrainedModelType="sfft/llama2"
and localDataDir="{data}"
{extra};"""


def ds(text: str) -> str:
    return f"and deepspeedConfig='''{text}'''"


def mc(text: str) -> str:
    return f"and modelConfig='''{text}'''"


def opt(key: str, value: str) -> str:
    return f'and `{key}`="{value}"' if "." in key else f'and {key}="{value}"'


DEEP = "[" * 100_000 + "]" * 100_000
# (what the statement adds to BASE, or a whole cell starting with "CELL:"; a regex the error must match)
CORPUS: list[tuple[str, str]] = [
    # -- malformed syntax (the parser) -------------------------------------------------------------------
    ('CELL:run command as LLM.`` where name="x', r"unterminated string"),
    ("CELL:run command as LLM.`` where name='x", r"unterminated string"),
    ("CELL:run command as LLM.`` where deepspeedConfig='''{", r"unterminated"),
    ('CELL:run command as LLM.`` where name="a" and;', r"."),
    ('CELL:run command as LLM.`` where and name="a";', r"."),
    ('CELL:run command as LLM.`` where name=;', r"."),
    ('CELL:run command as LLM.`` where name "a";', r"."),
    ('CELL:run command as LLM.` where name="a";', r"."),
    ('CELL:run command as LLM.`` where name="a" where name="b";', r"."),
    ('CELL:run command as;', r"."),
    ('CELL:run command as LLM.`` where name="a"\nrun command as LLM.`` where name="b";', r"expected ';'"),
    ('CELL:run command as LLM.`` where name="a\x00";', r"control character U\+0000"),
    ('CELL:run command as LLM.`` where name="a\x1b[31m";', r"control character U\+001B"),
    ('CELL:run command as LLM.`` where name="a\x85";', r"control character U\+0085"),
    ('CELL:run command as LLM.`` where name="a" and name="b";', r"."),
    ('CELL:run command as LLM.`` where ``="a";', r"."),
    # -- unknown and misspelt parameters ----------------------------------------------------------------
    ('and learningRate="1"', r"unknown parameter `learningRate`"),
    ('and inputTabel="docs"', r'did you mean "inputTable"'),
    ('and locaModelDir="/m"', r'did you mean "localModelDir"'),
    ('and pretrainedModelTyp="sfft/llama2"', r'did you mean "pretrainedModelType"'),
    (opt("sfft.int.max_lenght", "128"), r'did you mean "max_length"'),
    (opt("sfft.double.max_length", "128"), r"use sfft.<int\|float\|bool\|str>.<key>"),
    (opt("sfft.max_length", "128"), r"use sfft.<int\|float\|bool\|str>.<key>"),
    (opt("sfft.int.", "128"), r"unknown training argument"),
    (opt("sfft.int.MAX_LENGTH", "128"), r'did you mean "max_length"'),
    (opt("sfft.str.tokenizer_pth", "/t"), r'did you mean "tokenizer_path"'),
    ('and detach="true"', r'did you mean "detached"'),
    ('and dryrunn="true"', r'did you mean "dryRun"'),
    # -- wrong types ------------------------------------------------------------------------------------
    (opt("sfft.int.max_length", "abc"), r'must be an integer, got "abc"'),
    (opt("sfft.int.max_length", "12.5"), r"must be an integer"),
    (opt("sfft.int.max_length", "1e3"), r"must be an integer"),
    (opt("sfft.int.max_length", "0x10"), r"must be an integer"),
    (opt("sfft.int.max_length", "1_000"), r"must be an integer"),
    (opt("sfft.int.max_length", "\u0661\u0662\u0668"), r"must be an integer"),  # Arabic-Indic digits
    (opt("sfft.int.max_length", ""), r"must be an integer"),
    (opt("sfft.int.max_length", " "), r"must be an integer"),
    (opt("sfft.float.warmup_ratio", "fast"), r"must be a finite number"),
    (opt("sfft.float.warmup_ratio", "nan"), r"must be a finite number"),
    (opt("sfft.float.warmup_ratio", "inf"), r"must be a finite number"),
    (opt("sfft.float.warmup_ratio", "-Infinity"), r"must be a finite number"),
    (opt("sfft.float.warmup_ratio", "1e999"), r"must be a finite number"),
    (opt("sfft.bool.gradient_checkpointing", "yes"), r'must be "true" or "false"'),
    (opt("sfft.str.max_length", "128"), r"max_length is an integer; write `sfft.int.max_length`"),
    (opt("sfft.float.max_length", "2.0"), r"write `sfft.int.max_length`"),
    (opt("sfft.int.tokenizer_path", "3"), r"write `sfft.str.tokenizer_path`"),
    ('and detached="maybe"', r'detached must be "true" or "false"'),
    ('and dryRun="1"', r'dryRun must be "true" or "false"'),
    ('and keepPartitionNum="on"', r'keepPartitionNum must be "true" or "false"'),
    ('and resume="yes"', r'resume must be "true" or "false"'),
    ('and model="other"', r'model must be "command"'),
    # -- ranges -----------------------------------------------------------------------------------------
    (opt("sfft.int.max_length", "-5"), r"max_length must be between 2 and"),
    (opt("sfft.int.max_length", "1"), r"max_length must be between 2 and"),
    (opt("sfft.int.max_length", "1099511627776"), r"max_length must be between 2 and"),
    (opt("sfft.int.max_length", "9" * 40), r"is too large \(40 digits\)"),
    (opt("sfft.int.epoches", "0"), r"epoches must be between 1 and"),
    (opt("sfft.int.epoches", "1000000"), r"epoches must be between 1 and"),
    (opt("sfft.int.seed", "-1"), r"seed must be between 0 and"),
    (opt("sfft.int.seed", str(2 ** 64)), r"seed must be between 0 and"),
    (opt("sfft.float.warmup_ratio", "-0.1"), r"warmup_ratio must be between 0.0 and 1.0"),
    (opt("sfft.float.warmup_ratio", "7"), r"warmup_ratio must be between 0.0 and 1.0"),
    (opt("sfft.int.log_every", "0"), r"log_every must be between 1 and"),
    (opt("sfft.int.checkpoint_every", "0"), r"checkpoint_every must be between 1 and"),
    (opt("sfft.int.keep_checkpoints", "0"), r"keep_checkpoints must be between 1 and"),
    (opt("sfft.int.keep_checkpoints", "100000"), r"keep_checkpoints must be between 1 and"),
    (opt("sfft.int.max_failures", "-1"), r"max_failures must be between 0 and"),
    (opt("sfft.float.eval_ratio", "0.9"), r"eval_ratio must be between 0.0 and 0.5"),
    (opt("sfft.int.max_skipped_steps", "-1"), r"max_skipped_steps must be between 0 and"),
    (opt("sfft.int.steps_per_epoch", "0"), r"steps_per_epoch must be between 1 and"),
    ('CELL:!byzerllm setup "num_gpus=99999999999999999999";\nrun command as LLM.`` where name="h" and '
     'pretrainedModelType="sfft/llama2" and localDataDir="{data}";', r"num_gpus \(the number of workers\) must be"),
    # -- duplicates in any case -------------------------------------------------------------------------
    ('and Name="other"', r"`Name` is given twice \(also `name` at line 2"),
    ('and NAME="other"', r"`NAME` is given twice"),
    ('and localdatadir="/other"', r"`localdatadir` is given twice"),
    (opt("sfft.int.max_length", "64") + "\n" + opt("sfft.float.max_length", "64"), r"is given twice"),
    (opt("sfft.int.max_length", "64") + "\n" + opt("SFFT.int.max_length", "64"), r"is given twice"),
    ('and deepspeedConfig="{}" and DeepSpeedConfig="{}"', r"`DeepSpeedConfig` is given twice"),
    ('and pretrainedmodeltype="sfft/baichuan"', r"is given twice"),
    # -- conflicts --------------------------------------------------------------------------------------
    (opt("sfft.str.model_path", "/m") + '\nand localModelDir="/m"', r"is localModelDir under another name"),
    (opt("sfft.str.data_dir", "/d"), r"is localDataDir under another name"),
    ('and keepPartitionNum="true"', r"keepPartitionNum keeps the partitions of an inputTable"),
    ('CELL:run command as LLM.`` where name="h" and pretrainedModelType="sfft/llama2";', r"no training data"),
    ('CELL:run command as LLM.`` where resume="true";', r'resume="true" needs the name'),
    ('CELL:run command as LLM.`` where name="h" and localDataDir="{data}";', r"pretrainedModelType is required"),
    ('and pretrainedModelType="sfft/llama3"', r"is given twice"),
    # -- deepspeedConfig ------------------------------------------------------------------------------
    (ds('{"optimizer": {"type": 5}}'), r'deepspeedConfig: optimizer: must be \{"type"'),
    (ds('{"scheduler": "cosine"}'), r"deepspeedConfig: scheduler: must be"),
    (ds('{"scheduler": {"type": "WarmupLR", "params": []}}'), r"scheduler.params: must be a JSON object"),
    (ds('{"bf16": true}'), r"deepspeedConfig: bf16: must be a JSON object"),
    (ds('{"zero_optimisation": {"stage": 3}}'), r'unknown DeepSpeed key \(did you mean "zero_optimization"\?\)'),
    (ds('{"train_batch_size": 64}'), r"train_batch_size: 64 disagrees with .* = 2"),
    (ds('{"optimizer": {"type": "AdamW", "params": {"lr": "fast"}}}'), r"optimizer.params.lr: must be a finite"),
    (ds('{"optimizer": {"type": "AdamW", "params": {"lr": -1}}}'), r"optimizer.params.lr: must be a number > 0"),
    (ds('{"optimizer": {"type": "AdamW", "params": {"lr": NaN}}}'), r"NaN is not a number JSON allows"),
    (ds('{"gradient_clipping": Infinity}'), r"Infinity is not a number JSON allows"),
    (ds('{"gradient_clipping": -Infinity}'), r"Infinity is not a number JSON allows"),
    (ds('{"gradient_clipping": -1}'), r"gradient_clipping: must be >= 0"),
    (ds('{"bf16": {"enabled": "yes"}}'), r"bf16.enabled: must be true or false"),
    (ds('{"zero_optimization": {"stage": "3"}}'), r"zero_optimization.stage: must be one of 0, 1, 2, 3"),
    (ds('{"zero_optimization": {"stage": 7}}'), r"zero_optimization.stage: must be one of"),
    (ds('{"zero_optimization": {"reduce_bucket_size": "auto"}}'), r'"auto" is resolved only for'),
    (ds('{"zero_optimization": {"reduce_bucket_sise": 5}}'), r'did you mean "reduce_bucket_size"'),
    (ds('{"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "gpu"}}}'), r"must be one of 'none'"),
    (ds('{"zero_optimization": {"offload_param": 5}}'), r"zero_optimization.offload_param"),
    (ds('{"optimizer": {"type": "AdamW", "params": {"lr": 1, "lr": 2}}}'), r'key "lr" is given twice'),
    (ds('{"optimizer": {"type": "AdamW", "params": {"betas": [0.9]}}}'), r"betas: must be two numbers"),
    (ds('{"optimizer": {"type": "AdamW", "params": {"lrr": 0.1}}}'), r'no such parameter \(did you mean "lr"\?\)'),
    (ds('{"optimizer": {"type": "AdamX"}}'), r"unknown optimizer 'AdamX'"),
    (ds('{"optimizer": {"type": "AdamW", "paramz": {}}}'), r'optimizer.paramz: unknown key \(did you mean "params"'),
    (ds('{"scheduler": {"type": "Cosine"}}'), r"unknown scheduler 'Cosine'"),
    (ds('{"scheduler": {"type": "WarmupCosineLR", "params": {"warmup_num_steps": -5}}}'), r"warmup_num_steps: must"),
    (ds('{"train_micro_batch_size_per_gpu": 100000000000000000000}'), r"must be a whole number from 1 to 65,536"),
    (ds('{"gradient_accumulation_steps": 0}'), r"gradient_accumulation_steps: must be a whole number"),
    (ds('{"train_micro_batch_size_per_gpu": "auto"}'), r'"auto" is resolved only for'),
    (ds('{"fp16": {"enabled": true}, "bf16": {"enabled": true}}'), r"bf16 and fp16 cannot both be enabled"),
    (ds('{"fp16": {"enabled": true, "loss_scale": -1}}'), r"fp16.loss_scale"),
    (ds('{"wall_clock_breakdown": 1}'), r"wall_clock_breakdown: must be true or false"),
    (ds("[1]"), r"deepspeedConfig must be a JSON object"),
    (ds('{"zero_optimization": {"stage": 3,}}'), r"deepspeedConfig is not valid JSON: .* at line 1, column"),
    (ds(DEEP), r"deepspeedConfig nests brackets more than 64 deep"),
    (ds('{"a": "' + "x" * 1_100_000 + '"}'), r"deepspeedConfig is 1,100,009 characters long"),
    # -- modelConfig --------------------------------------------------------------------------------------
    (mc('{"hidden_sise": 64}'), r'modelConfig: unknown key .hidden_sise. .* \(did you mean "hidden_size"\?\)'),
    (mc('{"hidden_size": "big"}'), r"modelConfig: hidden_size must be a whole number"),
    (mc('{"hidden_size": -1}'), r"modelConfig: hidden_size must be a whole number"),
    (mc('{"vocab_size": 100000000000000000000}'), r"modelConfig: vocab_size must be a whole number"),
    (mc('{"rms_norm_eps": NaN}'), r"NaN is not a number JSON allows"),
    (mc('{"rms_norm_eps": "small"}'), r"modelConfig: rms_norm_eps must be a finite number"),
    (mc('{"tie_word_embeddings": 1}'), r"modelConfig: tie_word_embeddings must be true or false"),
    (mc('{"hidden_size": 64, "hidden_size": 128}'), r'key "hidden_size" is given twice'),
    (mc("[64]"), r"modelConfig must be a JSON object"),
    (mc("{hidden_size: 64}"), r"modelConfig is not valid JSON"),
    (mc(DEEP), r"modelConfig nests brackets more than 64 deep"),
    # -- model types --------------------------------------------------------------------------------------
    ('CELL:run command as LLM.`` where name="h" and pretrainedModelType="sfft/llama3" and localDataDir="{data}";',
     r'unknown model type "sfft/llama3" \(did you mean "sfft/llama2"\?\)'),
    ('CELL:run command as LLM.`` where name="h" and pretrainedModelType="vit" and localDataDir="{data}";',
     r"not a causal language model"),
    # -- invisible and bidirectional characters, odd encodings ----------------------------------------------
    ('CELL:run command as LLM.`` where name="job\u202egnp.exe" and pretrainedModelType="sfft/llama2" and '
     'localDataDir="{data}";', r"name holds an invisible or text-reordering character U\+202E"),
    ('CELL:run command as LLM.`` where name="job\u200b1" and pretrainedModelType="sfft/llama2" and '
     'localDataDir="{data}";', r"U\+200B .*'job\\u200b1'"),
    ('CELL:run command as LLM.`` where name="h" and pretrainedModelType="sfft/llama2" and '
     'localDataDir="/data/\u202etxt.exe";', r"localDataDir holds an invisible .* U\+202E"),
    ('and localPathPrefix="/tmp/\u2066jobs"', r"localPathPrefix holds an invisible .* U\+2066"),
    (opt("sfft.str.tokenizer_path", "/tok/\u200dtokenizer.model"), r"tokenizer_path`? holds an invisible .* U\+200D"),
    (opt("sfft.str.checkpoint_saving_path", "/ck\ufeff"), r"holds an invisible .* U\+FEFF"),
    (opt("sfft.str.text_column", "te\u200cxt"), r"holds an invisible .* U\+200C"),
    ('and outputTable="out\u2067"', r"outputTable holds an invisible .* U\+2067"),
    ('and inputTable="do\u202ccs"', r"inputTable holds an invisible .* U\+202C"),
    ('and na\u200bme2="x"', r"expected '='|holds an invisible"),  # the parser refuses it
    ('CELL:run command as LLM.`` where name="h\u00adx" and pretrainedModelType="sfft/llama2" and '
     'localDataDir="{data}";', r"U\+00AD"),
    ('CELL:run command as LLM.`` where name="caf\u00e9" and pretrainedModelType="sfft/llama2" and '
     'localDataDir="{data}";', r"invalid job name"),
    ('CELL:run command as LLM.`` where name="\udc80" and pretrainedModelType="sfft/llama2" and '
     'localDataDir="{data}";', r"."),
    # -- names that would escape or reach a shell ---------------------------------------------------------
    ('CELL:run command as LLM.`` where name="../escape" and pretrainedModelType="sfft/llama2" and '
     'localDataDir="{data}";', r"invalid job name"),
    ('CELL:run command as LLM.`` where name="$(reboot)" and pretrainedModelType="sfft/llama2" and '
     'localDataDir="{data}";', r"invalid job name"),
    ('CELL:run command as LLM.`` where name=".hidden" and pretrainedModelType="sfft/llama2" and '
     'localDataDir="{data}";', r"invalid job name"),
    ('CELL:run command as LLM.`` where name="" and pretrainedModelType="sfft/llama2" and '
     'localDataDir="{data}";', r"invalid job name"),
    ('CELL:run command as LLM.`` where name="' + "n" * 5000 + '" and pretrainedModelType="sfft/llama2" and '
     'localDataDir="{data}";', r"invalid job name"),
    # -- tables and variables -----------------------------------------------------------------------------
    ('CELL:run command as LLM.`` where name="h" and pretrainedModelType="sfft/llama2" and inputTable="docs";',
     r"unknown table \"docs\"; tables: none"),
    ('and outputTable="${nope}"', r"undefined variable \$\{nope\}"),
    ('CELL:run command as LLM.`` where name="h" and pretrainedModelType="sfft/llama2" and '
     'localDataDir="{data}" and ' + " and ".join(f'k{i}="v"' for i in range(1000)) + ";",
     r"unknown parameter `k0`"),
]


def _cell(entry: str, data: str) -> str:
    if entry.startswith("CELL:"):
        return entry[len("CELL:"):].replace("{data}", data)
    return BASE.replace("{data}", data).replace("{extra}", entry)


class Connected(Exception):
    """Raised if anything tries to connect to Ray or start a job: the test then fails."""


@pytest.fixture(scope="module")
def magic(tmp_path_factory):
    """The real magic in a real IPython shell, with every way to Ray or a job made to fail."""
    from IPython.testing.globalipapp import get_ipython

    import ray
    from byzer_magic.runtime import cluster
    from byzer_magic.runtime.config import check_user_ds_config
    from byzer_magic.runtime.kernel.submit import DeepSpeedTrain

    def refuse(*args, **kwargs):
        raise Connected("a hostile cell reached Ray or the job API")

    patches = [(cluster, "connect"), (ray, "init"), (DeepSpeedTrain, "submit"), (DeepSpeedTrain, "train"),
               (DeepSpeedTrain, "plan")]
    saved = [(obj, name, getattr(obj, name)) for obj, name in patches]
    for obj, name in patches:
        setattr(obj, name, refuse)
    ip = get_ipython()
    ip.run_line_magic("load_ext", "byzer_magic")
    data = tmp_path_factory.mktemp("data")
    (data / "a.txt").write_text("some text to train on\n")
    from byzer_magic.runtime.models import registry

    check_user_ds_config(None)  # imports DeepSpeed and transformers once, outside the timings
    registry.model_config_keys("sfft/llama2")
    try:
        yield ip, str(data)
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def test_the_corpus_is_large_enough():
    assert len(CORPUS) >= 120


@pytest.mark.parametrize("entry, message", CORPUS, ids=[f"{i:03d}" for i in range(len(CORPUS))])
def test_a_hostile_cell_gives_one_located_line(magic, entry, message):
    ip, data = magic
    ip.run_line_magic("byzerllm", "reset")
    session = ip.magics_manager.registry["ByzerMagic"].session
    session._connect = lambda: (_ for _ in ()).throw(Connected("the session connected to Ray"))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(UsageError) as info:
            ip.run_cell_magic("byzerllm", "", _cell(entry, data))
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    text = str(info.value)
    first, *rest = text.split("\n")
    assert re.search(r"line \d+", first), text[:500]
    assert re.search(message, first), text[:500]
    assert len(rest) in (0, 2), text[:500]  # one line, or one line + the source line and a caret
    assert "Traceback" not in text
    assert seconds < 5, f"{seconds:.1f} s"
    assert peak < 64 << 20, f"{peak / 2 ** 20:.0f} MiB"
