"""Calibration: measured step latencies (a published-measurement CSV) against the cost
model's prediction, priced on the catalog hardware or on a probed or calibrated hardware
profile; predicted-vs-measured scatter and the error tables (``kvsim validate --published``)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import calibration_data, ui
from app.navigation import APP_DIR
from app.uploads import read_as_upload, save_upload
from hardware.catalog import load_accelerator_file
from hardware.specs import Accelerator
from sim.calibration import published_errors, read_published
from sim.calibration.report import scatter

REPO_ROOT = APP_DIR.parent
SOURCES = ("Committed measurements", "Upload a CSV")
CATALOG = "each row's catalog hardware"
UPLOAD = "upload a profile TOML"


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def _measurements() -> tuple[Path, str] | None:
    """The CSV to read and the name errors should give it."""
    committed = calibration_data.committed_files(REPO_ROOT)
    sources = SOURCES if committed else SOURCES[1:]
    source = st.radio("Measurements", sources, key="ca_source")
    if source == SOURCES[0]:
        labels = [_relative(p) for p in committed]
        picked = st.selectbox("File", labels, key="ca_file")
        return REPO_ROOT / picked, picked
    upload = st.file_uploader(
        "Published-measurement CSV (model, hardware, tp, batch, prompt, context, prefill_ms, "
        "decode_ms[, dtype])",
        type=["csv"],
        key="ca_upload",
    )
    if upload is None:
        return None
    return save_upload(upload.name, upload.getvalue()), upload.name


def _profile() -> Accelerator | None:
    """The hardware profile to price every row on; None for each row's catalog entry."""
    profiles = {_relative(p): p for p in calibration_data.committed_profiles(REPO_ROOT)}
    choice = st.selectbox("Price on", [CATALOG, *profiles, UPLOAD], key="ca_profile")
    if choice == CATALOG:
        return None
    if choice == UPLOAD:
        upload = st.file_uploader("Hardware profile TOML", type=["toml"], key="ca_profile_upload")
        if upload is None:
            return None
        path = save_upload(upload.name, upload.getvalue())
        return read_as_upload(path, upload.name, load_accelerator_file)
    return load_accelerator_file(profiles[choice])


st.title("Calibration")
st.caption(
    "Each measured step priced by the cost model: error = predicted / measured − 1; MAPE = "
    "mean |error| per step kind (docs/calibration.md). The committed H200 file times "
    "kvsim's own torch model, so its error includes that stack's overheads."
)

errors = None
with st.sidebar, ui.user_errors():
    picked = _measurements()
    profile = _profile()
    if picked is not None:
        path, name = picked
        rows = read_as_upload(path, name, read_published)
        errors = published_errors(rows, accelerator=profile, source=name)

if errors is None:
    st.info("Upload a published-measurement CSV in the sidebar.", icon=":material/info:")
else:
    mape = calibration_data.mape_table(errors)
    cells = st.columns(len(mape))
    for cell, row in zip(cells, mape.itertuples(index=False), strict=True):
        cell.metric(f"MAPE {row.kind}", f"{row.MAPE:.1%}", help=f"{row.measurements} steps")
    figure = scatter(errors, "Predicted vs measured step time", color="model")
    figure.update_layout(width=None)
    st.plotly_chart(figure, width="stretch", key="ca_scatter")
    st.dataframe(
        calibration_data.error_table(errors),
        hide_index=True,
        width="stretch",
        column_config={
            calibration_data.COLUMNS["error"]: st.column_config.NumberColumn(format="percent")
        },
    )
    st.dataframe(
        mape,
        hide_index=True,
        column_config={"MAPE": st.column_config.NumberColumn(format="percent")},
    )
    st.download_button(
        "Errors CSV",
        errors.to_csv(index=False),
        file_name="calibration_errors.csv",
        mime="text/csv",
        on_click="ignore",
        icon=":material/download:",
        key="ca_dl_csv",
    )
