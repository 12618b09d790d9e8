"""The pre-flight plan: exact token counts on the cluster, DeepSpeed's memory numbers, advice on a fake
H200 (an edge we cannot run here), and the configs check_launchable stops before any worker starts."""
from __future__ import annotations

import contextlib
import io
import json
import re
import shutil

import pytest
import torch

from byzer_magic.errors import ByzerError
from byzer_magic.runtime.config import ParallelConfig, TrainArgs
from byzer_magic.runtime.kernel.plan import GpuInfo, check_launchable, plan_run, step_counts
from byzer_magic.runtime.kernel.plan_memory import ZeroSetup, activation_bytes, model_shape, model_states_bytes
from byzer_magic.runtime.shards import split_eval
from byzer_magic.runtime.tokenizer import load_tokenizer
from tests.support.tiny import stdlib_text_files, tiny_model_config, train_sentencepiece

H200 = GpuInfo("NVIDIA H200", 141 * 10 ** 9, host_cpus=16, host_memory_bytes=120 * 2 ** 30)
# TinyLlama-1.1B's sizes, and the user document's DeepSpeed config: ZeRO-3, optimizer and params offloaded.
LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
            "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048}
USER_DOC_DS = {"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True},
               "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                                     "offload_param": {"device": "cpu", "pin_memory": True}}}


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    return train_sentencepiece(tmp_path_factory.mktemp("sp"))


def _direct_count(tokenizer_path, texts: list[str]) -> int:
    return sum(len(ids) + 1 for ids in load_tokenizer(tokenizer_path).encode_documents(texts))  # + 1 eos a document


def _tiny_config(sp_model, **kw) -> ParallelConfig:
    args = kw.pop("train_args", {})
    return ParallelConfig(model_config=tiny_model_config("sfft/llama2", 512),
                          train_args=TrainArgs(tokenizer_path=str(sp_model), **args), **kw)


def test_step_counts_follow_the_job():
    assert step_counts(10_000, 100, 2, 4, 2, None, 3) == (100, 6, 18)  # 100 // 2 // 8 = 6 a epoch
    assert step_counts(10_000, 100, 2, 4, 2, 7, 3) == (100, 7, 21)     # a set steps_per_epoch wins
    assert step_counts(99, 100, 1, 1, 1, None, 1) == (0, 0, 0)


def test_counts_are_exact_on_the_cluster(ray_cluster, sp_model, tmp_path):
    files = stdlib_text_files(45)[40:]
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    expected = _direct_count(sp_model, [f.read_text() for f in files])
    plan = plan_run(_tiny_config(sp_model, train_args={"data_dir": str(tmp_path), "max_length": 128},
                                 ds_config={"gradient_accumulation_steps": 2}), measure=False)
    assert (plan.documents, plan.tokens) == (len(files), expected)
    # eval_ratio 0.01 of 5 documents holds out one (at least one, runtime/shards.py split_eval)
    assert len(split_eval(len(files), 0.01, TrainArgs().seed)[1]) == 1
    held_tokens = expected - plan.train_tokens
    assert held_tokens in {_direct_count(sp_model, [f.read_text()]) for f in files}
    assert f"({held_tokens:,} held out)" in str(plan)
    assert (plan.sequences, plan.steps_per_epoch, plan.total_steps) == step_counts(plan.train_tokens, 128, 1, 1, 2,
                                                                                   None, 1)
    assert not plan.on_gpu and plan.device == "CPU run: memory checked against host RAM"
    assert plan.fits and plan.problems() == []
    check_launchable(plan)
    assert f"{expected:,} tokens" in str(plan)


def test_one_sequence_for_two_workers_is_stopped(ray_cluster, sp_model):
    import ray.data

    texts = ["def f(x):\n    return x + 1\n", "import os\nprint(os.getcwd())\n", ""]
    tokens = _direct_count(sp_model, texts)
    config = _tiny_config(sp_model, num_workers=2, input_table=ray.data.from_items([{"text": t} for t in texts]),
                          train_args={"max_length": tokens, "eval_ratio": 0.0})  # exactly one sequence
    plan = plan_run(config, measure=False)
    assert (plan.documents, plan.tokens, plan.sequences) == (3, tokens, 1)
    with pytest.raises(ByzerError, match=r"1 sequences of .* too few for 2 worker"):
        check_launchable(plan)


def test_memory_is_deepspeeds_estimate():
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs, model_to_params
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = LlamaForCausalLM(LlamaConfig(**tiny_model_config("sfft/llama2", 512)))
    with torch.device("meta"):
        meta = LlamaForCausalLM(LlamaConfig(**tiny_model_config("sfft/llama2", 512)))
    assert (model_shape(meta).params, model_shape(meta).largest_layer_params) == model_to_params(tiny)

    with torch.device("meta"):
        shape = model_shape(LlamaForCausalLM(LlamaConfig(**LLAMA_1B)))
    n, big = shape.params, shape.largest_layer_params
    for gpus, nodes in ((1, 1), (8, 2)):
        for offload in (False, True):  # ZeRO-2 against the table DeepSpeed prints (GB = 2**30, 2 decimals)
            gpu, cpu = model_states_bytes(shape, ZeroSetup(2, offload), gpus_per_node=gpus, nodes=nodes)
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                estimate_zero2_model_states_mem_needs_all_cold(n, num_gpus_per_node=gpus, num_nodes=nodes)
            row = next(line for line in out.getvalue().splitlines()
                       if "offload_optimizer=" in line and line.endswith("=none") != offload)
            assert [float(x) for x in re.findall(r"([\d.]+)GB", row)] == [round(cpu / 2 ** 30, 2),
                                                                         round(gpu / 2 ** 30, 2)]
        for opt, par in ((False, False), (True, False), (True, True)):
            cpu, gpu, _ = estimate_zero3_model_states_mem_needs(n, big, gpus, nodes, cpu_offload=opt,
                                                                cpu_offload_params=par, zero_init=True)
            assert model_states_bytes(shape, ZeroSetup(3, opt, par), gpus_per_node=gpus, nodes=nodes) == (gpu, cpu)


def test_activation_formula_matches_what_autograd_keeps():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, 1000, (2, 128))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    # The formula adds what the loss holds but autograd does not keep: bf16 logits and their fp32 copy.
    formula = activation_bytes(model_shape(model), 2, 128, checkpointing=False) - 2 * 128 * 1000 * (2 + 4)
    assert abs(sum(kept.values()) - formula) / formula < 0.02


