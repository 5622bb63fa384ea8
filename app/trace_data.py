"""Tables behind the Traces page: a workload's per-request frame and its statistics laid out
for display. Pure functions over :func:`workloads.stats.trace_stats` output."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from workloads.workload import Workload

#: Environment variable naming a folder whose trace files the Traces page offers to pick.
TRACE_DIR_ENV = "KVSIM_TRACE_DIR"
TRACE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
#: Arrival-plot windows, seconds; the first giving at most :data:`MAX_BARS` bars is used.
WINDOWS_S = (1.0, 10.0, 60.0, 600.0, 3600.0)
MAX_BARS = 400


def request_frame(workload: Workload) -> pd.DataFrame:
    """Arrival time and lengths, one row per request (prefix ids left out)."""
    return pd.DataFrame(
        {
            "arrival_s": workload.arrival_s,
            "prompt_tokens": workload.prompt_tokens,
            "output_tokens": workload.output_tokens,
        }
    )


def arrival_window_s(duration_s: float) -> float:
    """The smallest window of :data:`WINDOWS_S` that draws at most :data:`MAX_BARS` bars."""
    for window in WINDOWS_S:
        if duration_s / window <= MAX_BARS:
            return window
    return WINDOWS_S[-1]


def headline(stats: dict) -> dict[str, str]:
    """The headline numbers, formatted with units (``—`` where undefined)."""

    def fmt(value: float | None, pattern: str) -> str:
        return "—" if value is None else pattern.format(value)

    return {
        "requests": f"{stats['requests']:,}",
        "duration": fmt(stats["duration_s"], "{:,.1f} s"),
        "mean rate": fmt(stats["rate_per_s"], "{:.3g} req/s"),
        "inter-arrival CV": fmt(stats["interarrival_cv"], "{:.3g}"),
        "ideal prefix hit (tokens)": fmt(stats["ideal_prefix_hit_tokens"], "{:.1%}"),
    }


def token_table(stats: dict) -> pd.DataFrame:
    """Mean and percentiles of prompt and output lengths, in tokens."""
    rows = []
    for key, label in (("input_tokens", "prompt"), ("output_tokens", "output")):
        summary = stats[key] or {}
        rows.append({"length (tokens)": label, **summary})
    return pd.DataFrame(rows)


def burstiness_table(stats: dict) -> pd.DataFrame:
    """Index of dispersion (var/mean of window counts; 1 for Poisson) and peak-to-mean
    ratio per window."""
    rows = []
    for window, value in stats["dispersion_index"].items():
        rows.append(
            {
                "window": window,
                "dispersion index": value,
                "peak / mean": stats["peak_to_mean"].get(window),
            }
        )
    return pd.DataFrame(rows)


def trace_files(folder: str | os.PathLike[str] | None) -> list[Path]:
    """Trace-like files under ``folder`` (recursively, sorted); none when it is unset or
    missing."""
    if not folder or not Path(folder).is_dir():
        return []
    return sorted(
        p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in TRACE_SUFFIXES
    )
