"""Capacity planner: the cheapest fleet that serves a target rate within the SLOs.

For each candidate (accelerator, TP, PP, KV strategy) the planner

1. builds a one-replica scenario from the base (model, scheduler, router, workload) with
   the candidate's hardware and the strategy's overrides (:mod:`sim.planning.strategies`),
   and plans its memory (:func:`sim.cost.plan_memory`): a model that does not fit is
   listed with the shortfall;
2. measures the replica's saturated throughput ``μ`` (every request of the first probe
   window arriving at once) and searches the largest sustainable request rate on a
   geometric grid (:mod:`sim.planning.search`): a rate passes when a probe window played at
   that rate (:mod:`sim.planning.traffic`) meets the SLOs (:mod:`sim.planning.slo`). The
   first window is searched from ``μ``; each further window (``seeds`` in all) is
   checked at the rate found so far and searched downwards from it when it fails, so the
   result is the largest grid rate every window sustains (the conservative minimum over
   replicates), bracketed by the lowest failing rate above it, and the spread of each SLO
   metric over the windows at that rate is reported. A candidate that misses the SLOs
   even at ``μ / 256`` cannot meet them at any fleet size and is listed with the violation;
3. sizes the fleet ``n = ⌈target / max_rate⌉`` and verifies it by simulating ``n``
   replicas behind the router on the whole workload at the target rate, adding replicas
   (at most ``max_extra_replicas``) until the SLOs hold;
4. prices it: USD/hour = price per GPU-hour × tp × pp × n; USD per million output tokens
   = USD/hour / (3600 × target rate × mean output tokens per request) × 10⁶ (every request
   completes in a sustainable plan, so output tokens flow at the offered rate).

Plans are ranked by USD/hour then latency, and the Pareto set over (USD/hour, latency of
the first SLO's metric, quality) is marked (:mod:`sim.planning.ranking`). The method and a
worked example are in ``docs/planning.md``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from hardware.catalog import get_accelerator
from hardware.errors import KvsimError
from sim.executor import Executor
from sim.planning.ranking import pareto_mask, sort_key
from sim.planning.search import max_passing_rate
from sim.planning.slo import Slo, SloCheck, check
from sim.planning.strategies import get_strategy, quality
from sim.planning.traffic import Traffic, all_at_once, at_rate, load_traffic
from sim.run import RunResult, resolve, run_scenario
from sim.scenario import ROUTERS, Scenario
from workloads.workload import Workload

#: The search starts at this fraction of the saturated throughput (a replica fed a steady
#: stream often sustains about its burst throughput when TTFT is the binding SLO).
START_FRACTION = 1.0
#: Rates searched: [μ / FLOOR_DIVISOR, CEILING_FACTOR × μ].
FLOOR_DIVISOR = 256.0
CEILING_FACTOR = 4.0


@dataclass(frozen=True)
class PlanInputs:
    """What to plan for. ``base`` gives the model, scheduler limits and workload;
    ``prices_usd_per_hour`` overrides catalog prices per GPU-hour by accelerator id;
    ``seeds`` probe windows; ``probe_requests`` requests per window (None: the whole
    workload); ``rel_tol`` the rate grid's step; ``max_probes`` caps the rate-probe
    simulations per candidate; ``router`` spreads the fleet's requests."""

    base: Scenario
    target_rate_per_s: float
    slos: tuple[Slo, ...]
    accelerators: tuple[str, ...]
    tp: tuple[int, ...] = (1, 2, 4, 8)
    pp: tuple[int, ...] = (1,)
    kv_strategies: tuple[str, ...] = ("fp16",)
    min_attainment: float | None = None
    prices_usd_per_hour: tuple[tuple[str, float], ...] = ()
    seeds: int = 3
    probe_requests: int | None = 1000
    rel_tol: float = 0.05
    max_probes: int = 24
    max_extra_replicas: int = 4
    router: str = "least_outstanding"

    def __post_init__(self) -> None:
        if not (self.target_rate_per_s > 0 and math.isfinite(self.target_rate_per_s)):
            raise KvsimError(f"must be > 0, got {self.target_rate_per_s}", field="rate")
        if not self.slos and self.min_attainment is None:
            raise KvsimError("give at least one SLO", field="slo")
        if not self.accelerators:
            raise KvsimError("give at least one accelerator", field="hardware")
        for name, values in (("tp", self.tp), ("pp", self.pp)):
            if not values or any(not isinstance(v, int) or v < 1 for v in values):
                raise KvsimError(f"must be positive integers, got {values}", field=name)
        for name in self.kv_strategies:
            get_strategy(name)
        if self.min_attainment is not None and not 0 < self.min_attainment <= 1:
            raise KvsimError(f"must be in (0, 1], got {self.min_attainment}", field="goodput")
        for key, value in (("seeds", self.seeds), ("max_probes", self.max_probes)):
            if not isinstance(value, int) or value < 1:
                raise KvsimError(f"must be a positive integer, got {value!r}", field=key)
        if self.probe_requests is not None and self.probe_requests < 2:
            raise KvsimError(f"must be >= 2, got {self.probe_requests}", field="probe_requests")
        if self.max_extra_replicas < 0:
            raise KvsimError("must be >= 0", field="max_extra_replicas")
        if self.router not in ROUTERS:
            raise KvsimError(f"must be one of {', '.join(ROUTERS)}", field="router")
        if self.base.disaggregation is not None:
            raise KvsimError(
                "the planner sizes colocated replicas; remove [disaggregation] from the base",
                field="disaggregation",
            )
        for acc, price in self.prices_usd_per_hour:
            if not price >= 0:
                raise KvsimError(f"{acc}: price must be >= 0, got {price}", field="price")

    def candidates(self) -> list[Candidate]:
        return [
            Candidate(acc, tp, pp, kv)
            for acc, tp, pp, kv in itertools.product(
                self.accelerators, self.tp, self.pp, self.kv_strategies
            )
        ]


