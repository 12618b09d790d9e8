"""``ConfigForm``: every parameter of ``run command as LLM`` (docs/LANGUAGE.md), ``num_gpus`` and the
DeepSpeed basics, as a form whose ``to_cell_text()`` is the equivalent ``%%byzerllm`` cell.

Only values that differ from the defaults are written, so the cell reads like one a user would write.
Text values are literal: ``${`` is escaped, so what is typed is what the job gets.
"""
from __future__ import annotations

import copy
import html
import json
from dataclasses import fields
from typing import Callable, Sequence

import ipywidgets as widgets

from byzer_magic.runtime.config import DEFAULT_CONFIG, TrainArgs
from byzer_magic.widgets.static import StaticFallback

MODEL_TYPES = ("sfft/llama2", "sfft/baichuan")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_TRAIN_DEFAULTS = {f.name: f.default for f in fields(TrainArgs)}
_DS = json.loads(DEFAULT_CONFIG)

# (key, kind, default, label); kind: text | bool | int:<min> | model | table
RUN_PARAMETERS = (
    ("name", "text", "", "job name (empty: sfft-<user>-<time>)"),
    ("localPathPrefix", "text", "", "jobs folder (empty: ~/byzer_magic/jobs)"),
    ("pretrainedModelType", "model", MODEL_TYPES[0], "model type"),
    ("localModelDir", "text", "", "continue from this model folder (empty: from scratch)"),
    ("modelConfig", "text", "", "from scratch: the architecture's sizes as JSON"),
    ("localDataDir", "text", "", "text files folder (instead of an input table)"),
    ("inputTable", "table", "", "input table (needs a text column)"),
    ("outputTable", "text", "", "output table for the run's result"),
    ("detached", "bool", True, "detached: return at once, the job outlives the notebook"),
    ("keepPartitionNum", "bool", False, "one input partition per worker"),
    ("sfft.int.max_length", "int:2", _TRAIN_DEFAULTS["max_length"], "tokens per sequence"),
    ("sfft.int.epoches", "int:1", _TRAIN_DEFAULTS["epoches"], "epochs"),
    ("sfft.int.steps_per_epoch", "int:0", 0, "steps per epoch (0: one pass over the data)"),
    ("sfft.str.tokenizer_path", "text", "", "tokenizer (empty: the model folder's)"),
    ("sfft.bool.setup_nccl_socket_ifname_by_ip", "bool", False, "set NCCL_SOCKET_IFNAME from each node's Ray IP"),
    ("sfft.int.checkpoint_every", "int:1", _TRAIN_DEFAULTS["checkpoint_every"], "checkpoint every N steps"),
)
ALWAYS_WRITTEN = ("pretrainedModelType",)  # required: written even when it is the default

DS_DEFAULTS = {
    "zero_stage": _DS["zero_optimization"]["stage"],
    "offload_optimizer": False,
    "offload_param": False,
    "precision": "auto",
    "lr": _DS["optimizer"]["params"]["lr"],
    # Not in DEFAULT_CONFIG: left at 1 here, a GPU run chooses both (runtime/batch_defaults.py).
    "micro_batch": _DS.get("train_micro_batch_size_per_gpu", 1),
    "gradient_accumulation": _DS.get("gradient_accumulation_steps", 1),
}
_MAX_INT = 2 ** 31 - 1
_STYLE = {"description_width": "260px"}
_WIDE = widgets.Layout(width="640px")


