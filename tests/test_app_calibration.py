"""Calibration page: its tables, and AppTest of the page — default render of the committed
H200 measurements, pricing on a probed profile, bad uploads shown as errors, and the
validation-report mode on a report built with :mod:`sim.calibration` (held-out steps with
measured times set by hand, end-to-end replays whose "real" run is the cost model of another
device)."""

from __future__ import annotations

import base64
import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import plotly.io
import pytest
from streamlit.testing.v1 import AppTest

from app import calibration_data
from app.navigation import APP_DIR
from hardware.catalog import get_accelerator, load_accelerator_file
from hardware.errors import KvsimError
from sim.calibration import (
    E2E_METRICS,
    HELD_OUT,
    QUICK_LIMITS,
    StepTiming,
    design_steps,
    held_out_scenarios,
    mape_by_kind,
    predict_s,
    published_errors,
    read_published,
    replay,
    split_points,
    step_errors,
)
from sim.run import build_executor, resolve
from workloads.model_catalog import get_model

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


# ---- validation report ---------------------------------------------------------------------
#: Measured = predicted × factor, so error = predicted / measured − 1 = 1 / factor − 1:
#: −20 % for prefill steps, +25 % for decode steps, 0 for mixed ones.
FACTORS = {"prefill": 1.25, "decode": 0.8, "mixed": 1.0}
WORKLOADS = (0, 2)  # held-out A (steady Poisson) and C (offline batch)


def _report() -> tuple[dict, list]:
    """A ``kvsim validate --json`` report as ``sim/cli/validate_cmd.py`` assembles it, from
    :func:`step_errors` and :func:`replay` (the "real" executor is the cost model on an A10G,
    the profile an L4), and the replays."""
    model, profile = get_model("smollm2-135m"), get_accelerator("l4")
    points = split_points(design_steps(QUICK_LIMITS), HELD_OUT)
    predicted = predict_s(model, profile, [p.batch_shape() for p in points])
    timings = []
    for point, seconds in zip(points, predicted, strict=True):
        measured = float(seconds) * FACTORS[point.kind]
        timings.append(StepTiming(point, measured, measured, measured, measured, measured, 1))
    steps = step_errors(timings, model, profile)
    replays = []
    for index in WORKLOADS:
        scenario = held_out_scenarios(model, profile)[index]
        slower = replace(resolve(scenario), accelerator=get_accelerator("a10g"))
        replays.append(replay(scenario, profile, real_executor=build_executor(scenario, slower)))
    report = {
        "profile": "l4",
        "held_out_steps": {
            "origin": "built by the test",
            "mape": mape_by_kind(steps),
            "rows": steps.to_dict(orient="records"),
        },
        "end_to_end": [
            {
                "name": item.name,
                "real_wall_s": item.wall_s,
                "steps_count": item.steps["kind"].value_counts().to_dict(),
                "steps_mape": mape_by_kind(item.steps),
                "metrics": item.metric_errors().to_dict(orient="records"),
            }
            for item in replays
        ],
    }
    return report, replays


@pytest.fixture(scope="module")
def report() -> tuple[bytes, list]:
    data, replays = _report()
    return json.dumps(data).encode(), replays


