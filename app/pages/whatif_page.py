"""What-if: edit one scenario with knobs, run it, and read latency, throughput, goodput, KV
memory, batch size and cost against the SLOs, side by side with a pinned baseline.

The scenario dict is the page's state; every knob is keyed ``k:<dotted scenario key>`` and
the URL carries the dict's difference from the defaults (:mod:`app.state`)."""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import streamlit as st

from app import figures, run_data, runner, state, ui, workload_widgets
from sim import figures as run_figures
from sim.run import RunResult, resolve
from sim.scenario import KV_DTYPE_QUANTIZATIONS, PREEMPTION_MODES, ROUTERS, Scenario

KNOB = "k:"
TP_CHOICES = (1, 2, 4, 8, 16)
BLOCK_CHOICES = (8, 16, 32, 64)
WEIGHT_DTYPES = ("bf16", "fp16", "fp8", "int8", "int4")
NO_TIER = "(none)"
WORKLOAD_SOURCES = ("Synthetic", "Trace file")


def _reset_knobs(data: dict[str, Any]) -> None:
    """Make ``data`` the scenario and let every knob re-read its value from it."""
    ui.reset_widgets((KNOB,))
    st.session_state["wi_scenario"] = data


def _validate(data: dict[str, Any]) -> None:
    Scenario.from_dict(data)


def _select(label: str, options: list, dotted: str, data: dict, **kwargs: Any) -> Any:
    return ui.select(label, options, state.get_path(data, dotted), KNOB + dotted, **kwargs)


def _number(label: str, dotted: str, data: dict, fallback: float | int, **kwargs: Any) -> Any:
    value = state.get_path(data, dotted, fallback)
    return st.number_input(label, value=value, key=KNOB + dotted, **kwargs)


def _set(data: dict, dotted: str, value: Any) -> None:
    if value is None:
        state.delete_path(data, dotted)
        return
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _model_hardware(data: dict) -> None:
    models = [m.id for m in ui.models()]
    if "name" in data.get("model", {}):
        _set(data, "model.name", _select("Model", models, "model.name", data))
    else:
        st.caption(f"Model from `{state.get_path(data, 'model.config')}` (scenario TOML)")
    _set(
        data,
        "model.weight_dtype",
        _select("Weight dtype", list(WEIGHT_DTYPES), "model.weight_dtype", data),
    )
    devices = [a.id for a in ui.accelerators()]
    _set(
        data, "hardware.accelerator", _select("Accelerator", devices, "hardware.accelerator", data)
    )
    left, right = st.columns(2)
    with left:
        _set(
            data,
            "hardware.tp",
            _select("Tensor parallel (GPUs)", list(TP_CHOICES), "hardware.tp", data),
        )
    with right:
        _set(
            data,
            "hardware.replicas",
            int(_number("Replicas", "hardware.replicas", data, 1, min_value=1, step=1)),
        )
    _set(
        data,
        "hardware.gpu_memory_fraction",
        float(
            st.slider(
                "GPU memory for the engine (fraction)",
                min_value=0.5,
                max_value=1.0,
                value=float(state.get_path(data, "hardware.gpu_memory_fraction", 0.9)),
                step=0.01,
                key=KNOB + "hardware.gpu_memory_fraction",
            )
        ),
    )
    tiers = [NO_TIER, *(t.id for t in ui.tiers() if t.kind in ("dram", "cxl"))]
    tier = _select("Host KV tier", tiers, "hardware.host_memory_tier", data)
    _set(data, "hardware.host_memory_tier", None if tier in (NO_TIER, None) else tier)


