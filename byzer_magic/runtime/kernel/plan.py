"""Pre-flight plan: what a run will cost before it starts, and the configs that would waste the GPUs.

``plan_run(config)`` trains nothing: it counts the input's tokens with the run's tokenizer on the
cluster (streamed, in Ray Data tasks), lays out the steps as the job will, sizes the model on the
``meta`` device, estimates memory per GPU with DeepSpeed's estimators, and compares the config with
the fastest one that fits. ``check_launchable(plan)`` stops what cannot work, in seconds, before any
worker starts. docs/PLAN.md holds the formulas and constants.
"""
from __future__ import annotations

import functools
import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from byzer_magic.errors import ByzerError
from byzer_magic.runtime import shards
from byzer_magic.runtime.config import ParallelConfig, resolve_ds_config
from byzer_magic.runtime.kernel.plan_advice import (SLOW_FACTOR, GpuInfo, Layout, Option, candidates, detect_gpus,
                                                    fastest_that_fits, host_available_bytes, largest_fitting_micro,
                                                    make_option, measure_options)
from byzer_magic.runtime.kernel.plan_memory import ModelShape, ZeroSetup, fmt_bytes, model_shape, usable_bytes
from byzer_magic.runtime.shards import BatchShape

__all__ = ["GpuInfo", "RunPlan", "check_launchable", "plan_run", "step_counts", "count_input_tokens"]
_COLUMNS = ("", "config", "memory/GPU", "tokens/s", "time")


def step_counts(tokens: int, max_length: int, workers: int, micro_batch: int, grad_accum: int,
                steps_per_epoch: int | None, epochs: int) -> tuple[int, int, int]:
    """(packed sequences, steps per epoch, total steps) of ``tokens`` training tokens: the job's own
    arithmetic (``runtime/shards.py``, ``driver/layout.py``). Each optimizer step takes ``micro_batch x
    grad_accum`` sequences on every worker; a set ``steps_per_epoch`` is used as given (the job refuses
    more than the data has: ``RunPlan.problems``). 0 steps per epoch means too little data.
    """
    shape = BatchShape(max_length=max_length, workers=workers, micro_batch=micro_batch, grad_accum=grad_accum)
    per_epoch = steps_per_epoch or shards.steps_per_epoch(tokens, shape)
    return tokens // max_length, per_epoch, per_epoch * epochs