def _values(array) -> np.ndarray:
    """A figure's coordinates: plotly's JSON writes numpy arrays base64-encoded."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"])
    return np.asarray(array, dtype=float)


def _report_page(name: str, data: bytes) -> AppTest:
    at = _page()
    at.sidebar.radio(key="ca_mode").set_value("Validation report").run()
    at.sidebar.radio(key="ca_report_source").set_value("Upload a report").run()
    at.sidebar.file_uploader(key="ca_report_upload").set_value((name, data, "application/json"))
    return at.run()


def test_read_validation_and_its_tables(report):
    data, replays = report
    parsed = calibration_data.read_validation(data, "v.json")
    assert parsed.profile == "l4" and parsed.held_out_origin == "built by the test"
    held_out = calibration_data.steps_mape_table(parsed).set_index("steps")
    row = held_out.loc["held-out designed steps"]
    assert row["prefill"] == pytest.approx(0.2) and row["decode"] == pytest.approx(0.25)
    table = calibration_data.e2e_error_table(parsed).set_index("workload")
    assert list(table.columns) == [
        "TTFT p50",
        "TTFT p90",
        "TPOT p50",
        "TPOT p90",
        "E2E p50",
        "E2E p90",
        "throughput (tokens/s)",
        "throughput (requests/s)",
    ]
    for item in replays:
        # error = simulated / real − 1 of the two runs' summaries.
        for metric, column in zip(E2E_METRICS, table.columns, strict=True):
            expected = item.simulated.summary[metric] / item.real.summary[metric] - 1
            assert table.loc[item.name, column] == pytest.approx(expected)
        counted = held_out.loc[f"replayed steps: {item.name}", "steps counted"]
        assert counted == len(item.steps)


def test_report_mode_shows_steps_and_end_to_end_errors(report):
    data, replays = report
    at = _report_page("validation.json", data)
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["MAPE prefill"] == "20.0%" and metrics["MAPE decode"] == "25.0%"
    chart = plotly.io.from_json(at.get("plotly_chart")[0].proto.spec)
    assert chart.layout.title.text == "Held-out steps: predicted vs measured"
    points = [t for t in chart.data if t.name in FACTORS]  # one trace per step kind
    assert sum(len(_values(t.x)) for t in points) == len(
        split_points(design_steps(QUICK_LIMITS), HELD_OUT)
    )
    for trace in points:
        ratio = _values(trace.y) / _values(trace.x)
        assert ratio == pytest.approx(np.full(len(ratio), 1 / FACTORS[trace.name]))
    table = at.dataframe[1].value.set_index("workload")
    assert list(table.index) == [item.name for item in replays]
    first = replays[0]
    real, sim = first.real.summary["ttft_p90_s"], first.simulated.summary["ttft_p90_s"]
    assert table.loc[first.name, "TTFT p90"] == pytest.approx(sim / real - 1)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"held_out_steps": ', "bad.json:1: malformed JSON"),
        (b"[1, 2]", "bad.json: expected an object"),
        (b'{"profile": "x"}', "not a kvsim validate --json report"),
        (
            b'{"end_to_end": [{"name": "A", "metrics": [{"metric": "ttft_p50_s", '
            b'"real": "fast", "simulated": 1, "error": 0}]}]}',
            "bad.json: end_to_end[0].metrics[0].real: expected a number or null, got 'fast'",
        ),
        (
            b'{"held_out_steps": {"rows": [{"kind": "decode", "measured_ms": 1}]}}',
            "held_out_steps.rows[0].predicted_ms: missing key",
        ),
        (b'{"held_out_steps": {"rows": []}}', "held_out_steps.rows: expected at least one row"),
    ],
)
def test_bad_report_is_an_error_and_the_page_keeps_working(report, data, message):
    at = _report_page("bad.json", data)
    assert not at.exception
    assert len(at.error) == 1 and message in at.error[0].value
    with pytest.raises(KvsimError):
        calibration_data.read_validation(data, "bad.json")
    at.sidebar.file_uploader(key="ca_report_upload").set_value(
        ("good.json", report[0], "application/json")
    )
    at.run()
    assert not at.exception and not at.error
    assert len(at.dataframe) == 2 + len(WORKLOADS)  # MAPE, end to end, one per workload


def test_null_errors_are_nan():
    # kvsim validate writes NaN (an error over a real value of 0) as null.
    data = {
        "end_to_end": [
            {
                "name": "A",
                "metrics": [{"metric": "ttft_p50_s", "real": 0, "simulated": 1, "error": None}],
            }
        ]
    }
    parsed = calibration_data.read_validation(json.dumps(data), "v.json")
    table = calibration_data.e2e_error_table(parsed)
    assert math.isnan(table.loc[0, "TTFT p50"]) and math.isnan(table.loc[0, "E2E p90"])


COMMITTED_REPORTS = calibration_data.committed_reports(ROOT)


@pytest.mark.skipif(not COMMITTED_REPORTS, reason="no committed validation report")
def test_committed_report_renders():
    path = COMMITTED_REPORTS[0]
    at = _page()
    at.sidebar.radio(key="ca_mode").set_value("Validation report").run()
    assert not at.exception and not at.error
    names = [item["name"] for item in json.loads(path.read_text()).get("end_to_end", [])]
    if names:
        table = at.dataframe[1].value
        assert list(table["workload"]) == names