def _workload(data: dict) -> None:
    workload = data.setdefault("workload", {})
    current = "Trace file" if "trace" in workload else "Synthetic"
    source = st.radio(
        "Workload",
        WORKLOAD_SOURCES,
        index=WORKLOAD_SOURCES.index(current),
        key="wi_source",
        horizontal=True,
    )
    if source == "Synthetic":
        table = workload.get("synthetic") or copy.deepcopy(workload_widgets.DEFAULT_SYNTHETIC)
        for key in ("trace", "format"):
            workload.pop(key, None)
        workload["synthetic"] = workload_widgets.synthetic_knobs(
            f"{KNOB}workload.synthetic.", table
        )
    else:
        workload.pop("synthetic", None)
        path, _ = workload_widgets.trace_upload("wi_trace_upload")
        if path is None:
            typed = workload_widgets.server_trace(
                KNOB + "workload.trace", str(workload.get("trace", ""))
            )
            path = typed or None
        if path is None:
            workload.pop("trace", None)
        else:
            workload["trace"] = str(path)
        fmt = workload_widgets.format_select(KNOB + "workload.format", workload.get("format"))
        _set(data, "workload.format", fmt)
        _set(
            data,
            "workload.time_scale",
            float(
                _number(
                    "Time scale (× inter-arrival gaps)",
                    "workload.time_scale",
                    data,
                    1.0,
                    min_value=0.01,
                    step=0.1,
                )
            ),
        )
    _set(data, "seed", int(_number("Seed", "seed", data, 0, min_value=0, step=1)))


def _scheduler(data: dict) -> None:
    left, right = st.columns(2)
    with left:
        _set(
            data,
            "scheduler.max_num_seqs",
            int(
                _number("Max sequences", "scheduler.max_num_seqs", data, 256, min_value=1, step=16)
            ),
        )
    with right:
        _set(
            data,
            "scheduler.max_batched_tokens",
            int(
                _number(
                    "Max batched tokens",
                    "scheduler.max_batched_tokens",
                    data,
                    8192,
                    min_value=1,
                    step=1024,
                )
            ),
        )
    _set(
        data,
        "scheduler.chunked_prefill",
        st.toggle(
            "Chunked prefill",
            value=bool(state.get_path(data, "scheduler.chunked_prefill", True)),
            key=KNOB + "scheduler.chunked_prefill",
        ),
    )
    left, right = st.columns(2)
    with left:
        _set(
            data,
            "scheduler.block_tokens",
            _select("KV block (tokens)", list(BLOCK_CHOICES), "scheduler.block_tokens", data),
        )
    with right:
        _set(
            data,
            "scheduler.preemption",
            _select("Preemption", list(PREEMPTION_MODES), "scheduler.preemption", data),
        )
    _set(data, "router.name", _select("Router", list(ROUTERS), "router.name", data))


def _policies(data: dict) -> None:
    _set(
        data,
        "policies.quantization.name",
        _select("KV dtype", list(KV_DTYPE_QUANTIZATIONS), "policies.quantization.name", data),
    )
    prefix = st.toggle(
        "Prefix caching",
        value=bool(state.get_path(data, "policies.prefix_cache.enabled", False)),
        key=KNOB + "policies.prefix_cache.enabled",
    )
    if prefix:
        _set(data, "policies.prefix_cache.enabled", True)
        _set(
            data,
            "policies.prefix_cache.kind",
            _select("Prefix index", ["hash", "radix"], "policies.prefix_cache.kind", data),
        )
    else:
        state.delete_path(data, "policies.prefix_cache")


def _slo(data: dict) -> None:
    st.caption("p90 targets in seconds; leave empty for none.")
    for key, label in run_data.LATENCIES:
        dotted = f"slo.{key}_p90_s"
        # Seeded through the session state with value=None, so the box can be cleared.
        st.session_state.setdefault(KNOB + dotted, state.get_path(data, dotted))
        value = st.number_input(
            f"{label} p90 target (s)",
            value=None,
            min_value=0.0,
            step=0.01,
            format="%.3f",
            key=KNOB + dotted,
        )
        _set(data, dotted, None if value is None else float(value))


