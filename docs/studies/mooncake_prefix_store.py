"""Reproduce docs/studies/mooncake_prefix_store.md: HBM-only prefix caching vs a host-DRAM
prefix store (LMCache-style, with and without layer-wise prefetch) vs unbounded tiers, on the
Mooncake FAST'25 conversation trace, Llama-3.1-8B on one H100 SXM.

    .venv/bin/python docs/studies/mooncake_prefix_store.py [--requests N] [--time-scale S]

Reads the trace from ../shared/data/traces/mooncake (or $KVSIM_SHARED/data/traces/mooncake)
and prints one Markdown table row per variant, with the trace's ideal prefix hit (an
unbounded cache over its 512-token ``hash_ids``, ``kvsim trace stats``) for comparison.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from sim.run import run_scenario
from sim.scenario import Scenario
from workloads.stats import trace_stats
from workloads.traces import read_trace

HOST_TIER = "ddr5-spr-socket"  # 512 GB of DDR5 in the catalog, read over PCIe 5.0 at 51.2 GB/s
UNBOUNDED_BYTES = 10**16


def _trace_path() -> Path:
    root = Path(os.environ.get("KVSIM_SHARED", Path(__file__).resolve().parents[3] / "shared"))
    return root / "data" / "traces" / "mooncake" / "conversation_trace.jsonl"


def variants(trace: str, time_scale: float) -> dict[str, dict]:
    """The four scenarios of the study, as TOML-shaped dicts."""
    base = {
        "name": "mooncake conversation, llama-3.1-8b on h100-sxm",
        "model": {"name": "llama-3.1-8b"},
        "hardware": {"accelerator": "h100-sxm"},
        "workload": {"trace": trace, "format": "mooncake", "time_scale": time_scale},
        "policies": {"prefix_cache": {"enabled": True, "kind": "hash"}},
    }
    host = {"host_memory_tier": HOST_TIER}
    store = {"prefix_cache": {"enabled": True, "kind": "hash"}}
    return {
        "HBM only": base,
        "+ host DRAM 512 GB": {
            **base,
            "hardware": {**base["hardware"], **host},
            "policies": {**store, "offload": {"name": "prefix_store"}},
        },
        "+ host DRAM 512 GB, no prefetch": {
            **base,
            "hardware": {**base["hardware"], **host},
            "policies": {**store, "offload": {"name": "prefix_store", "prefetch": False}},
        },
        "unbounded tiers": {
            **base,
            "hardware": {
                **base["hardware"],
                **host,
                "host_memory_capacity_bytes": UNBOUNDED_BYTES,
            },
            "policies": {**store, "offload": {"name": "prefix_store"}},
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=0, help="first N requests (0: all)")
    parser.add_argument("--time-scale", type=float, default=4.0, help="inter-arrival multiplier")
    args = parser.parse_args(argv)
    path = _trace_path()
    workload = read_trace(str(path), "mooncake", time_scale=args.time_scale)
    if args.requests:
        workload = workload.take(np.arange(min(args.requests, len(workload))))
    stats = trace_stats(workload)
    print(
        f"{len(workload)} requests, time_scale {args.time_scale}; ideal prefix hit "
        f"{stats['ideal_prefix_hit']:.1%} of blocks, {stats['ideal_prefix_hit_tokens']:.1%} "
        "of tokens",
        file=sys.stderr,
    )
    print(
        "| variant | prefix hit | of it from host | mean TTFT s | p90 TTFT s | p99 TTFT s "
        "| mean TPOT ms | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, data in variants(str(path), args.time_scale).items():
        started = time.perf_counter()
        summary = run_scenario(Scenario.from_dict(data), workload=workload).summary
        wall = time.perf_counter() - started
        prompt = float(workload.prompt_tokens.sum())
        tier = summary.get("tier_loaded_tokens", 0) / prompt
        print(
            f"| {name} | {summary['prefix_hit_rate']:.1%} | {tier:.1%} "
            f"| {summary['ttft_mean_s']:.2f} | {summary['ttft_p90_s']:.2f} "
            f"| {summary['ttft_p99_s']:.2f} | {summary['tpot_mean_s'] * 1e3:.1f} | {wall:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
