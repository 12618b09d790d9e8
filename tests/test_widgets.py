"""Widgets, on their state: the job monitor on a real job folder (metrics written by the runtime's
MetricsWriter), the loss plot, the jobs table, the config form's round trip through the parser
(a property test), and the TensorBoard frame's URL."""
from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byzer_magic.language.interpolation import interpolate
from byzer_magic.language.parser import parse_cell
from byzer_magic.language.statements import RunStatement, SetupStatement
from byzer_magic.runtime import config, tensorboard
from byzer_magic.runtime.kernel.jobs import JobHandle
from byzer_magic.runtime.worker.metrics import MetricsWriter
from byzer_magic.widgets import (ConfigForm, JobMonitor, LossPlot, frame_url, jobs_table, loss_svg,
                                 tensorboard_frame)
from byzer_magic.widgets.form import DS_DEFAULTS, SETUP_FIELDS, run_parameters
from byzer_magic.widgets.form_fields import NOT_FIELDS, SAME_AS, OptionalValue, int_bounds
from byzer_magic.widgets.loss_plot import smooth
from byzer_magic.widgets.tensorboard_frame import jupyter_base_url
from tests.support.jobs import write_job_folder

TOTAL = 20


class FakeJob(JobHandle):
    """A job folder without a Ray job: the status, logs and stop are the test's."""

    def __init__(self, name, job_dir, status="RUNNING"):
        super().__init__(name, job_dir)
        self.fake_status = status
        self.stop_calls = 0

    def status(self):
        return self.fake_status

    def logs(self, tail=None):
        return "W-0 step 1\nW-0 step 2"

    def stop(self, timeout=60):
        self.stop_calls += 1
        self.fake_status = "STOPPED"
        return "STOPPED"


def loss(step):
    return 8.0 / (1 + step) ** 0.5


def log_steps(job_dir, first, last):
    writer = MetricsWriter(job_dir, resume_step=first - 1)  # as a worker continuing after step first - 1
    for step in range(first, last + 1):
        writer.log(step, loss=loss(step), lr=1e-3, grad_norm=0.5, tokens_per_s=1234.0, tokens=256 * step, epoch=0,
                   total_steps=TOTAL)
    writer.close()


@pytest.fixture
def job(tmp_path):
    job_dir = write_job_folder(tmp_path / "demo", "demo", total_steps=TOTAL, submitted_at=time.time() - 90)
    log_steps(job_dir, 1, 5)
    return FakeJob("demo", job_dir)


def wait_for(predicate, timeout=30.0):  # generous: CI machines can be very busy
    deadline = time.time() + timeout
    while not predicate() and time.time() < deadline:
        time.sleep(0.05)
    return predicate()


# -- job monitor --------------------------------------------------------------------------------------

def test_monitor_shows_the_job_and_follows_it(job):
    monitor = JobMonitor(job, refresh=0.1)
    try:
        assert monitor.status_label.value == "RUNNING" and monitor.polling
        assert (monitor.progress.value, monitor.progress.max) == (5, TOTAL)
        assert monitor.plot_data == [(s, pytest.approx(loss(s))) for s in range(1, 6)]
        text = monitor.progress_text.value
        assert re.match(r"5 / 20 · elapsed 0:0\d:\d\d · ETA \d+:\d\d:\d\d$", text), text  # submitted 90 s ago
        assert "1,234 tokens/s" in monitor.speed.value
        assert 'data-points="5"' in monitor.plot.svg.value
        assert str(job.checkpoint_dir) in monitor.paths.value and str(job.model_dir) in monitor.paths.value

        log_steps(job.job_dir, 6, 8)
        monitor.refresh_now()
        assert [s for s, _ in monitor.plot_data] == list(range(1, 9)) and monitor.progress.value == 8

        log_steps(job.job_dir, 9, TOTAL)  # the thread picks these up by itself
        assert wait_for(lambda: len(monitor.plot_data) == TOTAL)
        assert monitor.progress.value == TOTAL and 'data-points="20"' in monitor.plot.svg.value

        job.fake_status = "SUCCEEDED"  # a terminal status ends the polling
        assert wait_for(lambda: not monitor.polling)
        assert monitor.status_label.value == "SUCCEEDED" and monitor.progress.bar_style == "success"
        assert monitor.stop_button.disabled and "ETA" not in monitor.progress_text.value
    finally:
        monitor.close()


