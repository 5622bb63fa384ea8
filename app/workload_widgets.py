"""Workload widgets shared by the Traces and What-if pages: a trace picker (upload, or a file
on the server) and knobs for a ``[workload.synthetic]`` table.

Widget keys are ``prefix + name`` so a page can tie them to scenario keys (the What-if page
uses ``k:workload.synthetic.`` so they round-trip through the URL). Keys of the synthetic
table that have no knob here (other arrival processes or distributions, prefix structure)
are kept as they are and listed, so a scenario loaded from TOML is never silently changed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import streamlit as st

from app import trace_data
from app.uploads import save_upload
from workloads.traces import FORMATS

#: The synthetic table the dashboard starts from: the spec example of
#: ``workloads/synthetic/spec.py`` at Poisson arrivals (Splitwise-like chat lengths).
DEFAULT_SYNTHETIC: dict[str, Any] = {
    "arrival": "poisson",
    "rate_per_s": 4.0,
    "requests": 500,
    "prompt_tokens": {"dist": "lognormal", "median": 1000, "sigma": 0.8},
    "output_tokens": {"dist": "lognormal", "median": 150, "sigma": 0.8},
}
ARRIVALS_WITH_KNOBS = ("poisson", "gamma")
FORMAT_AUTO = "auto-detect"


def trace_upload(key: str) -> tuple[Path | None, str]:
    """A file uploader; the upload saved content-addressed (:mod:`app.uploads`)."""
    upload = st.file_uploader(
        "Trace file (Azure, BurstGPT, Mooncake, Splitwise, vidur or generic CSV/JSONL/parquet)",
        type=["csv", "jsonl", "json", "parquet"],
        key=key,
    )
    if upload is None:
        return None, ""
    return save_upload(upload.name, upload.getvalue()), upload.name


def server_trace(key: str, current: str = "") -> str:
    """A path on the server: picked from ``$KVSIM_TRACE_DIR`` when set, else typed."""
    files = trace_data.trace_files(os.environ.get(trace_data.TRACE_DIR_ENV))
    if files:
        labels = [str(p) for p in files]
        index = labels.index(current) if current in labels else 0
        return st.selectbox("Trace file on the server", labels, index=index, key=key)
    return st.text_input(
        "Trace file path on the server",
        value=current,
        key=key,
        help=f"Set {trace_data.TRACE_DIR_ENV} to pick from a folder instead.",
    ).strip()


def format_select(key: str, current: str | None) -> str | None:
    """The trace format; ``None`` for auto-detection."""
    options = [FORMAT_AUTO, *FORMATS]
    choice = st.selectbox(
        "Trace format",
        options,
        index=options.index(current) if current in options else 0,
        key=key,
    )
    return None if choice == FORMAT_AUTO else choice


def _tokens_knobs(prefix: str, name: str, label: str, value: Any) -> Any:
    if (
        isinstance(value, dict)
        and value.get("dist") == "lognormal"
        and set(value)
        == {
            "dist",
            "median",
            "sigma",
        }
    ):
        left, right = st.columns(2)
        median = left.number_input(
            f"{label} median (tokens)",
            min_value=1,
            value=int(value["median"]),
            step=50,
            key=f"{prefix}{name}.median",
        )
        sigma = right.number_input(
            f"{label} σ (log-normal)",
            min_value=0.01,
            value=float(value["sigma"]),
            step=0.1,
            key=f"{prefix}{name}.sigma",
        )
        return {"dist": "lognormal", "median": int(median), "sigma": float(sigma)}
    st.caption(f"{label} lengths: `{value}` (set in the scenario TOML)")
    return value


def synthetic_knobs(prefix: str, table: dict[str, Any]) -> dict[str, Any]:
    """Knobs for the arrival process, size and length distributions of ``table``; returns
    the table with the knobs' values applied."""
    out = dict(table)
    arrival = out.get("arrival", "poisson")
    if arrival in ARRIVALS_WITH_KNOBS and "rate_per_s" in out:
        arrival = st.selectbox(
            "Arrival process",
            ARRIVALS_WITH_KNOBS,
            index=ARRIVALS_WITH_KNOBS.index(arrival),
            key=f"{prefix}arrival",
            help="Poisson, or gamma inter-arrival times with coefficient of variation CV "
            "(CV > 1 is burstier than Poisson).",
        )
        out["arrival"] = arrival
        out["rate_per_s"] = float(
            st.number_input(
                "Arrival rate (requests/s)",
                min_value=0.0,
                value=float(out["rate_per_s"]),
                step=0.5,
                key=f"{prefix}rate_per_s",
            )
        )
        if arrival == "gamma":
            out["cv"] = float(
                st.number_input(
                    "Inter-arrival CV",
                    min_value=0.01,
                    value=float(out.get("cv", 2.0)),
                    step=0.5,
                    key=f"{prefix}cv",
                )
            )
        else:
            out.pop("cv", None)
    else:
        st.caption(f"Arrival process `{arrival}` (set in the scenario TOML)")
    if "requests" in out or "duration_s" not in out:
        out["requests"] = int(
            st.number_input(
                "Requests",
                min_value=1,
                value=int(out.get("requests", DEFAULT_SYNTHETIC["requests"])),
                step=100,
                key=f"{prefix}requests",
            )
        )
    for name, label in (("prompt_tokens", "Prompt"), ("output_tokens", "Output")):
        if name in out:
            out[name] = _tokens_knobs(prefix, name, label, out[name])
    extra = {k: v for k, v in out.items() if k not in DEFAULT_SYNTHETIC and k != "cv"}
    if extra:
        st.caption(f"Other synthetic keys (from the scenario TOML): `{extra}`")
    return out
