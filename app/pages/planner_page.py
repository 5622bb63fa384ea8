"""Capacity planner: the cheapest fleet per accelerator, TP and KV strategy that serves a
target rate within the SLOs (:func:`sim.plan.plan`, the engine of ``kvsim plan``), ranked,
with the Pareto set over cost, latency and quality and the candidates that cannot work."""

from __future__ import annotations

import copy
from typing import Any

import pandas as pd
import streamlit as st

from app import figures, planner_data, run_data, state, ui, workload_widgets
from app.runner import RunCache
from sim.plan import Plan, PlanInputs, PlanResult, plan
from sim.planning.strategies import KV_STRATEGIES
from sim.scenario import ROUTERS

TP_CHOICES = (1, 2, 4, 8)
DEFAULT_MODEL = "llama-3.1-8b"
DEFAULT_ACCELERATORS = ("h100-sxm", "a100-80gb-sxm", "l40s")
DEFAULT_KV = ("fp16", "fp8")
DEFAULT_RATE_PER_S = 20.0
#: Requests of the workload (the fleet is verified on all of them) and of each probe window;
#: smaller than ``kvsim plan``'s defaults so a dashboard plan takes seconds, not minutes.
DEFAULT_REQUESTS = 400
DEFAULT_PROBE_REQUESTS = 200
DEFAULT_SEEDS = 2
SOURCES = ("Synthetic", "Trace file")


#: The page's state: the base scenario (``kvsim run``'s default without its SLO table, with
#: :data:`DEFAULT_REQUESTS` requests) and, under ``plan``, the planner's other inputs.
DEFAULTS: dict[str, Any] = state.default_scenario()
DEFAULTS["workload"]["synthetic"]["requests"] = DEFAULT_REQUESTS
DEFAULTS["plan"] = {
    "accelerators": list(DEFAULT_ACCELERATORS),
    "tp": [1],
    "kv_strategies": list(DEFAULT_KV),
    "rate_per_s": DEFAULT_RATE_PER_S,
    "slo": DEFAULTS.pop("slo"),
    "seeds": DEFAULT_SEEDS,
    "probe_requests": DEFAULT_PROBE_REQUESTS,
    "tolerance": 0.05,
    "router": "least_outstanding",
}
#: Types of the ``plan`` table's keys (:func:`app.state.check_table`).
PLAN_SCHEMA: dict[str, Any] = {
    "accelerators": list[str],
    "tp": list[int],
    "kv_strategies": list[str],
    "rate_per_s": float,
    **{f"slo.{metric}": float | None for metric in planner_data.SLO_KNOBS},
    "goodput": float | None,
    "seeds": int,
    "probe_requests": int,
    "tolerance": float,
    "router": str,
}
#: Keys of the widgets that edit the base scenario (reset when a scenario TOML is loaded).
BASE_WIDGETS = ("pl_model", "pl_source", "pl_seed", "pl_trace_path", "pl_trace_format", "pl:")


@st.cache_resource
def _plans() -> RunCache[PlanResult]:
    return RunCache(maxsize=8)


@st.cache_data(max_entries=32, show_spinner=False)
def _fit_problems(key: str, _inputs: PlanInputs) -> pd.DataFrame:
    """:func:`planner_data.fit_problems`, once per base scenario and candidate grid
    (``key``), since every rerun of the page asks again."""
    return planner_data.fit_problems(_inputs)