@dataclass
class RunPlan:
    """What ``plan_run`` found. ``str(plan)`` is a compact table; in a notebook it renders as HTML."""
    model: str                       # "sfft/llama2 from scratch", "localModelDir /m", ...
    params: int
    max_positions: int | None
    max_length: int
    workers: int
    micro_batch: int
    grad_accum: int
    epochs: int
    zero: ZeroSetup
    checkpointing: bool
    on_gpu: bool
    device: str                      # "1 x NVIDIA H200 (141 GB)" or "CPU run: memory checked against host RAM"
    capacity_bytes: int              # usable memory per GPU, or host RAM available per CPU worker (0: unknown)
    yours: Option
    best: Option | None = None
    documents: int | None = None
    tokens: int | None = None
    train_tokens: int | None = None  # without the held-out documents (eval_ratio)
    sequences: int | None = None
    steps_per_epoch: int | None = None
    total_steps: int | None = None
    steps_set: bool = False          # steps_per_epoch came from the user, not from the data
    max_micro: int | None = None     # the largest micro-batch that fits one GPU (the driver's default batch)
    gpus_in_cluster: int = 0
    card_bytes: int = 0
    warning: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.yours.fits

    def problems(self) -> list[str]:
        """Why the run cannot work; empty when it can (``check_launchable`` raises on any)."""
        out = []
        if self.max_positions and self.max_length > self.max_positions:
            out.append(f"max_length {self.max_length} is above the model's {self.max_positions} positions "
                       f"(max_position_embeddings): lower sfft.int.max_length to {self.max_positions} or less")
        available = self.sequences // (self.workers * self.micro_batch * self.grad_accum) if self.sequences else 0
        if self.steps_set and self.sequences is not None and self.steps_per_epoch > available > 0:
            out.append(f"steps_per_epoch={self.steps_per_epoch} needs more than the data has ({available} steps of "
                       f"{self.workers} worker(s) x micro-batch {self.micro_batch} x accumulation "
                       f"{self.grad_accum}): lower sfft.int.steps_per_epoch, or leave it out for one pass")
        if self.sequences is not None and (self.sequences < self.workers or not self.steps_per_epoch):
            out.append(f"the input has {self.tokens:,} tokens = {self.sequences:,} sequences of {self.max_length}: "
                       f"too few for {self.workers} worker(s) x micro-batch {self.micro_batch} x accumulation "
                       f"{self.grad_accum}; add data, or lower max_length or num_gpus")
        if self.on_gpu and self.workers > self.gpus_in_cluster:
            out.append(f"num_gpus={self.workers} but the cluster has {self.gpus_in_cluster} GPU(s): lower num_gpus "
                       f"or add nodes")
        need, limit = self.yours.memory_per_gpu, self.card_bytes if self.on_gpu else self.capacity_bytes
        if limit and need > limit:
            where = "per GPU" if self.on_gpu else "per CPU worker"
            have = f"the GPUs have {fmt_bytes(limit)}" if self.on_gpu else f"{fmt_bytes(limit)} of RAM is free"
            fix = (f"; {self.best.describe()} fits ({fmt_bytes(self.best.memory_per_gpu)})" if self.best
                   else "; no ZeRO stage, offload or micro-batch fits: use more GPUs or a smaller model")
            out.append(f"{self.yours.zero.describe()} at micro-batch {self.micro_batch} needs {fmt_bytes(need)} "
                       f"{where} ({_memory_parts(self.yours)}) but {have}{fix}")
        return out

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(fits=self.fits, problems=self.problems(),
                   memory_per_gpu=self.yours.memory_per_gpu)
        return out

    # -- display ----------------------------------------------------------------------------------
    def _rows(self) -> list[tuple[str, str]]:
        rows = [("model", f"{self.model}, {_count(self.params)} parameters" +
                 (f", {self.max_positions} positions" if self.max_positions else ""))]
        if self.tokens is not None:
            held = f" ({self.tokens - self.train_tokens:,} held out)" if self.train_tokens != self.tokens else ""
            rows.append(("input", f"{self.documents:,} documents, {self.tokens:,} tokens{held} -> {self.sequences:,} "
                                  f"sequences of {self.max_length}"))
        if self.total_steps is not None:
            rows.append(("steps", f"{self.steps_per_epoch:,} per epoch x {self.epochs} = {self.total_steps:,} "
                                  f"({self.workers} worker(s) x micro-batch {self.micro_batch} x accumulation "
                                  f"{self.grad_accum}{', steps set' if self.steps_set else ''})"))
        rows.append(("device", self.device))
        cap = (f" of {fmt_bytes(self.capacity_bytes)} {'usable' if self.on_gpu else 'free'}"
               if self.capacity_bytes else "")
        rows.append(("memory", f"{_memory_parts(self.yours)} = {fmt_bytes(self.yours.memory_per_gpu)} per "
                               f"{'GPU' if self.on_gpu else 'worker'}{cap}: "
                               f"{'fits' if self.fits else 'does NOT fit'}"))
        return rows

    def _options(self) -> list[tuple[str, str, str, str, str]]:
        shown = [self.yours] + ([self.best] if self.best and self.best is not self.yours else [])
        out = []
        for o in shown:
            speed = f"{o.tokens_per_s:,.0f} ({o.source})" if o.tokens_per_s else "-"
            out.append((o.label, o.describe(), fmt_bytes(o.memory_per_gpu) + ("" if o.fits else " (too big)"),
                        speed, _duration(o.seconds)))
        return out

    def __str__(self) -> str:
        lines = ["Run plan"] + [f"  {k:<7} {v}" for k, v in self._rows()]
        table = [_COLUMNS] + self._options()
        widths = [max(len(r[i]) for r in table) for i in range(5)]
        lines += [""] + ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
        lines += [f"  note: {n}" for n in self.notes]
        if self.warning:
            lines.append(f"  warning: {self.warning}")
        lines += [f"  cannot launch: {p}" for p in self.problems()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        e = html.escape
        head = "".join(f"<tr><th style='text-align:left'>{e(k)}</th><td style='text-align:left'>{e(v)}</td></tr>"
                       for k, v in self._rows())
        opts = "".join("<tr>" + "".join(f"<td style='text-align:left'>{e(c)}</td>" for c in r) + "</tr>"
                       for r in self._options())
        cols = "".join(f"<th style='text-align:left'>{c}</th>" for c in _COLUMNS)
        tail = "".join(f"<p>note: {e(n)}</p>" for n in self.notes)
        if self.warning:
            tail += f"<p style='color:#b45309'><b>warning:</b> {e(self.warning)}</p>"
        tail += "".join(f"<p style='color:#b91c1c'><b>cannot launch:</b> {e(p)}</p>" for p in self.problems())
        return (f"<div><b>Run plan</b><table>{head}</table><table><tr>{cols}</tr>{opts}</table>{tail}</div>")


def check_launchable(plan: RunPlan) -> None:
    """Raise ``ByzerError`` when the planned run cannot work (memory, data, positions, GPUs)."""
    problems = plan.problems()
    if problems:
        raise ByzerError("cannot launch: " + "; ".join(problems))


def plan_run(config: ParallelConfig, *, measure: bool | None = None, gpus: list[GpuInfo] | None = None,
             count: bool = True) -> RunPlan:
    """Plan ``config`` without training. ``gpus``: the cluster's GPUs (None: ask the Ray cluster; ``[]``:
    a CPU cluster). ``count=False`` skips the token count (no data checks then). ``measure``: time a few
    steps on a free GPU (None: when the cluster has one free)."""
    import ray  # noqa: PLC0415

    from byzer_magic.runtime import cluster  # noqa: PLC0415

    args = config.train_args
    if (count or gpus is None) and not ray.is_initialized():
        cluster.connect()  # the embedded head; a caller on another cluster has connected already
    if gpus is None:
        gpus = detect_gpus()
    on_gpu = config.use_gpu if config.use_gpu is not None else bool(gpus)
    shape, model = describe_model(config)
    documents = tokens = train_tokens = None
    if count:
        lengths = count_input_tokens(config)
        train, _ = shards.split_eval(len(lengths), args.eval_ratio, args.seed)
        documents, tokens, train_tokens = len(lengths), int(lengths.sum()), int(lengths[train].sum())
    ds_config, notes = resolve_ds_config(config.ds_config, on_gpu=on_gpu)
    micro, gas = int(ds_config["train_micro_batch_size_per_gpu"]), int(ds_config["gradient_accumulation_steps"])
    sequences = per_epoch = total = None
    if tokens is not None:
        sequences, per_epoch, total = step_counts(train_tokens, args.max_length, config.num_workers, micro, gas,
                                                  args.steps_per_epoch, args.epoches)
    elif args.steps_per_epoch:
        per_epoch, total = args.steps_per_epoch, args.steps_per_epoch * args.epoches
    layout = Layout.of(gpus if on_gpu else [], config.num_workers)
    zero = ZeroSetup.from_ds_config(ds_config)
    if on_gpu:
        capacity = usable_bytes(layout.card_bytes)
        device = f"{len(gpus)} x {gpus[0].name}" if gpus else "no GPUs in the cluster (use_gpu is set)"
        if gpus and gpus[0].memory_bytes:
            device += f" ({fmt_bytes(gpus[0].memory_bytes)})"
        if len({g.name for g in gpus}) > 1:
            device += " (mixed models: the smallest card binds)"
        if gpus and not layout.card_bytes:
            notes.append("GPU memory unknown: whether it fits was not checked")
        if gpus and not gpus[0].known:
            notes.append(f"unknown GPU {gpus[0].name!r}: its peak is taken as "
                         f"{layout.peak_flops / 1e12:.0f} TFLOP/s")
    else:
        capacity = host_available_bytes() // config.num_workers
        device = "CPU run: memory checked against host RAM"
    yours = make_option("yours", shape, zero, layout, ds_config, micro=micro, seq=args.max_length,
                        grad_accum=gas, checkpointing=config.gradient_checkpointing, on_gpu=on_gpu,
                        host_available=capacity)
    plan = RunPlan(model=model, params=shape.params, max_positions=shape.max_positions, max_length=args.max_length,
                   workers=config.num_workers, micro_batch=micro, grad_accum=gas, epochs=args.epoches, zero=zero,
                   checkpointing=config.gradient_checkpointing, on_gpu=on_gpu, device=device,
                   capacity_bytes=capacity, yours=yours, documents=documents, tokens=tokens,
                   train_tokens=train_tokens, sequences=sequences,
                   steps_per_epoch=per_epoch, total_steps=total, steps_set=bool(args.steps_per_epoch),
                   gpus_in_cluster=len(gpus), card_bytes=layout.card_bytes, notes=notes)
    if on_gpu:
        # No candidate micro-batch larger than one step's worth of the data.
        max_micro = max(1, sequences // (config.num_workers * gas)) if sequences is not None else None
        options = candidates(shape, layout, ds_config, seq=args.max_length, grad_accum=gas, max_micro=max_micro)
        plan.max_micro = largest_fitting_micro(shape, zero, layout, ds_config, seq=args.max_length,
                                               checkpointing=config.gradient_checkpointing)
        plan.best = fastest_that_fits(options, yours)
        if measure is not False:
            build = functools.partial(_build_model, config.get_model, config.model_type, args.model_path,
                                      config.model_config)
            measure_options(plan, build, ds_config, shape, layout, force=bool(measure))
        _time_and_warn(plan)
    return plan


def _time_and_warn(plan: RunPlan) -> None:
    """The wall-clock time of each shown option (for the user's tokens), and the warning when the user's
    config is predicted more than ``SLOW_FACTOR`` times slower than the fastest that fits."""
    if plan.total_steps:
        tokens = plan.total_steps * plan.workers * plan.micro_batch * plan.grad_accum * plan.max_length
        for o in (plan.yours, plan.best):
            if o is not None and o.tokens_per_s:
                o.seconds = tokens / o.tokens_per_s
    best, yours = plan.best, plan.yours
    if best is None or best is yours or not (yours.fits and yours.tokens_per_s and best.tokens_per_s):
        return
    ratio = best.tokens_per_s / yours.tokens_per_s
    if ratio > SLOW_FACTOR:
        when = f" ({_duration(best.seconds)} instead of {_duration(yours.seconds)})" if yours.seconds else ""
        plan.warning = (f"your config ({yours.describe()}) is predicted at {yours.tokens_per_s:,.0f} tokens/s; "
                        f"{best.describe()} fits and is predicted {ratio:.0f}x faster{when}. "
                        f"To use it: {_how_to(best, plan)}")


def _how_to(o: Option, plan: RunPlan) -> str:
    zero = {"zero_optimization": o.zero.ds_config()}
    if o.micro_batch != plan.micro_batch:
        zero["train_micro_batch_size_per_gpu"] = o.micro_batch
    text = f"deepspeedConfig with {json.dumps(zero)}"
    if o.micro_batch != plan.micro_batch:
        before, after = (plan.workers * plan.grad_accum * m for m in (plan.micro_batch, o.micro_batch))
        text += f" (the global batch becomes {after} sequences, from {before}: revisit the learning rate)"
    if o.checkpointing != plan.checkpointing:
        text += f", gradient checkpointing {'on' if o.checkpointing else 'off'}"
    return text


# -- the model and the data -----------------------------------------------------------------------
def describe_model(config: ParallelConfig) -> tuple[ModelShape, str]:
    """The model's sizes, from a copy built on the ``meta`` device (no memory, a 7B model in a second)."""
    import torch  # noqa: PLC0415

    args = config.train_args
    with torch.device("meta"):
        try:
            model = _build_model(config.get_model, config.model_type, args.model_path, config.model_config)
        except ByzerError:
            raise
        except Exception as err:  # a user's get_model() may raise anything
            raise ByzerError(f"the model cannot be built on the meta device to size it: {err}") from err
    if config.get_model is not None:
        label = f"{type(model).__name__} from get_model()"
    elif args.model_path:
        label = f"{config.model_type} from {args.model_path}"
    else:
        label = f"{config.model_type} from scratch"
    return model_shape(model), label


def _build_model(get_model, model_type: str, model_path: str | None, model_config: dict | None):
    """A freshly initialised model of the run's architecture (built under the caller's device)."""
    if get_model is not None:
        return get_model()
    if model_path:
        return _meta_model_from_folder(model_path)
    from byzer_magic.runtime.models.registry import build_model  # noqa: PLC0415

    return build_model(model_type, model_config)


def _meta_model_from_folder(path: str):
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: PLC0415

    from byzer_magic.runtime.models.baichuan import BaiChuanConfig, BaiChuanForCausalLM  # noqa: PLC0415

    folder = Path(path).expanduser()
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ByzerError(f"localModelDir {folder} is not a model folder (no config.json there)")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ByzerError(f"{config_file} is not valid JSON: {err}") from err
    if model_type == BaiChuanConfig.model_type:
        return BaiChuanForCausalLM(BaiChuanConfig.from_pretrained(str(folder)))
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)))


