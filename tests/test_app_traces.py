"""AppTest of the Traces page: default render, synthetic knobs, uploads good and bad."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from app.navigation import APP_DIR

PAGE = str(APP_DIR / "pages" / "traces_page.py")
# Five requests at 0, 1, 2, 3, 8 s: rate 5 / 8 s; prompts 100..500, outputs 10..50.
GENERIC = (
    b"arrival_s,prompt_tokens,output_tokens\n0,100,10\n1,200,20\n2,300,30\n3,400,40\n8,500,50\n"
)


@pytest.fixture
def page() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=60).run()


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_default_render_asks_for_a_trace(page):
    assert not page.exception and not page.error
    assert "Upload a trace file" in page.info[0].value


def test_synthetic_knobs(page):
    page.sidebar.radio(key="tr_source").set_value("Synthetic").run()
    page.sidebar.number_input(key="tr:requests").set_value(300).run()
    page.sidebar.number_input(key="tr:rate_per_s").set_value(20.0).run()
    assert not page.exception and not page.error
    metrics = _metrics(page)
    assert metrics["requests"] == "300"
    # 300 Poisson arrivals at 20/s: the measured rate is within ~4 sigma (sqrt(300)/300 = 6%).
    rate = float(metrics["mean rate"].split()[0])
    assert 20 * 0.75 < rate < 20 * 1.25
    assert len(page.get("plotly_chart")) == 3


def test_uploaded_generic_trace_statistics(page):
    page.sidebar.file_uploader(key="tr_upload").set_value(("mine.csv", GENERIC, "text/csv")).run()
    assert not page.exception and not page.error
    metrics = _metrics(page)
    assert metrics["requests"] == "5"
    assert metrics["duration"] == "8.0 s"
    assert metrics["mean rate"] == "0.625 req/s"
    tokens = page.dataframe[0].value.set_index("length (tokens)")
    assert tokens.loc["prompt", "p50"] == 300.0 and tokens.loc["output", "max"] == 50.0


def test_time_scale_stretches_the_trace(page):
    page.sidebar.file_uploader(key="tr_upload").set_value(("mine.csv", GENERIC, "text/csv")).run()
    page.sidebar.number_input(key="tr_time_scale").set_value(2.0).run()
    assert _metrics(page)["duration"] == "16.0 s"


def test_malformed_trace_is_an_error_and_the_page_keeps_working(page):
    bad = b"arrival_s,prompt_tokens,output_tokens\n0,100,10\n1,lots,20\n"
    page.sidebar.file_uploader(key="tr_upload").set_value(("broken.csv", bad, "text/csv")).run()
    assert not page.exception
    assert len(page.error) == 1
    message = page.error[0].value
    assert message.startswith("broken.csv:3: prompt_tokens")
    page.sidebar.file_uploader(key="tr_upload").set_value(("mine.csv", GENERIC, "text/csv")).run()
    assert not page.error and _metrics(page)["requests"] == "5"


def test_unknown_format_is_an_error(page):
    page.sidebar.file_uploader(key="tr_upload").set_value(
        ("odd.csv", b"when,in,out\n0,1,2\n", "text/csv")
    ).run()
    assert not page.exception
    assert "cannot detect the trace format" in page.error[0].value


def test_shared_azure_trace(page, traces_dir):
    path = traces_dir / "azure2023" / "AzureLLMInferenceTrace_code.csv"
    page.sidebar.radio(key="tr_source").set_value("File on the server").run()
    page.sidebar.text_input(key="tr_path").input(str(path)).run()
    assert not page.exception and not page.error
    # 8,819 requests over ~57 minutes (shared/data/README.md).
    assert _metrics(page)["requests"] == "8,819"