def test_reattach_shows_the_whole_curve_and_does_not_poll_an_ended_job(job):
    log_steps(job.job_dir, 6, 12)
    again = JobMonitor(FakeJob("demo", job.job_dir, status="LOST"))  # e.g. from a new kernel
    assert [s for s, _ in again.plot_data] == list(range(1, 13))
    assert again.status_label.value == "LOST" and not again.polling and again.stop_button.disabled
    again.close()


def test_monitor_before_the_first_step(tmp_path):
    monitor = JobMonitor(FakeJob("new", tmp_path, status="PENDING"), start=False)
    assert monitor.plot_data == [] and monitor.progress.value == 0
    assert monitor.progress_text.value.startswith("0 / ?") and "no step logged yet" in monitor.speed.value
    assert 'data-points="0"' in monitor.plot.svg.value
    monitor.close()


def test_stop_button_needs_a_second_click_and_stops_in_a_thread(job):
    monitor = JobMonitor(job, start=False)
    monitor.stop_button.click()
    assert job.stop_calls == 0 and monitor.stop_button.description == "Click again to stop"
    monitor.stop_button.click()
    assert wait_for(lambda: monitor.progress.bar_style == "warning")  # set last by the refresh after stop
    assert job.stop_calls == 1 and monitor.status_label.value == "STOPPED" and monitor.stop_button.disabled


def test_logs_toggle_and_log_scale(job):
    monitor = JobMonitor(job, start=False)
    monitor.logs_button.value = True
    assert wait_for(lambda: "W-0 step 2" in monitor.logs.value) and monitor.logs.layout.display == ""
    monitor.plot.log_scale.value = True
    assert "loss (log)" in monitor.plot.svg.value
    monitor.close()


def _recording_shell(monkeypatch):
    """The test IPython shell, its display messages recorded (data, transient display id, update?)."""
    from IPython.core.displaypub import CapturingDisplayPublisher
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    monkeypatch.setattr(shell, "display_pub", CapturingDisplayPublisher())
    return shell, shell.display_pub.outputs


def test_monitor_output_carries_a_static_picture_kept_current(job, monkeypatch):
    """Without a kernel (nbconvert, GitHub) the output is the text/html beside the widget view: the
    status, progress and the loss curve as SVG; the status's change updates that same output."""
    shell, outputs = _recording_shell(monkeypatch)
    monitor = JobMonitor(job, start=False)
    shell.user_ns["monitor"] = monitor
    shell.run_cell("monitor")  # as a cell's value: a display with an id, no execute_result
    assert len(outputs) == 1 and not outputs[0]["update"]
    first, display_id = outputs[0]["data"], outputs[0]["transient"]["display_id"]
    assert first["application/vnd.jupyter.widget-view+json"]["model_id"] == monitor.model_id
    assert "data-status='RUNNING'" in first["text/html"] and 'data-points="5"' in first["text/html"]
    assert "width:25.0%" in first["text/html"] and first["text/plain"].startswith("JobMonitor(demo: RUNNING · 5 / 20")

    log_steps(job.job_dir, 6, 12)
    monitor.refresh_now()  # the curve grew, the status did not change: the live view is left alone
    assert len(outputs) == 1
    log_steps(job.job_dir, 13, TOTAL)
    job.fake_status = "SUCCEEDED"
    monitor.refresh_now()
    last = outputs[-1]
    assert last["update"] and last["transient"]["display_id"] == display_id
    assert "data-status='SUCCEEDED'" in last["data"]["text/html"] and 'data-points="20"' in last["data"]["text/html"]
    assert "width:100.0%" in last["data"]["text/html"] and "polyline class=\"smoothed\"" in last["data"]["text/html"]
    monitor.close()


