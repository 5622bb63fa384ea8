"""Policies: several KV strategies on one workload — KV memory, throughput, latency, cost
and quality side by side, and quality against cost, memory or throughput with its Pareto
set. Each strategy is the base scenario with its ``[policies.<kind>]`` tables, run by
:func:`sim.run.run_scenario` through the dashboard's shared run cache."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pandas as pd
import streamlit as st

from app import figures, policies_data, run_data, runner, state, ui, workload_widgets
from app.uploads import read_as_upload, save_upload
from hardware.errors import KvsimError
from sim.policies import KvStrategy, QualityTable, default_quality_table, list_policies
from sim.policies.compose import STRATEGY_KINDS
from sim.run import load_workload, resolve
from sim.scenario import Scenario

TP_CHOICES = (1, 2, 4, 8)
#: Requests of the default workload: each strategy is one run of it.
DEFAULT_REQUESTS = 500
NONE = "(none)"
SOURCES = ("Synthetic", "Trace file")
PRESET_LABELS = {policies_data.label(t): t for t in policies_data.PRESETS}
#: The page's state: the base scenario (``kvsim run``'s default with
#: :data:`DEFAULT_REQUESTS` requests) and, under ``strategies``, the strategies' tables.
DEFAULTS: dict[str, Any] = state.default_scenario()
DEFAULTS["workload"]["synthetic"]["requests"] = DEFAULT_REQUESTS
DEFAULTS["strategies"] = [
    copy.deepcopy(PRESET_LABELS[name]) for name in policies_data.DEFAULT_PRESETS
]
#: Keys of the widgets that edit the base scenario (reset when a scenario TOML is loaded).
BASE_WIDGETS = (
    "po_model",
    "po_accelerator",
    "po_tp",
    "po_source",
    "po_trace_path",
    "po_seed",
    "po_slo.",
    "po:",
)


def _split(data: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The page state as (base scenario, strategy tables)."""
    base = copy.deepcopy(data)
    return base, base.pop("strategies", [])


def _validate(data: dict[str, Any]) -> None:
    """A link's or an uploaded file's state: a valid scenario on a catalog model and device,
    a TP size the page offers, and strategies that build."""
    base, strategies = _split(data)
    state.check_table({"strategies": strategies}, {"strategies": list[dict]}, "page")
    Scenario.from_dict(base)
    if "name" in base["model"]:
        state.check_choices([base["model"]["name"]], [m.id for m in ui.models()], "model.name")
    devices = [a.id for a in ui.accelerators()]
    state.check_choices([base["hardware"]["accelerator"]], devices, "hardware.accelerator")
    state.check_choices([base["hardware"].get("tp", 1)], TP_CHOICES, "hardware.tp")
    for index, tables in enumerate(strategies):
        try:
            KvStrategy.from_tables(tables)
        except KvsimError as err:
            field = f"strategies[{index}]" + (f".{err.field}" if err.field else "")
            raise KvsimError(err.message, field=field) from None


