"""Export (runtime/kernel/export.py) of real DeepSpeed checkpoints, without Ray: a one-process gloo group
trains a tiny Llama for a few steps under ZeRO stage 0 and 2, saving a checkpoint after each step the
way the workers do (worker/checkpoint.py). Each step's export loads with from_pretrained and holds that
step's weights. (tests/test_quickstart.py exports the ZeRO-3 checkpoints of a real finished job.)"""
from __future__ import annotations

import json

import pytest
import torch

from byzer_magic.errors import ByzerError
from byzer_magic.runtime.jobfiles import JobFiles
from byzer_magic.runtime.kernel.export import export_checkpoint
from byzer_magic.runtime.kernel.jobs import JobHandle
from byzer_magic.runtime.spec import JobSection, JobSpec, ModelSection
from tests.support.tiny import tiny_model_config


@pytest.mark.parametrize("stage", [0, 2])
def test_each_checkpoint_exports_its_own_weights(gloo_group, tmp_path, stage, capfd):
    import deepspeed
    from transformers import AutoModelForCausalLM

    from byzer_magic.runtime.models import build_model
    from byzer_magic.runtime.worker import checkpoint

    config = tiny_model_config("sfft/llama2", vocab_size=128)
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    spec = JobSpec(job=JobSection(name="export-demo", job_dir=str(job_dir), submission_id="export-demo"),
                   model=ModelSection(model_type="sfft/llama2", model_config=config))
    JobFiles(job_dir).write_json("job.json", spec.to_json())
    torch.manual_seed(0)
    model = build_model("sfft/llama2", config)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config={
        "train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True, "optimizer": {"type": "SGD", "params": {"lr": 0.5}}})
    weights = {}
    for step in (1, 2, 3):
        ids = torch.randint(0, 128, (1, 16))
        engine.backward(engine(input_ids=ids, labels=ids).loss)
        engine.step()
        checkpoint.save(engine, spec.checkpoint_dir, step, {"step": step}, keep=2)
        weights[step] = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}

    handle = JobHandle("export-demo", job_dir)
    capfd.readouterr()
    with pytest.raises(ByzerError, match="no checkpoint of step 1; its checkpoints: 2, 3"):
        export_checkpoint(handle, step=1)  # kept: the last two
    exported = ((2, export_checkpoint(handle, step=2)), (3, export_checkpoint(handle)))
    assert capfd.readouterr() == ("", "")  # DeepSpeed's and transformers' progress bars stay out of the cell
    for step, out in exported:
        assert out == job_dir / "exports" / f"step-{step}"
        assert json.loads((out / "byzer_export.json").read_text())["step"] == step
        loaded = AutoModelForCausalLM.from_pretrained(out).state_dict()
        for key, value in weights[step].items():
            torch.testing.assert_close(loaded[key], value.float(), msg=f"step {step}: {key}")
    assert not torch.equal(weights[2]["model.norm.weight"], weights[3]["model.norm.weight"])
    damaged = next((spec.checkpoint_dir / "global_step2").glob("mp_rank_00_model_states.pt"))
    damaged.write_bytes(damaged.read_bytes()[:-10])  # a truncated file: refused, naming the intact one
    with pytest.raises(ByzerError, match=r"step 2 is damaged \(mp_rank_00_model_states.pt is \d+ bytes.*intact ones: 3"):
        export_checkpoint(handle, step=2)
    assert not list(job_dir.glob("exports/.*tmp*"))  # published by rename, nothing left half-written