def test_a_wait_that_sees_the_end_updates_the_monitors_picture_at_once(job, monkeypatch):
    """A notebook waits for its job in a later cell, through another handle, and is saved as soon as the
    cell ends: the monitor's picture already shows the end, whatever its polling thread's interval."""
    shell, outputs = _recording_shell(monkeypatch)
    monitor = JobMonitor(job, refresh=3600)  # its thread would next look in an hour
    shell.user_ns["monitor"] = monitor
    shell.run_cell("monitor")
    assert monitor.polling and "data-status='RUNNING'" in outputs[-1]["data"]["text/html"]
    log_steps(job.job_dir, 6, TOTAL)
    job.fake_status = "SUCCEEDED"  # the monitor's handle and the one waited on read the same job
    assert FakeJob("demo", job.job_dir, status="SUCCEEDED").wait(timeout=5) == "SUCCEEDED"
    last = outputs[-1]
    assert last["update"] and "data-status='SUCCEEDED'" in last["data"]["text/html"]
    assert 'data-points="20"' in last["data"]["text/html"]
    monitor.close()
    assert not monitor.polling


def test_every_widget_output_has_a_static_picture(monkeypatch, tmp_path):
    shell, outputs = _recording_shell(monkeypatch)
    form = ConfigForm(TABLES)
    shell.user_ns["form"] = form
    shell.run_cell("form")
    assert "<pre>!byzerllm setup sfft;" in outputs[-1]["data"]["text/html"]
    form.fields["inputTable"].value = "finalTrainData"
    form.preview_button.click()  # what the form says is kept in its output too
    assert outputs[-1]["update"] and "inputTable=&quot;finalTrainData&quot;" in outputs[-1]["data"]["text/html"]

    monkeypatch.setattr(tensorboard, "_CHILD", "import sys; print('bad flag'); sys.exit(2)")
    shell.user_ns["frame"] = tensorboard_frame(tmp_path / "tb", background=False)
    shell.run_cell("frame")
    assert "bad flag" in outputs[-1]["data"]["text/html"] and "%byzerllm tensorboard NAME" in outputs[-1]["data"]["text/html"]
    shell.user_ns["plot"] = LossPlot([(1, 3.0), (2, 2.0)])
    shell.run_cell("plot")
    assert outputs[-1]["data"]["text/html"].startswith('<svg class="byzer-loss-plot" data-points="2"')


# -- loss plot, jobs table ----------------------------------------------------------------------------

def test_loss_svg_and_smoothing():
    assert smooth([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])  # debiased: no pull to zero
    assert smooth([1.0, 3.0], 0.0) == [1.0, 3.0]
    svg = loss_svg([(1, 3.0), (2, float("nan")), (3, 0.0), (4, 1.0)], log_scale=True)
    assert 'data-points="2"' in svg and svg.count('class="point"') == 2  # NaN and 0 have no log
    long = loss_svg([(s, 1.0 + (s % 7)) for s in range(100_000)])
    assert 'data-points="100000"' in long and len(long) < 100_000 and 'class="point"' not in long


def test_jobs_table(job, tmp_path):
    other = FakeJob("empty", tmp_path / "empty", status="PENDING")
    table = jobs_table([job, other])
    page = table._repr_html_()
    assert "<th style='text-align:left'>steps done / total</th>" in page
    assert "<td>demo</td>" in page and ">RUNNING</td>" in page and "<td>5/20</td>" in page
    assert f"<td>{round(loss(5), 4):.4g}</td>" in page and "<td>1,234</td>" in page
    lines = repr(table).splitlines()
    assert lines[0].split()[:2] == ["name", "status"] and lines[1].startswith("demo") and "5/20" in lines[1]
    assert jobs_table([])._repr_html_() == "<p class='byzer-jobs'>No jobs yet.</p>"


# -- config form ----------------------------------------------------------------------------------------

TABLES = ["finalTrainData", "t2"]
text_values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


