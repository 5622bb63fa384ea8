"""Calibration page: its tables, and AppTest of the page — default render of the committed
H200 measurements, pricing on a probed profile, and bad uploads shown as errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.io
import pytest
from streamlit.testing.v1 import AppTest

from app import calibration_data
from app.navigation import APP_DIR
from hardware.catalog import load_accelerator_file
from sim.calibration import published_errors, read_published

PAGE = str(APP_DIR / "pages" / "calibration_page.py")
ROOT = APP_DIR.parent
H200_STEPS = ROOT / "calibration" / "h200-sxm" / "steps.csv"
H200_PROFILE = ROOT / "calibration" / "h200-sxm" / "h200-sxm-probed.toml"
HEADER = "model,hardware,tp,batch,prompt,context,prefill_ms,decode_ms\n"
GOOD = HEADER + "llama-3.1-8b,h100-sxm,1,1,512,0,40.0,\nllama-3.1-8b,h100-sxm,1,8,0,2048,,9.5\n"

needs_h200 = pytest.mark.skipif(not H200_STEPS.is_file(), reason="no committed measurements")


def test_mape_table_by_hand():
    errors = pd.DataFrame({"kind": ["prefill", "prefill", "decode"], "error": [-0.1, 0.2, 0.3]})
    table = calibration_data.mape_table(errors).set_index("kind")
    assert table.loc["prefill", "MAPE"] == pytest.approx(0.15)  # (0.1 + 0.2) / 2
    assert table.loc["decode", "MAPE"] == pytest.approx(0.3)
    assert table.loc["all", "MAPE"] == pytest.approx(0.2)  # (0.1 + 0.2 + 0.3) / 3
    assert list(table["measurements"]) == [2, 1, 3]


@needs_h200
def test_committed_files_are_the_published_layout_only():
    assert H200_STEPS in calibration_data.committed_files(ROOT)
    assert H200_PROFILE in calibration_data.committed_profiles(ROOT)
    assert calibration_data.committed_files(ROOT / "nowhere") == []


def _page() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=120).run()


def _table(at: AppTest) -> pd.DataFrame:
    return at.dataframe[0].value.rename(columns={v: k for k, v in calibration_data.COLUMNS.items()})


@needs_h200
def test_default_render_compares_the_committed_h200_steps():
    at = _page()
    assert not at.exception and not at.error
    table = _table(at)
    raw = pd.read_csv(H200_STEPS)
    # Every row measures a prefill or a decode step: one measurement each.
    assert len(table) == int(raw["prefill_ms"].notna().sum() + raw["decode_ms"].notna().sum())
    measured = np.where(raw["prefill_ms"].notna(), raw["prefill_ms"], raw["decode_ms"])
    assert list(table.sort_values("line")["measured_ms"]) == pytest.approx(list(measured))
    assert list(table["error"]) == pytest.approx(
        list(table["predicted_ms"] / table["measured_ms"] - 1)
    )
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["MAPE all"] == f"{np.mean(np.abs(table['error'])):.1%}"
    chart = plotly.io.from_json(at.get("plotly_chart")[0].proto.spec)
    assert chart.layout.xaxis.type == "log" and chart.layout.yaxis.title.text == "predicted (ms)"
    assert {t.name for t in chart.data} >= {"y = x", "smollm2-135m", "llama-3.1-8b"}


@needs_h200
def test_pricing_on_the_probed_profile():
    at = _page()
    at.sidebar.selectbox(key="ca_profile").set_value(str(H200_PROFILE.relative_to(ROOT))).run()
    assert not at.exception and not at.error
    table = _table(at)
    assert set(table["hardware"]) == {"h200-sxm-probed"}
    expected = published_errors(
        read_published(H200_STEPS), accelerator=load_accelerator_file(H200_PROFILE)
    )
    assert list(table["predicted_ms"]) == pytest.approx(list(expected["predicted_ms"]))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEADER + "llama-3.1-8b,h100-sxm,two,1,512,0,40.0,\n", "bad.csv:2: tp: expected a whole"),
        ("model,hardware,tp\nllama-3.1-8b,h100-sxm,1\n", "bad.csv:1: batch: missing column"),
        (HEADER + "llama-9,h100-sxm,1,1,512,0,40.0,\n", "bad.csv:2: model"),
        (HEADER + "llama-3.1-8b,h100-sxm,1,1,512,0,,\n", "needs prefill_ms, decode_ms or both"),
    ],
)
def test_bad_uploads_are_errors_and_the_page_keeps_working(text, message):
    at = _page()
    at.sidebar.radio(key="ca_source").set_value("Upload a CSV").run()
    at.sidebar.file_uploader(key="ca_upload").set_value(("bad.csv", text.encode(), "text/csv"))
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and message in at.error[0].value
    at.sidebar.file_uploader(key="ca_upload").set_value(("good.csv", GOOD.encode(), "text/csv"))
    at.run()
    assert not at.exception and not at.error
    assert list(_table(at)["kind"]) == ["prefill", "decode"]


def test_bad_profile_is_an_error():
    at = _page()
    at.sidebar.radio(key="ca_source").set_value("Upload a CSV").run()
    at.sidebar.file_uploader(key="ca_upload").set_value(("good.csv", GOOD.encode(), "text/csv"))
    at.sidebar.selectbox(key="ca_profile").set_value("upload a profile TOML").run()
    at.sidebar.file_uploader(key="ca_profile_upload").set_value(
        ("gpu.toml", b"id = 'x'\nmemory_bytes = 'lots'\n", "application/toml")
    ).run()
    assert not at.exception
    assert len(at.error) == 1 and at.error[0].value.startswith("gpu.toml")
