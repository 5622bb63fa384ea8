"""Run summaries laid out for display: formatted headline numbers, the percentile table
against the SLOs, and a baseline-vs-current comparison. Pure functions over the summary
dict of :func:`sim.metrics.summarize` (the same keys ``kvsim run --json`` prints)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from sim.metrics import kv_over_time

LATENCIES = (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "E2E"))
PERCENTILE_KEYS = (50, 90, 99)

#: Summary keys compared against a baseline: (key, label, unit, higher is better).
COMPARED: tuple[tuple[str, str, str, bool], ...] = (
    ("ttft_p90_s", "TTFT p90", "s", False),
    ("tpot_p90_s", "TPOT p90", "s", False),
    ("e2e_p90_s", "E2E p90", "s", False),
    ("throughput_tok_per_s", "output throughput", "tokens/s", True),
    ("throughput_req_per_s", "throughput", "requests/s", True),
    ("goodput_req_per_s", "goodput", "requests/s", True),
    ("slo_attainment", "SLO attainment", "fraction", True),
    ("kv_peak_bytes", "KV peak", "bytes", False),
    ("preemptions", "preemptions", "count", False),
    ("usd_per_hour", "cost", "USD/h", False),
    ("usd_per_m_output_tokens", "cost", "USD per 1M output tokens", False),
)


def format_seconds(value: float | None) -> str:
    """Latency with its unit: µs below 1 ms, ms below 1 s, else s; 4 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if abs(value) < 1e-3:
        return f"{value * 1e6:.4g} µs"
    if abs(value) < 1.0:
        return f"{value * 1e3:.4g} ms"
    return f"{value:.4g} s"


def format_bytes(value: float | None) -> str:
    """Bytes in decimal units (kB, MB, GB, TB)."""
    if value is None:
        return "—"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def format_usd(value: float | None) -> str:
    return "—" if value is None else f"${value:,.4g}"


def headline(summary: Mapping[str, object]) -> dict[str, str]:
    """The numbers shown as metrics above the charts; the unit is in the label or value."""
    usd = summary.get("usd_per_m_output_tokens")
    return {
        "TTFT p90": format_seconds(summary.get("ttft_p90_s")),  # type: ignore[arg-type]
        "TPOT p90": format_seconds(summary.get("tpot_p90_s")),  # type: ignore[arg-type]
        "E2E p90": format_seconds(summary.get("e2e_p90_s")),  # type: ignore[arg-type]
        "Output tokens/s": f"{summary['throughput_tok_per_s']:,.0f}",
        "Goodput (requests/s)": f"{summary['goodput_req_per_s']:.4g}",
        "USD per 1M output tokens": format_usd(usd),  # type: ignore[arg-type]
    }


def percentile_table(summary: Mapping[str, object], slo: Mapping[str, float]) -> pd.DataFrame:
    """p50/p90/p99 of TTFT, TPOT and E2E in milliseconds, with the p90 SLO (``slo`` maps
    ``ttft_p90_s``… to seconds) and whether the p90 meets it."""
    rows = []
    for key, label in LATENCIES:
        row: dict[str, object] = {"metric": label}
        for q in PERCENTILE_KEYS:
            value = summary.get(f"{key}_p{q}_s")
            row[f"p{q} (ms)"] = None if value is None else float(value) * 1e3  # type: ignore[arg-type]
        target = slo.get(f"{key}_p90_s")
        row["p90 SLO (ms)"] = None if target is None else target * 1e3
        p90 = summary.get(f"{key}_p90_s")
        row["p90 meets SLO"] = (
            None if target is None or p90 is None else bool(float(p90) <= target)  # type: ignore[arg-type]
        )
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_table(current: Mapping[str, object], baseline: Mapping[str, object]) -> pd.DataFrame:
    """Baseline vs current for :data:`COMPARED`: both values, the relative change, and
    whether the change is an improvement."""
    rows = []
    for key, label, unit, higher_better in COMPARED:
        new, old = current.get(key), baseline.get(key)
        change = None
        better = None
        if isinstance(new, int | float) and isinstance(old, int | float) and old != 0:
            change = (new - old) / abs(old)
            better = None if new == old else (new > old) == higher_better
        rows.append(
            {
                "metric": f"{label} ({unit})",
                "baseline": old,
                "current": new,
                "change": change,
                "better": better,
            }
        )
    return pd.DataFrame(rows)


def host_kv_frame(steps: pd.DataFrame, kv_bytes_per_block: float) -> pd.DataFrame | None:
    """KV blocks held in the host tier over time (columns ``time_s``, ``kv_blocks``,
    ``kv_bytes``), computed like the device tier by :func:`sim.metrics.kv_over_time`; None
    when the run never used the host tier."""
    if "kv_blocks_host" not in steps or not (steps["kv_blocks_host"] > 0).any():
        return None
    host = steps.drop(columns="kv_blocks_used").rename(columns={"kv_blocks_host": "kv_blocks_used"})
    return kv_over_time(host, kv_bytes_per_block)