def _visible_text(draw, field):
    """A text the language takes for ``field`` (visible characters, the field's own check), else ""."""
    from byzer_magic.errors import ByzerError, check_visible
    from byzer_magic.runtime.spec import check_value, sfft_fields

    # report_to: trackers that need no package nor key (mlflow and wandb depend on the machine)
    text = draw(st.one_of(st.just(""), st.just(field.default), text_values,
                          st.sampled_from(["${x}", "a\\${b}", "none", "tensorboard"])))
    try:
        check_visible(text, what=field.key)
        if text.strip():
            check_value(sfft_fields()[field.name][1], text.strip())
    except ByzerError:
        return ""
    return text


def _draw_field(draw, field):
    """A value of a generated training argument within its range (``None``: unset when optional)."""
    if field.choices:
        value = st.sampled_from(field.choices)
    elif field.kind is bool:
        value = st.booleans()
    elif field.kind is int:
        low, high = int_bounds(field)
        value = st.one_of(st.integers(low, min(high, low + 1000)), st.integers(low, high))
    elif field.kind is float:
        value = st.floats(field.low, field.high, allow_nan=False, allow_infinity=False)
    else:
        return _visible_text(draw, field)
    if field.default is not None:
        value = st.one_of(st.just(field.default), value)
    return draw(st.one_of(st.none(), value) if field.optional else value)


@st.composite
def form_values(draw):
    values = {}
    for field in run_parameters():
        key = field.key
        if key.startswith("sfft."):  # generated from runtime/spec.py
            values[key] = _draw_field(draw, field)
        elif field.widget == "table":
            values[key] = draw(st.sampled_from([""] + TABLES))
        elif field.choices:
            values[key] = draw(st.sampled_from(field.choices))
        elif field.kind is bool:
            values[key] = draw(st.booleans())
        else:
            values[key] = draw(st.one_of(st.just(""), text_values, st.sampled_from(["${x}", '\\"\'', "a\\${b}"])))
    values["num_gpus"] = draw(st.integers(1, 512))
    values["num_cpus_per_worker"] = draw(st.one_of(st.just(1.0), st.floats(0.01, 4096.0)))
    values["use_gpu"] = draw(st.one_of(st.none(), st.booleans()))
    values["zero_stage"] = draw(st.integers(0, 3))
    values["offload_optimizer"] = draw(st.booleans())
    values["offload_param"] = draw(st.booleans())
    values["precision"] = draw(st.sampled_from(["auto", "bf16", "fp16", "fp32"]))
    values["lr"] = draw(st.one_of(st.just(DS_DEFAULTS["lr"]), st.floats(1e-9, 1.0)))
    values["micro_batch"] = draw(st.integers(1, 64))
    values["gradient_accumulation"] = draw(st.integers(1, 64))
    return values


def _option_text(value):
    return ("true" if value else "false") if isinstance(value, bool) else repr(value) if isinstance(value, float) \
        else str(value)


