"""Traces: upload, pick or generate a workload; its statistics and arrival/length plots."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import figures, trace_data, ui, workload_widgets
from app.uploads import read_as_upload
from workloads.stats import trace_stats
from workloads.synthetic import generate_workload
from workloads.traces import read_trace
from workloads.workload import Workload

SOURCES = ("Upload a file", "File on the server", "Synthetic")

st.title("Traces")
st.caption(
    "Statistics as defined in `workloads/stats.py`: rate = requests / span of arrivals; "
    "inter-arrival CV and index of dispersion are 1 for a Poisson process."
)


@st.cache_data(show_spinner="Reading the trace…", max_entries=8)
def _read(path: str, name: str, format: str | None, time_scale: float) -> Workload:
    return read_as_upload(Path(path), name, lambda p: read_trace(p, format, time_scale=time_scale))


@st.cache_data(show_spinner="Generating…", max_entries=8)
def _generate(table: dict, seed: int) -> Workload:
    return generate_workload(table, seed)


def _workload() -> Workload | None:
    source = st.sidebar.radio("Workload", SOURCES, key="tr_source")
    with st.sidebar:
        if source == "Synthetic":
            table = workload_widgets.synthetic_knobs("tr:", workload_widgets.DEFAULT_SYNTHETIC)
            seed = int(st.number_input("Seed", min_value=0, value=0, key="tr_seed"))
            return _generate(table, seed)
        if source == "Upload a file":
            path, name = workload_widgets.trace_upload("tr_upload")
        else:
            typed = workload_widgets.server_trace("tr_path")
            path, name = (Path(typed), typed) if typed else (None, "")
        fmt = workload_widgets.format_select("tr_format", None)
        time_scale = st.number_input(
            "Time scale (× inter-arrival gaps)",
            min_value=0.01,
            value=1.0,
            step=0.1,
            key="tr_time_scale",
            help="0.5 replays the trace at twice the load.",
        )
    if path is None:
        st.info("Upload a trace file or name one on the server to see its statistics.")
        return None
    return _read(str(path), name, fmt, float(time_scale))


workload = None
with ui.user_errors():
    workload = _workload()

if workload is not None and len(workload) == 0:
    st.warning("The workload has no requests.")
elif workload is not None:
    stats = trace_stats(workload)
    for column, (label, value) in zip(
        st.columns(5), trace_data.headline(stats).items(), strict=True
    ):
        column.metric(label, value)
    requests = trace_data.request_frame(workload)
    window = trace_data.arrival_window_s(stats["duration_s"])
    st.plotly_chart(figures.arrivals_figure(requests["arrival_s"], window), width="stretch")
    left, right = st.columns(2)
    left.plotly_chart(figures.length_histogram_figure(requests), width="stretch")
    right.plotly_chart(figures.length_scatter_figure(requests), width="stretch")
    left, right = st.columns(2)
    left.subheader("Lengths")
    left.dataframe(trace_data.token_table(stats), hide_index=True, width="stretch")
    right.subheader("Burstiness")
    right.dataframe(trace_data.burstiness_table(stats), hide_index=True, width="stretch")
    with st.expander("All statistics (JSON)"):
        st.json(stats)
