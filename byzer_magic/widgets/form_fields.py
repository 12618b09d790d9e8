"""The fields of ``ConfigForm`` (widgets/form.py): what each one writes into the cell and its widget.

Two sources, so that the form cannot drift from the language:

- the parameters of ``run command as LLM`` (``language/llm_params.PARAMETERS``, their help text from there)
  and of ``!byzerllm setup "key=value"`` (``language/session.VALID_SETUP_KEYS``), listed here with the kind
  of widget each takes; a test checks that the lists cover the language's and nothing else;
- every training argument ``sfft.<type>.<name>``, generated from the ``param(...)`` fields of
  ``runtime/spec.py`` (type, default, help, range, choices), one section of the form per ``JobSpec``
  section. A new field there is a new field of the form.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import ipywidgets as widgets

from byzer_magic.language.llm_params import PARAMETERS
from byzer_magic.language.session import VALID_SETUP_KEYS
from byzer_magic.runtime.spec import SECTIONS, default_of, kind_of, sfft_fields

MODEL_TYPES = ("sfft/llama2", "sfft/baichuan")
STYLE = {"description_width": "260px"}
WIDE = widgets.Layout(width="640px")
MAX_WIDGET_INT = 2 ** 53 - 1      # the largest integer a browser's number holds exactly
MAX_WIDGET_FLOAT = sys.float_info.max
# sfft names that are a statement parameter under another name (llm_params refuses both): the form offers
# the parameter only.
SAME_AS = {"model_path": "localModelDir", "data_dir": "localDataDir"}


@dataclass(frozen=True)
class FormField:
    """One field: ``key`` as the cell writes it, its type, default (``None``: unset, nothing written) and
    the widget's bounds. ``widget``: ``""`` (from the kind), ``"table"`` (the session's tables) or ``"json"``."""
    key: str
    kind: type
    default: Any
    label: str
    section: str
    help: str = ""
    optional: bool = False
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    widget: str = ""

    @property
    def name(self) -> str:
        """The training argument's name (``max_length`` for ``sfft.int.max_length``), else the key."""
        return self.key.rsplit(".", 1)[-1]


def _p(key: str, kind: type, default: Any, label: str, **more) -> FormField:
    return FormField(key, kind, default, label, "run command as LLM", help=PARAMETERS[key], **more)


# The parameters of `run command as LLM` the form offers, in its order (help from llm_params.PARAMETERS).
STATEMENT_FIELDS = (
    _p("name", str, "", "job name (empty: sfft-<user>-<time>)"),
    _p("localPathPrefix", str, "", "jobs folder (empty: ~/byzer_magic/jobs)"),
    _p("pretrainedModelType", str, MODEL_TYPES[0], "model type", choices=MODEL_TYPES),
    _p("localModelDir", str, "", "continue from this model folder (empty: from scratch)"),
    _p("modelConfig", str, "", "from scratch: the architecture's sizes as JSON", widget="json"),
    _p("localDataDir", str, "", "text files folder (instead of an input table)"),
    _p("inputTable", str, "", "input table (needs a text column)", widget="table"),
    _p("outputTable", str, "", "output table for the run's result"),
    _p("detached", bool, True, "detached: return at once, the job outlives the notebook"),
    _p("keepPartitionNum", bool, False, "one input partition per worker"),
    _p("resume", bool, False, "resume job `name` from its latest checkpoint (needs a name)"),
    _p("dryRun", bool, False, "dry run: plan tokens, steps and memory, do not train"),
)
# Parameters the language takes that are not a field of their own, and why.
NOT_FIELDS = {
    "deepspeedConfig": "written from the DeepSpeed fields (zero_stage, precision, lr, ...)",
    "model": 'compatibility only: its one value, "command", is the default',
}
ALWAYS_WRITTEN = ("pretrainedModelType",)  # required: written even when it is the default

# `!byzerllm setup "key=value";` (language/session.VALID_SETUP_KEYS); unset (None): not written.
SETUP_FIELDS = (
    FormField("num_gpus", int, 1, "GPUs (workers)", "cluster", help=VALID_SETUP_KEYS["num_gpus"][1],
              low=1, high=100_000),
    FormField("num_cpus_per_worker", float, 1.0, "CPUs per worker", "cluster",
              help=VALID_SETUP_KEYS["num_cpus_per_worker"][1], low=0.01, high=4096.0),
    FormField("use_gpu", bool, None, "use GPUs (unset: when the cluster has them)", "cluster",
              help=VALID_SETUP_KEYS["use_gpu"][1], optional=True),
)


