"""KV policies in the engine: their effect on a memory-bound replica, and the simulator's cost.

One llama-3.1-8b replica on 30% of an H100 (~6 GB of KV), 200 requests of 4,000 prompt and 300
output tokens arriving at 40/s: far more demand than KV. For each strategy the table shows the
KV pool in blocks (at the strategy's storage format), the time-weighted mean batch, output
throughput, TTFT and TPOT p50, the memory the strategy saves at the requests' final context,
and the wall time of the simulation (ratios to ``full`` measure the footprint path's
overhead). ``docs/policies.md`` §In the engine quotes this table.
"""

from __future__ import annotations

import time

from sim.run import run_scenario
from sim.scenario import Scenario

STRATEGIES = {
    "full": {},
    "streaming_llm 4+1020": {"selection": {"name": "streaming_llm"}},
    "snapkv 20%": {"selection": {"name": "snapkv", "budget_fraction": 0.2}},
    "pyramidkv 20%": {"selection": {"name": "pyramidkv", "budget_fraction": 0.2}},
    "quest 512": {"selection": {"name": "quest", "budget_tokens": 512}},
    "fp8": {"quantization": {"name": "fp8"}},
    "kivi-2": {"quantization": {"name": "kivi"}},
    "snapkv 20% + kivi-2": {
        "selection": {"name": "snapkv", "budget_fraction": 0.2},
        "quantization": {"name": "kivi"},
    },
}


def scenario(policies: dict) -> Scenario:
    return Scenario.from_dict(
        {
            "seed": 11,
            "model": {"name": "llama-3.1-8b"},
            "hardware": {"accelerator": "h100-sxm", "gpu_memory_fraction": 0.3},
            "workload": {
                "synthetic": {
                    "arrival": "poisson",
                    "rate_per_s": 40.0,
                    "requests": 200,
                    "prompt_tokens": {"dist": "fixed", "value": 4000},
                    "output_tokens": {"dist": "fixed", "value": 300},
                }
            },
            "policies": policies,
        }
    )


def main() -> None:
    header = (
        f"{'strategy':22s} {'blocks':>7s} {'batch':>6s} {'tok/s':>7s} {'TTFT p50':>9s} "
        f"{'TPOT p50':>9s} {'saved':>6s} {'wall':>7s}"
    )
    print(header)
    base_wall = None
    for name, policies in STRATEGIES.items():
        start = time.perf_counter()
        result = run_scenario(scenario(policies))
        wall = time.perf_counter() - start
        base_wall = base_wall or wall
        steps, s = result.steps, result.summary
        size = steps["num_prefill"] + steps["num_decode"]
        batch = float((size * steps["duration_s"]).sum() / steps["duration_s"].sum())
        print(
            f"{name:22s} {result.memory.num_blocks:7d} {batch:6.1f} "
            f"{s['throughput_tok_per_s']:7.0f} {s['ttft_p50_s']:8.2f}s "
            f"{s['tpot_p50_s'] * 1e3:7.1f}ms {s['kv_physical_savings']:6.0%} "
            f"{wall:6.2f}s ({wall / base_wall:.1f}x)",
            flush=True,
        )


if __name__ == "__main__":
    main()
