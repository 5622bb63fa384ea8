"""Capacity planner page: its data functions, and AppTest of the page — default render, a
run with changed knobs whose table equals :func:`sim.plan.plan` on the same inputs, and bad
inputs (model that does not fit, impossible or zero SLO, malformed trace, no candidate)."""

from __future__ import annotations

import copy

import plotly.io
import pytest
from streamlit.testing.v1 import AppTest

from app import planner_data, state
from app.navigation import APP_DIR
from hardware.catalog import get_accelerator
from sim.plan import Plan, PlanInputs, PlanResult, plan
from sim.planning.slo import Slo
from sim.scenario import Scenario

PAGE = str(APP_DIR / "pages" / "planner_page.py")


def _base(requests: int = 200) -> dict:
    data = state.default_scenario()
    data.pop("slo")
    data["workload"]["synthetic"]["requests"] = requests
    return data


# ---- data functions ------------------------------------------------------------------------
def test_plan_inputs_carry_every_knob():
    inputs = planner_data.plan_inputs(
        _base(),
        accelerators=["h100-sxm"],
        tp=[1, 2],
        kv_strategies=["fp8"],
        rate_per_s=5.0,
        slo_s={"ttft_p90_s": 0.5, "tpot_p90_s": None},
        min_attainment=0.9,
        seeds=1,
        probe_requests=50,
    )
    assert inputs.slos == (Slo("ttft_p90_s", 0.5),)  # None is no bound
    assert [(c.accelerator, c.tp, c.kv_strategy) for c in inputs.candidates()] == [
        ("h100-sxm", 1, "fp8"),
        ("h100-sxm", 2, "fp8"),
    ]
    assert (inputs.min_attainment, inputs.seeds, inputs.probe_requests) == (0.9, 1, 50)


def test_inputs_key_follows_the_inputs():
    def key(**change):
        knobs = {
            "accelerators": ["h100-sxm"],
            "tp": [1],
            "kv_strategies": ["fp16"],
            "rate_per_s": 5.0,
            "slo_s": {"ttft_p90_s": 1.0},
        } | change
        return planner_data.inputs_key(_base(), planner_data.plan_inputs(_base(), **knobs))

    assert key() == key()
    assert len({key(), key(rate_per_s=6.0), key(tp=[2]), key(slo_s={"ttft_p90_s": 2.0})}) == 4


def test_fit_problems_match_the_weight_bytes():
    # Llama-3.1-405B holds ~405e9 bf16 parameters = ~810 GB of weights: more than an L4's
    # 24 GB at TP 1 and than 8 × 80 GB H100s, less than 8 × 141 GB H200s (reference §2).
    base = _base()
    base["model"]["name"] = "llama-3.1-405b"
    inputs = planner_data.plan_inputs(
        base,
        accelerators=["l4", "h100-sxm", "h200-sxm"],
        tp=[8],
        kv_strategies=["fp16"],
        rate_per_s=1.0,
        slo_s={"ttft_p90_s": 1.0},
    )
    problems = planner_data.fit_problems(inputs)
    assert sorted(problems["accelerator"]) == ["h100-sxm", "l4"]
    assert problems["problem"].str.contains("llama-3.1-405b").all()


def _result() -> PlanResult:
    inputs = PlanInputs(
        base=Scenario.from_dict(_base()),
        target_rate_per_s=10.0,
        slos=(Slo("ttft_p90_s", 1.0),),
        accelerators=("h100-sxm",),
    )
    plans = (
        Plan("h100-sxm", 1, 1, "fp8", True, replicas=2, gpus=2, usd_per_hour=9.8,
             latency_s=0.2, slo_attainment=0.95, quality="unknown", pareto=True),
        Plan("h100-sxm", 2, 1, "fp16", True, replicas=1, gpus=2, usd_per_hour=9.8,
             latency_s=0.3, slo_attainment=1.0, quality="lossless", pareto=True),
        Plan("l4", 1, 1, "fp16", False, reason="does not fit: short of 10 GB"),
    )  # fmt: skip
    return PlanResult(plans, inputs)


def test_ranked_and_infeasible_frames():
    result = _result()
    ranked = planner_data.ranked_frame(result)
    assert list(ranked["rank"]) == [1, 2]
    assert list(ranked["ttft_p90_s"]) == [0.2, 0.3]
    # Goodput = target rate × SLO attainment (DistServe): 10 × 0.95 and 10 × 1.0.
    assert list(ranked[planner_data.GOODPUT]) == pytest.approx([9.5, 10.0])
    infeasible = planner_data.infeasible_frame(result)
    assert infeasible.to_dict("records") == [
        {
            "accelerator": "l4",
            "TP": 1,
            "PP": 1,
            "KV strategy": "fp16",
            "reason": "does not fit: short of 10 GB",
        }
    ]
    assert '"plans"' in planner_data.plans_json(result)


# ---- the page ------------------------------------------------------------------------------
def _page() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=300).run()


