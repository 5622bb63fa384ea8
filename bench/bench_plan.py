"""Planner speed: the worked example of ``docs/planning.md`` on a 10,000-request workload.

Llama-3.1-70B chat traffic (the built-in default scenario's synthetic chat workload: a
512-token shared system prompt plus lognormal user prompts, median ~1,024 tokens in all,
and lognormal outputs, median 129) at 20 req/s, p90 TTFT <= 1 s and p90 TPOT <= 80 ms, on
h100-sxm, h200-sxm, a100-80gb-sxm, mi300x and l40s at TP 1, 2, 4 and 8, with fp16 and fp8
KV: 40 candidates, two worker processes (target: under 2 minutes on a 2-core machine).
Prints the wall and CPU time, the simulations run, and the planner's table.
"""

from __future__ import annotations

import resource
import time

from sim.cli.plan_cmd import format_plans
from sim.plan import PlanInputs, plan
from sim.planning.slo import Slo
from sim.scenario import load_scenario
from sim.scenarios import builtin_path

REQUESTS = 10_000
WORKERS = 2


def worked_example(requests: int = REQUESTS) -> PlanInputs:
    base = load_scenario(
        builtin_path(), ['model.name="llama-3.1-70b"', f"workload.synthetic.requests={requests}"]
    )
    return PlanInputs(
        base=base,
        target_rate_per_s=20.0,
        slos=(Slo("ttft_p90_s", 1.0), Slo("tpot_p90_s", 0.08)),
        accelerators=("h100-sxm", "h200-sxm", "a100-80gb-sxm", "mi300x", "l40s"),
        tp=(1, 2, 4, 8),
        kv_strategies=("fp16", "fp8"),
    )


def _cpu_s() -> float:
    """CPU seconds of this process and its finished worker processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    inputs = worked_example()
    wall, cpu = time.perf_counter(), _cpu_s()
    result = plan(inputs, workers=WORKERS)
    wall, cpu = time.perf_counter() - wall, _cpu_s() - cpu
    simulations = sum(p.simulations for p in result.plans)
    print(format_plans(result))
    print(
        f"\nplanner: {len(result.plans)} candidates, {len(result.feasible)} feasible, "
        f"{simulations} simulations, {REQUESTS:,}-request workload, {WORKERS} workers: "
        f"{wall:.1f} s wall, {cpu:.1f} CPU-s in all (wall on {WORKERS} idle cores ~ "
        f"{cpu / WORKERS:.0f} s; target < 120 s)"
    )


if __name__ == "__main__":
    main()
