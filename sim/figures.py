"""Plotly figures of a run, each a pure function of the record DataFrames.

Shared by the HTML report (:mod:`sim.report`) and the dashboard. Long runs are reduced
before plotting (quantile grids for CDFs, time bins for time series) so a figure stays a few
thousand points whatever the run length.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sim.metrics import batch_over_time, completed, kv_over_time

#: Points per CDF curve and bins per time series.
CDF_POINTS = 400
TIME_BINS = 1000

_LATENCIES = (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2e_s", "E2E"))


def _cdf_points(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.sort(values[np.isfinite(values)])
    if not values.size:
        return values, values
    probs = np.linspace(0.0, 1.0, min(CDF_POINTS, values.size))
    return np.quantile(values, probs), probs


def latency_cdfs(requests: pd.DataFrame) -> go.Figure:
    """Empirical CDFs of TTFT, TPOT and E2E of the finished requests, one panel each."""
    done = completed(requests)
    figure = make_subplots(rows=1, cols=3, subplot_titles=[name for _, name in _LATENCIES])
    for col, (column, name) in enumerate(_LATENCIES, start=1):
        x, y = _cdf_points(done[column].to_numpy(dtype=float))
        figure.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name), row=1, col=col)
        figure.update_xaxes(title_text="seconds", row=1, col=col)
    figure.update_yaxes(title_text="fraction of requests", range=[0, 1], row=1, col=1)
    figure.update_layout(title="Latency CDFs", showlegend=False)
    return figure


def _binned(time_s: np.ndarray, values: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """``values`` reduced to at most :data:`TIME_BINS` time bins (``max`` or ``mean``)."""
    if time_s.size <= TIME_BINS:
        return time_s, values
    edges = np.linspace(time_s.min(), time_s.max(), TIME_BINS + 1)
    which = np.clip(np.searchsorted(edges, time_s, side="right") - 1, 0, TIME_BINS - 1)
    frame = pd.DataFrame({"bin": which, "value": values}).groupby("bin")["value"]
    reduced = frame.max() if how == "max" else frame.mean()
    centres = (edges[:-1] + edges[1:]) / 2
    return centres[reduced.index.to_numpy()], reduced.to_numpy()


def kv_memory(
    steps: pd.DataFrame, kv_bytes_per_block: float, capacity_bytes: float | None = None
) -> go.Figure:
    """KV cache bytes in use over time, summed over replicas (peak per time bin), with the
    pool capacity as a dashed line."""
    kv = kv_over_time(steps, kv_bytes_per_block)
    x, y = _binned(kv["time_s"].to_numpy(), kv["kv_bytes"].to_numpy() / 2**30, "max")
    figure = go.Figure(go.Scatter(x=x, y=y, mode="lines", name="KV in use", line_shape="hv"))
    if capacity_bytes:
        figure.add_hline(y=capacity_bytes / 2**30, line_dash="dash", annotation_text="capacity")
    figure.update_layout(
        title="KV memory over time", xaxis_title="time (s)", yaxis_title="KV cache (GiB)"
    )
    return figure


def batch_size(steps: pd.DataFrame) -> go.Figure:
    """Sequences per step over time, one line per replica (mean per time bin)."""
    batches = batch_over_time(steps)
    figure = go.Figure()
    for replica, rows in batches.groupby("replica", sort=True):
        x, y = _binned(rows["time_s"].to_numpy(), rows["batch_size"].to_numpy(float), "mean")
        figure.add_trace(go.Scatter(x=x, y=y, mode="lines", name=f"replica {replica}"))
    figure.update_layout(
        title="Batch size over time", xaxis_title="time (s)", yaxis_title="sequences per step"
    )
    return figure


def step_time_breakdown(steps: pd.DataFrame) -> go.Figure:
    """Total step time by cost component (compute- and memory-bound kernels,
    communication, KV transfer, fixed overhead)."""
    parts = ["compute_s", "memory_s", "communication_s", "transfer_s", "overhead_s"]
    totals = [float(steps[p].sum()) for p in parts]
    figure = go.Figure(go.Bar(x=[p.removesuffix("_s") for p in parts], y=totals))
    figure.update_layout(title="Where step time went", yaxis_title="seconds (all replicas)")
    return figure
