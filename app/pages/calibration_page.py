"""Calibration, two modes. Measurements: measured step latencies (a published-measurement
CSV) against the cost model's prediction, priced on the catalog hardware or on a probed or
calibrated hardware profile; predicted-vs-measured scatter and the error tables (``kvsim
validate --published``). Validation report: the JSON ``kvsim validate --json`` writes, with its
held-out steps predicted vs measured and the end-to-end error table of its replays."""

from __future__ import annotations

import math
from pathlib import Path

import streamlit as st

from app import calibration_data, ui
from app.calibration_data import ValidationReport
from app.navigation import APP_DIR
from app.uploads import read_as_upload, save_upload
from hardware.catalog import load_accelerator_file
from hardware.specs import Accelerator
from sim.calibration import published_errors, read_published
from sim.calibration.report import scatter

REPO_ROOT = APP_DIR.parent
MODES = ("Measurements CSV", "Validation report")
SOURCES = ("Committed measurements", "Upload a CSV")
REPORT_SOURCES = ("Committed report", "Upload a report")
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


def _report() -> ValidationReport | None:
    """The validation report picked in the sidebar (committed or uploaded)."""
    committed = calibration_data.committed_reports(REPO_ROOT)
    sources = REPORT_SOURCES if committed else REPORT_SOURCES[1:]
    source = st.radio("Report", sources, key="ca_report_source")
    if source == REPORT_SOURCES[0]:
        picked = st.selectbox("File", [_relative(p) for p in committed], key="ca_report_file")
        return calibration_data.read_validation((REPO_ROOT / picked).read_bytes(), picked)
    upload = st.file_uploader(
        "Validation report (`kvsim validate --json > validation.json`)",
        type=["json"],
        key="ca_report_upload",
    )
    if upload is None:
        return None
    return calibration_data.read_validation(upload.getvalue(), upload.name)


def _steps_figure(frame, title: str, color: str):
    figure = scatter(frame, title, color=color)
    figure.update_layout(width=None)
    return figure


def _show_report(report: ValidationReport) -> None:
    percent = st.column_config.NumberColumn(format="percent")
    st.caption(
        f"`{report.source}`"
        + (f": profile `{report.profile}`" if report.profile else "")
        + (f"; held-out steps {report.held_out_origin}" if report.held_out_origin else "")
    )
    mape = calibration_data.steps_mape_table(report)
    if report.held_out is not None:
        st.subheader("Held-out designed steps")
        cells = st.columns(4)
        counts = report.held_out["kind"].value_counts()
        for cell, kind in zip(cells, (*calibration_data.KINDS, "all"), strict=True):
            value = mape.iloc[0][kind]
            steps = len(report.held_out) if kind == "all" else int(counts.get(kind, 0))
            shown = "–" if math.isnan(value) else f"{value:.1%}"
            cell.metric(f"MAPE {kind}", shown, help=f"{steps} steps")
        st.plotly_chart(
            _steps_figure(report.held_out, "Held-out steps: predicted vs measured", "kind"),
            width="stretch",
            key="ca_report_scatter",
        )
    if report.published is not None:
        st.subheader("Published measurements")
        st.plotly_chart(
            _steps_figure(report.published, "Published steps: predicted vs measured", "model"),
            width="stretch",
            key="ca_report_published",
        )
    st.subheader("MAPE per step kind")
    st.dataframe(
        mape,
        hide_index=True,
        width="stretch",
        column_config={k: percent for k in (*calibration_data.KINDS, "all")},
    )
    if report.end_to_end:
        st.subheader("End to end: simulated / real − 1")
        table = calibration_data.e2e_error_table(report)
        st.dataframe(
            table,
            hide_index=True,
            width="stretch",
            column_config={c: percent for c in table.columns if c != "workload"},
        )
        for index, replayed in enumerate(report.end_to_end):
            with st.expander(replayed.name):
                detail = calibration_data.e2e_detail(replayed)
                st.dataframe(
                    detail,
                    hide_index=True,
                    width="stretch",
                    key=f"ca_e2e_{index}",
                    column_config={c: percent for c in detail.columns if c.endswith("error")},
                )


def _show_errors(errors) -> None:
    mape = calibration_data.mape_table(errors)
    cells = st.columns(len(mape))
    for cell, row in zip(cells, mape.itertuples(index=False), strict=True):
        cell.metric(f"MAPE {row.kind}", f"{row.MAPE:.1%}", help=f"{row.measurements} steps")
    st.plotly_chart(
        _steps_figure(errors, "Predicted vs measured step time", "model"),
        width="stretch",
        key="ca_scatter",
    )
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


st.title("Calibration")
st.caption(
    "Each measured step priced by the cost model: error = predicted / measured − 1; MAPE = "
    "mean |error| per step kind (docs/calibration.md). The committed H200 file times "
    "kvsim's own torch model, so its error includes that stack's overheads. A validation "
    "report (`kvsim validate --json`) adds the end-to-end errors of replayed workloads: "
    "simulated / real − 1 for TTFT, TPOT, E2E and throughput."
)

mode = st.sidebar.radio("Show", MODES, key="ca_mode", horizontal=True)
if mode == MODES[0]:
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
        _show_errors(errors)
else:
    report = None
    with st.sidebar, ui.user_errors():
        report = _report()
    if report is None:
        st.info("Pick or upload a validation report in the sidebar.", icon=":material/info:")
    else:
        _show_report(report)
