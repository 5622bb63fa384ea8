"""Hand-computed engine cases, execution-mode equivalence, determinism, impossible
scenarios, routers, disaggregation, and the scenario files of the engine issue.

Hand calculations use the cost model's own step durations for batch shapes written out
here from vLLM's scheduling rules (running sequences first, then admissions; a prefill that
completes its prompt emits the first token), rounded to the engine's 1 ns clock.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hardware.catalog import get_accelerator, get_link
from hardware.errors import KvsimError
from sim.cost import BatchShape, CostModel
from sim.engine import NS
from sim.router import (
    ROUTERS,
    least_kv_load,
    least_outstanding,
    prefix_affinity,
    round_robin,
)
from sim.run import resolve, run_scenario
from sim.scenario import (
    DisaggregationConfig,
    HardwareConfig,
    ModelConfig,
    PolicyTable,
    RouterConfig,
    Scenario,
    WorkloadConfig,
    apply_overrides,
    load_scenario,
)
from sim.transfer import SharedLink
from workloads.model_catalog import get_model
from workloads.workload import Workload

MODEL, GPU = "llama-3.1-8b", "h100-sxm"


def _scenario(workload: Workload, **changes) -> Scenario:
    base = {
        "model": ModelConfig(name=MODEL),
        "hardware": HardwareConfig(accelerator=GPU),
        "workload": WorkloadConfig(inline=workload),
    }
    base.update(changes)
    return Scenario(**base)


def _workload(arrival, prompt, output, prefixes=None) -> Workload:
    kwargs = {}
    if prefixes is not None:
        lengths = [len(p) for p in prefixes]
        kwargs["prefix_offsets"] = np.concatenate([[0], np.cumsum(lengths)])
        kwargs["prefix_hashes"] = [h for p in prefixes for h in p]
    return Workload(arrival_s=arrival, prompt_tokens=prompt, output_tokens=output, **kwargs)


def _ns(seconds: float) -> int:
    return max(int(np.rint(seconds * NS)), 1)


def _cost() -> CostModel:
    return CostModel(get_model(MODEL), get_accelerator(GPU))


def _step_ns(cost: CostModel, prefill=(), context=(), decode=()) -> int:
    return _ns(cost.step(BatchShape(list(prefill), list(context), list(decode))).duration_s)


# ---- hand-computed latencies -----------------------------------------------------------------
def test_two_request_ttft_tpot_e2e_by_hand() -> None:
    """A (100-token prompt, 3 outputs) at t=0 and B (200, 2) at t=1 ms on one replica.

    Step 1 (t=0): A's whole prompt; its first token at d1. B arrives during it.
    Step 2 (t=d1): A decodes (context 101) and B's prompt is prefilled; B's first token.
    Step 3: A decodes (context 102), B decodes (context 201); both finish.
    """
    cost = _cost()
    d1 = _step_ns(cost, prefill=[100], context=[0])
    d2 = _step_ns(cost, prefill=[200], context=[0], decode=[101])
    d3 = _step_ns(cost, decode=[102, 201])
    assert d1 > 1_000_000  # B really arrives while step 1 runs
    workload = _workload([0.0, 0.001], [100, 200], [3, 2])
    result = run_scenario(_scenario(workload), step_mode=True)
    a, b = result.requests.iloc[0], result.requests.iloc[1]
    assert a["ttft_s"] == pytest.approx(d1 / NS, abs=1e-12)
    assert b["queue_wait_s"] == pytest.approx((d1 - 1_000_000) / NS, abs=1e-12)
    assert b["ttft_s"] == pytest.approx((d1 + d2 - 1_000_000) / NS, abs=1e-12)
    assert a["finish_s"] == b["finish_s"] == pytest.approx((d1 + d2 + d3) / NS, abs=1e-12)
    assert a["tpot_s"] == pytest.approx((d2 + d3) / 2 / NS, abs=1e-12)
    assert b["tpot_s"] == pytest.approx(d3 / NS, abs=1e-12)
    assert list(result.steps["num_prefill"]) == [1, 1, 0]
    assert list(result.steps["num_decode"]) == [0, 1, 2]


def test_arrival_at_a_step_boundary_joins_that_step() -> None:
    """The tie rule: a request arriving exactly when a step ends joins the next step."""
    cost = _cost()
    d1 = _step_ns(cost, prefill=[100], context=[0])
    d2 = _step_ns(cost, prefill=[50], context=[0], decode=[101])
    workload = _workload([0.0, d1 / NS], [100, 50], [5, 1])
    for step_mode in (True, False):
        result = run_scenario(_scenario(workload), step_mode=step_mode)
        b = result.requests.iloc[1]
        assert b["queue_wait_s"] == 0.0
        assert b["finish_s"] == pytest.approx((d1 + d2) / NS, abs=1e-12)


# ---- stretch fast-forward == step by step ----------------------------------------------------
def _chat(requests: int, rate: float, **synthetic) -> dict:
    spec = {
        "arrival": "poisson",
        "rate_per_s": rate,
        "requests": requests,
        "prompt_tokens": {"dist": "lognormal", "median": 600, "sigma": 0.8},
        "output_tokens": {"dist": "lognormal", "median": 120, "sigma": 0.8},
        "prefix": {"kind": "system_prompt", "prompt_tokens": {"dist": "fixed", "value": 512}},
    }
    spec.update(synthetic)
    return spec


EQUIVALENCE_CASES = {
    "prefix-hash": {"workload": {"synthetic": _chat(300, 12.0)}, "policies": {"prefix_cache": {}}},
    "prefix-radix-preempt": {
        "workload": {"synthetic": _chat(300, 30.0)},
        "hardware": {"accelerator": GPU, "gpu_memory_fraction": 0.235},
        "policies": {"prefix_cache": {"kind": "radix"}},
    },
    "recompute-preemption": {
        "workload": {"synthetic": _chat(300, 40.0)},
        "hardware": {"accelerator": GPU, "gpu_memory_fraction": 0.235},
        "scheduler": {"max_num_seqs": 64, "max_batched_tokens": 2048},
    },
    "swap-preemption": {
        "workload": {"synthetic": _chat(300, 40.0)},
        "hardware": {"accelerator": GPU, "gpu_memory_fraction": 0.235},
        "scheduler": {"preemption": "swap", "chunked_prefill": False, "max_model_len": 8192},
    },
    "kv-load-router": {
        "workload": {"synthetic": _chat(300, 40.0)},
        "hardware": {"accelerator": GPU, "replicas": 3},
        "router": {"name": "least_kv_load"},
    },
    "prefix-affinity-router": {
        "workload": {"synthetic": _chat(300, 40.0)},
        "hardware": {"accelerator": GPU, "replicas": 3},
        "router": {"name": "prefix_affinity"},
        "policies": {"prefix_cache": {}},
    },
    "disaggregated": {
        "workload": {"synthetic": _chat(300, 20.0)},
        "disaggregation": {"prefill_replicas": 1, "decode_replicas": 2},
        "router": {"name": "least_outstanding"},
    },
}


def _case(name: str, seed: int = 3) -> Scenario:
    data = {"seed": seed, "model": {"name": MODEL}, "hardware": {"accelerator": GPU}}
    data.update(EQUIVALENCE_CASES[name])
    return Scenario.from_dict(data)


@pytest.mark.parametrize("name", sorted(EQUIVALENCE_CASES))
def test_stretch_and_step_mode_give_identical_request_records(name: str) -> None:
    scenario = _case(name)
    fast = run_scenario(scenario)
    slow = run_scenario(scenario, step_mode=True)
    pd.testing.assert_frame_equal(fast.requests, slow.requests, check_exact=True)
    assert (fast.requests["status"] == "finished").all()
    # Fast-forwarding really happened: fewer step rows for the same number of model steps.
    assert len(fast.steps) < len(slow.steps)
    assert fast.steps["steps"].sum() == slow.steps["steps"].sum()
    assert fast.steps["duration_s"].sum() == pytest.approx(slow.steps["duration_s"].sum())


def test_equivalence_cases_exercise_what_they_name() -> None:
    preempting = run_scenario(_case("recompute-preemption")).summary
    assert preempting["preemptions"] > 0
    swapped = run_scenario(_case("swap-preemption")).steps
    assert swapped["swap_out_tokens"].sum() > 0 and swapped["kv_blocks_host"].max() > 0
    assert run_scenario(_case("prefix-hash")).summary["prefix_hit_rate"] > 0.3


# ---- determinism -----------------------------------------------------------------------------
def test_same_seed_gives_byte_identical_parquet(tmp_path: Path) -> None:
    scenario = _case("prefix-hash")
    for name in ("a", "b"):
        run_scenario(scenario).write_parquet(tmp_path / name)
    for file in ("requests.parquet", "steps.parquet"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_two_runs_in_one_process_do_not_interfere() -> None:
    first = run_scenario(_case("kv-load-router"))
    other = run_scenario(_case("recompute-preemption", seed=9))
    again = run_scenario(_case("kv-load-router"))
    pd.testing.assert_frame_equal(first.requests, again.requests, check_exact=True)
    pd.testing.assert_frame_equal(first.steps, again.steps, check_exact=True)
    assert not first.requests["finish_s"].equals(other.requests["finish_s"])
    different_seed = run_scenario(_case("kv-load-router", seed=4))
    assert not first.requests["arrival_s"].equals(different_seed.requests["arrival_s"])


# ---- impossible scenarios --------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_model_larger_than_the_replica_is_a_clear_error() -> None:
    scenario = _scenario(
        _workload([0.0], [10], [1]),
        model=ModelConfig(name="llama-3.1-405b"),
        hardware=HardwareConfig(accelerator="a100-80gb-sxm", replicas=8),
    )
    with pytest.raises(KvsimError, match="does not fit") as err:
        run_scenario(scenario)
    assert err.value.field == "hardware.tp"


@pytest.mark.timeout(60)
def test_requests_longer_than_context_or_pool_are_counted_rejections() -> None:
    # llama-3.1-8b at 0.22 of an H100 holds 271 blocks of 16 tokens = 4,336 tokens of KV.
    assert (
        resolve(_scenario(_workload([0.0], [1], [1]), hardware=_small())).memory.num_blocks == 271
    )
    workload = _workload([0.0, 0.1, 0.2, 0.3], [1000, 200_000, 5000, 300], [50, 10, 10, 20])
    for changes in ({"hardware": _small()}, {"hardware": _small(), "disaggregation": _split()}):
        result = run_scenario(_scenario(workload, **changes))
        requests = result.requests
        assert list(requests["status"]) == ["finished", "rejected", "rejected", "finished"]
        assert list(requests["reject_reason"]) == [
            "",
            "exceeds_max_model_len",
            "exceeds_kv_pool",
            "",
        ]
        assert result.summary["requests_rejected"] == 2


def _small() -> HardwareConfig:
    return HardwareConfig(accelerator=GPU, gpu_memory_fraction=0.22, replicas=2)


def _split() -> DisaggregationConfig:
    return DisaggregationConfig(prefill_replicas=1, decode_replicas=1)


# ---- routers ---------------------------------------------------------------------------------
def test_router_functions() -> None:
    assert [round_robin(i, 3) for i in range(5)] == [0, 1, 2, 0, 1]
    assert least_outstanding(np.array([3, 1, 1])) == 1
    assert least_kv_load(np.array([0.5, 0.2, 0.2]), np.array([0, 4, 2])) == 2
    assert prefix_affinity(np.array([0, 3, 3]), np.array([0, 5, 2])) == 2
    assert prefix_affinity(np.array([0, 0, 0]), np.array([2, 1, 1])) == 1
    assert set(ROUTERS) == {
        "round_robin",
        "least_outstanding",
        "least_kv_load",
        "prefix_affinity",
        "kv_aware",
        "session_affinity",
    }


def _routing_workload() -> Workload:
    """A (prefix X, long output) and B (prefix Y, one token) at once; C (prefix X) at 0.5 s,
    when B is gone and A still decodes on replica 0."""
    return _workload(
        [0.0, 0.0, 0.5], [1100, 1100, 1100], [400, 1, 1], prefixes=[[11, 12], [21, 22], [11, 12]]
    )


@pytest.mark.parametrize(
    ("router", "replicas", "c_hits"),
    [
        ("round_robin", [0, 1, 0], 1024),
        ("least_outstanding", [0, 1, 1], 0),
        ("least_kv_load", [0, 1, 1], 0),
        ("prefix_affinity", [0, 1, 0], 1024),
    ],
)
def test_routers_in_the_engine(router: str, replicas: list[int], c_hits: int) -> None:
    scenario = _scenario(
        _routing_workload(),
        hardware=HardwareConfig(accelerator=GPU, replicas=2),
        router=RouterConfig(name=router),
        policies=(PolicyTable(kind="prefix_cache", name="prefix_cache"),),
    )
    requests = run_scenario(scenario).requests
    assert list(requests["replica"]) == replicas
    # C shares A's two 512-token prefix blocks: a hit only where A's KV is cached.
    assert requests["prefix_hit_tokens"].iloc[2] == c_hits


# ---- disaggregation --------------------------------------------------------------------------
def test_shared_link_by_hand() -> None:
    link = SharedLink(bytes_per_s=100.0, latency_s=0.5)
    link.start(1, 100.0, 0.0)
    assert link.next_completion_s() == pytest.approx(1.5)  # latency + bytes / bandwidth
    link.start(2, 100.0, 0.5)  # 50 bytes left on 1; now both get 50 B/s
    assert link.next_completion_s() == pytest.approx(2.0)  # 1: 50 B at 50 B/s + 0.5
    assert link.finish(2.0) == [1]
    assert link.next_completion_s() == pytest.approx(2.5)  # 2: 50 B left, alone again
    assert link.finish(2.5) == [2]
    assert link.next_completion_s() is None


def test_disaggregated_transfer_and_decode_by_hand() -> None:
    prompt = 1000
    cost = _cost()
    link = get_link("rdma-400g")
    kv_bytes = prompt * get_model(MODEL).kv_bytes_per_token("fp16")
    scenario = _scenario(
        _workload([0.0], [prompt], [2]),
        hardware=HardwareConfig(accelerator=GPU),
        disaggregation=DisaggregationConfig(1, 1, link="rdma-400g"),
    )
    row = run_scenario(scenario).requests.iloc[0]
    d1 = _step_ns(cost, prefill=[prompt], context=[0])
    transfer_s = link.latency_s + kv_bytes / (link.bytes_per_s * link.efficiency)
    assert row["ttft_s"] == pytest.approx(d1 / NS, abs=1e-12)
    assert row["transfer_start_s"] == pytest.approx(d1 / NS, abs=1e-12)
    assert row["transfer_end_s"] - row["transfer_start_s"] == pytest.approx(transfer_s, abs=2e-9)
    d2 = _step_ns(cost, decode=[prompt + 1])
    assert row["finish_s"] == pytest.approx(row["transfer_end_s"] + d2 / NS, abs=1e-12)
    assert (row["replica"], row["decode_replica"]) == (0, 1)

    # Two prompts prefilled together share the link: each takes latency + 2 × bytes / B.
    pair = _scenario(
        _workload([0.0, 0.0], [prompt, prompt], [2, 2]),
        disaggregation=DisaggregationConfig(1, 1, link="rdma-400g"),
    )
    rows = run_scenario(pair).requests
    both = link.latency_s + 2 * kv_bytes / (link.bytes_per_s * link.efficiency)
    durations = rows["transfer_end_s"] - rows["transfer_start_s"]
    np.testing.assert_allclose(durations, both, atol=2e-9)


# ---- the scenario files of the issue ---------------------------------------------------------
AZURE_TOML = """\
seed = 1
[model]
name = "llama-2-70b"
[hardware]
accelerator = "a100-80gb-sxm"
tp = 2
replicas = 6
[workload]
trace = "{trace}"
[scheduler]
max_num_seqs = 128
[slo]
ttft_p90_s = 2.0
tpot_p90_s = 0.2
"""

SYNTHETIC_TOML = """\
seed = 7
[model]
name = "llama-3.1-8b"
[hardware]
accelerator = "h100-sxm"
[workload.synthetic]
arrival = "poisson"
rate_per_s = 4.0
requests = 2000
prompt_tokens = { dist = "lognormal", median = 1000, sigma = 0.8 }
output_tokens = { dist = "lognormal", median = 150, sigma = 0.8 }
[policies.selection]
name = "streaming_llm"
sink_tokens = 4
window_tokens = 1024
[policies.quantization]
name = "fp8"
[policies.prefix_cache]
enabled = true
"""


@pytest.fixture
def azure_toml(traces_dir: Path, tmp_path: Path) -> Path:
    trace = traces_dir / "azure2023" / "AzureLLMInferenceTrace_conv.csv"
    path = tmp_path / "azure.toml"
    path.write_text(AZURE_TOML.format(trace=trace.resolve()))
    return path


def test_azure_fixture_loads_and_runs_its_first_minute(azure_toml: Path, traces_dir: Path) -> None:
    scenario = load_scenario(azure_toml)
    assert (scenario.hardware.tp, scenario.hardware.replicas, scenario.num_gpus) == (2, 6, 12)
    assert scenario.slo.ttft_p90_s == 2.0 and scenario.scheduler.max_num_seqs == 128
    result = run_scenario(scenario.with_overrides(["duration_s=60"]))
    requests = result.requests
    stamps = pd.to_datetime(
        pd.read_csv(traces_dir / "azure2023" / "AzureLLMInferenceTrace_conv.csv")["TIMESTAMP"]
    )
    assert len(requests) == ((stamps - stamps.iloc[0]).dt.total_seconds() < 60).sum()
    assert set(requests["status"]) <= {"finished", "rejected"}
    assert result.summary["usd_per_hour"] == pytest.approx(
        12 * get_accelerator("a100-80gb-sxm").price_usd_per_hour
    )


@pytest.mark.slow
def test_azure_fixture_full_replay(azure_toml: Path, traces_dir: Path) -> None:
    result = run_scenario(load_scenario(azure_toml))
    trace = pd.read_csv(traces_dir / "azure2023" / "AzureLLMInferenceTrace_conv.csv")
    too_long = (trace["ContextTokens"] + trace["GeneratedTokens"] > 4096).sum()
    requests = result.requests
    assert len(requests) == len(trace)
    assert (requests["reject_reason"] == "exceeds_max_model_len").sum() == too_long
    assert (requests["status"] == "finished").sum() == len(trace) - too_long


def test_synthetic_fixture_with_streaming_llm_fp8_and_prefix_cache_runs(tmp_path: Path) -> None:
    path = tmp_path / "synthetic.toml"
    path.write_text(SYNTHETIC_TOML)
    scenario = load_scenario(path, ["workload.synthetic.requests=200"])
    assert scenario.prefix_caching == "hash"
    assert scenario.kv_strategy().label() == "streaming_llm(window_tokens=1024) + fp8"
    result = run_scenario(scenario)
    assert result.summary["requests_completed"] == 200
    # fp8 KV halves bytes per token relative to fp16 (1 byte per element instead of 2).
    fp16 = resolve(scenario.with_overrides(["policies.quantization.name=fp16"])).memory
    assert result.memory.kv_bytes_per_token * 2 == fp16.kv_bytes_per_token
    # No sequence holds more than the 4 + 1024 tokens the window keeps: ceil(1028 / 16) = 65
    # blocks each (the synthetic workload has no shared prefixes to pin).
    steps = result.steps
    assert (steps["kv_blocks_used"] <= 65 * (steps["num_prefill"] + steps["num_decode"])).all()


# ---- scenario loading ------------------------------------------------------------------------
def test_unknown_key_names_file_line_and_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "scenario.toml"
    path.write_text(
        '[model]\nname = "llama-3.1-8b"\n[hardware]\naccelerator = "h100-sxm"\n'
        "[workload.synthetic]\nrequests = 3\n[scheduler]\nmax_num_seq = 4\n"
    )
    with pytest.raises(KvsimError) as err:
        load_scenario(path)
    assert str(err.value) == (
        f"{path}:8: scheduler.max_num_seq: unknown key (did you mean max_num_seqs?)"
    )
    with pytest.raises(KvsimError, match=r"toml --set: hardware.accelerator: unknown accelerator"):
        load_scenario(path, ["scheduler={}", "hardware.accelerator=h100"])


def test_set_overrides_parse_toml_literals_with_string_fallback() -> None:
    data = {"hardware": {"accelerator": "h100-sxm", "tp": 1}}
    out = apply_overrides(
        data,
        [
            "hardware.tp=4",
            "hardware.gpu_memory_fraction=0.5",
            "hardware.accelerator=a100-80gb-sxm",
            "scheduler.chunked_prefill=false",
            'router.name="least_kv_load"',
            "workload.synthetic.prompt_tokens={ dist = 'fixed', value = 8 }",
        ],
    )
    assert out["hardware"] == {"accelerator": "a100-80gb-sxm", "tp": 4, "gpu_memory_fraction": 0.5}
    assert out["scheduler"] == {"chunked_prefill": False}
    assert out["router"] == {"name": "least_kv_load"}
    assert out["workload"]["synthetic"]["prompt_tokens"] == {"dist": "fixed", "value": 8}
    assert data["hardware"]["tp"] == 1  # the input is not modified
    for bad in ("hardware.tp", "=3", "a..b=1", "hardware.tp.x=1"):
        with pytest.raises(KvsimError):
            apply_overrides(data, [bad])


def test_relative_trace_path_resolves_against_the_scenario_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "scenarios"
    (folder / "traces").mkdir(parents=True)
    (folder / "traces" / "mini.csv").write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:15:51.0000000,120,3\n"
    )
    (folder / "s.toml").write_text(
        '[model]\nname = "llama-3.1-8b"\n[hardware]\naccelerator = "h100-sxm"\n'
        '[workload]\ntrace = "traces/mini.csv"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    scenario = load_scenario(Path("..") / "scenarios" / "s.toml")
    assert Path(scenario.workload.trace) == (folder / "traces" / "mini.csv").resolve()
    result = run_scenario(scenario)
    assert result.requests["arrival_s"].tolist() == pytest.approx([0.0, 4.314579, 4.31941])
    assert result.summary["requests_completed"] == 3
    # A relative path given with --set is relative to where the user typed it.
    (elsewhere / "mini.csv").write_text((folder / "traces" / "mini.csv").read_text())
    moved = load_scenario(folder / "s.toml", ["workload.trace=mini.csv"])
    assert Path(moved.workload.trace) == elsewhere / "mini.csv"


def test_scenario_round_trips_through_its_dict() -> None:
    scenario = _case("prefix-radix-preempt")
    again = Scenario.from_dict(scenario.to_dict())
    assert again == scenario
    assert math.isclose(again.hardware.gpu_memory_fraction, 0.235)


def test_documented_complete_example_loads_and_runs(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "scenario.md").read_text()
    example = text.split("## A complete example", 1)[1].split("```toml\n", 1)[1].split("```")[0]
    path = tmp_path / "example.toml"
    path.write_text(example)
    scenario = load_scenario(path, ["workload.synthetic.requests=150"])
    assert scenario.num_gpus == 4 and scenario.router.name == "prefix_affinity"
    assert scenario.kv_strategy().quantization.name == "fp8" and scenario.prefix_caching == "hash"
    result = run_scenario(scenario)
    assert result.summary["requests_completed"] == 150
    assert result.summary["usd_per_hour"] == pytest.approx(4 * 2.5)


def test_with_overrides_keeps_inline_requests() -> None:
    workload = _workload([0.0, 1.0, 2.0], [50, 50, 50], [2, 2, 2])
    scenario = _scenario(workload).with_overrides(["duration_s=1.5", "hardware.replicas=2"])
    assert scenario.workload.inline is workload and scenario.hardware.replicas == 2
    assert run_scenario(scenario).summary["requests_total"] == 2  # arrivals before 1.5 s
