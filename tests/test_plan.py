"""The capacity planner (:mod:`sim.plan`) against theory, invariants and hand cases.

* M/D/1 capacity: a replica with :class:`FixedStepExecutor` steps of ``D`` seconds,
  ``max_num_seqs = 1`` and one-token requests is a deterministic single server; with
  Poisson arrivals the mean wait is ``W = ρD / (2(1 − ρ))`` (Pollaczek–Khinchine,
  Kleinrock vol. 1 eq. 5.73), so the largest rate with ``W <= W*`` is
  ``λ* = 2W* / (D (2W* + D))``. The planner's max rate must be within 5 % of it.
* Monotonicity: a tighter SLO never gives a cheaper plan; a higher target rate never needs
  fewer replicas; fp8 KV never holds a smaller batch than fp16 (half the bytes per token).
* The rate search on a monotone check returns the largest grid point below the
  threshold, whatever the start.
* Infeasible candidates carry their reason; the Pareto set follows the dominance rules.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.errors import KvsimError
from sim.executor import FixedStepExecutor
from sim.plan import PlanInputs, plan
from sim.planning.ranking import dominates, pareto_mask
from sim.planning.search import grid_rate, max_passing_rate
from sim.planning.slo import SLO_KEYS, Slo, parse_slo
from sim.planning.strategies import KV_STRATEGIES, get_strategy
from sim.scenario import Scenario

SMALL_CHAT = {
    "arrival": "poisson",
    "rate_per_s": 4.0,
    "requests": 300,
    "prompt_tokens": {"dist": "lognormal", "median": 512, "sigma": 0.6},
    "output_tokens": {"dist": "lognormal", "median": 48, "sigma": 0.6},
}


def _base(synthetic: dict, **sections) -> Scenario:
    return Scenario.from_dict(
        {
            "model": {"name": "llama-3.1-8b"},
            "hardware": {"accelerator": "h100-sxm"},
            "workload": {"synthetic": synthetic},
            **sections,
        }
    )


def _inputs(**changes) -> PlanInputs:
    values = {
        "base": _base(SMALL_CHAT),
        "target_rate_per_s": 30.0,
        "slos": (Slo("ttft_p90_s", 0.5), Slo("tpot_p90_s", 0.1)),
        "accelerators": ("h100-sxm", "a100-80gb-sxm", "l4"),
        "tp": (1,),
        "seeds": 1,
        "probe_requests": 200,
        "rel_tol": 0.05,
    }
    values.update(changes)
    return PlanInputs(**values)


# ---- the rate search ---------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    capacity=st.floats(0.05, 400.0),
    start=st.floats(0.02, 1000.0),
    tol=st.sampled_from([0.01, 0.02, 0.05, 0.1]),
)
def test_search_returns_largest_grid_rate_below_a_threshold_from_any_start(
    capacity: float, start: float, tol: float
) -> None:
    result = max_passing_rate(
        lambda r: r < capacity, start, tol, floor_per_s=0.01, ceiling_per_s=1000.0, max_probes=200
    )
    assert not result.exhausted
    assert result.rate_per_s is not None and result.upper_per_s is not None
    assert result.rate_per_s < capacity <= result.upper_per_s
    assert result.upper_per_s == pytest.approx(result.rate_per_s * (1 + tol))
    k = round(math.log(result.rate_per_s) / math.log1p(tol))
    assert result.rate_per_s == pytest.approx(grid_rate(k, tol))


def test_search_reports_no_rate_when_even_the_floor_fails() -> None:
    result = max_passing_rate(
        lambda r: False, 10.0, 0.05, floor_per_s=0.1, ceiling_per_s=40.0, max_probes=50
    )
    assert result.rate_per_s is None and not result.exhausted
    assert result.upper_per_s == pytest.approx(0.1, rel=0.05)


# ---- M/D/1 -------------------------------------------------------------------------------------
def test_max_rate_matches_md1_capacity_at_a_mean_wait_slo() -> None:
    step_s, wait_s = 0.01, 0.01
    expected = 2 * wait_s / (step_s * (2 * wait_s + step_s))  # 66.7 req/s, rho = 2/3
    one_step = {
        "arrival": "poisson",
        "rate_per_s": 50.0,
        "requests": 12000,
        "prompt_tokens": 16,
        "output_tokens": 1,
    }
    inputs = PlanInputs(
        base=_base(one_step, scheduler={"max_num_seqs": 1}),
        target_rate_per_s=100.0,
        slos=(Slo("queue_wait_mean_s", wait_s),),
        accelerators=("h100-sxm",),
        tp=(1,),
        seeds=3,
        probe_requests=12000,
        rel_tol=0.01,
    )
    result = plan(inputs, executor=FixedStepExecutor(step_s))
    (only,) = result.plans
    assert only.feasible, only.reason
    assert only.max_rate_per_replica == pytest.approx(expected, rel=0.05)
    # Two replicas serve 100 req/s: each gets 50 req/s < 66.7, one could not.
    assert only.replicas == math.ceil(100.0 / only.max_rate_per_replica) == 2
    assert only.fleet["queue_wait_mean_s"] <= wait_s
    assert only.usd_per_hour == pytest.approx(2 * 4.916)  # catalog h100-sxm price x 2 GPUs


# ---- monotonicity ------------------------------------------------------------------------------
def _cheapest(result) -> float:
    return result.best.usd_per_hour if result.best else math.inf


def test_tighter_slo_never_gives_a_cheaper_plan() -> None:
    costs, replicas = [], []
    for ttft in (2.0, 0.5, 0.15):
        result = plan(_inputs(slos=(Slo("ttft_p90_s", ttft), Slo("tpot_p90_s", 0.1))))
        costs.append(_cheapest(result))
        replicas.append({(p.accelerator, p.tp): p.replicas or math.inf for p in result.plans})
    assert costs == sorted(costs)
    assert costs[0] < math.inf
    for key in replicas[0]:
        assert replicas[0][key] <= replicas[1][key] <= replicas[2][key]


def test_higher_target_rate_never_needs_fewer_replicas() -> None:
    counts = []
    for rate in (5.0, 20.0, 60.0):
        result = plan(_inputs(target_rate_per_s=rate, accelerators=("h100-sxm", "l4")))
        counts.append({p.accelerator: p.replicas for p in result.plans})
        assert all(p.feasible for p in result.plans), [p.reason for p in result.plans]
    for acc in counts[0]:
        assert counts[0][acc] <= counts[1][acc] <= counts[2][acc]
    assert counts[2]["l4"] > counts[0]["l4"]


def test_fp8_kv_never_holds_a_smaller_batch_than_fp16() -> None:
    result = plan(
        _inputs(
            accelerators=("l4", "a100-80gb-sxm"),
            kv_strategies=("fp16", "fp8"),
            base=_base(SMALL_CHAT, scheduler={"max_num_seqs": 1024}),
            target_rate_per_s=5.0,
        )
    )
    by_key = {(p.accelerator, p.kv_strategy): p for p in result.plans}
    for acc in ("l4", "a100-80gb-sxm"):
        fp16, fp8 = by_key[(acc, "fp16")], by_key[(acc, "fp8")]
        # Same pool, half the bytes per token: at least twice the tokens (block rounding).
        assert fp8.kv_capacity_tokens >= 2 * fp16.kv_capacity_tokens
        assert fp8.max_batch >= fp16.max_batch
        assert fp16.quality == "lossless" and fp8.quality == "unknown"


# ---- infeasible candidates and reasons ---------------------------------------------------------
def test_infeasible_candidates_are_listed_with_their_reason() -> None:
    base = _base(SMALL_CHAT)
    data = base.to_dict()
    data["model"] = {"name": "llama-3.1-70b"}
    result = plan(_inputs(base=Scenario.from_dict(data), accelerators=("l40s", "gaudi2"), tp=(1,)))
    reasons = {p.accelerator: p.reason for p in result.plans}
    assert not any(p.feasible for p in result.plans)
    assert reasons["l40s"].startswith("does not fit: llama-3.1-70b")
    assert reasons["gaudi2"].startswith("no price for gaudi2")
    priced = plan(
        _inputs(
            base=Scenario.from_dict(data),
            accelerators=("gaudi2",),
            tp=(1,),
            prices_usd_per_hour=(("gaudi2", 1.5),),
        )
    )
    assert "no price" not in priced.plans[0].reason


def test_an_slo_below_the_unloaded_latency_is_unreachable_at_any_size() -> None:
    result = plan(_inputs(slos=(Slo("tpot_p90_s", 1e-4),), accelerators=("h100-sxm",)))
    (only,) = result.plans
    assert not only.feasible
    assert only.reason.startswith("misses the SLO at any fleet size")
    assert "tpot_p90_s" in only.reason


# ---- SLOs, strategies, ranking -----------------------------------------------------------------
def test_slo_keys_and_parsing() -> None:
    assert parse_slo("ttft_p90_s=1.5") == Slo("ttft_p90_s", 1.5)
    assert parse_slo("tpot_p99_s <= 0.05") == Slo("tpot_p99_s", 0.05)
    assert {"ttft_mean_s", "queue_wait_mean_s", "e2e_p90_s", "itl_p90_s"} <= set(SLO_KEYS)
    with pytest.raises(KvsimError, match="did you mean|unknown SLO metric"):
        parse_slo("ttft_p95_s=1")
    with pytest.raises(KvsimError, match="> 0"):
        parse_slo("ttft_p90_s=0")
    with pytest.raises(KvsimError, match="unknown KV strategy"):
        get_strategy("fp4")


def test_every_strategy_preset_is_accepted_by_the_scenario_layer() -> None:
    base = _base(SMALL_CHAT)
    for strategy in KV_STRATEGIES.values():
        scenario = base.with_overrides(strategy.overrides)
        assert scenario.kv_strategy().quantization.name == strategy.kv_dtype
        assert (scenario.prefix_caching != "none") == strategy.prefix_caching


@dataclass
class _Fake:
    usd_per_hour: float | None
    latency_s: float | None
    quality_retained: float | None
    kv_strategy: str = "fp16"
    feasible: bool = True


def test_dominance_compares_quality_only_where_it_is_known() -> None:
    lossless = _Fake(10.0, 0.5, 1.0)
    unknown = _Fake(8.0, 0.5, None, "fp8")
    assert not dominates(unknown, lossless)  # cheaper, but its quality is not known
    assert not dominates(lossless, unknown)  # better quality, but dearer
    assert dominates(_Fake(7.0, 0.5, 1.0), unknown)  # lossless, cheaper, as fast
    assert dominates(_Fake(8.0, 0.4, None, "fp8"), unknown)  # same strategy, faster
    assert not dominates(_Fake(8.0, 0.4, None, "int8"), unknown)  # unknown vs unknown
    plans = [lossless, unknown, _Fake(12.0, 0.6, 1.0), _Fake(1.0, 0.1, 1.0, feasible=False)]
    assert pareto_mask(plans) == [True, True, False, False]


def test_cli_json_is_one_object_with_the_documented_keys(capsys) -> None:
    from sim.cli import plan_cmd

    parser = argparse.ArgumentParser()
    plan_cmd.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "plan",
            "--model", "llama-3.1-8b",
            "--hardware", "h100-sxm,l4",
            "--tp", "1,2",
            "--rate", "10",
            "--synthetic-requests", "200",
            "--slo", "ttft_p90_s=1.0",
            "--slo", "tpot_p90_s=0.05",
            "--kv-strategies", "fp16,fp8",
            "--seeds", "1",
            "--probe-requests", "150",
            "--json",
        ]
    )  # fmt: skip
    assert args.func(args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["plans"]) == 2 * 2 * 2
    keys = {
        "accelerator", "tp", "replicas", "kv_strategy", "feasible", "reason",
        "max_rate_per_replica", "usd_per_hour", "usd_per_m_tokens", "utilisation", "quality",
        "pareto",
    }  # fmt: skip
    for row in payload["plans"]:
        assert keys <= set(row)
    feasible = [row for row in payload["plans"] if row["feasible"]]
    assert feasible and [r["usd_per_hour"] for r in feasible] == sorted(
        r["usd_per_hour"] for r in feasible
    )
    assert any(row["pareto"] for row in feasible)