def _base_scenario(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (the base scenario) with the sidebar's model, hardware, workload, seed and
    SLO applied; keys without a widget are kept as they are."""
    if "name" in data["model"]:
        data["model"]["name"] = ui.select(
            "Model", [m.id for m in ui.models()], data["model"]["name"], "po_model"
        )
    else:
        st.caption(f"Model from `{data['model'].get('config')}` (scenario TOML)")
    devices = [a.id for a in ui.accelerators()]
    hw = data["hardware"]
    left, right = st.columns(2)
    with left:
        hw["accelerator"] = ui.select("Accelerator", devices, hw["accelerator"], "po_accelerator")
    with right:
        hw["tp"] = ui.select("Tensor parallel", list(TP_CHOICES), hw.get("tp", 1), "po_tp")
    workload = data["workload"]
    current = SOURCES[1] if "trace" in workload else SOURCES[0]
    source = st.radio(
        "Workload", SOURCES, index=SOURCES.index(current), key="po_source", horizontal=True
    )
    if source == "Synthetic":
        table = workload.get("synthetic") or copy.deepcopy(DEFAULTS["workload"]["synthetic"])
        data["workload"] = {"synthetic": workload_widgets.synthetic_knobs("po:", table)}
    else:
        path, _ = workload_widgets.trace_upload("po_trace_upload")
        if path is None:
            typed = workload_widgets.server_trace("po_trace_path", str(workload.get("trace", "")))
            path = typed or None
        data["workload"] = {k: v for k, v in workload.items() if k != "synthetic"}
        if path is None:
            data["workload"].pop("trace", None)
        else:
            data["workload"]["trace"] = str(path)
    data["seed"] = int(
        st.number_input("Seed", min_value=0, value=int(data.get("seed", 0)), key="po_seed")
    )
    with st.expander("SLO", expanded=True):
        st.caption("p90 targets in seconds; leave empty for none.")
        for key, label in run_data.LATENCIES:
            dotted = f"{key}_p90_s"
            value = st.number_input(
                f"{label} p90 target (s)",
                value=data.get("slo", {}).get(dotted),
                min_value=0.0,
                step=0.01,
                format="%.3f",
                key=f"po_slo.{dotted}",
            )
            if value is None:
                data.get("slo", {}).pop(dotted, None)
            else:
                data.setdefault("slo", {})[dotted] = float(value)
    if not data.get("slo"):
        data.pop("slo", None)
    return data


def _scenario_file(base: dict[str, Any], strategies: list[dict[str, Any]]) -> None:
    """The base scenario as TOML (``kvsim run`` runs it with its own strategy tables), and a
    scenario TOML loaded as the base."""

    def validate(loaded: dict[str, Any]) -> None:
        _validate({**loaded, "strategies": strategies})

    loaded = ui.scenario_file("po", base, "base.toml", validate)
    if loaded is not None:
        ui.reset_widgets(BASE_WIDGETS)
        st.session_state["po_state"] = {**loaded, "strategies": strategies}
        st.rerun()


def _custom_builder() -> None:
    """Widgets composing one strategy from the registry; Add checks it (an error names the
    bad parameter) and appends it to the list."""
    registry = list_policies()
    chosen: dict[str, tuple[str, str]] = {}
    for kind in STRATEGY_KINDS:
        names = [name for name, _, _ in registry[kind]]
        options = [NONE, *names] if kind in ("low_rank", "merging") else names
        first = {"selection": "full", "quantization": "fp16"}.get(kind, NONE)
        name = st.selectbox(
            kind.replace("_", " ").capitalize(),
            options,
            index=options.index(first),
            key=f"po_custom_{kind}",
        )
        if name == NONE:
            continue
        params = next(p for n, _, p in registry[kind] if n == name)
        text = ""
        if params:
            text = st.text_input(
                f"{name} parameters",
                key=f"po_custom_{kind}_params",
                placeholder=", ".join(f"{k} = {json.dumps(v)}" for k, v in params.items()),
                help="TOML key = value pairs, comma-separated; empty: the paper defaults shown.",
            )
        chosen[kind] = (name, text)
    if st.button("Add strategy", key="po_custom_add", icon=":material/add:"):
        with ui.user_errors():
            tables = {
                kind: {"name": name, **policies_data.parse_params(text, kind)}
                for kind, (name, text) in chosen.items()
            }
            KvStrategy.from_tables(tables)
            st.session_state.setdefault("po_custom", {})[policies_data.label(tables)] = tables


def _strategies(initial: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The chosen strategies as (label, tables): presets from the multiselect, then custom
    ones; ``initial`` (the page state's) decides which are chosen when the page opens."""
    labelled = [(policies_data.label(tables), tables) for tables in initial]
    if "po_custom" not in st.session_state:
        st.session_state["po_custom"] = {
            name: tables for name, tables in labelled if name not in PRESET_LABELS
        }
    chosen = st.multiselect(
        "Strategies",
        list(PRESET_LABELS),
        default=[name for name, _ in labelled if name in PRESET_LABELS],
        key="po_presets",
        help="Each at its paper's default parameters; compose others below.",
    )
    with st.expander("Custom strategy"):
        _custom_builder()
    custom: dict[str, dict[str, Any]] = st.session_state["po_custom"]
    if custom:
        st.caption("Custom: " + ", ".join(f"`{name}`" for name in custom))
        if st.button("Clear custom strategies", key="po_custom_clear"):
            st.session_state["po_custom"] = {}
            st.rerun()
    return [(name, PRESET_LABELS[name]) for name in chosen] + list(custom.items())


def _quality_table() -> tuple[QualityTable, str]:
    """The shipped quality table, merged with an uploaded one (its entries win); and a
    digest of the upload, part of the results' identity."""
    table = default_quality_table()
    upload = st.file_uploader(
        "More quality entries (a quality table TOML)", type=["toml"], key="po_quality_upload"
    )
    if upload is None:
        return table, ""
    with ui.user_errors():
        path = save_upload(upload.name, upload.getvalue())
        extra = read_as_upload(path, upload.name, QualityTable.from_toml)
        st.caption(f"{len(extra.entries)} entries from {upload.name}")
        return table.merged(extra), path.parent.name
    return table, ""


def _mark_cancelled() -> None:
    st.session_state["po_cancelled"] = True


def _run_all(
    base: dict[str, Any], strategies: list[tuple[str, dict[str, Any]]], table: QualityTable
) -> pd.DataFrame:
    """Each strategy's analytic KV bytes, quality and simulated summary; a strategy whose
    scenario is rejected gets its error in ``status`` and the others still run."""
    scenario = Scenario.from_dict(base)
    resolved = resolve(scenario)
    workload = load_workload(scenario, resolved.max_model_len)
    block = scenario.scheduler.block_tokens
    slot = st.empty()
    with slot.container():
        bar = st.progress(0.0, text="Simulating…")
        st.button("Cancel", on_click=_mark_cancelled, key="po_cancel", icon=":material/stop:")
    rows = []
    total = len(strategies)
    for index, (name, tables) in enumerate(strategies):
        memory, quality, summary, error = None, (policies_data.UNKNOWN, None), None, None

        def progress(fraction: float, index: int = index, name: str = name) -> None:
            bar.progress(
                (index + fraction) / total,
                text=f"Simulating {name} ({index + 1} of {total})… {fraction:.0%}",
            )

        try:
            strategy = KvStrategy.from_tables(tables)
            memory = policies_data.kv_memory(strategy, resolved.model, workload, block)
            quality = policies_data.quality(strategy, resolved.model.id, table)
            data = policies_data.strategy_scenario(base, tables)
            result, _ = runner.run_cached(
                Scenario.from_dict(data), state.scenario_hash(data), ui.run_cache(), progress
            )
            summary = result.summary
        except KvsimError as err:
            error = str(err)
        rows.append(policies_data.strategy_row(name, memory, quality, summary, error))
    slot.empty()
    return policies_data.comparison_frame(rows)


def _downloads(frame: pd.DataFrame, base: dict[str, Any], strategies: dict[str, Any]) -> None:
    left, middle, right = st.columns([1, 2, 1])
    left.download_button(
        "Comparison CSV",
        frame.to_csv(index=False),
        file_name="strategies.csv",
        mime="text/csv",
        on_click="ignore",
        icon=":material/download:",
        key="po_dl_csv",
    )
    name = middle.selectbox(
        "Scenario of", list(strategies), key="po_toml_of", label_visibility="collapsed"
    )
    right.download_button(
        "Scenario TOML",
        state.scenario_toml(policies_data.strategy_scenario(base, strategies[name])),
        file_name=f"{policies_data.label(strategies[name])}.toml",
        mime="application/toml",
        on_click="ignore",
        icon=":material/download:",
        key="po_dl_toml",
        help="`kvsim run` on this file reproduces the strategy's row.",
    )


def _results(frame: pd.DataFrame) -> None:
    failed = frame[frame["status"] != "ok"]
    for _, row in failed.iterrows():
        st.error(f"{row['strategy']}: {row['status']}", icon=":material/error:")
    ran = frame[frame["status"] == "ok"]
    if len(ran) and (ran["SLO attainment"] == 0).all():
        st.error(
            "Impossible SLO: no request met every target under any strategy. Loosen the SLO "
            "or add capacity.",
            icon=":material/error:",
        )
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        column_config={
            "KV vs full fp16": st.column_config.NumberColumn(format="percent"),
            "KV memory saved": st.column_config.NumberColumn(format="percent"),
            "KV dropped from view": st.column_config.NumberColumn(format="percent"),
            "SLO attainment": st.column_config.NumberColumn(format="percent"),
        },
    )
    st.plotly_chart(figures.policy_bars_figure(frame), width="stretch", key="po_bars")
    axis = st.radio("Quality against", list(policies_data.X_AXES), key="po_x_axis", horizontal=True)
    column = policies_data.X_AXES[axis][0]
    st.plotly_chart(
        figures.policy_pareto_figure(policies_data.with_pareto(frame, axis), column, axis),
        width="stretch",
        key="po_pareto",
    )
    st.caption(
        "Quality is looked up in the quality table (published or measured entries for this "
        "exact model and parameters), never estimated; `unknown` strategies cannot be placed "
        "on the chart. Upload measured entries in the sidebar."
    )
    base, strategies = st.session_state["po_inputs"]
    _downloads(frame, base, strategies)