def _scenario_file(data: dict) -> None:
    name = f"{data.get('name', 'scenario')}.toml"
    loaded = ui.scenario_file("wi", data, name, _validate)
    if loaded is not None:
        _reset_knobs(loaded)
        st.rerun()
    if st.button("Reset to defaults", key="wi_reset", icon=":material/restart_alt:"):
        _reset_knobs(state.default_scenario())
        st.rerun()


def _sidebar(data: dict) -> dict:
    with st.sidebar:
        with st.expander("Model & hardware", expanded=True):
            _model_hardware(data)
        with st.expander("Workload", expanded=True):
            _workload(data)
        with st.expander("Scheduler & router"):
            _scheduler(data)
        with st.expander("KV policies"):
            _policies(data)
        with st.expander("SLO", expanded=True):
            _slo(data)
        with st.expander("Scenario file"):
            _scenario_file(data)
    return data


def _mark_cancelled() -> None:
    st.session_state["wi_cancelled"] = True


def _run(scenario: Scenario, key: str) -> RunResult:
    slot = st.empty()
    with slot.container():
        bar = st.progress(0.0, text="Simulating… 0%")
        st.button("Cancel run", on_click=_mark_cancelled, key="wi_cancel", icon=":material/stop:")
    result, _ = runner.run_cached(
        scenario,
        key,
        ui.run_cache(),
        progress=lambda f: bar.progress(f, text=f"Simulating… {f:.0%} of requests done"),
    )
    slot.empty()
    return result


def _kv_figure(result: RunResult) -> Any:
    ctx = result.context
    capacity = ctx.kv_bytes_per_block * ctx.kv_blocks_per_replica * ctx.replicas
    fig = run_figures.kv_memory(result.steps, ctx.kv_bytes_per_block, capacity)
    host = run_data.host_kv_frame(result.steps, ctx.kv_bytes_per_block)
    return fig if host is None else figures.with_host_tier(fig, host)


def _charts(result: RunResult, baseline: RunResult | None, slo: dict[str, float]) -> None:
    """Latency CDFs against the SLO (baseline dashed on the same axes), then KV memory and
    batch size over time, the baseline's beside the current run's."""
    targets = {k.removesuffix("_p90_s"): v for k, v in slo.items()}
    cdfs = run_figures.latency_cdfs(result.requests)
    if baseline is not None:
        cdfs = figures.overlay_baseline(cdfs, run_figures.latency_cdfs(baseline.requests))
    st.plotly_chart(figures.with_slo_lines(cdfs, targets), width="stretch", key="wi_cdf")
    if baseline is None:
        left, right = st.columns(2)
        left.plotly_chart(_kv_figure(result), width="stretch", key="wi_kv")
        right.plotly_chart(run_figures.batch_size(result.steps), width="stretch", key="wi_batch")
        return
    for chart, draw in (("kv", _kv_figure), ("batch", lambda r: run_figures.batch_size(r.steps))):
        for column, (name, run) in zip(
            st.columns(2), (("current", result), ("baseline", baseline)), strict=True
        ):
            fig = draw(run)
            fig.update_layout(title=f"{fig.layout.title.text} ({name})")
            column.plotly_chart(fig, width="stretch", key=f"wi_{chart}_{name}")


def _downloads(result: RunResult) -> None:
    def parquet(frame: Any) -> bytes:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return buffer.getvalue()

    columns = st.columns(4)
    items = (
        ("Requests CSV", lambda: result.requests.to_csv(index=False), "requests.csv", "text/csv"),
        ("Requests parquet", lambda: parquet(result.requests), "requests.parquet", None),
        ("Steps parquet", lambda: parquet(result.steps), "steps.parquet", None),
        (
            "Summary JSON",
            lambda: json.dumps(result.summary, indent=2),
            "summary.json",
            "application/json",
        ),
    )
    for column, (label, data, name, mime) in zip(columns, items, strict=True):
        column.download_button(
            label,
            data,
            file_name=name,
            mime=mime,
            on_click="ignore",
            icon=":material/download:",
            key=f"wi_dl_{name}",
        )