@dataclass(frozen=True)
class Candidate:
    accelerator: str
    tp: int
    pp: int
    kv_strategy: str


@dataclass(frozen=True)
class Plan:
    """One candidate's outcome. ``max_rate_per_replica`` is the largest grid rate every
    probe window sustained, ``max_rate_upper_per_replica`` the smallest that failed above
    it; ``fleet`` the SLO metrics the fleet verification measured; ``probe_spread`` each
    SLO metric's (min, max) over the windows at the max rate; ``max_batch`` the sequences
    the KV pool holds at the workload's mean context (capped by ``max_num_seqs``)."""

    accelerator: str
    tp: int
    pp: int
    kv_strategy: str
    feasible: bool
    reason: str = ""
    replicas: int | None = None
    gpus: int | None = None
    max_rate_per_replica: float | None = None
    max_rate_upper_per_replica: float | None = None
    saturated_rate_per_replica: float | None = None
    search_exhausted: bool = False
    usd_per_gpu_hour: float | None = None
    usd_per_hour: float | None = None
    usd_per_m_tokens: float | None = None
    utilisation: float | None = None
    quality: str = "unknown"
    quality_retained: float | None = None
    max_batch: int | None = None
    kv_capacity_tokens: int | None = None
    latency_metric: str | None = None
    latency_s: float | None = None
    slo_attainment: float | None = None
    fleet: Mapping[str, float | None] = field(default_factory=dict)
    probe_spread: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    simulations: int = 0
    pareto: bool = False

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["fleet"] = dict(self.fleet)
        out["probe_spread"] = {k: list(v) for k, v in self.probe_spread.items()}
        return out


@dataclass(frozen=True)
class PlanResult:
    """Every candidate's plan, ranked (feasible first, by USD/hour then latency)."""

    plans: tuple[Plan, ...]
    inputs: PlanInputs

    @property
    def feasible(self) -> tuple[Plan, ...]:
        return tuple(p for p in self.plans if p.feasible)

    @property
    def pareto(self) -> tuple[Plan, ...]:
        return tuple(p for p in self.plans if p.pareto)

    @property
    def best(self) -> Plan | None:
        return self.feasible[0] if self.feasible else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "target_rate_per_s": self.inputs.target_rate_per_s,
            "slos": {s.metric: s.limit_s for s in self.inputs.slos},
            "min_attainment": self.inputs.min_attainment,
            "plans": [p.as_dict() for p in self.plans],
        }


