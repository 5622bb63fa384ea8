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


@st.cache_resource
def _plans() -> RunCache[PlanResult]:
    return RunCache(maxsize=8)


@st.cache_data(max_entries=32, show_spinner=False)
def _fit_problems(key: str, _inputs: PlanInputs) -> pd.DataFrame:
    """:func:`planner_data.fit_problems`, once per base scenario and candidate grid
    (``key``), since every rerun of the page asks again."""
    return planner_data.fit_problems(_inputs)


def _base_scenario() -> dict[str, Any]:
    """The base scenario (model, workload) from the sidebar; the rest is ``kvsim run``'s
    built-in default, as for ``kvsim plan`` without ``--scenario``."""
    data = state.default_scenario()
    data.pop("slo", None)
    data["workload"]["synthetic"]["requests"] = DEFAULT_REQUESTS
    models = [m.id for m in ui.models()]
    data["model"]["name"] = st.selectbox(
        "Model", models, index=models.index(DEFAULT_MODEL), key="pl_model"
    )
    source = st.radio("Workload", SOURCES, key="pl_source", horizontal=True)
    if source == "Synthetic":
        data["workload"]["synthetic"] = workload_widgets.synthetic_knobs(
            "pl:", data["workload"]["synthetic"]
        )
        st.caption("Its arrival rate does not matter: the planner replays it at each rate.")
    else:
        path, _ = workload_widgets.trace_upload("pl_trace_upload")
        if path is None:
            typed = workload_widgets.server_trace("pl_trace_path")
            path = typed or None
        data["workload"] = {} if path is None else {"trace": str(path)}
        fmt = workload_widgets.format_select("pl_trace_format", None)
        if fmt is not None and path is not None:
            data["workload"]["format"] = fmt
    data["seed"] = int(st.number_input("Seed", min_value=0, value=0, key="pl_seed"))
    return data


def _slo_knobs() -> dict[str, float | None]:
    st.caption("p90 targets in seconds; leave empty for none.")
    defaults = state.DEFAULT_SCENARIO.get("slo", {})
    out = {}
    for metric in planner_data.SLO_KNOBS:
        label = metric.split("_")[0].upper()
        out[metric] = st.number_input(
            f"{label} p90 target (s)",
            value=defaults.get(metric),
            min_value=0.0,
            step=0.01,
            format="%.3f",
            key=f"pl_slo.{metric}",
        )
    return out


def _inputs(base: dict[str, Any]) -> PlanInputs | None:
    """The planner's inputs from the sidebar; ``None`` (and the error shown) when invalid."""
    with st.sidebar:
        devices = [a.id for a in ui.accelerators()]
        accelerators = st.multiselect(
            "Candidate accelerators",
            devices,
            default=[d for d in DEFAULT_ACCELERATORS if d in devices],
            key="pl_accelerators",
            help="Catalog prices per GPU-hour (kvsim hardware); one without a price is "
            "listed as infeasible.",
        )
        tp = st.multiselect("Tensor parallel sizes", TP_CHOICES, default=[1], key="pl_tp")
        kv = st.multiselect(
            "KV strategies",
            list(KV_STRATEGIES),
            default=list(DEFAULT_KV),
            key="pl_kv",
            format_func=lambda n: f"{n}: {KV_STRATEGIES[n].description}",
        )
        rate = st.number_input(
            "Target rate (requests/s)",
            min_value=0.0,
            value=DEFAULT_RATE_PER_S,
            step=1.0,
            key="pl_rate",
        )
        with st.expander("SLO", expanded=True):
            slo = _slo_knobs()
            goodput = st.number_input(
                "Goodput: fraction of requests meeting every target",
                min_value=0.0,
                max_value=1.0,
                value=None,
                step=0.05,
                key="pl_goodput",
            )
        with st.expander("Search"):
            seeds = st.number_input(
                "Probe windows", min_value=1, value=DEFAULT_SEEDS, step=1, key="pl_seeds"
            )
            probe = st.number_input(
                "Requests per probe window",
                min_value=2,
                value=DEFAULT_PROBE_REQUESTS,
                step=50,
                key="pl_probe_requests",
            )
            tolerance = st.number_input(
                "Rate grid step (relative)",
                min_value=0.01,
                max_value=1.0,
                value=0.05,
                step=0.01,
                key="pl_tolerance",
            )
            router = st.selectbox(
                "Router of the fleet",
                ROUTERS,
                index=ROUTERS.index("least_outstanding"),
                key="pl_router",
            )
    with ui.user_errors():
        return planner_data.plan_inputs(
            base,
            accelerators=accelerators,
            tp=tp,
            kv_strategies=kv,
            rate_per_s=rate,
            slo_s=slo,
            min_attainment=goodput,
            seeds=int(seeds),
            probe_requests=int(probe),
            rel_tol=float(tolerance),
            router=router,
        )
    return None


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
with st.sidebar:
    base = _base_scenario()
inputs = _inputs(base)

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
