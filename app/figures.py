"""Dashboard figures: pure functions, DataFrame in, plotly figure out, no Streamlit.

The run figures shared with the HTML report (latency CDFs, KV memory and batch size over
time) live in :mod:`sim.figures`; this module holds the ones only the dashboard draws. Every
axis title names its unit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

#: Intensity range of the roofline chart, FLOP/byte.
ROOFLINE_RANGE = (0.1, 1.0e4)


def _layout(fig: go.Figure, title: str, x: str, y: str, **kwargs: object) -> go.Figure:
    """Title, axis titles and the shared look; ``kwargs`` add to or replace layout keys."""
    layout: dict[str, object] = {
        "title": title,
        "xaxis_title": x,
        "yaxis_title": y,
        "template": "plotly_white",
        "legend": {"orientation": "h", "yanchor": "bottom", "y": -0.35},
        "margin": {"l": 60, "r": 20, "t": 50, "b": 40},
    }
    fig.update_layout(**(layout | kwargs))
    return fig


def roofline_figure(ridges: pd.DataFrame, phases: pd.DataFrame) -> go.Figure:
    """Log-log roofline: one ``min(peak, I × bandwidth)`` line per device (columns ``id``,
    ``peak FLOP/s``, ``memory bytes/s``, ``ridge FLOP/byte``) with its ridge point marked, and
    a vertical line at each phase's intensity (columns ``phase``, ``intensity FLOP/byte``)."""
    intensity = np.logspace(np.log10(ROOFLINE_RANGE[0]), np.log10(ROOFLINE_RANGE[1]), 200)
    fig = go.Figure()
    for _, device in ridges.iterrows():
        attainable = np.minimum(device["peak FLOP/s"], intensity * device["memory bytes/s"])
        fig.add_trace(
            go.Scatter(
                x=intensity,
                y=attainable / 1e12,
                mode="lines",
                name=device["id"],
                legendgroup=device["id"],
                hovertemplate="%{x:.3g} FLOP/byte → %{y:.4g} TFLOP/s<extra>%{fullData.name}</extra>",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[device["ridge FLOP/byte"]],
                y=[device["peak FLOP/s"] / 1e12],
                mode="markers",
                marker={"symbol": "diamond", "size": 8},
                name=f"{device['id']} ridge",
                legendgroup=device["id"],
                showlegend=False,
                hovertemplate="ridge %{x:.4g} FLOP/byte<extra>%{fullData.name}</extra>",
            )
        )
    for _, phase in phases.iterrows():
        fig.add_vline(
            x=phase["intensity FLOP/byte"],
            line_dash="dash",
            annotation_text=f"{phase['phase']}: {phase['intensity FLOP/byte']:.3g} FLOP/byte",
            annotation_position="top left",
        )
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return _layout(
        fig,
        "Roofline: attainable compute vs arithmetic intensity",
        "arithmetic intensity (FLOP/byte)",
        "attainable (TFLOP/s)",
        height=520,
    )


def kv_bytes_figure(curves: pd.DataFrame, capacity_gb: float | None = None) -> go.Figure:
    """KV bytes of one sequence vs its length (columns ``model``, ``kv dtype``, ``context
    tokens``, ``KV GB``), one line per model and dtype; ``capacity_gb`` draws a device's HBM."""
    fig = go.Figure()
    for (model, dtype), group in curves.groupby(["model", "kv dtype"], sort=False):
        fig.add_trace(
            go.Scatter(
                x=group["context tokens"],
                y=group["KV GB"],
                mode="lines",
                name=f"{model} ({dtype})",
                hovertemplate="%{x:,} tokens → %{y:.3f} GB<extra>%{fullData.name}</extra>",
            )
        )
    if capacity_gb is not None:
        fig.add_hline(
            y=capacity_gb,
            line_dash="dot",
            annotation_text=f"HBM {capacity_gb:.0f} GB",
            annotation_position="top left",
        )
    return _layout(
        fig, "KV cache of one sequence vs context length", "context (tokens)", "KV cache (GB)"
    )


def arrivals_figure(arrival_s: pd.Series, window_s: float) -> go.Figure:
    """Arrival rate over time: requests per ``window_s`` window, as requests per second."""
    rebased = arrival_s.to_numpy(dtype=float) - float(arrival_s.min())
    bins = np.floor(rebased / window_s).astype(np.int64)
    counts = np.bincount(bins, minlength=int(bins.max()) + 1 if len(bins) else 0)
    fig = go.Figure(
        go.Bar(
            x=np.arange(len(counts)) * window_s,
            y=counts / window_s,
            width=window_s,
            name="arrival rate",
            hovertemplate="t = %{x:.0f} s: %{y:.3g} req/s<extra></extra>",
        )
    )
    return _layout(
        fig,
        f"Arrival rate ({window_s:g} s windows)",
        "time since first arrival (s)",
        "arrival rate (requests/s)",
        bargap=0,
    )