def training_fields() -> tuple[FormField, ...]:
    """A field per training argument of ``runtime/spec.py`` (read when called: a new one is picked up)."""
    out = []
    for name, (section, f) in sfft_fields().items():
        if name in SAME_AS:
            continue
        kind, meta = kind_of(f), f.metadata
        optional = "None" in str(f.type)
        default = default_of(f)
        if kind is str and default is None:
            default = ""  # an empty text is unset
        out.append(FormField(f"sfft.{kind.__name__}.{name}", kind, default, name, section,
                             help=meta.get("help") or "", optional=optional and kind is not str,
                             low=meta.get("low"), high=meta.get("high"), choices=meta.get("choices")))
    return tuple(out)


def section_title(section: str) -> str:
    """``"training (sfft.*): How long and how"``: the section's name and its docstring's first phrase."""
    doc = (SECTIONS[section].__doc__ or "").strip().splitlines()[0] if section in SECTIONS else ""
    doc = re.split(r": | \(|\. |\.$", doc.replace("`", ""))[0]
    return f"{section} (sfft.*)" + (f": {doc}" if doc else "")


def int_bounds(field: FormField) -> tuple[int, int]:
    low = -MAX_WIDGET_INT if field.low is None else max(int(field.low), -MAX_WIDGET_INT)
    high = MAX_WIDGET_INT if field.high is None else min(int(field.high), MAX_WIDGET_INT)
    return low, high


def float_bounds(field: FormField) -> tuple[float, float]:
    low = -MAX_WIDGET_FLOAT if field.low is None else float(field.low)
    high = MAX_WIDGET_FLOAT if field.high is None else float(field.high)
    return low, high


class OptionalValue(widgets.HBox):
    """A value that may be unset: the field's widget and a "set" box; ``value`` is ``None`` while the box
    is clear (the cell then writes nothing and the job takes its default)."""

    def __init__(self, inner: widgets.ValueWidget, help: str = ""):
        self.inner = inner
        self.is_set = widgets.Checkbox(False, description="set", indent=False, tooltip=help,
                                       layout=widgets.Layout(width="70px"))
        self.is_set.observe(lambda _: self._fit(), "value")
        super().__init__([inner, self.is_set])
        self._fit()

    def _fit(self) -> None:
        self.inner.disabled = not self.is_set.value

    @property
    def value(self) -> Any:
        return self.inner.value if self.is_set.value else None

    @value.setter
    def value(self, value: Any) -> None:
        if value is not None:
            self.inner.value = value
        self.is_set.value = value is not None


def make_widget(field: FormField, tables: Sequence[str] = ()) -> widgets.Widget:
    """The widget of ``field``; its ``value`` is what the field holds (``None``: unset)."""
    shown = field.label if field.label == field.name else f"{field.label} [{field.key}]"
    common = {"description": shown, "style": STYLE, "layout": WIDE, "tooltip": field.help or None}
    default = field.default
    if field.optional and default is None:  # the inner widget's starting value, shown greyed out
        default = {int: max(int_bounds(field)[0], 0), float: max(float_bounds(field)[0], 0.0),
                   bool: False, str: ""}[field.kind]
        if field.choices:
            default = field.choices[0]
        common["layout"] = widgets.Layout(width="566px")
    if field.widget == "table":
        widget = widgets.Dropdown(options=[("(none)", "")] + [(t, t) for t in tables], value="", **common)
    elif field.choices:
        widget = widgets.Dropdown(options=list(field.choices), value=default, **common)
    elif field.kind is bool:
        widget = widgets.Checkbox(bool(default), **common)
    elif field.kind is int:
        low, high = int_bounds(field)
        widget = widgets.BoundedIntText(default, min=low, max=high, **common)
    elif field.kind is float:
        low, high = float_bounds(field)
        widget = widgets.BoundedFloatText(default, min=low, max=high, **common)
    else:
        widget = widgets.Text(default, placeholder="(default)" if field.key.startswith("sfft.") else "",
                              **common)
    return OptionalValue(widget, field.help) if field.optional else widget


def written(field: FormField, value: Any) -> str | None:
    """The option's text for ``value``, or ``None`` when the cell leaves it out (the default, or unset)."""
    if isinstance(value, str):
        value = value.strip()
    if value is None or (value == "" and field.kind is str):
        return None
    if value == field.default and field.key not in ALWAYS_WRITTEN:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)