class ConfigForm(StaticFallback, widgets.VBox):
    """The form. ``tables``: the session's tables, offered as ``inputTable``; ``on_launch(cell_text)``
    runs the cell (the Launch button is disabled without it). ``fields`` maps each parameter
    (``name``, ``sfft.int.max_length``, ``num_gpus``, ``zero_stage``, ...) to its widget."""

    def __init__(self, tables: Sequence[str] = (), *, on_launch: Callable[[str], object] | None = None):
        self.on_launch = on_launch
        self.fields: dict[str, widgets.ValueWidget] = {}
        for key, kind, default, label in RUN_PARAMETERS:
            self.fields[key] = _widget(kind, default, f"{label} [{key}]", tables)
        self.fields["num_gpus"] = widgets.BoundedIntText(1, min=1, max=100_000, description="GPUs (workers) [num_gpus]",
                                                         style=_STYLE, layout=_WIDE)
        self.fields["zero_stage"] = widgets.Dropdown(options=[0, 1, 2, 3], value=DS_DEFAULTS["zero_stage"],
                                                     description="ZeRO stage", style=_STYLE, layout=_WIDE)
        self.fields["offload_optimizer"] = widgets.Checkbox(False, description="offload optimizer to CPU (ZeRO ≥ 1)",
                                                            style=_STYLE, layout=_WIDE)
        self.fields["offload_param"] = widgets.Checkbox(False, description="offload parameters to CPU (ZeRO 3)",
                                                        style=_STYLE, layout=_WIDE)
        self.fields["precision"] = widgets.Dropdown(options=PRECISIONS, value="auto", description="precision",
                                                    style=_STYLE, layout=_WIDE)
        self.fields["lr"] = widgets.FloatText(DS_DEFAULTS["lr"], description="learning rate (AdamW)",
                                              style=_STYLE, layout=_WIDE)
        self.fields["micro_batch"] = widgets.BoundedIntText(DS_DEFAULTS["micro_batch"], min=1, max=_MAX_INT,
                                                            description="micro-batch per GPU", style=_STYLE,
                                                            layout=_WIDE)
        self.fields["gradient_accumulation"] = widgets.BoundedIntText(
            DS_DEFAULTS["gradient_accumulation"], min=1, max=_MAX_INT, description="gradient accumulation steps",
            style=_STYLE, layout=_WIDE)
        self.fields["zero_stage"].observe(lambda _: self._fit_offload(), "value")
        self._fit_offload()

        self.preview_button = widgets.Button(description="Preview", icon="eye")
        self.launch_button = widgets.Button(description="Launch", icon="play", button_style="primary",
                                            disabled=on_launch is None)
        self.preview = widgets.Textarea(layout=widgets.Layout(width="100%", height="320px", display="none"))
        self.output = widgets.Output()
        self.preview_button.on_click(lambda _: self.show_preview())
        self.launch_button.on_click(lambda _: self.launch())

        def section(title: str, keys: Sequence[str]) -> widgets.VBox:
            return widgets.VBox([widgets.HTML(f"<b>{title}</b>")] + [self.fields[k] for k in keys])

        run_keys = [k for k, *_ in RUN_PARAMETERS]
        super().__init__([
            section("run command as LLM", [k for k in run_keys if not k.startswith("sfft.")]),
            section("training (sfft.*)", [k for k in run_keys if k.startswith("sfft.")]),
            section("cluster and DeepSpeed", ["num_gpus", "zero_stage", "offload_optimizer", "offload_param",
                                              "precision", "lr", "micro_batch", "gradient_accumulation"]),
            widgets.HBox([self.preview_button, self.launch_button]), self.preview, self.output])

    def _fit_offload(self) -> None:
        """DeepSpeed offloads the optimizer from ZeRO stage 1 and the parameters only at stage 3."""
        stage = self.fields["zero_stage"].value
        for key, lowest in (("offload_optimizer", 1), ("offload_param", 3)):
            box = self.fields[key]
            box.disabled = stage < lowest
            if box.disabled:
                box.value = False

    # -- values -------------------------------------------------------------------------------------

    def values(self) -> dict:
        """Every field's value (text stripped)."""
        return {k: w.value.strip() if isinstance(w.value, str) else w.value for k, w in self.fields.items()}

    def options(self) -> dict[str, str]:
        """The ``where`` options that differ from the defaults (plus the required ones), as strings;
        ``deepspeedConfig`` apart (see ``deepspeed_config``)."""
        values = self.values()
        out = {}
        for key, _kind, default, _label in RUN_PARAMETERS:
            value = values[key]
            if value != default or key in ALWAYS_WRITTEN:
                out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return out

    def deepspeed_config(self) -> dict:
        """The DeepSpeed settings that differ from ours (merged over ``DEFAULT_CONFIG`` at launch)."""
        v = self.values()
        cfg: dict = {}
        zero = {}
        if v["zero_stage"] != DS_DEFAULTS["zero_stage"]:
            zero["stage"] = v["zero_stage"]
        if v["offload_optimizer"] and v["zero_stage"] >= 1:  # a disabled box may still hold True
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if v["offload_param"] and v["zero_stage"] == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
        if zero:
            cfg["zero_optimization"] = zero
        if v["precision"] == "bf16":
            cfg["bf16"] = {"enabled": True}
        elif v["precision"] == "fp16":  # our default bf16 "auto" would turn bf16 on as well
            cfg["bf16"] = {"enabled": False}
            cfg["fp16"] = {"enabled": True}
        elif v["precision"] == "fp32":
            cfg["bf16"] = {"enabled": False}
        if v["lr"] != DS_DEFAULTS["lr"]:
            optimizer = copy.deepcopy(_DS["optimizer"])  # a user's optimizer replaces ours whole
            optimizer["params"]["lr"] = v["lr"]
            cfg["optimizer"] = optimizer
        if v["micro_batch"] != DS_DEFAULTS["micro_batch"]:
            cfg["train_micro_batch_size_per_gpu"] = v["micro_batch"]
        if v["gradient_accumulation"] != DS_DEFAULTS["gradient_accumulation"]:
            cfg["gradient_accumulation_steps"] = v["gradient_accumulation"]
        return cfg

    def to_cell_text(self) -> str:
        """The ``%%byzerllm`` cell body equivalent to the form."""
        lines = ["!byzerllm setup sfft;", f'!byzerllm setup "num_gpus={self.fields["num_gpus"].value}";',
                 "run command as LLM.`` where"]
        options = [f"{_key(k)}={quote(v)}" for k, v in self.options().items()]
        ds = self.deepspeed_config()
        if ds:
            body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in ds.items())  # a line a section
            options.append(f"deepspeedConfig='''{{\n{body}\n}}'''")
        lines.append("\nand ".join(options) + ";")
        return "\n".join(lines)

    # -- buttons ------------------------------------------------------------------------------------

    def show_preview(self) -> str:
        self.preview.value = self.to_cell_text()
        self.preview.layout.display = ""
        self.refresh_static()
        return self.preview.value

    def static_html(self) -> str:
        """Without a kernel: the cell the form stands for."""
        return (f"<div class='byzer-config-form byzer-static'><div>%%byzerllm cell of the form:</div>"
                f"<pre>{html.escape(self.to_cell_text())}</pre></div>")

    def static_text(self) -> str:
        return "%%byzerllm\n" + self.to_cell_text()

    def launch(self) -> None:
        text = self.show_preview()
        if self.on_launch is not None:
            with self.output:  # the callback's output and errors land under the form, not nowhere
                self.on_launch(text)


def _widget(kind: str, default, description: str, tables: Sequence[str]) -> widgets.ValueWidget:
    common = {"description": description, "style": _STYLE, "layout": _WIDE}
    if kind == "text":
        return widgets.Text(default, **common)
    if kind == "bool":
        return widgets.Checkbox(default, **common)
    if kind == "model":
        return widgets.Dropdown(options=MODEL_TYPES, value=default, **common)
    if kind == "table":
        return widgets.Dropdown(options=[("(none)", "")] + [(t, t) for t in tables], value="", **common)
    low = int(kind.split(":")[1])
    return widgets.BoundedIntText(default, min=low, max=_MAX_INT, **common)


def _key(key: str) -> str:
    return f"`{key}`" if "." in key else key


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def quote(value: str) -> str:
    """A ``"..."`` string that the parser reads back as ``value`` (``${`` kept literal)."""
    out = []
    for char in value:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F:  # the parser refuses raw control characters
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out).replace("${", "\\${") + '"'