def _small(at: AppTest, accelerators: list[str], kv: list[str]) -> None:
    at.sidebar.number_input(key="pl:requests").set_value(200)
    at.sidebar.multiselect(key="pl_accelerators").set_value(accelerators)
    at.sidebar.multiselect(key="pl_kv").set_value(kv)
    at.sidebar.number_input(key="pl_seeds").set_value(1)
    at.sidebar.number_input(key="pl_probe_requests").set_value(100).run()


def test_default_render():
    at = _page()
    assert not at.exception and not at.error
    assert "press Run planner" in at.info[0].value
    assert any("6 candidates; 0 do not fit" in c.value for c in at.caption)
    assert not at.button(key="pl_run").disabled


def test_run_with_changed_knobs_matches_the_planner():
    at = _page()
    _small(at, ["h100-sxm", "l40s"], ["fp16", "fp8"])
    at.sidebar.number_input(key="pl_rate").set_value(12.0).run()
    at.button(key="pl_run").click().run()
    assert not at.exception and not at.error
    inputs = PlanInputs(
        base=Scenario.from_dict(_base(200)),
        target_rate_per_s=12.0,
        slos=(Slo("ttft_p90_s", 1.0), Slo("tpot_p90_s", 0.05)),
        accelerators=("h100-sxm", "l40s"),
        tp=(1,),
        kv_strategies=("fp16", "fp8"),
        seeds=1,
        probe_requests=100,
    )
    expected = planner_data.ranked_frame(plan(inputs))
    shown = at.dataframe[0].value
    assert list(shown["accelerator"]) == list(expected["accelerator"])
    assert list(shown["replicas"]) == list(expected["replicas"])
    assert list(shown["USD/h"]) == list(expected["USD/h"])
    assert list(shown["Pareto"]) == list(expected["Pareto"])
    # Fleet cost = catalog price per GPU-hour × GPUs (docs/planning.md, step 5).
    for _, row in shown.iterrows():
        price = get_accelerator(row["accelerator"]).price_usd_per_hour
        assert row["USD/h"] == pytest.approx(price * row["GPUs"])
    chart = plotly.io.from_json(at.get("plotly_chart")[0].proto.spec)
    assert chart.layout.title.text == "Cost vs ttft_p90_s (s)"
    # Base scenario TOML (sidebar), ranked CSV, plans JSON, the shown plan's base TOML.
    assert len(at.get("download_button")) == 4
    # Same inputs again: served from the plan cache without pressing Run.
    at.run()
    assert at.dataframe[0].value.equals(shown)


def test_model_that_does_not_fit_is_an_error_and_the_page_recovers():
    at = _page()
    at.sidebar.selectbox(key="pl_model").set_value("llama-3.1-405b")
    at.sidebar.multiselect(key="pl_accelerators").set_value(["l4"]).run()
    assert not at.exception
    assert len(at.error) == 1
    assert "llama-3.1-405b does not fit any candidate" in at.error[0].value
    assert at.button(key="pl_run").disabled
    at.sidebar.selectbox(key="pl_model").set_value("smollm2-135m").run()
    assert not at.error and not at.button(key="pl_run").disabled


def test_impossible_slo_lists_every_candidate_with_its_reason():
    at = _page()
    _small(at, ["h100-sxm"], ["fp16"])
    at.sidebar.number_input(key="pl_slo.ttft_p90_s").set_value(0.0001).run()
    at.button(key="pl_run").click().run()
    assert not at.exception
    assert "No candidate meets the SLOs" in at.error[0].value
    reasons = at.dataframe[-1].value["reason"]
    assert reasons.str.contains("misses the SLO at any fleet size").all()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("pl_slo.ttft_p90_s", 0.0, "ttft_p90_s: must be a number > 0"),
        ("pl_rate", 0.0, "rate: must be > 0"),
    ],
)
def test_invalid_numbers_are_errors(key, value, message):
    at = _page()
    at.sidebar.number_input(key=key).set_value(value).run()
    assert not at.exception
    assert message in at.error[0].value
    assert at.button(key="pl_run").disabled


def test_no_accelerator_is_an_error():
    at = _page()
    at.sidebar.multiselect(key="pl_accelerators").set_value([]).run()
    assert not at.exception
    assert "give at least one accelerator" in at.error[0].value


def test_malformed_uploaded_trace_is_an_error_and_the_page_keeps_working():
    at = _page()
    _small(at, ["h100-sxm"], ["fp16"])
    at.sidebar.radio(key="pl_source").set_value("Trace file").run()
    bad = b"arrival_s,prompt_tokens,output_tokens\n0,100,10\n1,lots,10\n"
    at.sidebar.file_uploader(key="pl_trace_upload").set_value(("bad.csv", bad, "text/csv")).run()
    at.button(key="pl_run").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "bad.csv:3" in at.error[0].value
    rows = "".join(f"{i * 0.5},{100 + 10 * i},{5 + i}\n" for i in range(40))
    good = ("arrival_s,prompt_tokens,output_tokens\n" + rows).encode()
    at.sidebar.file_uploader(key="pl_trace_upload").set_value(("good.csv", good, "text/csv")).run()
    at.button(key="pl_run").click().run()
    assert not at.exception and not at.error
    result = at.session_state["pl_result"]
    assert result.best is not None and result.best.accelerator == "h100-sxm"
    assert copy.deepcopy(at.session_state["pl_base"])["workload"]["trace"].endswith("good.csv")