def _split(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The page state as (base scenario, ``plan`` table)."""
    base = copy.deepcopy(data)
    return base, base.pop("plan", {})


def _plan_inputs(base: dict[str, Any], table: dict[str, Any]) -> PlanInputs:
    return planner_data.plan_inputs(
        base,
        accelerators=table["accelerators"],
        tp=table["tp"],
        kv_strategies=table["kv_strategies"],
        rate_per_s=table["rate_per_s"],
        slo_s=table.get("slo", {}),
        min_attainment=table.get("goodput"),
        seeds=table["seeds"],
        probe_requests=table["probe_requests"],
        rel_tol=table["tolerance"],
        router=table["router"],
    )


def _validate(data: dict[str, Any]) -> None:
    """A link's or an uploaded file's state: a ``plan`` table of the right keys and types
    whose choices the widgets offer, a catalog model, and inputs the planner accepts."""
    base, table = _split(data)
    state.check_table(table, PLAN_SCHEMA, "plan")
    state.check_choices(
        table["accelerators"], [a.id for a in ui.accelerators()], "plan.accelerators"
    )
    state.check_choices(table["tp"], TP_CHOICES, "plan.tp")
    state.check_choices(table["kv_strategies"], KV_STRATEGIES, "plan.kv_strategies")
    state.check_choices([table["router"]], ROUTERS, "plan.router")
    if "name" in base.get("model", {}):
        state.check_choices([base["model"]["name"]], [m.id for m in ui.models()], "model.name")
    _plan_inputs(base, table)


def _base_scenario(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (the base scenario) with the sidebar's model, workload and seed applied; keys
    without a widget are kept, as ``kvsim plan --scenario`` keeps them."""
    if "name" in data["model"]:
        data["model"]["name"] = ui.select(
            "Model", [m.id for m in ui.models()], data["model"]["name"], "pl_model"
        )
    else:
        st.caption(f"Model from `{data['model'].get('config')}` (scenario TOML)")
    workload = data["workload"]
    current = SOURCES[1] if "trace" in workload else SOURCES[0]
    source = st.radio(
        "Workload", SOURCES, index=SOURCES.index(current), key="pl_source", horizontal=True
    )
    if source == "Synthetic":
        table = workload.get("synthetic") or copy.deepcopy(DEFAULTS["workload"]["synthetic"])
        data["workload"] = {"synthetic": workload_widgets.synthetic_knobs("pl:", table)}
        st.caption("Its arrival rate does not matter: the planner replays it at each rate.")
    else:
        path, _ = workload_widgets.trace_upload("pl_trace_upload")
        if path is None:
            typed = workload_widgets.server_trace("pl_trace_path", str(workload.get("trace", "")))
            path = typed or None
        data["workload"] = {k: v for k, v in workload.items() if k not in ("synthetic", "format")}
        if path is None:
            data["workload"].pop("trace", None)
        else:
            data["workload"]["trace"] = str(path)
        fmt = workload_widgets.format_select("pl_trace_format", workload.get("format"))
        if fmt is not None and path is not None:
            data["workload"]["format"] = fmt
    data["seed"] = int(
        st.number_input("Seed", min_value=0, value=int(data.get("seed", 0)), key="pl_seed")
    )
    return data


def _slo_knobs(targets: dict[str, float]) -> dict[str, float | None]:
    st.caption("p90 targets in seconds; leave empty for none.")
    out = {}
    for metric in planner_data.SLO_KNOBS:
        label = metric.split("_")[0].upper()
        out[metric] = st.number_input(
            f"{label} p90 target (s)",
            value=targets.get(metric),
            min_value=0.0,
            step=0.01,
            format="%.3f",
            key=f"pl_slo.{metric}",
        )
    return out


def _plan_table(table: dict[str, Any]) -> dict[str, Any]:
    """The ``plan`` table from the sidebar's widgets, which start at ``table``'s values."""
    devices = [a.id for a in ui.accelerators()]
    out: dict[str, Any] = {}
    out["accelerators"] = st.multiselect(
        "Candidate accelerators",
        devices,
        default=table["accelerators"],
        key="pl_accelerators",
        help="Catalog prices per GPU-hour (kvsim hardware); one without a price is "
        "listed as infeasible.",
    )
    out["tp"] = st.multiselect(
        "Tensor parallel sizes", TP_CHOICES, default=table["tp"], key="pl_tp"
    )
    out["kv_strategies"] = st.multiselect(
        "KV strategies",
        list(KV_STRATEGIES),
        default=table["kv_strategies"],
        key="pl_kv",
        format_func=lambda n: f"{n}: {KV_STRATEGIES[n].description}",
    )
    out["rate_per_s"] = float(
        st.number_input(
            "Target rate (requests/s)",
            min_value=0.0,
            value=float(table["rate_per_s"]),
            step=1.0,
            key="pl_rate",
        )
    )
    with st.expander("SLO", expanded=True):
        slo = _slo_knobs(table.get("slo", {}))
        out["slo"] = {k: float(v) for k, v in slo.items() if v is not None}
        goodput = st.number_input(
            "Goodput: fraction of requests meeting every target",
            min_value=0.0,
            max_value=1.0,
            value=table.get("goodput"),
            step=0.05,
            key="pl_goodput",
        )
        if goodput is not None:
            out["goodput"] = float(goodput)
    with st.expander("Search"):
        out["seeds"] = int(
            st.number_input(
                "Probe windows", min_value=1, value=table["seeds"], step=1, key="pl_seeds"
            )
        )
        out["probe_requests"] = int(
            st.number_input(
                "Requests per probe window",
                min_value=2,
                value=table["probe_requests"],
                step=50,
                key="pl_probe_requests",
            )
        )
        out["tolerance"] = float(
            st.number_input(
                "Rate grid step (relative)",
                min_value=0.01,
                max_value=1.0,
                value=float(table["tolerance"]),
                step=0.01,
                key="pl_tolerance",
            )
        )
        out["router"] = ui.select(
            "Router of the fleet", list(ROUTERS), table["router"], "pl_router"
        )
    return out


def _inputs(base: dict[str, Any], table: dict[str, Any]) -> PlanInputs | None:
    """The planner's inputs; ``None`` (and the error shown) when invalid."""
    with ui.user_errors():
        return _plan_inputs(base, table)
    return None


def _scenario_file(base: dict[str, Any], table: dict[str, Any]) -> None:
    """The base scenario as TOML (``kvsim plan --scenario`` takes it), and a scenario TOML
    loaded as the base; its ``[slo]`` table, if any, becomes the SLO targets."""

    def page_state(loaded: dict[str, Any]) -> dict[str, Any]:
        loaded = copy.deepcopy(loaded)
        slo = loaded.pop("slo", None)
        return {**loaded, "plan": table if slo is None else {**table, "slo": slo}}

    loaded = ui.scenario_file("pl", base, "base.toml", lambda d: _validate(page_state(d)))
    if loaded is not None:
        ui.reset_widgets((*BASE_WIDGETS, "pl_slo."))
        st.session_state["pl_state"] = page_state(loaded)
        st.rerun()


def _mark_cancelled() -> None:
    st.session_state["pl_cancelled"] = True


def _run(inputs: PlanInputs, key: str) -> PlanResult:
    """Plan with a progress bar over candidates; Cancel stops at the next candidate."""
    total = len(inputs.candidates())
    slot = st.empty()
    with slot.container():
        bar = st.progress(0.0, text=f"Planning… 0 of {total} candidates")
        st.button("Cancel", on_click=_mark_cancelled, key="pl_cancel", icon=":material/stop:")
    done: list[Plan] = []

    def progress(finished: Plan) -> None:
        done.append(finished)
        bar.progress(
            len(done) / total,
            text=f"Planning… {len(done)} of {total} candidates "
            f"(last: {finished.accelerator} tp={finished.tp} {finished.kv_strategy})",
        )

    result = plan(inputs, progress=progress)
    slot.empty()
    _plans().put(key, result)
    return result


def _results(result: PlanResult, base: dict[str, Any]) -> None:
    ranked = planner_data.ranked_frame(result)
    infeasible = planner_data.infeasible_frame(result)
    metric = planner_data.latency_label(result.inputs)
    best = result.best
    if best is None:
        st.error(
            "No candidate meets the SLOs at the target rate; the reasons are listed below. "
            "Loosen the SLO, lower the rate, or add accelerators, TP sizes or KV strategies.",
            icon=":material/error:",
        )
    else:
        cells = st.columns(4)
        cells[0].metric("Cheapest plan", f"{best.accelerator} tp={best.tp} × {best.replicas}")
        cells[1].metric("Fleet cost", f"{run_data.format_usd(best.usd_per_hour)}/h")
        cells[2].metric("USD per 1M output tokens", run_data.format_usd(best.usd_per_m_tokens))
        cells[3].metric("Pareto plans", str(len(result.pareto)))
        st.subheader("Ranked plans")
        st.dataframe(
            ranked,
            hide_index=True,
            width="stretch",
            column_config={
                "SLO attainment": st.column_config.NumberColumn(format="percent"),
                "utilisation": st.column_config.NumberColumn(format="percent"),
            },
        )
        axes = {f"{metric} (s)": metric, "goodput (requests/s)": planner_data.GOODPUT}
        choice = st.radio("Pareto chart y axis", list(axes), key="pl_y", horizontal=True)
        st.plotly_chart(
            figures.plan_pareto_figure(ranked, axes[choice], choice),
            width="stretch",
            key="pl_pareto",
        )
    if len(infeasible):
        st.subheader("Infeasible candidates")
        st.dataframe(infeasible, hide_index=True, width="stretch")
    columns = st.columns(3)
    downloads = (
        ("Ranked plans CSV", ranked.to_csv(index=False), "plans.csv", "text/csv"),
        ("Plans JSON", planner_data.plans_json(result), "plans.json", "application/json"),
        ("Base scenario TOML", state.scenario_toml(base), "base.toml", "application/toml"),
    )
    for column, (label, data, name, mime) in zip(columns, downloads, strict=True):
        column.download_button(
            label,
            data,
            file_name=name,
            mime=mime,
            on_click="ignore",
            icon=":material/download:",
            key=f"pl_dl_{name}",
        )


st.title("Capacity planner")
st.caption(
    "For each candidate accelerator × TP × KV strategy: the largest rate one replica "
    "sustains within the SLOs, the replicas the target rate needs (verified by simulating "
    "the fleet) and the cost; method in docs/planning.md (`kvsim plan`)."
)
page = ui.url_state("pl_state", DEFAULTS, _validate)
initial_base, initial_table = _split(page)
with st.sidebar:
    base = _base_scenario(initial_base)
    table = _plan_table(initial_table)
    with st.expander("Scenario file"):
        _scenario_file(base, table)
ui.keep_in_url("pl_state", {**base, "plan": table}, DEFAULTS)
inputs = _inputs(base, table)

ready = False  # inputs are valid and the model fits at least one candidate
if inputs is not None:
    grid = (inputs.accelerators, inputs.tp, inputs.pp, inputs.kv_strategies)
    problems = _fit_problems(f"{state.scenario_hash(base)}:{grid}", inputs)
    candidates = len(inputs.candidates())
    if len(problems) == candidates:
        first = problems.iloc[0]
        st.error(
            f"{inputs.base.model.ref} does not fit any candidate, e.g. {first['accelerator']} "
            f"tp={first['TP']}: {first['problem']}",
            icon=":material/error:",
        )
    else:
        ready = True
        st.caption(f"{candidates} candidates; {len(problems)} do not fit one replica.")
    if len(problems):
        with st.expander(f"Candidates that do not fit ({len(problems)})"):
            st.dataframe(problems, hide_index=True, width="stretch")

key = planner_data.inputs_key(base, inputs) if ready and inputs is not None else None
clicked = st.button(
    "Run planner", type="primary", key="pl_run", disabled=not ready, icon=":material/play_arrow:"
)
if st.session_state.pop("pl_cancelled", False):
    st.warning("Planning cancelled; nothing was cached.", icon=":material/stop:")

if inputs is not None and key is not None:
    cached = _plans().get(key)
    if clicked or cached is not None:
        with ui.user_errors():
            st.session_state["pl_result"] = cached if cached is not None else _run(inputs, key)
            st.session_state["pl_result_key"] = key
            st.session_state["pl_base"] = copy.deepcopy(base)

shown: PlanResult | None = st.session_state.get("pl_result")
if shown is None:
    st.info("Set the inputs in the sidebar and press Run planner.", icon=":material/info:")
else:
    if st.session_state.get("pl_result_key") != key:
        st.info("The inputs changed since this plan; press Run planner to update.")
    _results(shown, st.session_state["pl_base"])