def _results(result: RunResult, slo: dict[str, float]) -> None:
    baseline: RunResult | None = st.session_state.get("wi_baseline")
    summary = result.summary
    cells = st.columns(6)
    numbers = run_data.headline(summary)
    base_numbers = run_data.headline(baseline.summary) if baseline else {}
    for cell, (label, value) in zip(cells, numbers.items(), strict=True):
        cell.metric(label, value, help=f"baseline: {base_numbers[label]}" if baseline else None)
    if summary.get("requests_completed", 0) and summary.get("slo_attainment") == 0:
        st.error(
            "Impossible SLO: no request met every target. Loosen the SLO or add capacity.",
            icon=":material/error:",
        )
    elif summary.get("slo_met") is False:
        st.warning(
            f"SLO missed at p90: {summary['slo_attainment']:.1%} of requests met every target.",
            icon=":material/warning:",
        )
    if summary.get("requests_rejected"):
        st.warning(
            f"{summary['requests_rejected']} requests rejected (longer than the model "
            "context or the KV pool).",
            icon=":material/warning:",
        )
    _charts(result, baseline, slo)
    st.dataframe(run_data.percentile_table(summary, slo), hide_index=True, width="stretch")
    if baseline is not None:
        st.subheader("Against the pinned baseline")
        st.dataframe(
            run_data.comparison_table(summary, baseline.summary),
            hide_index=True,
            width="stretch",
            column_config={
                "change": st.column_config.NumberColumn(format="percent"),
            },
        )
    _downloads(result)
    with st.expander("Summary (as `kvsim run --json` prints it)"):
        st.json(summary)


st.title("What-if")
data = ui.url_state("wi_scenario", state.DEFAULT_SCENARIO, _validate)
data = _sidebar(data)
ui.keep_in_url("wi_scenario", data, state.DEFAULT_SCENARIO)

scenario = None
ready = False  # the scenario validates and its model fits the hardware
with ui.user_errors():
    scenario = Scenario.from_dict(data)
    plan = resolve(scenario).memory
    st.caption(
        f"Per GPU: weights {run_data.format_bytes(plan.weights_bytes_per_gpu)}, activations "
        f"{run_data.format_bytes(plan.activation_bytes_per_gpu)}, KV pool "
        f"{run_data.format_bytes(plan.kv_pool_bytes_per_gpu)} = {plan.max_kv_tokens:,} tokens "
        f"per replica; {scenario.num_gpus} GPU{'s' if scenario.num_gpus > 1 else ''} in all. "
        "Share this scenario by copying the URL."
    )
    ready = True

key = state.scenario_hash(data) if ready else None
buttons = st.columns([1, 1, 1, 3])
clicked = buttons[0].button(
    "Run", type="primary", key="wi_run", disabled=not ready, icon=":material/play_arrow:"
)
if st.session_state.pop("wi_cancelled", False):
    st.warning("Run cancelled; nothing was cached.", icon=":material/stop:")

if scenario is not None and key is not None:  # i.e. ready
    cached = ui.run_cache().get(key)
    if clicked or cached is not None:
        with ui.user_errors():
            result = cached if cached is not None else _run(scenario, key)
            st.session_state["wi_result"] = result
            st.session_state["wi_result_key"] = key

shown: RunResult | None = st.session_state.get("wi_result")
if buttons[1].button(
    "Pin as baseline", key="wi_pin", disabled=shown is None, icon=":material/push_pin:"
):
    st.session_state["wi_baseline"] = shown
if buttons[2].button(
    "Clear baseline",
    key="wi_unpin",
    disabled="wi_baseline" not in st.session_state,
    icon=":material/clear:",
):
    st.session_state.pop("wi_baseline", None)

if shown is None:
    st.info("Set the knobs in the sidebar and press Run.", icon=":material/info:")
else:
    if st.session_state.get("wi_result_key") != key:
        st.info("The knobs changed since this run; press Run to update.", icon=":material/info:")
    _results(shown, {k: v for k, v in data.get("slo", {}).items() if v is not None})
