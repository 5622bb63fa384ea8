"""Dashboard state without Streamlit: URL query parameters, scenario TOML, uploads, the
run cache and the page list."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import navigation, runner, state, uploads
from hardware.errors import KvsimError
from sim.run import run_scenario
from sim.scenario import Scenario, apply_overrides


@settings(max_examples=100, deadline=None)
@given(
    st.text(min_size=1, max_size=30) | st.integers() | st.booleans() | st.floats(allow_nan=False)
)
def test_url_values_read_back_as_the_cli_reads_overrides(value):
    encoded = state.encode_value(value)
    assert apply_overrides({}, [f"v={encoded}"])["v"] == value


def test_untouched_default_has_an_empty_url_and_validates():
    assert state.to_query(state.DEFAULT_SCENARIO, state.DEFAULT_SCENARIO) == {}
    Scenario.from_dict(state.DEFAULT_SCENARIO)


def test_default_is_the_cli_builtin_scenario():
    from sim.scenario import load_scenario
    from sim.scenarios import builtin_path

    builtin = load_scenario(builtin_path())
    ours = Scenario.from_dict(state.DEFAULT_SCENARIO)
    # The knob defaults only spell out what the scenario assumes when keys are absent.
    for section in ("model", "hardware", "workload", "scheduler", "slo", "router", "seed"):
        assert getattr(ours, section) == getattr(builtin, section)
    assert (ours.kv_dtype, ours.prefix_caching) == (builtin.kv_dtype, builtin.prefix_caching)


def test_url_round_trip_with_changes_and_removals(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,10,5\n")
    data = state.default_scenario()
    data["hardware"]["tp"] = 2
    data["hardware"]["accelerator"] = "h200-sxm"
    data["workload"] = {"trace": str(trace), "time_scale": 0.5}
    del data["slo"]["tpot_p90_s"]
    params = state.to_query(data, state.DEFAULT_SCENARIO)
    assert params["hardware.tp"] == "2"
    assert params["hardware.accelerator"] == "h200-sxm"
    assert params["workload.synthetic"] == ""
    assert params["slo.tpot_p90_s"] == ""
    assert "hardware.replicas" not in params
    assert state.from_query(params, state.DEFAULT_SCENARIO) == data


def test_url_with_unknown_key_is_rejected_by_the_scenario():
    data = state.from_query({"hardware.tpp": "2"}, state.DEFAULT_SCENARIO)
    with pytest.raises(KvsimError, match="did you mean tp"):
        Scenario.from_dict(data)


def test_malformed_scenario_toml_names_file_and_line():
    with pytest.raises(KvsimError) as err:
        state.parse_scenario_toml(b'seed = 0\n[model\nname = "x"\n', "bad.toml")
    assert err.value.source == "bad.toml" and err.value.line == 2


def test_scenario_toml_round_trip():
    text = state.scenario_toml(state.DEFAULT_SCENARIO)
    assert state.parse_scenario_toml(text.encode(), "s.toml") == state.DEFAULT_SCENARIO


def test_scenario_hash_ignores_key_order_and_follows_trace_content(tmp_path):
    a = {"x": 1, "y": {"b": 2, "a": 3}}
    b = {"y": {"a": 3, "b": 2}, "x": 1}
    assert state.scenario_hash(a) == state.scenario_hash(b)
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,10,5\n")
    data = {"workload": {"trace": str(trace)}}
    first = state.scenario_hash(data)
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,11,5\n")
    assert state.scenario_hash(data) != first


def test_uploads_are_content_addressed_and_renamed_in_errors(tmp_path):
    one = uploads.save_upload("../../etc/trace.csv", b"abc", root=tmp_path)
    assert one.name == "trace.csv" and one.read_bytes() == b"abc"
    assert uploads.save_upload("trace.csv", b"abc", root=tmp_path) == one
    assert uploads.save_upload("trace.csv", b"abd", root=tmp_path) != one

    def reader(path):
        raise KvsimError("bad number", source=str(path), line=3, field="x")

    with pytest.raises(KvsimError) as err:
        uploads.read_as_upload(one, "mine.csv", reader)
    assert str(err.value) == "mine.csv:3: x: bad number"


def _small() -> Scenario:
    data = state.default_scenario()
    data["workload"]["synthetic"]["requests"] = 60
    return Scenario.from_dict(data)


def test_run_cached_serves_the_same_result_and_reports_progress():
    cache = runner.RunCache(maxsize=2)
    scenario = _small()
    seen: list[float] = []
    result, cached = runner.run_cached(scenario, "k", cache, progress=seen.append)
    assert not cached
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    again, cached = runner.run_cached(scenario, "k", cache)
    assert cached and again is result
    # Same summary as calling the engine directly.
    assert run_scenario(scenario).summary == result.summary


def test_cancelled_run_caches_nothing(monkeypatch):
    monkeypatch.setattr(runner, "PROGRESS_INTERVAL_S", 0.0)
    cache = runner.RunCache()

    class Cancelled(Exception):
        pass

    def cancel(fraction: float) -> None:
        if fraction > 0:
            raise Cancelled

    with pytest.raises(Cancelled):
        runner.run_cached(_small(), "k", cache, progress=cancel)
    assert "k" not in cache and len(cache) == 0


def test_run_cache_evicts_least_recently_used():
    cache = runner.RunCache(maxsize=2)
    a, b, c = object(), object(), object()
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is a  # a is now the most recent
    cache.put("c", c)
    assert "b" not in cache and cache.get("a") is a and cache.get("c") is c


def test_model_that_does_not_fit_fails_before_running():
    data = copy.deepcopy(state.DEFAULT_SCENARIO)
    data["model"]["name"] = "llama-3.1-405b"
    data["hardware"]["accelerator"] = "l4"
    with pytest.raises(KvsimError, match="llama-3.1-405b"):
        runner.run_cached(Scenario.from_dict(data), "k", runner.RunCache())


def test_pages_wait_for_their_backends():
    every = navigation.available_pages(exists=lambda name: True)
    assert [p.title for p in every] == [
        p.title for p in navigation.PAGES if (navigation.APP_DIR / p.script).is_file()
    ]
    without_run = navigation.available_pages(exists=lambda name: name != "sim.run")
    assert "What-if" not in [p.title for p in without_run]
    assert "Hardware & models" in [p.title for p in without_run]
    assert navigation.module_exists("sim.cost") and not navigation.module_exists("sim.nope")


SCHEMA = {"tp": list[int], "rate_per_s": float, "slo.ttft_p90_s": float | None, "router": str}


def test_check_table_accepts_the_schema_and_names_what_is_wrong():
    state.check_table({"tp": [1, 2], "rate_per_s": 4, "router": "r"}, SCHEMA, "plan")
    state.check_table({"tp": [], "rate_per_s": 4.5, "router": "r", "slo": {}}, SCHEMA, "plan")
    cases = [
        ({"tp": [1, True], "rate_per_s": 1.0, "router": "r"}, "plan.tp: expected list[int]"),
        ({"tp": [1], "rate_per_s": "1", "router": "r"}, "plan.rate_per_s: expected float"),
        ({"tp": [1], "rate_per_s": 1.0}, "plan.router: missing key"),
        ({"tp": [1], "rate_per_s": 1.0, "router": "r", "slo": {"ttft_p90": 1}}, "ttft_p90_s?"),
        ("tp=1", "plan: expected a table"),
    ]
    for table, message in cases:
        with pytest.raises(KvsimError) as err:
            state.check_table(table, SCHEMA, "plan")
        assert message in str(err.value)


def test_check_choices():
    state.check_choices([1, 2], (1, 2, 4), "tp")
    with pytest.raises(KvsimError, match="tp: unknown choice 3; expected one of 1, 2, 4"):
        state.check_choices([3], (1, 2, 4), "tp")
    with pytest.raises(KvsimError, match="did you mean h100-sxm"):
        state.check_choices(["h100-sxn"], ["h100-sxm", "l4"], "accelerator")


def test_from_link_falls_back_to_the_defaults_with_the_reason():
    defaults = {"a": {"b": 1}, "plan": {"tp": [1]}}

    def validate(data: dict) -> None:
        state.check_table(data["plan"], {"tp": list[int]}, "plan")

    data, error = state.from_link({"plan.tp": "[1, 2]", "a.b": ""}, defaults, validate)
    assert data == {"plan": {"tp": [1, 2]}} and error is None
    data, error = state.from_link({"plan.tp": "two"}, defaults, validate)
    assert data == defaults and data is not defaults
    assert error == "Link ignored: plan.tp: expected list[int], got 'two'"