def plan(
    inputs: PlanInputs,
    *,
    executor: Executor | None = None,
    workers: int = 1,
    progress: Callable[[Plan], None] | None = None,
) -> PlanResult:
    """Evaluate every candidate of ``inputs`` (in ``workers`` processes when > 1) and rank
    them. ``executor`` replaces the cost model in every simulation (e.g.
    :class:`~sim.executor.FixedStepExecutor` for queueing-theory checks); ``progress`` is
    called with each finished candidate's plan."""
    traffic = load_traffic(inputs.base, inputs.seeds, inputs.probe_requests)
    candidates = inputs.candidates()
    plans: list[Plan] = []
    if workers > 1 and len(candidates) > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=min(workers, len(candidates))) as pool:
            futures = [
                pool.submit(evaluate_candidate, inputs, traffic, c, executor) for c in candidates
            ]
            for future in as_completed(futures):
                plans.append(future.result())
                if progress is not None:
                    progress(plans[-1])
    else:
        for candidate in candidates:
            plans.append(evaluate_candidate(inputs, traffic, candidate, executor))
            if progress is not None:
                progress(plans[-1])
    return rank(plans, inputs)


def rank(plans: Sequence[Plan], inputs: PlanInputs) -> PlanResult:
    """Sort ``plans`` and mark the Pareto set."""
    ordered = sorted(plans, key=lambda p: (*sort_key(p), p.accelerator, p.tp, p.pp, p.kv_strategy))
    marks = pareto_mask(ordered)
    return PlanResult(
        tuple(replace(p, pareto=m) for p, m in zip(ordered, marks, strict=True)), inputs
    )


def evaluate_candidate(
    inputs: PlanInputs, traffic: Traffic, candidate: Candidate, executor: Executor | None = None
) -> Plan:
    """The plan of one candidate (steps 1–4 of the module docstring)."""
    return _Evaluation(inputs, traffic, candidate, executor).run()


