"""The validation report: predicted-vs-measured scatter plots and error tables in one HTML file.

Self-contained like the run report (:mod:`sim.report`): plotly.js is embedded once so the
file opens offline, and it is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from sim.calibration.published import mape_by_kind

_SYMBOLS = {"prefill": "circle", "decode": "diamond", "mixed": "x"}


def scatter(frame: pd.DataFrame, title: str, color: str = "split") -> go.Figure:
    """Predicted against measured milliseconds on log axes, one trace per ``color`` value,
    marker shape by ``kind``, with the y = x line and ±10 % band; hover shows each step."""
    fig = go.Figure()
    values = np.concatenate([frame["measured_ms"], frame["predicted_ms"]])
    values = values[np.isfinite(values) & (values > 0)]
    low, high = (values.min() / 1.5, values.max() * 1.5) if values.size else (0.1, 10.0)
    line = np.array([low, high])
    fig.add_trace(go.Scatter(x=line, y=line, mode="lines", name="y = x", line={"color": "grey"}))
    for factor, name in ((1.1, "+10 %"), (0.9, "−10 %")):
        fig.add_trace(
            go.Scatter(
                x=line,
                y=line * factor,
                mode="lines",
                name=name,
                line={"color": "lightgrey", "dash": "dot"},
            )
        )
    for group, part in frame.groupby(color, sort=True):
        labels = part["label"] if "label" in part else part["kind"]
        fig.add_trace(
            go.Scatter(
                x=part["measured_ms"],
                y=part["predicted_ms"],
                mode="markers",
                name=str(group),
                marker={"symbol": [_SYMBOLS.get(k, "circle") for k in part["kind"]], "size": 8},
                text=[
                    f"{label}<br>error {error:+.1%}"
                    for label, error in zip(labels, part["error"], strict=True)
                ],
                hovertemplate="%{text}<br>measured %{x:.3g} ms<br>predicted %{y:.3g} ms",
            )
        )
    fig.update_layout(
        title=title,
        xaxis={"title": "measured (ms)", "type": "log"},
        yaxis={"title": "predicted (ms)", "type": "log"},
        height=480,
        width=640,
    )
    return fig


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.4g}"
    return html.escape(str(value))


def table(frame: pd.DataFrame, percent: Sequence[str] = ("error",)) -> str:
    """An HTML table of ``frame``; columns named in ``percent`` shown as signed percentages."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for record in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, record, strict=True):
            if column in percent and isinstance(value, float) and math.isfinite(value):
                cells.append(f"<td>{value:+.1%}</td>")
            else:
                cells.append(f"<td>{_cell(value)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def mape_table(frames: Mapping[str, pd.DataFrame]) -> str:
    """MAPE per kind (columns) for each named frame (rows)."""
    kinds = ("prefill", "decode", "mixed", "all")
    rows = []
    for name, frame in frames.items():
        mape = mape_by_kind(frame)
        counts = frame["kind"].value_counts().to_dict()
        counts["all"] = len(frame)
        cells = "".join(
            f"<td>{mape[k]:.1%} (n={counts.get(k, 0)})</td>" if k in mape else "<td>–</td>"
            for k in kinds
        )
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    head = "".join(f"<th>{k}</th>" for k in kinds)
    return f"<table><tr><th>steps</th>{head}</tr>{''.join(rows)}</table>"


def render(
    title: str,
    sections: Sequence[tuple[str, str]],
    figures: Sequence[go.Figure],
) -> str:
    """The report's HTML: ``sections`` as (heading, HTML body) pairs, then the figures."""
    parts = [
        fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)
    ]
    body = "".join(f"<h2>{html.escape(heading)}</h2>{content}" for heading, content in sections)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
        "margin-bottom:1em}th,td{border:1px solid #ccc;padding:2px 8px;text-align:left}"
        "</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}<h2>Figures</h2>{''.join(parts)}</body></html>\n"
    )


def write_html(text: str, path: str | Path) -> Path:
    """Write ``text`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
