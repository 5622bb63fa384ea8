"""The engine against queueing theory.

* M/D/1: one replica, ``max_num_seqs = 1``, one-token outputs (each request is served by one
  prefill step that emits its only token) and :class:`FixedStepExecutor` steps of ``D``
  seconds make a single deterministic server. With Poisson arrivals at rate λ and ρ = λD,
  the Pollaczek–Khinchine formula gives the mean wait in queue W_q = ρD / (2(1 − ρ))
  (Kleinrock, *Queueing Systems* vol. 1, eq. 5.73 with C_b² = 0), and the server is busy a
  fraction ρ of the time.
* Little's law (Little 1961): L = λW, with L measured by integrating the number of requests
  in the system over time from the records, on runs with different executors, replica
  counts, routers and preemption.
* The empirical arrival rate of a synthetic Poisson workload matches the configured rate to
  within three standard errors (count of a Poisson process: relative s.d. 1/√n).
"""

from __future__ import annotations

import numpy as np
import pytest

from sim.executor import FixedStepExecutor
from sim.metrics import littles_law
from sim.run import run_scenario
from sim.scenario import (
    HardwareConfig,
    ModelConfig,
    RouterConfig,
    Scenario,
    SchedulerSection,
    WorkloadConfig,
)
from workloads.workload import Workload


def _scenario(workload: Workload, **changes) -> Scenario:
    base = {
        "model": ModelConfig(name="llama-3.1-8b"),
        "hardware": HardwareConfig(accelerator="h100-sxm"),
        "workload": WorkloadConfig(inline=workload),
    }
    base.update(changes)
    return Scenario(**base)


def _poisson(rate_per_s: float, n: int, seed: int, prompt: int = 16, output: int = 1):
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1 / rate_per_s, n))
    return Workload(
        arrival_s=arrival - arrival[0],
        prompt_tokens=np.full(n, prompt),
        output_tokens=np.full(n, output),
    )


def test_md1_mean_wait_and_utilisation_match_pollaczek_khinchine() -> None:
    step_s, rho, n = 0.01, 0.5, 60_000
    workload = _poisson(rho / step_s, n, seed=11)
    scenario = _scenario(workload, scheduler=SchedulerSection(max_num_seqs=1))
    result = run_scenario(scenario, executor=FixedStepExecutor(step_s))
    requests = result.requests
    assert (requests["status"] == "finished").all()
    expected_wait = rho * step_s / (2 * (1 - rho))  # 5 ms
    assert requests["queue_wait_s"].mean() == pytest.approx(expected_wait, rel=0.03)
    # Service is exactly one step: sojourn = wait + D for every request.
    np.testing.assert_allclose(
        requests["e2e_s"] - requests["queue_wait_s"], step_s, rtol=0, atol=2e-9
    )
    # Server busy fraction = rho (offered load over the makespan).
    busy = requests["arrival_s"].size * step_s / result.summary["makespan_s"]
    assert result.summary["utilisation"] == pytest.approx(busy, rel=1e-9)
    assert result.summary["utilisation"] == pytest.approx(rho, rel=0.02)


@pytest.mark.parametrize(
    ("executor", "changes", "output"),
    [
        (FixedStepExecutor(0.02), {"scheduler": SchedulerSection(max_num_seqs=4)}, 5),
        (
            None,
            {
                "hardware": HardwareConfig(accelerator="h100-sxm", replicas=3),
                "router": RouterConfig(name="least_outstanding"),
            },
            40,
        ),
        (
            None,
            {
                "hardware": HardwareConfig(accelerator="h100-sxm", gpu_memory_fraction=0.24),
                "scheduler": SchedulerSection(max_num_seqs=64, preemption="recompute"),
            },
            300,
        ),
    ],
    ids=["fixed-step-batch4", "cost-model-3-replicas", "cost-model-preempting"],
)
def test_littles_law_holds(executor, changes, output: int) -> None:
    workload = _poisson(20.0, 400, seed=3, prompt=700, output=output)
    result = run_scenario(_scenario(workload, **changes), executor=executor)
    requests = result.requests
    assert (requests["status"] == "finished").all()
    terms = littles_law(requests)
    assert terms["L"] == pytest.approx(terms["lambda"] * terms["W"], rel=1e-9)
    # W is the mean of the per-request E2E column, computed independently of the integral.
    assert terms["W"] == pytest.approx(requests["e2e_s"].mean(), rel=1e-12)


def test_preempting_case_really_preempts() -> None:
    """The third Little's-law case is meant to exercise preemption; keep it honest."""
    workload = _poisson(20.0, 400, seed=3, prompt=700, output=300)
    scenario = _scenario(
        workload,
        hardware=HardwareConfig(accelerator="h100-sxm", gpu_memory_fraction=0.24),
        scheduler=SchedulerSection(max_num_seqs=64, preemption="recompute"),
    )
    assert run_scenario(scenario).summary["preemptions"] > 0


def test_empirical_arrival_rate_matches_configured_rate() -> None:
    rate, n = 4.0, 2000
    scenario = Scenario.from_dict(
        {
            "seed": 5,
            "model": {"name": "llama-3.1-8b"},
            "hardware": {"accelerator": "h100-sxm"},
            "workload": {
                "synthetic": {
                    "arrival": "poisson",
                    "rate_per_s": rate,
                    "requests": n,
                    "prompt_tokens": {"dist": "fixed", "value": 64},
                    "output_tokens": {"dist": "fixed", "value": 2},
                }
            },
        }
    )
    arrivals = run_scenario(scenario).requests["arrival_s"].to_numpy()
    measured = (n - 1) / (arrivals[-1] - arrivals[0])
    assert abs(measured / rate - 1) < 3 / np.sqrt(n)
