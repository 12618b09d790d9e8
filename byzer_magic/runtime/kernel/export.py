"""Any checkpoint of a job, not only the last, as a Hugging Face folder (``%byzerllm export NAME``).

The job's DeepSpeed checkpoints (``worker/checkpoint.py``: ``checkpoints/global_step<N>/``) hold the
weights partitioned by ZeRO; DeepSpeed's own ``zero_to_fp32`` joins them into one fp32 state dict
(stages 1-3; a stage-0 checkpoint holds the whole model in ``mp_rank_00_model_states.pt``). The model
is built as the job's workers built it (``models.build_training_model`` from the job's model settings),
loaded with that state dict, checked key for key, and saved with ``save_pretrained`` beside the job's
tokenizer, so that ``AutoModelForCausalLM.from_pretrained`` opens the folder. The folder is written
under a temporary name and renamed: it is never seen half-written. Runs in the kernel (or any process
that reads the job folder); no Ray needed.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path

from byzer_magic.errors import ByzerError
from byzer_magic.runtime.deepspeed_import import import_deepspeed
from byzer_magic.runtime.kernel.jobs import JobHandle
from byzer_magic.runtime.spec import ModelSection
from byzer_magic.runtime.worker.checkpoint import check_intact, intact_steps, latest_tag, published_steps

log = logging.getLogger(__name__)
EXPORT_INFO = "byzer_export.json"  # which job and step the folder was made from


def export_checkpoint(handle: JobHandle, step: int | None = None, out_dir: str | os.PathLike | None = None) -> Path:
    """Write the checkpoint of ``step`` (default: the latest) to ``out_dir`` (default:
    ``<job folder>/exports/step-<N>``) as a Hugging Face folder; returns the folder."""
    ckpt_dir = handle.checkpoint_dir
    steps = published_steps(ckpt_dir)
    if not steps:
        raise ByzerError(f"job {handle.name} has no checkpoint yet (checkpoints go to {ckpt_dir})")
    if step is None:
        tag = latest_tag(ckpt_dir)  # the newest intact one
        if tag is None:
            raise ByzerError(f"job {handle.name} has no intact checkpoint in {ckpt_dir}")
        step = int(tag.removeprefix("global_step"))
    elif step not in steps:
        raise ByzerError(f"job {handle.name} has no checkpoint of step {step}; its checkpoints: "
                         f"{', '.join(map(str, steps))} (in {ckpt_dir})")
    elif (problem := check_intact(ckpt_dir / f"global_step{step}")) is not None:
        intact = ", ".join(map(str, intact_steps(ckpt_dir))) or "none"
        raise ByzerError(f"job {handle.name}: the checkpoint of step {step} is damaged ({problem}); "
                         f"intact ones: {intact}")
    out = Path(out_dir).expanduser() if out_dir else handle.job_dir / "exports" / f"step-{step}"
    model_settings = _model_settings(handle)
    with _no_progress_bars():
        return _write(handle, step, out, model_settings, ckpt_dir)


@contextlib.contextmanager
def _no_progress_bars():
    """transformers' loading and writing bars are its own business here: the command says what it did."""
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _write(handle: JobHandle, step: int, out: Path, model_settings: ModelSection, ckpt_dir: Path) -> Path:
    state_dict = _state_dict(ckpt_dir, f"global_step{step}")
    model = _model_with(model_settings, state_dict, ckpt_dir / f"global_step{step}")

    from byzer_magic.runtime.tokenizer import load_tokenizer  # noqa: PLC0415

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        model.save_pretrained(str(tmp))  # safetensors: save_pretrained's default
        tokenizer_path = model_settings.tokenizer_path or model_settings.model_path
        if tokenizer_path:
            load_tokenizer(tokenizer_path).save(tmp)
        (tmp / EXPORT_INFO).write_text(json.dumps(
            {"job": handle.name, "step": step, "checkpoint": str(ckpt_dir / f"global_step{step}"),
             "exported_at": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _model_settings(handle: JobHandle) -> ModelSection:
    """The job's model section of its ``JobSpec`` (``job.json``)."""
    spec = handle.spec
    if spec is None:
        raise ByzerError(f"job {handle.name} has no job.json in {handle.job_dir}: nothing says which model it trains")
    return spec.model


def _state_dict(ckpt_dir: Path, tag: str) -> dict:
    """The checkpoint's full fp32 state dict, joined from the ZeRO partitions by DeepSpeed."""
    import torch  # noqa: PLC0415

    folder = ckpt_dir / tag
    if not any(folder.glob("*zero_pp_rank_*_optim_states.pt")):  # ZeRO stage 0: one whole model file
        states = torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        return {k: v.float() if v.is_floating_point() else v for k, v in states["module"].items()}
    import_deepspeed()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # noqa: PLC0415

    said = io.StringIO()
    # It prints what it does and draws progress bars (stderr): Python logging, not the cell.
    with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        state_dict = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    log.info("%s", said.getvalue().strip())
    return state_dict


def _model_with(settings: ModelSection, state_dict: dict, folder: Path):
    """The model the job trains, holding the checkpoint's weights; a ByzerError if they do not fit."""
    from byzer_magic.runtime.models import build_training_model  # noqa: PLC0415

    model = build_training_model(settings.model_type, model_path=settings.model_path,
                                 model_config=settings.model_config, get_model_file=settings.get_model_file)
    result = model.load_state_dict(state_dict, strict=False)
    # Tied weights (lm_head = embed_tokens) are stored once or twice depending on the stage: fine either way.
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise ByzerError(f"the checkpoint {folder} does not fit the job's model ({settings.model_type}): "
                         f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    return model