# ---- URL state and scenario TOML -----------------------------------------------------------
def test_link_restores_the_knobs():
    params = {
        "model.name": "smollm2-135m",
        "workload.synthetic.requests": "150",
        "plan.accelerators": '["h200-sxm", "l40s"]',
        "plan.tp": "[1, 2]",
        "plan.rate_per_s": "5.0",
        "plan.slo.ttft_p90_s": "",
        "plan.slo.e2e_p90_s": "3.0",
        "plan.goodput": "0.9",
    }
    at = AppTest.from_file(PAGE, default_timeout=300)
    for key, value in params.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception and not at.error
    assert at.sidebar.selectbox(key="pl_model").value == "smollm2-135m"
    assert at.sidebar.number_input(key="pl:requests").value == 150
    assert at.sidebar.multiselect(key="pl_accelerators").value == ["h200-sxm", "l40s"]
    assert at.sidebar.multiselect(key="pl_tp").value == [1, 2]
    assert at.sidebar.number_input(key="pl_rate").value == 5.0
    assert at.sidebar.number_input(key="pl_slo.ttft_p90_s").value is None
    assert at.sidebar.number_input(key="pl_slo.e2e_p90_s").value == 3.0
    assert at.sidebar.number_input(key="pl_goodput").value == 0.9
    # The page writes back the same state: the URL names exactly the keys the link set.
    assert set(at.query_params) == set(params)
    # 2 accelerators × 2 TP sizes × the default fp16, fp8.
    assert any("8 candidates" in c.value for c in at.caption)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"plan.tp": '["two"]'}, "plan.tp: expected list[int], got ['two']"),
        ({"plan.accelerators": '["h100-sxn"]'}, "did you mean h100-sxm?"),
        ({"plan.rate_per_sec": "5"}, "plan.rate_per_sec: unknown key (did you mean rate_per_s?)"),
        ({"plan.rate_per_s": ""}, "plan.rate_per_s: missing key"),
        ({"plan.rate_per_s": "0"}, "must be > 0"),
        ({"plan.router": "random_walk"}, "plan.router: unknown choice 'random_walk'"),
        ({"model.name": "llama-9"}, "model.name: unknown choice 'llama-9'"),
        ({"scheduler.max_num_seq": "8"}, "did you mean max_num_seqs"),
    ],
)
def test_malformed_link_is_an_error_and_the_defaults_are_used(params, message):
    at = AppTest.from_file(PAGE, default_timeout=300)
    for key, value in params.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception
    assert len(at.error) == 1
    assert at.error[0].value.startswith("Link ignored") and message in at.error[0].value
    assert at.sidebar.multiselect(key="pl_accelerators").value == [
        "h100-sxm",
        "a100-80gb-sxm",
        "l40s",
    ]
    assert at.sidebar.multiselect(key="pl_tp").value == [1]
    assert at.sidebar.number_input(key="pl_rate").value == 20.0
    assert dict(at.query_params) == {}
    at.run()  # the error is shown once; the page carries on with the defaults
    assert not at.error and not at.button(key="pl_run").disabled


def test_scenario_toml_upload_sets_the_base_and_its_slo():
    at = _page()
    data = _base()
    data["model"]["name"] = "smollm2-135m"
    data["scheduler"]["max_num_seqs"] = 32
    data["slo"] = {"ttft_p90_s": 0.5}
    upload = at.sidebar.file_uploader(key="pl_toml_upload")
    upload.set_value(("s.toml", state.scenario_toml(data).encode(), "application/toml")).run()
    assert not at.exception and not at.error
    assert at.sidebar.selectbox(key="pl_model").value == "smollm2-135m"
    assert at.sidebar.number_input(key="pl_slo.ttft_p90_s").value == 0.5
    assert at.sidebar.number_input(key="pl_slo.tpot_p90_s").value is None
    page = at.session_state["pl_state"]
    assert page["scheduler"]["max_num_seqs"] == 32 and "slo" not in page
    assert at.query_params["scheduler.max_num_seqs"] == "32"
    at.sidebar.file_uploader(key="pl_toml_upload").set_value(
        ("broken.toml", b"[model\nname = 1\n", "application/toml")
    ).run()
    assert not at.exception
    assert at.error[0].value.startswith("broken.toml:1: malformed TOML")
    assert at.session_state["pl_state"]["scheduler"]["max_num_seqs"] == 32
