"""``ConfigForm``: every parameter of ``run command as LLM`` (docs/LANGUAGE.md), the setup keys and the
DeepSpeed basics, as a form whose ``to_cell_text()`` is the equivalent ``%%byzerllm`` cell.

The training arguments (``sfft.<type>.<name>``) are generated from ``runtime/spec.py``'s ``param`` fields,
one section each (widgets/form_fields.py), so the form offers what the language takes, with its ranges.
Only values that differ from the defaults are written, so the cell reads like one a user would write.
Text values are literal: ``${`` is escaped, so what is typed is what the job gets.
"""
from __future__ import annotations

import copy
import html
import json
from typing import Callable, Sequence

import ipywidgets as widgets

from byzer_magic.runtime.config import DEFAULT_CONFIG
from byzer_magic.widgets.form_fields import (ALWAYS_WRITTEN, MODEL_TYPES, NOT_FIELDS, SETUP_FIELDS,
                                             STATEMENT_FIELDS, STYLE, WIDE, FormField, make_widget,
                                             section_title, training_fields, written)
from byzer_magic.widgets.static import StaticFallback

__all__ = ["ALWAYS_WRITTEN", "DS_DEFAULTS", "MODEL_TYPES", "NOT_FIELDS", "RUN_PARAMETERS", "SETUP_FIELDS",
           "ConfigForm", "quote", "run_parameters"]
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_DS = json.loads(DEFAULT_CONFIG)

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
DS_KEYS = tuple(DS_DEFAULTS)
_MAX_INT = 2 ** 31 - 1
_STYLE, _WIDE = STYLE, WIDE


def run_parameters() -> tuple[FormField, ...]:
    """The ``where`` options of the form, in order: the statement's parameters, then the training
    arguments of runtime/spec.py (generated, read when called)."""
    return STATEMENT_FIELDS + training_fields()


RUN_PARAMETERS = run_parameters()


class ConfigForm(StaticFallback, widgets.VBox):
    """The form. ``tables``: the session's tables, offered as ``inputTable``; ``on_launch(cell_text)``
    runs the cell (the Launch button is disabled without it). ``fields`` maps each parameter
    (``name``, ``sfft.int.max_length``, ``num_gpus``, ``zero_stage``, ...) to its widget; ``run_fields``
    and ``setup_fields`` describe the ones written as options and setups."""

    def __init__(self, tables: Sequence[str] = (), *, on_launch: Callable[[str], object] | None = None):
        self.on_launch = on_launch
        self.run_fields = run_parameters()
        self.setup_fields = SETUP_FIELDS
        self.fields: dict[str, widgets.Widget] = {}
        for field in self.run_fields + self.setup_fields:
            self.fields[field.key] = make_widget(field, tables)
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
        self.fields["name"].observe(lambda _: self._fit_resume(), "value")
        self._fit_resume()

        self.preview_button = widgets.Button(description="Preview", icon="eye")
        self.launch_button = widgets.Button(description="Launch", icon="play", button_style="primary",
                                            disabled=on_launch is None)
        self.preview = widgets.Textarea(layout=widgets.Layout(width="100%", height="320px", display="none"))
        self.output = widgets.Output()
        self.preview_button.on_click(lambda _: self.show_preview())
        self.launch_button.on_click(lambda _: self.launch())

        def rows(fields: Sequence[FormField]) -> widgets.VBox:
            return widgets.VBox([self._row(f) for f in fields])

        sections: dict[str, list[FormField]] = {}
        for field in self.run_fields:
            if field.key.startswith("sfft."):
                sections.setdefault(field.section, []).append(field)
        titles = ["run command as LLM"] + [section_title(s) for s in sections] + ["cluster and DeepSpeed"]
        self.sections = widgets.Accordion(
            children=[rows([f for f in self.run_fields if not f.key.startswith("sfft.")])]
            + [rows(fields) for fields in sections.values()]
            + [widgets.VBox([self._row(f) for f in self.setup_fields] + [self.fields[k] for k in DS_KEYS])],
            titles=tuple(titles), selected_index=0)
        super().__init__([self.sections, widgets.HBox([self.preview_button, self.launch_button]), self.preview,
                          self.output])

    def _row(self, field: FormField) -> widgets.Widget:
        """The field's widget, its help beside it when the label does not say it already."""
        widget = self.fields[field.key]
        if not field.key.startswith("sfft.") or not field.help:
            return widget
        note = widgets.HTML(f"<small style='line-height:1.2'>{html.escape(field.help)}</small>",
                            layout=widgets.Layout(width="420px"))
        return widgets.HBox([widget, note])

    def _fit_offload(self) -> None:
        """DeepSpeed offloads the optimizer from ZeRO stage 1 and the parameters only at stage 3."""
        stage = self.fields["zero_stage"].value
        for key, lowest in (("offload_optimizer", 1), ("offload_param", 3)):
            box = self.fields[key]
            box.disabled = stage < lowest
            if box.disabled:
                box.value = False

    def _fit_resume(self) -> None:
        """``resume`` continues the job called ``name``: without a name there is nothing to resume."""
        box = self.fields["resume"]
        box.disabled = not self.fields["name"].value.strip()
        if box.disabled:
            box.value = False

    # -- values -------------------------------------------------------------------------------------

    def values(self) -> dict:
        """Every field's value (text stripped; ``None``: unset)."""
        return {k: w.value.strip() if isinstance(w.value, str) else w.value for k, w in self.fields.items()}

    def options(self) -> dict[str, str]:
        """The ``where`` options that differ from the defaults (plus the required ones), as strings;
        ``deepspeedConfig`` apart (see ``deepspeed_config``)."""
        values = self.values()
        out = {}
        for field in self.run_fields:
            text = written(field, values[field.key])
            if field.key == "resume" and not values["name"]:  # a disabled box may still hold True
                text = None
            if text is not None:
                out[field.key] = text
        return out

    def setups(self) -> dict[str, str]:
        """The ``!byzerllm setup "key=value"`` values: ``num_gpus`` always, the others when set."""
        values = self.values()
        out = {"num_gpus": str(values["num_gpus"])}
        for field in self.setup_fields[1:]:
            text = written(field, values[field.key])
            if text is not None:
                out[field.key] = text
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
        lines = ["!byzerllm setup sfft;"] + [f'!byzerllm setup "{k}={v}";' for k, v in self.setups().items()]
        lines.append("run command as LLM.`` where")
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