def test_advice_prefers_no_offload_when_the_states_fit():
    config = ParallelConfig(model_config=LLAMA_1B, ds_config=USER_DOC_DS,
                            train_args=TrainArgs(max_length=2048, steps_per_epoch=1000))
    plan = plan_run(config, gpus=[H200], count=False, measure=False)
    assert plan.on_gpu and plan.fits and plan.yours.zero == ZeroSetup(3, True, True)
    best = plan.best
    assert best.fits and not best.zero.offload_optimizer and not best.zero.offload_param
    assert best.tokens_per_s > 3 * plan.yours.tokens_per_s and best.source == "estimate"
    assert plan.warning and "offload" in plan.warning and "faster" in plan.warning
    text = str(plan)
    assert "yours" in text and "fastest that fits" in text and "(estimate)" in text
    assert "<table>" in plan._repr_html_()
    json.dumps(plan.to_dict())
    # Already the fastest: no warning, and no second row.
    fast = plan_run(ParallelConfig(model_config=LLAMA_1B, ds_config={"train_micro_batch_size_per_gpu": 32},
                                   train_args=TrainArgs(max_length=2048, steps_per_epoch=10)),
                    gpus=[H200], count=False, measure=False)
    assert fast.warning is None and fast.best is fast.yours


@pytest.mark.parametrize("case", ["7B at ZeRO-0 on a 24 GB GPU", "max_length above positions"])
def test_impossible_configs_are_stopped(case):
    if case.startswith("7B"):
        config = ParallelConfig(model_config={}, ds_config={"zero_optimization": {"stage": 0}},
                                train_args=TrainArgs(max_length=4096, steps_per_epoch=10))
        gpus, match = [GpuInfo("NVIDIA GeForce RTX 4090", 24 * 10 ** 9)], r"needs .* per GPU .* the GPUs have"
    else:
        config = ParallelConfig(model_config=tiny_model_config("sfft/llama2", 512),
                                train_args=TrainArgs(max_length=512, steps_per_epoch=10))
        gpus, match = [H200], r"max_length 512 is above the model's 256 positions"
    plan = plan_run(config, gpus=gpus, count=False, measure=False)
    with pytest.raises(ByzerError, match=match):
        check_launchable(plan)
