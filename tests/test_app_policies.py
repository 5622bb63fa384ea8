"""Policies page: its data functions against hand calculations, and AppTest of the page —
default render, a run of several strategies whose numbers equal ``run_scenario`` on each
strategy's scenario, an uploaded quality table, and bad inputs (model that does not fit,
impossible SLO, malformed trace, bad policy parameters)."""

from __future__ import annotations

import numpy as np
import plotly.io
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamlit.testing.v1 import AppTest

from app import policies_data, state
from app.navigation import APP_DIR
from hardware.errors import KvsimError
from sim.policies import KvStrategy, QualityTable
from sim.run import load_workload, run_scenario
from sim.scenario import Scenario
from workloads.model_catalog import get_model

PAGE = str(APP_DIR / "pages" / "policies_page.py")
KIB = 1024
#: A measured entry for fp8 KV on Llama-3.1-8B, as the real-execution harness writes them.
MEASURED_FP8 = b"""
[[entry]]
model = "llama-3.1-8b"
kind = "quantization"
policy = "fp8"
params = {}
metric = "wikitext_ppl_ratio"
value = 0.98
baseline = 1.0
origin = "measured"
run_id = "test-run-1"
"""


# ---- data functions ------------------------------------------------------------------------
def test_labels_name_the_parameters_a_table_sets():
    assert policies_data.label({"quantization": {"name": "fp16"}}) == "fp16"
    tables = {
        "quantization": {"name": "fp8"},
        "selection": {"name": "snapkv", "budget_tokens": 1024},
    }
    assert policies_data.label(tables) == "snapkv(budget_tokens=1024) + fp8"
    assert len({policies_data.label(t) for t in policies_data.PRESETS}) == len(
        policies_data.PRESETS
    )
    assert set(policies_data.DEFAULT_PRESETS) <= {
        policies_data.label(t) for t in policies_data.PRESETS
    }


def test_parse_params():
    assert policies_data.parse_params("budget_fraction = 0.2, recent_fraction = 0.5", "x") == {
        "budget_fraction": 0.2,
        "recent_fraction": 0.5,
    }
    assert policies_data.parse_params("  ", "x") == {}
    with pytest.raises(KvsimError) as err:
        policies_data.parse_params("budget = ", "selection")
    assert err.value.field == "policies.selection"


def test_strategy_scenario_replaces_only_the_strategy_tables():
    base = state.default_scenario()
    base["policies"]["selection"] = {"name": "h2o"}
    data = policies_data.strategy_scenario(base, {"low_rank": {"name": "palu"}})
    assert data["policies"] == {
        "prefix_cache": base["policies"]["prefix_cache"],
        "quantization": {"name": "fp16"},
        "low_rank": {"name": "palu"},
    }
    assert base["policies"]["selection"] == {"name": "h2o"}  # the base is not modified
    # The full-cache strategy is exactly What-if's default scenario (same hash, one run).
    full = policies_data.strategy_scenario(
        state.DEFAULT_SCENARIO, {"quantization": {"name": "fp16"}}
    )
    assert state.scenario_hash(full) == state.scenario_hash(state.DEFAULT_SCENARIO)


def test_kv_memory_of_llama_8b_by_hand():
    # Llama-3.1-8B: 2 (K, V) × 32 layers × 8 KV heads × 128 dims × 2 bytes = 128 KiB per
    # token in fp16 (reference models.md); a request ends holding prompt + output − 1 tokens
    # (the last token's KV is never written) in ceil(tokens / 16) blocks of 16.
    model = get_model("llama-3.1-8b")
    data = state.default_scenario()
    data["workload"]["synthetic"]["requests"] = 300
    workload = load_workload(Scenario.from_dict(data), model.max_context_tokens)
    tokens = workload.prompt_tokens + workload.output_tokens - 1
    by_hand = float(np.mean(np.ceil(tokens / 16) * 16)) * 128 * KIB
    full = policies_data.kv_memory(KvStrategy(), model, workload, 16)
    assert full["kv_bytes_per_request"] == pytest.approx(by_hand)
    assert full["ratio"] == pytest.approx(1.0)
    # fp8: one byte per element, half of fp16. INT4 with an fp16 scale and zero point per
    # group of 32 elements: (4 + 2 × 16 / 32) bits = 5 of 16 (KIVI-style group quantization).
    for name, ratio in (("fp8", 0.5), ("int4", 5 / 16)):
        strategy = KvStrategy.from_tables({"quantization": {"name": name}})
        got = policies_data.kv_memory(strategy, model, workload, 16)
        assert got["ratio"] == pytest.approx(ratio)