def length_histogram_figure(requests: pd.DataFrame) -> go.Figure:
    """Overlaid histograms of prompt and output lengths (columns ``prompt_tokens``,
    ``output_tokens``) on a log x axis."""
    fig = go.Figure()
    for column, label in (("prompt_tokens", "prompt"), ("output_tokens", "output")):
        values = requests[column].to_numpy(dtype=float)
        edges = np.logspace(0, np.log10(max(values.max(), 2.0)) + 0.05, 50)
        counts, _ = np.histogram(values, bins=edges)
        fig.add_trace(
            go.Bar(
                x=np.sqrt(edges[:-1] * edges[1:]),
                y=counts,
                width=np.diff(edges),
                name=label,
                opacity=0.6,
                hovertemplate="~%{x:.0f} tokens: %{y} requests<extra>%{fullData.name}</extra>",
            )
        )
    fig.update_xaxes(type="log")
    return _layout(
        fig, "Prompt and output lengths", "length (tokens)", "requests", barmode="overlay"
    )


def length_scatter_figure(requests: pd.DataFrame, max_points: int = 5000) -> go.Figure:
    """Prompt vs output length per request (at most ``max_points``, evenly strided)."""
    step = max(1, len(requests) // max_points)
    sample = requests.iloc[::step]
    fig = go.Figure(
        go.Scattergl(
            x=sample["prompt_tokens"],
            y=sample["output_tokens"],
            mode="markers",
            marker={"size": 4, "opacity": 0.5},
            hovertemplate="prompt %{x} tokens, output %{y} tokens<extra></extra>",
        )
    )
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return _layout(fig, "Prompt vs output length", "prompt (tokens)", "output (tokens)")


def with_slo_lines(cdfs: go.Figure, slo_s: dict[str, float]) -> go.Figure:
    """A copy of :func:`sim.figures.latency_cdfs`' three panels (TTFT, TPOT, E2E) with a
    dashed vertical line at each p90 target (``slo_s`` maps ``ttft``/``tpot``/``e2e`` to
    seconds) and a dotted horizontal line at the 0.9 quantile."""
    fig = go.Figure(cdfs)
    for col, name in enumerate(("ttft", "tpot", "e2e"), start=1):
        target = slo_s.get(name)
        if target is not None:
            fig.add_vline(
                x=target,
                line_dash="dash",
                line_color="firebrick",
                annotation_text=f"SLO {target:g} s",
                row=1,
                col=col,
            )
        fig.add_hline(y=0.9, line_dash="dot", line_color="grey", row=1, col=col)
    return fig


def overlay_baseline(current: go.Figure, baseline: go.Figure) -> go.Figure:
    """``current`` with ``baseline``'s traces added (same axes), dashed and named
    ``baseline``; the current traces are named ``current``. Both figures must come from the
    same figure function, so their panels line up."""
    fig = go.Figure(current)
    fig.for_each_trace(lambda t: t.update(name="current", legendgroup="current", showlegend=False))
    for index, trace in enumerate(baseline.data):
        copy = go.Scatter(trace)
        copy.update(
            name="baseline",
            legendgroup="baseline",
            line={"dash": "dash", "color": "grey"},
            showlegend=index == 0,
        )
        fig.add_trace(copy)
    fig.data[0].showlegend = True
    fig.update_layout(showlegend=True)
    return fig


def with_host_tier(kv: go.Figure, host: pd.DataFrame) -> go.Figure:
    """:func:`sim.figures.kv_memory` with a second line for KV held in the host tier
    (``host`` columns ``time_s``, ``kv_bytes``; plotted in GiB like the device line)."""
    fig = go.Figure(kv)
    fig.data[0].name = "device (HBM)"
    fig.add_trace(
        go.Scatter(
            x=host["time_s"],
            y=host["kv_bytes"] / 2**30,
            mode="lines",
            line_shape="hv",
            name="host tier",
        )
    )
    fig.update_layout(showlegend=True)
    return fig


def _pareto_trace(frame: pd.DataFrame, x: str, y: str, name: str) -> go.Scatter:
    """The Pareto points of ``frame`` (column ``Pareto``) joined in order of ``x``."""
    front = frame[frame["Pareto"]].sort_values(x)
    return go.Scatter(
        x=front[x],
        y=front[y],
        mode="lines+markers",
        name=name,
        text=front["label"],
        marker={"size": 13, "symbol": "star", "color": "firebrick"},
        line={"color": "firebrick", "dash": "dot"},
        hovertemplate="%{text}<br>%{x:.4g}, %{y:.4g}<extra>%{fullData.name}</extra>",
    )


def plan_pareto_figure(ranked: pd.DataFrame, y: str, y_title: str) -> go.Figure:
    """Fleet cost (USD/h) against ``y`` for the planner's feasible plans (columns of
    :func:`app.planner_data.ranked_frame`), one marker colour per KV strategy; the planner's
    Pareto set (over cost, latency and quality) is starred and joined in order of cost."""
    frame = ranked.dropna(subset=["USD/h", y]).assign(
        label=lambda f: (
            f["accelerator"] + " tp=" + f["TP"].astype(str) + " × " + f["replicas"].astype(str)
        )
    )
    fig = go.Figure()
    for strategy, group in frame.groupby("KV strategy", sort=False):
        fig.add_trace(
            go.Scatter(
                x=group["USD/h"],
                y=group[y],
                mode="markers",
                name=str(strategy),
                text=group["label"],
                marker={"size": 9},
                hovertemplate="%{text}<br>$%{x:.4g}/h, %{y:.4g}<extra>%{fullData.name}</extra>",
            )
        )
    fig.add_trace(_pareto_trace(frame, "USD/h", y, "Pareto set"))
    return _layout(fig, f"Cost vs {y_title}", "fleet cost (USD/h)", y_title)


#: Panels of :func:`policy_bars_figure`: (column, panel title, scale to the axis unit).
POLICY_PANELS = (
    ("KV per request (MB)", "KV per request (MB)", 1.0),
    ("output tokens/s", "output throughput (tokens/s)", 1.0),
    ("TTFT p90 (s)", "TTFT p90 (ms)", 1e3),
    ("TPOT p90 (s)", "TPOT p90 (ms)", 1e3),
)


def policy_bars_figure(frame: pd.DataFrame) -> go.Figure:
    """One bar per strategy (column ``strategy``) in four panels: analytic KV bytes per
    request, simulated output throughput, TTFT p90 and TPOT p90 (:data:`POLICY_PANELS`)."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=[title for _, title, _ in POLICY_PANELS])
    for index, (column, title, scale) in enumerate(POLICY_PANELS):
        values = pd.to_numeric(frame[column], errors="coerce") * scale
        fig.add_trace(
            go.Bar(
                x=frame["strategy"],
                y=values,
                name=title,
                hovertemplate="%{x}: %{y:.4g}<extra>" + title + "</extra>",
            ),
            row=index // 2 + 1,
            col=index % 2 + 1,
        )
    fig.update_layout(showlegend=False, height=620)
    return _layout(fig, "KV strategies on one workload", "", "")


def policy_pareto_figure(frame: pd.DataFrame, x: str, x_title: str) -> go.Figure:
    """Quality retained (value / full-KV baseline, from the quality table) against ``x`` for
    the strategies whose quality is known (columns ``strategy``, ``quality retained``,
    ``Pareto`` and ``x``); the Pareto set is starred and joined in order of ``x``. Those of
    unknown quality cannot be placed and are named under the chart."""
    known = frame.dropna(subset=["quality retained", x]).assign(label=lambda f: f["strategy"])
    unknown = frame.loc[frame["quality retained"].isna(), "strategy"].tolist()
    fig = go.Figure(
        go.Scatter(
            x=known[x],
            y=known["quality retained"],
            mode="markers+text",
            text=known["label"],
            textposition="top center",
            marker={"size": 10},
            name="strategy",
            hovertemplate="%{text}<br>%{x:.4g}, retained %{y:.3f}<extra></extra>",
        )
    )
    fig.add_trace(_pareto_trace(known, x, "quality retained", "Pareto set"))
    if unknown:
        fig.add_annotation(
            text="quality unknown (not plotted): " + ", ".join(unknown),
            xref="paper",
            yref="paper",
            x=0,
            y=-0.28,
            showarrow=False,
            align="left",
        )
    return _layout(fig, f"Quality vs {x_title}", x_title, "quality retained (fraction of full KV)")
