"""Tables behind the Capacity planner page: the planner's inputs from widget values, a
cheap fit check before running, and the ranked and infeasible plans laid out for display.

Pure functions over :mod:`sim.plan` (method in ``docs/planning.md``): the page builds a
:class:`~sim.plan.PlanInputs` with :func:`plan_inputs`, runs :func:`sim.plan.plan`, and shows
:func:`ranked_frame`, :func:`infeasible_frame` and :func:`app.figures.plan_pareto_figure`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from app import state
from hardware.errors import KvsimError
from sim.plan import PlanInputs, PlanResult
from sim.planning.slo import Slo
from sim.planning.strategies import get_strategy
from sim.run import resolve
from sim.scenario import Scenario

#: SLO keys with a knob on the page (p90 targets, as on the What-if page).
SLO_KNOBS = ("ttft_p90_s", "tpot_p90_s", "e2e_p90_s")
#: Columns of :func:`ranked_frame` a Pareto chart may put on its y axis.
GOODPUT = "goodput (req/s)"


def plan_inputs(
    base: Mapping[str, Any],
    *,
    accelerators: Sequence[str],
    tp: Sequence[int],
    kv_strategies: Sequence[str],
    rate_per_s: float,
    slo_s: Mapping[str, float | None],
    min_attainment: float | None = None,
    seeds: int = 2,
    probe_requests: int | None = 200,
    rel_tol: float = 0.05,
    router: str = "least_outstanding",
) -> PlanInputs:
    """The planner's inputs: ``base`` (a scenario dict: model, scheduler, workload) and the
    candidate grid; ``slo_s`` maps summary keys to limits in seconds (``None``: no bound).
    Raises :class:`KvsimError` for anything the planner would reject."""
    scenario = Scenario.from_dict(dict(base))
    slos = tuple(Slo(metric, float(limit)) for metric, limit in slo_s.items() if limit is not None)
    return PlanInputs(
        base=scenario,
        target_rate_per_s=float(rate_per_s),
        slos=slos,
        accelerators=tuple(accelerators),
        tp=tuple(int(t) for t in tp),
        kv_strategies=tuple(kv_strategies),
        min_attainment=min_attainment,
        seeds=int(seeds),
        probe_requests=None if probe_requests is None else int(probe_requests),
        rel_tol=float(rel_tol),
        router=router,
    )


def inputs_key(base: Mapping[str, Any], inputs: PlanInputs) -> str:
    """Identity of a plan: the base scenario's hash (trace content included) and every
    other input, as SHA-256 of canonical JSON."""
    payload = {
        "base": state.scenario_hash(base),
        "rate": inputs.target_rate_per_s,
        "slos": [(s.metric, s.limit_s) for s in inputs.slos],
        "accelerators": inputs.accelerators,
        "tp": inputs.tp,
        "pp": inputs.pp,
        "kv": inputs.kv_strategies,
        "min_attainment": inputs.min_attainment,
        "seeds": inputs.seeds,
        "probe_requests": inputs.probe_requests,
        "rel_tol": inputs.rel_tol,
        "max_probes": inputs.max_probes,
        "router": inputs.router,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def fit_problems(inputs: PlanInputs) -> pd.DataFrame:
    """Candidates whose model does not fit one replica (columns ``accelerator``, ``TP``,
    ``KV strategy``, ``problem``): the memory plan of step 1 of the planner, without any
    simulation, so the page can say so before Run."""
    rows = []
    for candidate in inputs.candidates():
        overrides = [
            f'hardware.accelerator="{candidate.accelerator}"',
            f"hardware.tp={candidate.tp}",
            f"hardware.pp={candidate.pp}",
            "hardware.replicas=1",
            *get_strategy(candidate.kv_strategy).overrides,
        ]
        try:
            resolve(inputs.base.with_overrides(overrides))
        except KvsimError as err:
            rows.append(
                {
                    "accelerator": candidate.accelerator,
                    "TP": candidate.tp,
                    "KV strategy": candidate.kv_strategy,
                    "problem": err.message,
                }
            )
    return pd.DataFrame(rows, columns=["accelerator", "TP", "KV strategy", "problem"])


def latency_label(inputs: PlanInputs) -> str:
    """The metric plans are ranked on after cost: the first SLO's (``e2e_p90_s`` without)."""
    return inputs.slos[0].metric if inputs.slos else "e2e_p90_s"


def ranked_frame(result: PlanResult) -> pd.DataFrame:
    """The feasible plans in rank order: candidate, fleet, cost, the ranking latency
    (seconds), SLO attainment, goodput (target rate × attainment, DistServe) and quality;
    ``Pareto`` marks the planner's Pareto set over (USD/h, latency, quality)."""
    metric = latency_label(result.inputs)
    rate = result.inputs.target_rate_per_s
    rows = [
        {
            "rank": rank,
            "Pareto": plan.pareto,
            "accelerator": plan.accelerator,
            "TP": plan.tp,
            "PP": plan.pp,
            "KV strategy": plan.kv_strategy,
            "replicas": plan.replicas,
            "GPUs": plan.gpus,
            "max req/s per replica": plan.max_rate_per_replica,
            "USD/h": plan.usd_per_hour,
            "USD per 1M output tokens": plan.usd_per_m_tokens,
            "utilisation": plan.utilisation,
            metric: plan.latency_s,
            "SLO attainment": plan.slo_attainment,
            GOODPUT: None if plan.slo_attainment is None else rate * plan.slo_attainment,
            "quality": plan.quality,
        }
        for rank, plan in enumerate(result.feasible, start=1)
    ]
    columns = [
        "rank",
        "Pareto",
        "accelerator",
        "TP",
        "PP",
        "KV strategy",
        "replicas",
        "GPUs",
        "max req/s per replica",
        "USD/h",
        "USD per 1M output tokens",
        "utilisation",
        metric,
        "SLO attainment",
        GOODPUT,
        "quality",
    ]
    return pd.DataFrame(rows, columns=columns)


def infeasible_frame(result: PlanResult) -> pd.DataFrame:
    """The candidates without a plan and why (does not fit, no price, misses the SLO at any
    fleet size, …), as the planner words it."""
    rows = [
        {
            "accelerator": plan.accelerator,
            "TP": plan.tp,
            "PP": plan.pp,
            "KV strategy": plan.kv_strategy,
            "reason": plan.reason,
        }
        for plan in result.plans
        if not plan.feasible
    ]
    return pd.DataFrame(rows, columns=["accelerator", "TP", "PP", "KV strategy", "reason"])


def plans_json(result: PlanResult) -> str:
    """Every plan as ``kvsim plan --json`` prints it (non-finite numbers as null)."""
    return json.dumps(_finite(result.as_dict()), indent=2)


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