def test_quality_is_looked_up_never_guessed(tmp_path):
    (tmp_path / "quality.toml").write_bytes(MEASURED_FP8)
    table = QualityTable.from_toml(tmp_path / "quality.toml")
    fp8 = KvStrategy.from_tables({"quantization": {"name": "fp8"}})
    assert policies_data.quality(KvStrategy(), "llama-3.1-8b") == ("lossless", 1.0)
    assert policies_data.quality(fp8, "llama-3.1-8b") == ("unknown", None)
    label, retained = policies_data.quality(fp8, "llama-3.1-8b", table)
    assert retained == pytest.approx(0.98) and "test-run-1" in label
    assert policies_data.quality(fp8, "llama-3.1-70b", table) == ("unknown", None)
    # Two lossy components: unknown, even when one has an entry.
    both = KvStrategy.from_tables({"quantization": {"name": "fp8"}, "selection": {"name": "h2o"}})
    assert policies_data.quality(both, "llama-3.1-8b", table) == ("unknown", None)


def test_pareto_flags_by_hand():
    # Lower x better: (1, 0.9) and (2, 1.0) trade off; (3, 0.95) is beaten by (2, 1.0);
    # NaN quality is never in the set.
    x = np.array([1.0, 2.0, 3.0, 0.5])
    y = np.array([0.9, 1.0, 0.95, np.nan])
    assert list(policies_data.pareto_flags(x, y, True)) == [True, True, False, False]
    # Higher x better (throughput): (3, 0.95) now trades off with (2, 1.0); (1, 0.9) loses.
    assert list(policies_data.pareto_flags(x, y, False)) == [False, True, True, False]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=12),
    st.booleans(),
)
def test_pareto_set_is_undominated_and_dominates_the_rest(points, lower):
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    flags = policies_data.pareto_flags(x, y, lower)
    gx = -x if lower else x

    def dominates(i: int, j: int) -> bool:
        return gx[i] >= gx[j] and y[i] >= y[j] and (gx[i] > gx[j] or y[i] > y[j])

    n = len(points)
    for j in range(n):
        beaten = any(dominates(i, j) for i in range(n))
        assert flags[j] == (not beaten)
        if beaten:  # in a finite set, something in the Pareto set beats every other point
            assert any(flags[i] and dominates(i, j) for i in range(n))


# ---- the page ------------------------------------------------------------------------------
def _page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=300).run()
    at.sidebar.number_input(key="po:requests").set_value(200).run()
    return at


def _base(requests: int = 200) -> dict:
    data = state.default_scenario()
    data["workload"]["synthetic"]["requests"] = requests
    return data


def test_default_render():
    at = AppTest.from_file(PAGE, default_timeout=300).run()
    assert not at.exception and not at.error
    assert at.multiselect(key="po_presets").value == list(policies_data.DEFAULT_PRESETS)
    assert "press Run strategies" in at.info[0].value