@settings(max_examples=80, deadline=None, database=None)  # no .hypothesis/ folder in the repo
@given(form_values())
def test_form_round_trips_through_the_parser(values):
    form = ConfigForm(TABLES)
    for key, value in values.items():  # zero_stage before the offloads: the stage decides what is allowed
        form.fields[key].value = value
    statements = parse_cell(form.to_cell_text())

    setups = [f"num_gpus={values['num_gpus']}"]
    if values["num_cpus_per_worker"] != 1.0:
        setups.append(f"num_cpus_per_worker={values['num_cpus_per_worker']!r}")
    if values["use_gpu"] is not None:
        setups.append(f"use_gpu={_option_text(values['use_gpu'])}")
    assert [type(s) for s in statements] == [SetupStatement] * (1 + len(setups)) + [RunStatement]
    assert statements[0].value == "sfft" and [s.value for s in statements[1:-1]] == setups
    assert statements[1].value == f"num_gpus={values['num_gpus']}"
    from byzer_magic.language.session import Session

    def no_ray():
        raise AssertionError("a setup does not connect")

    session = Session(connect=no_ray)  # the setups as the session reads them
    session.run_cell(form.to_cell_text().rsplit("\nrun command as LLM", 1)[0])
    wanted = {"sfft": True, "num_gpus": values["num_gpus"]}
    if values["num_cpus_per_worker"] != 1.0:
        wanted["num_cpus_per_worker"] = values["num_cpus_per_worker"]
    if values["use_gpu"] is not None:
        wanted["use_gpu"] = values["use_gpu"]
    assert session.setup == wanted
    run = statements[-1]
    assert (run.input, run.transform) == ("command", "LLM")
    parsed = {o.key: interpolate(o.value, {}) for o in run.options}  # `\${` reads back as a literal `${`

    expected = {}
    for field in run_parameters():
        key, default = field.key, field.default
        value = values[key].strip() if isinstance(values[key], str) else values[key]
        if value is None or (value == "" and field.kind is str):  # unset: the job's default
            continue
        if key == "resume" and not values["name"].strip():  # nothing to resume without a name
            continue
        if value != default or key == "pretrainedModelType":
            expected[key] = _option_text(value)
    ds_text = parsed.pop("deepspeedConfig", None)
    assert parsed == expected

    # The DeepSpeed settings, as the runtime will see them once merged over its defaults.
    ds = config._merge(json.loads(config.DEFAULT_CONFIG), json.loads(ds_text) if ds_text else {})
    zero = ds["zero_optimization"]
    assert zero["stage"] == values["zero_stage"]
    assert ("offload_optimizer" in zero) == (values["offload_optimizer"] and values["zero_stage"] >= 1)
    assert ("offload_param" in zero) == (values["offload_param"] and values["zero_stage"] == 3)
    assert ds["optimizer"]["params"]["lr"] == values["lr"] and ds["optimizer"]["type"] == "AdamW"
    assert ds.get("train_micro_batch_size_per_gpu", 1) == values["micro_batch"]
    assert ds.get("gradient_accumulation_steps", 1) == values["gradient_accumulation"]
    precision = {"auto": ("auto", None), "bf16": (True, None), "fp16": (False, True), "fp32": (False, None)}
    assert (ds["bf16"]["enabled"], ds.get("fp16", {}).get("enabled")) == precision[values["precision"]]

    # Every training argument reaches the run the language builds, and the JobSpec built from it. The
    # statement's own parameters (free text above) are set to a valid input first.
    from byzer_magic.language.llm_params import parse_llm_options
    from byzer_magic.runtime.kernel.job_spec import build_job_spec
    from byzer_magic.runtime.spec import default_of, sfft_fields

    for field in run_parameters():
        if not field.key.startswith("sfft."):
            form.fields[field.key].value = field.default
    form.fields["inputTable"].value = "finalTrainData"
    run = parse_cell(form.to_cell_text())[-1]
    llm = parse_llm_options(run.options, setup={"num_gpus": values["num_gpus"]},
                            tables={"finalTrainData": object()}, interpolate=lambda text, _: interpolate(text, {}))
    spec = build_job_spec(llm.config, name="j", job_dir=Path("/nonexistent/j"), use_gpu=False,
                          tokenizer_path=llm.config.train_args.tokenizer_path, cluster_address="", notes=[],
                          get_model_file=None)
    config_fields = {f.name for f in dataclasses.fields(config.ParallelConfig)}
    for field in run_parameters():
        if not field.key.startswith("sfft."):
            continue
        value = values[field.key].strip() if isinstance(values[field.key], str) else values[field.key]
        want = default_of(sfft_fields()[field.name][1]) if value is None or value == "" else value
        # Two settings are ParallelConfig's own (the Python API's keywords), the others TrainArgs'.
        got = getattr(llm.config if field.name in config_fields else llm.config.train_args, field.name)
        assert got == want, field.key
        assert getattr(getattr(spec, field.section), field.name) == want, field.key


