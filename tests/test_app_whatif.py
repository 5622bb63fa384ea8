"""AppTest of the What-if page: default render, a run with changed knobs (its numbers equal
the engine's for the same scenario), URL state, scenario TOML, baseline, bad inputs."""

from __future__ import annotations

import copy

import plotly.io
import pytest
from streamlit.testing.v1 import AppTest

from app import run_data, state
from app.navigation import APP_DIR
from sim.run import run_scenario
from sim.scenario import Scenario

PAGE = str(APP_DIR / "pages" / "whatif_page.py")
pytestmark = pytest.mark.skipif(
    not (APP_DIR / "pages" / "whatif_page.py").is_file(), reason="What-if page not built"
)


def _page(**params: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def _small(at: AppTest, requests: int = 200) -> None:
    at.sidebar.number_input(key="k:workload.synthetic.requests").set_value(requests).run()


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _expected(data: dict) -> dict:
    return run_scenario(Scenario.from_dict(data)).summary


def test_default_render():
    at = _page()
    assert not at.exception and not at.error
    assert "press Run" in at.info[0].value
    assert "KV pool" in at.caption[0].value
    assert dict(at.query_params) == {}


def test_run_with_changed_knobs_matches_the_engine():
    at = _page()
    _small(at)
    at.sidebar.selectbox(key="k:hardware.tp").set_value(2).run()
    at.sidebar.selectbox(key="k:policies.quantization.name").set_value("fp8").run()
    at.button(key="wi_run").click().run()
    assert not at.exception and not at.error
    data = copy.deepcopy(state.DEFAULT_SCENARIO)
    data["workload"]["synthetic"]["requests"] = 200
    data["hardware"]["tp"] = 2
    data["policies"]["quantization"]["name"] = "fp8"
    assert at.session_state["wi_scenario"] == data
    summary = _expected(data)
    metrics = _metrics(at)
    assert metrics["TTFT p90"] == run_data.format_seconds(summary["ttft_p90_s"])
    assert metrics["TPOT p90"] == run_data.format_seconds(summary["tpot_p90_s"])
    assert metrics["E2E p90"] == run_data.format_seconds(summary["e2e_p90_s"])
    titles = [plotly.io.from_json(c.proto.spec).layout.title.text for c in at.get("plotly_chart")]
    assert titles == ["Latency CDFs", "KV memory over time", "Batch size over time"]
    # The URL now carries exactly the three changed knobs.
    assert dict(at.query_params) == {
        "hardware.tp": "2",
        "policies.quantization.name": "fp8",
        "workload.synthetic.requests": "200",
    }
    assert len(at.get("download_button")) == 5  # scenario TOML + four result files


def test_url_state_sets_the_knobs():
    at = _page(**{"hardware.accelerator": "h200-sxm", "workload.synthetic.requests": "150"})
    assert not at.exception and not at.error
    assert at.sidebar.selectbox(key="k:hardware.accelerator").value == "h200-sxm"
    assert at.sidebar.number_input(key="k:workload.synthetic.requests").value == 150


def test_bad_url_is_reported_and_defaults_are_used():
    at = _page(**{"hardware.tpp": "2"})
    assert not at.exception
    assert "Link ignored" in at.error[0].value and "did you mean tp" in at.error[0].value
    assert at.session_state["wi_scenario"] == state.DEFAULT_SCENARIO


def test_model_that_does_not_fit_is_an_error_and_the_page_recovers():
    at = _page()
    _small(at)
    at.sidebar.selectbox(key="k:model.name").set_value("llama-3.1-405b").run()
    at.sidebar.selectbox(key="k:hardware.accelerator").set_value("l4").run()
    assert not at.exception
    message = at.error[0].value
    assert len(at.error) == 1 and "llama-3.1-405b" in message and "l4" in message
    assert "does not fit" in message
    assert at.button(key="wi_run").disabled
    at.sidebar.selectbox(key="k:model.name").set_value("smollm2-135m").run()
    at.button(key="wi_run").click().run()
    assert not at.exception and not at.error
    assert "TTFT p90" in _metrics(at)


def test_zero_slo_is_an_error():
    at = _page()
    at.sidebar.number_input(key="k:slo.ttft_p90_s").set_value(0.0).run()
    assert not at.exception
    assert "slo.ttft_p90_s: must be > 0" in at.error[0].value
    at.sidebar.number_input(key="k:slo.ttft_p90_s").set_value(None).run()
    assert not at.error
    assert "slo.ttft_p90_s" not in state.flatten(at.session_state["wi_scenario"])


def test_impossible_slo_is_reported_after_the_run():
    at = _page()
    _small(at, 100)
    at.sidebar.number_input(key="k:slo.ttft_p90_s").set_value(0.0001).run()
    at.button(key="wi_run").click().run()
    assert not at.exception
    assert any("Impossible SLO" in e.value for e in at.error)
    assert _metrics(at)["Goodput (requests/s)"] == "0"


def test_malformed_uploaded_trace_is_an_error_and_the_page_keeps_working():
    at = _page()
    at.sidebar.radio(key="wi_source").set_value("Trace file").run()
    bad = b"arrival_s,prompt_tokens,output_tokens\n0,100,10\n1,lots,10\n"
    at.sidebar.file_uploader(key="wi_trace_upload").set_value(("bad.csv", bad, "text/csv")).run()
    at.button(key="wi_run").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "bad.csv:3" in at.error[0].value
    good = b"arrival_s,prompt_tokens,output_tokens\n0,100,10\n0.5,200,20\n1,300,5\n"
    at.sidebar.file_uploader(key="wi_trace_upload").set_value(("good.csv", good, "text/csv")).run()
    at.button(key="wi_run").click().run()
    assert not at.exception and not at.error
    assert at.session_state["wi_result"].summary["requests_completed"] == 3


def test_scenario_toml_upload_and_malformed_toml():
    at = _page()
    data = copy.deepcopy(state.DEFAULT_SCENARIO)
    data["hardware"]["replicas"] = 3
    data["scheduler"]["max_num_seqs"] = 64
    upload = at.sidebar.file_uploader(key="wi_toml_upload")
    upload.set_value(("s.toml", state.scenario_toml(data).encode(), "application/toml")).run()
    assert not at.exception and not at.error
    assert at.sidebar.number_input(key="k:hardware.replicas").value == 3
    assert at.sidebar.number_input(key="k:scheduler.max_num_seqs").value == 64
    assert at.session_state["wi_scenario"] == data
    at.sidebar.file_uploader(key="wi_toml_upload").set_value(
        ("broken.toml", b"[hardware\ntp = 2\n", "application/toml")
    ).run()
    assert not at.exception
    assert at.error[0].value.startswith("broken.toml:1: malformed TOML")
    assert at.session_state["wi_scenario"] == data


def test_pinned_baseline_is_compared_side_by_side():
    at = _page()
    _small(at, 150)
    at.button(key="wi_run").click().run()
    at.button(key="wi_pin").click().run()
    at.sidebar.number_input(key="k:workload.synthetic.rate_per_s").set_value(16.0).run()
    at.button(key="wi_run").click().run()
    assert not at.exception and not at.error
    titles = [plotly.io.from_json(c.proto.spec).layout.title.text for c in at.get("plotly_chart")]
    assert titles == [
        "Latency CDFs",
        "KV memory over time (current)",
        "KV memory over time (baseline)",
        "Batch size over time (current)",
        "Batch size over time (baseline)",
    ]
    table = at.dataframe[-1].value.set_index("metric")
    current = at.session_state["wi_result"].summary
    baseline = at.session_state["wi_baseline"].summary
    assert table.loc["TTFT p90 (s)", "current"] == current["ttft_p90_s"]
    assert table.loc["TTFT p90 (s)", "baseline"] == baseline["ttft_p90_s"]
    assert current["ttft_p90_s"] != baseline["ttft_p90_s"]