def tokenizer_path(config: ParallelConfig) -> str:
    args = config.train_args
    path = args.tokenizer_path or args.model_path
    if not path:
        raise ByzerError("a model trained from scratch needs a tokenizer: set sfft.str.tokenizer_path "
                         "(a SentencePiece tokenizer.model or a Hugging Face tokenizer folder)")
    return str(Path(path).expanduser().resolve())


def _count_batch(batch, *, tokenizer_path: str, text_column: str):
    from byzer_magic.runtime.driver.tokenise import count_tokens  # noqa: PLC0415

    return count_tokens(batch, tokenizer_path=tokenizer_path, text_column=text_column)


def count_input_tokens(config: ParallelConfig):
    """Each document's token count (a NumPy array), end-of-text tokens included, as the job will
    tokenise it. Tokenised in Ray Data tasks on the cluster; only the counts reach this process."""
    import numpy as np  # noqa: PLC0415

    args = config.train_args
    if config.input_table is not None:
        ds, column = config.input_table, args.text_column
    elif args.data_dir:
        from byzer_magic.runtime.tables import load_text  # noqa: PLC0415

        ds, column = load_text(args.data_dir, wholetext=True), "value"
    else:
        raise ByzerError("no training data: set inputTable (a table with a `text` column) or localDataDir")
    counts = ds.map_batches(_count_batch, batch_format="pyarrow", batch_size=None, zero_copy_batch=True,
                            fn_kwargs={"tokenizer_path": tokenizer_path(config), "text_column": column})
    parts = [batch["n"] for batch in counts.iter_batches(batch_format="numpy", batch_size=None)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


# -- formatting -----------------------------------------------------------------------------------
def _memory_parts(o: Option) -> str:
    parts = f"model states {fmt_bytes(o.model_states_bytes)} + activations {fmt_bytes(o.activation_bytes)}"
    return parts + (f" + buffers {fmt_bytes(o.buffer_bytes)}" if o.buffer_bytes else "")


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "min", 60), ("min", 60, "s", 1)):
        if s >= size:
            rest = (s % size) // subsize
            return f"{s // size} {unit}" + (f" {rest} {sub}" if rest else "")
    return f"{s} s"
