"""Trace-reader speed: read a 1,000,000-row Azure-format CSV (target: well under 10 s).

The file is generated in a temporary directory in the Azure 2023 layout
(``TIMESTAMP,ContextTokens,GeneratedTokens``, timestamps with 7 fractional digits, Poisson
arrivals at 5.5 req/s, log-normal token counts), then read with
:func:`workloads.traces.read_trace` with format auto-detection, as a user would.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from workloads.stats import trace_stats
from workloads.traces import read_trace

ROWS = 1_000_000


def write_azure_csv(path: Path, rows: int, seed: int = 0) -> None:
    """An Azure-2023-format CSV with ``rows`` requests."""
    rng = np.random.default_rng(seed)
    gaps_ns = rng.exponential(1e9 / 5.5, rows).astype(np.int64)
    times = np.datetime64("2023-11-16T18:15:46", "ns") + np.cumsum(gaps_ns)
    stamps = np.char.replace(np.datetime_as_string(times, unit="ns").astype("U27"), "T", " ")
    frame = pd.DataFrame(
        {
            "TIMESTAMP": stamps,
            "ContextTokens": np.maximum(1, rng.lognormal(6.8, 0.9, rows).astype(np.int64)),
            "GeneratedTokens": np.maximum(1, rng.lognormal(4.9, 0.9, rows).astype(np.int64)),
        }
    )
    frame.to_csv(path, index=False)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "azure_1m.csv"
        write_azure_csv(path, ROWS)
        size_mb = path.stat().st_size / 1e6
        start = time.perf_counter()
        workload = read_trace(path)
        read_s = time.perf_counter() - start
        start = time.perf_counter()
        stats = trace_stats(workload)
        stats_s = time.perf_counter() - start
    print(
        f"read_trace: {len(workload):,} rows ({size_mb:.0f} MB) in {read_s:.2f} s = {len(workload) / read_s:,.0f} rows/s (target < 10 s)"
    )
    print(
        f"trace_stats: {stats_s:.2f} s (rate {stats['rate_per_s']:.2f} req/s, CV {stats['interarrival_cv']:.3f})"
    )


if __name__ == "__main__":
    main()