st.title("Policies")
st.caption(
    "KV strategies (token selection, quantization, low rank, merging; docs/policies.md) on "
    "one model, device and workload. KV per request is analytic (the strategy's bytes at "
    "each request's final context, whole blocks); the rest is simulated."
)
page = ui.url_state("po_state", DEFAULTS, _validate)
initial_base, initial_strategies = _split(page)
with st.sidebar:
    base = _base_scenario(initial_base)
    with st.expander("Quality table"):
        quality_table, quality_digest = _quality_table()
strategies = _strategies(initial_strategies)
tables = [copy.deepcopy(t) for _, t in strategies]
with st.sidebar, st.expander("Scenario file"):
    _scenario_file(base, tables)
ui.keep_in_url("po_state", {**base, "strategies": tables}, DEFAULTS)

ready = False
with ui.user_errors():
    plan = resolve(Scenario.from_dict(base)).memory
    st.caption(
        f"KV pool per GPU {run_data.format_bytes(plan.kv_pool_bytes_per_gpu)} "
        f"(weights {run_data.format_bytes(plan.weights_bytes_per_gpu)})."
    )
    ready = bool(strategies)
if not strategies:
    st.info("Pick at least one strategy.", icon=":material/info:")

identity = json.dumps(
    {
        "base": state.scenario_hash(base) if ready else None,
        "strategies": strategies,
        "quality": quality_digest,
    },
    sort_keys=True,
    default=str,
)
key = hashlib.sha256(identity.encode()).hexdigest()
clicked = st.button(
    "Run strategies",
    type="primary",
    key="po_run",
    disabled=not ready,
    icon=":material/play_arrow:",
)
if st.session_state.pop("po_cancelled", False):
    st.warning("Run cancelled; finished strategies stay cached.", icon=":material/stop:")
if clicked and ready:
    with ui.user_errors():
        st.session_state["po_frame"] = _run_all(copy.deepcopy(base), strategies, quality_table)
        st.session_state["po_key"] = key
        st.session_state["po_inputs"] = (copy.deepcopy(base), dict(strategies))

shown: pd.DataFrame | None = st.session_state.get("po_frame")
if shown is None:
    st.info("Pick strategies and press Run strategies.", icon=":material/info:")
else:
    if st.session_state.get("po_key") != key:
        st.info("The inputs changed since this run; press Run strategies to update.")
    _results(shown)