class _Evaluation:
    """The simulations of one candidate, counted and cached by (rate, window)."""

    def __init__(
        self,
        inputs: PlanInputs,
        traffic: Traffic,
        candidate: Candidate,
        executor: Executor | None,
    ) -> None:
        self.inputs = inputs
        self.traffic = traffic
        self.candidate = candidate
        self.executor = executor
        self.simulations = 0
        self.probes: dict[tuple[float, int], SloCheck] = {}

    def simulate(self, scenario: Scenario, workload: Workload) -> RunResult:
        self.simulations += 1
        return run_scenario(scenario, workload=workload, executor=self.executor)

    def probe(self, scenario: Scenario, rate: float, index: int, window: Workload) -> SloCheck:
        """Window ``index`` played at ``rate`` on one replica, checked against the SLOs."""
        key = (rate, index)
        if key not in self.probes:
            result = self.simulate(scenario, at_rate(window, rate))
            self.probes[key] = check(
                result.summary, result.requests, self.inputs.slos, self.inputs.min_attainment
            )
        return self.probes[key]

    def run(self) -> Plan:
        c, inputs = self.candidate, self.inputs
        strategy = get_strategy(c.kv_strategy)
        model_id = inputs.base.model.ref
        label, retained = quality(model_id, strategy)
        plan = Plan(c.accelerator, c.tp, c.pp, c.kv_strategy, feasible=False)
        plan = replace(plan, quality=label, quality_retained=retained, gpus=c.tp * c.pp)
        prices = dict(inputs.prices_usd_per_hour)
        price = prices.get(c.accelerator)
        if price is None:
            price = get_accelerator(c.accelerator).price_usd_per_hour
        if price is None:
            return replace(
                plan, reason=f"no price for {c.accelerator} (give --price {c.accelerator}=USD)"
            )
        plan = replace(plan, usd_per_gpu_hour=price)
        overrides = [
            f'hardware.accelerator="{c.accelerator}"',
            f"hardware.tp={c.tp}",
            f"hardware.pp={c.pp}",
            "hardware.replicas=1",
            f'router.name="{inputs.router}"',
            *strategy.overrides,
        ]
        try:
            scenario = inputs.base.with_overrides(overrides)
            memory = resolve(scenario).memory
        except KvsimError as err:
            return replace(plan, reason=f"does not fit: {err.message}")
        sched = scenario.scheduler
        blocks_per_request = float(
            np.mean(
                -(
                    -(self.traffic.full.prompt_tokens + self.traffic.full.output_tokens)
                    // memory.block_tokens
                )
            )
        )
        plan = replace(
            plan,
            kv_capacity_tokens=memory.max_kv_tokens,
            max_batch=int(
                min(sched.max_num_seqs, memory.num_blocks // math.ceil(blocks_per_request))
            ),
        )
        plan = self._search(plan, scenario)
        if plan.max_rate_per_replica is None:
            return replace(plan, simulations=self.simulations)
        plan = self._verify(plan, scenario)
        return replace(plan, simulations=self.simulations)

    def _search(self, plan: Plan, scenario: Scenario) -> Plan:
        inputs = self.inputs
        burst = self.simulate(scenario, all_at_once(self.traffic.windows[0])).summary
        saturated = float(burst.get("throughput_req_per_s") or 0.0)
        plan = replace(plan, saturated_rate_per_replica=saturated)
        if not saturated > 0 or burst.get("requests_rejected"):
            rejected = burst.get("requests_rejected") or 0
            return replace(
                plan,
                reason=f"cannot serve the workload: {rejected} of "
                f"{burst.get('requests_total')} requests rejected (too long for the KV pool "
                "or max_model_len)",
            )
        windows = self.traffic.windows
        best: float | None = None
        exhausted = False
        for index, window in enumerate(windows):

            def passes(rate: float, index: int = index, window: Workload = window) -> bool:
                return self.probe(scenario, rate, index, window).met

            budget = inputs.max_probes - len(self.probes)
            if budget < 1:
                exhausted = True
                break
            found = max_passing_rate(
                passes,
                START_FRACTION * saturated if best is None else best,
                inputs.rel_tol,
                floor_per_s=saturated / FLOOR_DIVISOR,
                ceiling_per_s=CEILING_FACTOR * saturated if best is None else best,
                max_probes=budget,
            )
            exhausted = exhausted or found.exhausted
            if found.rate_per_s is None:
                lowest = min(rate for rate, i in self.probes if i == index)
                violation = self.probes[(lowest, index)].violation
                if found.exhausted:
                    reason = f"no passing rate found within {inputs.max_probes} probes: {violation}"
                else:
                    reason = (
                        f"misses the SLO at any fleet size: even at {lowest:.3g} req/s per "
                        f"replica {violation}"
                    )
                return replace(plan, reason=reason)
            best = found.rate_per_s
        assert best is not None
        at_max = [self.probe(scenario, best, i, w) for i, w in enumerate(windows)]
        spread = {}
        for slo in inputs.slos:
            values = [c.values[slo.metric] for c in at_max if c.values[slo.metric] is not None]
            spread[slo.metric] = (min(values), max(values)) if values else (None, None)
        failing = [rate for (rate, _), c in self.probes.items() if rate > best and not c.met]
        return replace(
            plan,
            max_rate_per_replica=best,
            max_rate_upper_per_replica=min(failing) if failing else None,
            search_exhausted=exhausted,
            probe_spread=spread,
        )

    def _verify(self, plan: Plan, scenario: Scenario) -> Plan:
        inputs = self.inputs
        assert plan.max_rate_per_replica is not None and plan.usd_per_gpu_hour is not None
        first = math.ceil(inputs.target_rate_per_s / plan.max_rate_per_replica * (1 - 1e-12))
        workload = at_rate(self.traffic.full, inputs.target_rate_per_s)
        outcome = None
        for replicas in range(first, first + inputs.max_extra_replicas + 1):
            fleet = scenario.with_overrides([f"hardware.replicas={replicas}"])
            result = self.simulate(fleet, workload)
            outcome = check(result.summary, result.requests, inputs.slos, inputs.min_attainment)
            if outcome.met:
                usd_per_hour = plan.usd_per_gpu_hour * plan.tp * plan.pp * replicas
                tokens_per_hour = 3600 * inputs.target_rate_per_s * self.traffic.mean_output_tokens
                metric = inputs.slos[0].metric if inputs.slos else "e2e_p90_s"
                return replace(
                    plan,
                    feasible=True,
                    replicas=replicas,
                    gpus=plan.tp * plan.pp * replicas,
                    usd_per_hour=usd_per_hour,
                    usd_per_m_tokens=usd_per_hour / tokens_per_hour * 1e6,
                    utilisation=result.summary.get("utilisation"),
                    latency_metric=metric,
                    latency_s=outcome.values.get(metric, result.summary.get(metric)),
                    slo_attainment=outcome.attainment,
                    fleet=dict(outcome.values),
                )
        assert outcome is not None
        last = first + inputs.max_extra_replicas
        return replace(
            plan,
            reason=f"a fleet of {first}–{last} replicas misses the SLO at "
            f"{inputs.target_rate_per_s:g} req/s: {outcome.violation}",
            fleet=dict(outcome.values),
        )
