"""The HTML report of a run: the summary table and the figures of :mod:`sim.figures`.

One self-contained file (plotly.js embedded once, so it opens offline), written to a
temporary name and renamed, so a reader never sees half a report.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

from sim import figures

if TYPE_CHECKING:
    from sim.run import RunResult


def _format(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def summary_table(summary: dict) -> str:
    rows = "\n".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_format(v))}</td></tr>"
        for k, v in summary.items()
    )
    return f'<table class="summary">\n{rows}\n</table>'


def render(result: RunResult) -> str:
    """The report's HTML text."""
    ctx = result.context
    capacity = ctx.kv_bytes_per_block * ctx.kv_blocks_per_replica * ctx.replicas
    figs = [
        figures.latency_cdfs(result.requests),
        figures.kv_memory(result.steps, ctx.kv_bytes_per_block, capacity),
        figures.batch_size(result.steps),
        figures.step_time_breakdown(result.steps),
    ]
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figs)]
    scenario = result.scenario
    title = html.escape(f"kvsim run: {scenario.name}")
    source = html.escape(scenario.source or "built in Python")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{title}</title>"
        "<style>body{font-family:sans-serif;margin:2em}"
        "table.summary{border-collapse:collapse}"
        "table.summary th,table.summary td{border:1px solid #ccc;padding:2px 8px;"
        "text-align:left}</style></head><body>"
        f"<h1>{title}</h1><p>Scenario: {source}</p>"
        f"<h2>Summary</h2>{summary_table(result.summary)}"
        f"<h2>Figures</h2>{''.join(parts)}</body></html>\n"
    )


def write_report(result: RunResult, path: str | Path) -> Path:
    """Write the report to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render(result), encoding="utf-8")
    tmp.replace(path)
    return path