def test_form_offers_every_parameter_the_language_takes():
    """Statement parameters, setup keys and training arguments: each the language takes has a field, and
    each field is one the language takes, of its type."""
    from byzer_magic.language.llm_params import PARAMETERS
    from byzer_magic.language.session import VALID_SETUP_KEYS
    from byzer_magic.runtime.spec import kind_of, sfft_fields

    form = ConfigForm(TABLES)
    statement = {f.key for f in form.run_fields if not f.key.startswith("sfft.")}
    assert statement | set(NOT_FIELDS) == set(PARAMETERS) and not statement & set(NOT_FIELDS)
    assert {"resume", "dryRun", "modelConfig", "outputTable"} <= statement
    assert {f.key for f in SETUP_FIELDS} == set(VALID_SETUP_KEYS)
    assert all(f.kind is VALID_SETUP_KEYS[f.key][0] for f in SETUP_FIELDS)
    training = {f.key for f in form.run_fields if f.key.startswith("sfft.")}
    accepted = {f"sfft.{kind_of(f).__name__}.{name}" for name, (_s, f) in sfft_fields().items()}
    assert training == accepted - {f"sfft.str.{name}" for name in SAME_AS}
    assert {"sfft.int.seed", "sfft.float.warmup_ratio", "sfft.int.eval_every", "sfft.int.checkpoint_every"} <= training
    assert set(form.fields) == {f.key for f in form.run_fields + SETUP_FIELDS} | set(DS_DEFAULTS)
    for field in form.run_fields:  # a widget that holds the language's range
        widget = form.fields[field.key]
        inner = widget.inner if isinstance(widget, OptionalValue) else widget
        assert isinstance(widget, OptionalValue) == field.optional
        if field.key.startswith("sfft.") and field.kind is int:
            assert (inner.min, inner.max) == int_bounds(field) and inner.max <= 2 ** 53 - 1
            assert field.low is None or inner.min == field.low
        if field.key.startswith("sfft.") and field.kind is float and field.low is not None:
            assert inner.min == field.low and inner.max == field.high
        if field.choices:
            assert tuple(inner.options) == tuple(field.choices)
    titles = form.sections.titles
    assert titles[0] == "run command as LLM" and titles[-1] == "cluster and DeepSpeed"
    assert {t.split(" ")[0] for t in titles[1:-1]} == {s for s, _f in sfft_fields().values()}


def test_form_picks_up_a_new_training_argument(monkeypatch):
    from dataclasses import make_dataclass

    from byzer_magic.runtime.spec import param, sfft_fields
    from byzer_magic.widgets import form_fields

    new = make_dataclass("New", [("warmup_steps", "int | None", param(None, "warmup steps", low=0, high=10))])
    extra = {**sfft_fields(), "warmup_steps": ("training", new.__dataclass_fields__["warmup_steps"])}
    monkeypatch.setattr(form_fields, "sfft_fields", lambda: extra)
    form = ConfigForm(TABLES)
    widget = form.fields["sfft.int.warmup_steps"]
    assert isinstance(widget, OptionalValue) and widget.value is None
    assert (widget.inner.min, widget.inner.max) == (0, 10)
    assert "warmup_steps" not in form.to_cell_text()
    widget.value = 4
    assert '`sfft.int.warmup_steps`="4"' in form.to_cell_text()
    widget.value = None
    assert "warmup_steps" not in form.to_cell_text()


def test_default_form_writes_only_what_is_required_and_launches():
    launched = []
    form = ConfigForm(TABLES, on_launch=launched.append)
    assert form.to_cell_text() == ('!byzerllm setup sfft;\n!byzerllm setup "num_gpus=1";\n'
                                   'run command as LLM.`` where\npretrainedModelType="sfft/llama2";')
    assert [value for _label, value in form.fields["inputTable"].options] == ["", "finalTrainData", "t2"]
    assert form.fields["offload_optimizer"].disabled is False and form.fields["offload_param"].disabled is True
    form.fields["inputTable"].value = "finalTrainData"
    form.fields["sfft.int.max_length"].value = 128
    form.preview_button.click()
    assert form.preview.layout.display == "" and '`sfft.int.max_length`="128"' in form.preview.value
    form.launch_button.click()
    assert launched == [form.preview.value] and 'inputTable="finalTrainData"' in launched[0]

    # What the session does with the cell: its LLM parameters are valid as written.
    from byzer_magic.language.llm_params import parse_llm_options
    form.fields["zero_stage"].value, form.fields["precision"].value = 3, "fp32"
    form.fields["sfft.bool.setup_nccl_socket_ifname_by_ip"].value = True
    run = parse_cell(form.to_cell_text())[-1]
    llm = parse_llm_options(run.options, setup={"num_gpus": 1}, tables={"finalTrainData": object()})
    assert llm.config.train_args.max_length == 128 and llm.config.setup_nccl_socket_ifname_by_ip
    assert llm.config.ds_config == {"zero_optimization": {"stage": 3}, "bf16": {"enabled": False}}
    assert ConfigForm([]).launch_button.disabled