def test_run_of_several_strategies_matches_the_engine():
    at = _page()
    at.multiselect(key="po_presets").set_value(["fp16", "fp8", "streaming_llm"]).run()
    at.button(key="po_run").click().run()
    assert not at.exception and not at.error
    frame = at.dataframe[0].value.set_index("strategy")
    assert list(frame.index) == ["fp16", "fp8", "streaming_llm"]
    assert (frame["status"] == "ok").all()
    tables = {
        "fp16": {"quantization": {"name": "fp16"}},
        "fp8": {"quantization": {"name": "fp8"}},
        "streaming_llm": {"selection": {"name": "streaming_llm"}},
    }
    for name, strategy in tables.items():
        data = _base()
        data["policies"].update(strategy)
        summary = run_scenario(Scenario.from_dict(data)).summary
        assert frame.loc[name, "TTFT p90 (s)"] == summary["ttft_p90_s"]
        assert frame.loc[name, "output tokens/s"] == summary["throughput_tok_per_s"]
        assert frame.loc[name, "KV peak (GB)"] == pytest.approx(summary["kv_peak_bytes"] / 1e9)
    assert frame.loc["fp8", "KV vs full fp16"] == pytest.approx(0.5)
    # Every request finishes, so the engine's memory saved at each final context is one minus
    # the analytic ratio over the same requests.
    assert list(frame["KV memory saved"]) == pytest.approx(list(1 - frame["KV vs full fp16"]))
    # StreamingLLM keeps 4 sinks + 1,020 recent tokens: less than the full cache.
    assert frame.loc["streaming_llm", "KV vs full fp16"] < 1.0
    assert list(frame["quality"]) == ["lossless", "unknown", "unknown"]
    titles = [plotly.io.from_json(c.proto.spec).layout.title.text for c in at.get("plotly_chart")]
    assert titles == [
        "KV strategies on one workload",
        "Quality vs cost (USD per 1M output tokens)",
    ]
    # Base scenario TOML (sidebar), comparison CSV, a strategy's scenario TOML.
    assert len(at.get("download_button")) == 3
    assert at.selectbox(key="po_toml_of").options == ["fp16", "fp8", "streaming_llm"]


def test_uploaded_quality_table_places_a_strategy_on_the_pareto_chart():
    at = _page()
    at.multiselect(key="po_presets").set_value(["fp16", "fp8", "int8"]).run()
    at.sidebar.file_uploader(key="po_quality_upload").set_value(
        ("quality.toml", MEASURED_FP8, "application/toml")
    ).run()
    at.button(key="po_run").click().run()
    assert not at.exception and not at.error
    frame = at.dataframe[0].value.set_index("strategy")
    assert frame.loc["fp8", "quality retained"] == pytest.approx(0.98)
    at.radio(key="po_x_axis").set_value("KV per request (MB)").run()
    chart = plotly.io.from_json(at.get("plotly_chart")[1].proto.spec)
    # fp16 (1.0 retained, twice the bytes) and fp8 (0.98, half) trade off: both Pareto.
    pareto = next(t for t in chart.data if t.name == "Pareto set")
    assert list(pareto.text) == ["fp8", "fp16"]
    assert "int8" in chart.layout.annotations[0].text  # unknown quality: named, not placed


def test_custom_strategy_with_bad_parameters_is_an_error():
    at = _page()
    at.selectbox(key="po_custom_selection").set_value("h2o").run()
    at.text_input(key="po_custom_selection_params").input("budget_fraction = 2").run()
    at.button(key="po_custom_add").click().run()
    assert not at.exception
    assert "policies.selection.budget_fraction" in at.error[0].value
    at.text_input(key="po_custom_selection_params").input("budget_fraction = 0.1").run()
    at.button(key="po_custom_add").click().run()
    assert not at.exception and not at.error
    assert "h2o(budget_fraction=0.1) + fp16" in at.session_state["po_custom"]


def test_model_that_does_not_fit_is_an_error_and_the_page_recovers():
    at = _page()
    at.sidebar.selectbox(key="po_model").set_value("llama-3.1-405b")
    at.sidebar.selectbox(key="po_accelerator").set_value("l4").run()
    assert not at.exception
    assert len(at.error) == 1 and "llama-3.1-405b" in at.error[0].value
    assert "does not fit" in at.error[0].value
    assert at.button(key="po_run").disabled
    at.sidebar.selectbox(key="po_model").set_value("smollm2-135m").run()
    assert not at.error and not at.button(key="po_run").disabled


def test_impossible_slo_is_reported_after_the_run():
    at = _page()
    at.multiselect(key="po_presets").set_value(["fp16", "fp8"]).run()
    at.sidebar.number_input(key="po_slo.ttft_p90_s").set_value(0.0001).run()
    at.button(key="po_run").click().run()
    assert not at.exception
    assert any("Impossible SLO" in e.value for e in at.error)