# -- TensorBoard frame ----------------------------------------------------------------------------------

def test_frame_url_order():
    proxy = {"TENSORBOARD_PROXY_URL": "https://lab.example.com/user/a/proxy/%PORT%/"}
    assert frame_url(6006, environ=proxy) == "https://lab.example.com/user/a/proxy/6006/"
    assert frame_url(6006, "https://other/%PORT%/", environ=proxy) == "https://other/6006/"  # the setting wins
    assert frame_url(6006, environ={}, base_url="/", server_proxy=True) == "/proxy/6006/"
    assert frame_url(6006, environ={}, base_url="/user/a/", server_proxy=True) == "/user/a/proxy/6006/"
    assert frame_url(6006, environ={}, base_url="/", server_proxy=False) == "http://127.0.0.1:6006/"
    assert frame_url(6006, environ={}, server_proxy=True) == "http://127.0.0.1:6006/"  # not under Jupyter


def test_jupyter_base_url(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "jpserver-4242.json").write_text(json.dumps({"pid": 4242, "base_url": "/lab-base/"}))
    assert jupyter_base_url({"JPY_PARENT_PID": "4242"}) == "/lab-base/"
    assert jupyter_base_url({"JPY_PARENT_PID": "1"}) is None  # started by nbclient, VS Code, ...: no proxy
    assert jupyter_base_url({"JUPYTERHUB_SERVICE_PREFIX": "/user/bob/", "JPY_PARENT_PID": "4242"}) == "/user/bob/"
    assert jupyter_base_url({}) is None
    assert frame_url(7000, environ={"JPY_PARENT_PID": "4242"}, server_proxy=True) == "/lab-base/proxy/7000/"


def test_tensorboard_frame_waits_for_the_first_events(tmp_path):
    """Opened before the job wrote anything, TensorBoard's page would say "No dashboards are active"
    for good: the frame comes once the server has scalars."""
    job_dir = tmp_path / "queued"
    frame = tensorboard_frame(job_dir / "tensorboard")
    try:
        assert wait_for(lambda: "waiting for the job's first TensorBoard events" in frame.message.value, 60)
        assert frame.frame.value == "" and frame.url
        log_steps(job_dir, 1, 3)
        assert frame.wait(120) and 'class="byzer-tensorboard"' in frame.frame.value
        assert "waiting" not in frame.message.value and tensorboard.has_scalars(frame.result.info.port)
    finally:
        tensorboard.stop(job_dir / "tensorboard")


def test_tensorboard_frame(job, monkeypatch):
    monkeypatch.delenv("TENSORBOARD_PROXY_URL", raising=False)
    frame = tensorboard_frame(job.tensorboard_dir, proxy_url="https://hub.example/proxy/%PORT%/")
    assert "Launching TensorBoard" in frame.message.value or frame.url
    try:
        result = frame.wait(60)
        assert isinstance(result, tensorboard.Launched)
        assert frame.url == f"https://hub.example/proxy/{result.info.port}/"
        assert f'src="{frame.url}"' in frame.frame.value and "Launched TensorBoard" in frame.message.value
        reused = tensorboard_frame(job.tensorboard_dir, background=False)
        assert isinstance(reused.result, tensorboard.Reused) and str(result.info.port) in reused.url
    finally:
        tensorboard.stop(job.tensorboard_dir)

    monkeypatch.setattr(tensorboard, "_CHILD", "import sys; print('bad flag'); sys.exit(2)")
    failed = tensorboard_frame(job.tensorboard_dir, background=False)
    assert isinstance(failed.result, tensorboard.Failed) and failed.url is None
    assert "bad flag" in failed.message.value and failed.frame.value == ""