def test_malformed_uploaded_trace_is_an_error_and_the_page_keeps_working():
    at = _page()
    at.sidebar.radio(key="po_source").set_value("Trace file").run()
    bad = b"arrival_s,prompt_tokens,output_tokens\n0,100,10\n1,lots,10\n"
    at.sidebar.file_uploader(key="po_trace_upload").set_value(("bad.csv", bad, "text/csv")).run()
    at.button(key="po_run").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "bad.csv:3" in at.error[0].value
    good = b"arrival_s,prompt_tokens,output_tokens\n0,100,10\n0.5,200,20\n1,300,5\n"
    at.sidebar.file_uploader(key="po_trace_upload").set_value(("good.csv", good, "text/csv")).run()
    at.button(key="po_run").click().run()
    assert not at.exception and not at.error
    assert (at.dataframe[0].value["status"] == "ok").all()


# ---- URL state and scenario TOML -----------------------------------------------------------
def _linked(**params: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=300)
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def test_link_restores_the_knobs_and_strategies():
    params = {
        "model.name": "smollm2-135m",
        "hardware.tp": "2",
        "workload.synthetic.requests": "150",
        "slo.tpot_p90_s": "",
        "strategies": '[{quantization = {name = "fp8"}}, '
        '{selection = {name = "h2o", budget_fraction = 0.1}}]',
    }
    at = _linked(**params)
    assert not at.exception and not at.error
    assert at.sidebar.selectbox(key="po_model").value == "smollm2-135m"
    assert at.sidebar.selectbox(key="po_tp").value == 2
    assert at.sidebar.number_input(key="po:requests").value == 150
    assert at.sidebar.number_input(key="po_slo.tpot_p90_s").value is None
    assert at.multiselect(key="po_presets").value == ["fp8"]
    assert list(at.session_state["po_custom"]) == ["h2o(budget_fraction=0.1)"]
    assert set(at.query_params) == set(params)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"hardware.tp": "3"}, "hardware.tp: unknown choice 3"),
        ({"hardware.accelerator": "h100-sxn"}, "close matches: h100-sxm"),
        ({"strategies": '"fp8"'}, "page.strategies: expected list[dict]"),
        (
            {"strategies": '[{selection = {name = "h2o", budget_fraction = 2}}]'},
            "strategies[0].policies.selection.budget_fraction",
        ),
        ({"hardware.tpp": "2"}, "did you mean tp"),
    ],
)
def test_malformed_link_is_an_error_and_the_defaults_are_used(params, message):
    at = _linked(**params)
    assert not at.exception
    assert len(at.error) == 1
    assert at.error[0].value.startswith("Link ignored") and message in at.error[0].value
    assert at.sidebar.selectbox(key="po_accelerator").value == "h100-sxm"
    assert at.sidebar.selectbox(key="po_tp").value == 1
    assert at.multiselect(key="po_presets").value == list(policies_data.DEFAULT_PRESETS)
    assert dict(at.query_params) == {}


def test_scenario_toml_upload_sets_the_base():
    at = _page()
    data = _base()
    data["model"]["name"] = "smollm2-135m"
    data["hardware"]["tp"] = 2
    data["scheduler"]["max_num_seqs"] = 64
    upload = at.sidebar.file_uploader(key="po_toml_upload")
    upload.set_value(("s.toml", state.scenario_toml(data).encode(), "application/toml")).run()
    assert not at.exception and not at.error
    assert at.sidebar.selectbox(key="po_model").value == "smollm2-135m"
    assert at.sidebar.selectbox(key="po_tp").value == 2
    # A key without a widget is kept, and strategies stay as they were.
    page = at.session_state["po_state"]
    assert page["scheduler"]["max_num_seqs"] == 64
    assert at.query_params["scheduler.max_num_seqs"] == "64"
    assert at.multiselect(key="po_presets").value == list(policies_data.DEFAULT_PRESETS)
    at.sidebar.file_uploader(key="po_toml_upload").set_value(
        ("broken.toml", b"[hardware\ntp = 2\n", "application/toml")
    ).run()
    assert not at.exception
    assert at.error[0].value.startswith("broken.toml:1: malformed TOML")
    assert at.session_state["po_state"]["scheduler"]["max_num_seqs"] == 64
