"""KV policies inside the engine: the pool counts blocks at the strategy's format, sequences
hold what their selection keeps, decode steps read what it reads.

Expected numbers come from the memory plan's arithmetic (fp8 halves bytes per element, so the
same pool holds twice the tokens), from each policy's definition (a StreamingLLM sequence never
holds more than ``ceil((sinks + window) / 16)`` blocks; Quest keeps every token), and from
invariants (stretch fast-forward equals step-by-step execution; no step uses more blocks than
the pool has).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from hardware.errors import KvsimError
from sim.policies import get_policy, list_policies
from sim.policies.compose import STRATEGY_KINDS, KvStrategy
from sim.policies.footprint import KvFootprint
from sim.run import resolve, run_scenario
from sim.scenario import Scenario
from workloads.model_catalog import get_model

MODEL, GPU = "llama-3.1-8b", "h100-sxm"


def _scenario(policies: dict, *, requests: int = 200, fraction: float = 0.3, **extra) -> Scenario:
    """A memory-bound replica: 30% of an H100 leaves ~6 GB of KV (~46k fp16 tokens) for
    4,000-token prompts with 300-token answers arriving far faster than it can serve."""
    data = {
        "seed": 11,
        "model": {"name": MODEL},
        "hardware": {"accelerator": GPU, "gpu_memory_fraction": fraction},
        "workload": {
            "synthetic": {
                "arrival": "poisson",
                "rate_per_s": 40.0,
                "requests": requests,
                "prompt_tokens": {"dist": "fixed", "value": 4000},
                "output_tokens": {"dist": "fixed", "value": 300},
            }
        },
        "policies": policies,
    }
    data.update(extra)
    return Scenario.from_dict(data)


def _mean_batch(steps: pd.DataFrame) -> float:
    """Time-weighted mean of running sequences per step."""
    size = steps["num_prefill"] + steps["num_decode"]
    return float((size * steps["duration_s"]).sum() / steps["duration_s"].sum())


def test_fp8_doubles_the_pool_in_tokens() -> None:
    fp16 = resolve(_scenario({})).memory
    fp8 = resolve(_scenario({"quantization": {"name": "fp8"}})).memory
    # Same pool bytes, one byte per element instead of two; floor() may lose one block.
    assert fp8.kv_pool_bytes_per_gpu == fp16.kv_pool_bytes_per_gpu
    assert fp8.num_blocks in (2 * fp16.num_blocks, 2 * fp16.num_blocks + 1)
    assert fp8.max_kv_tokens / fp16.max_kv_tokens == pytest.approx(2.0, abs=1e-3)


def test_streaming_llm_window_sustains_a_larger_batch_and_more_throughput() -> None:
    full = run_scenario(_scenario({}))
    streaming = run_scenario(
        _scenario({"selection": {"name": "streaming_llm", "sink_tokens": 4, "window_tokens": 1020}})
    )
    assert full.memory.num_blocks == streaming.memory.num_blocks
    # Each streaming sequence holds at most ceil(1024 / 16) = 64 blocks instead of up to 269.
    running = streaming.steps["num_prefill"] + streaming.steps["num_decode"]
    assert (streaming.steps["kv_blocks_used"] <= 64 * running).all()
    assert _mean_batch(streaming.steps) > 2 * _mean_batch(full.steps)
    assert streaming.summary["throughput_tok_per_s"] > 1.5 * full.summary["throughput_tok_per_s"]
    assert streaming.summary["requests_completed"] == full.summary["requests_completed"] == 200


def test_quest_lowers_decode_time_but_not_capacity() -> None:
    full = resolve(_scenario({}))
    quest_scenario = _scenario({"selection": {"name": "quest", "budget_tokens": 512}})
    quest = resolve(quest_scenario)
    assert quest.memory.num_blocks == full.memory.num_blocks
    # Quest keeps every token and adds page summaries: a sequence holds at least as many blocks.
    tokens = np.array([100, 4000, 4300])
    assert np.all(quest.footprint.blocks(tokens, 4000) >= -(-tokens // 16))
    # Same decode batch, same contexts: Quest reads 2 dense layers fully and 512 tokens in 30.
    from sim.run import build_executor
    from sim.scheduler import Sequence, StepPlan

    seqs = tuple(Sequence(i, 0.0, 4000, 300, generated_tokens=1) for i in range(32))
    context = np.full(32, 4100)
    empty = np.zeros(0, dtype=np.int64)
    plan = StepPlan((), empty, empty, np.zeros(0, dtype=bool), seqs, context, (), 0, 0)
    slow = build_executor(_scenario({}), full).step(plan).duration_s
    fast = build_executor(quest_scenario, quest).step(plan).duration_s
    assert fast < 0.8 * slow
    # The decode attention part shrinks by about the read ratio (plus page-summary reads).
    read = quest.footprint.decode_read_tokens(context, 4000)[0]
    pages = np.ceil(4100 / 16)
    assert read == pytest.approx((2 * 4100 + 30 * (512 + pages)) / 32)


def test_kivi_pays_its_fp16_residual_in_blocks() -> None:
    kivi = resolve(_scenario({"quantization": {"name": "kivi", "bits": 2}}))
    fp16 = resolve(_scenario({}))
    # KIVI-2 with G=32 stores 3 bits per element in its quantized part (2 bits + an fp16 scale
    # and zero point per 32 elements: KIVI §3, the acceptance figure).
    assert kivi.footprint.bytes_per_token * 8 / (32 * 2048) == pytest.approx(3.0)
    assert kivi.memory.num_blocks > 5 * fp16.memory.num_blocks
    # At 4,000 tokens (R = 128): keys quantize 3,968 tokens and keep 32 in fp16, values
    # quantize 3,872 and keep 128. Per layer (1,024 elements per side): 3-bit parts
    # (3968 + 3872)·1024·3/8 B plus fp16 parts (32 + 128)·1024·2 B, over 16-token blocks of
    # 16·2048·3/8 B: 271.7 → 272 blocks (the fp16 cache would need 250).
    per_layer = (3968 + 3872) * 1024 * 3 / 8 + (32 + 128) * 1024 * 2
    assert kivi.footprint.blocks(np.array([4000]), 4000)[0] == np.ceil(per_layer / (16 * 768))


POLICY_CASES = {
    "streaming-prefix": {
        "selection": {"name": "streaming_llm", "window_tokens": 380},
        "prefix_cache": {},
    },
    "snapkv-fp8": {
        "selection": {"name": "snapkv", "budget_tokens": 256},
        "quantization": {"name": "fp8"},
    },
    "quest-kivi": {
        "selection": {"name": "quest", "budget_tokens": 256},
        "quantization": {"name": "kivi"},
    },
    "h2o-merge-radix": {
        "selection": {"name": "h2o"},
        "merging": {"name": "similarity_merge"},
        "prefix_cache": {"kind": "radix"},
    },
}


@pytest.mark.parametrize("name", sorted(POLICY_CASES))
def test_stretch_and_step_mode_agree_under_policies(name: str) -> None:
    scenario = Scenario.from_dict(
        {
            "seed": 5,
            "model": {"name": MODEL},
            "hardware": {"accelerator": GPU, "gpu_memory_fraction": 0.235},
            "workload": {
                "synthetic": {
                    "arrival": "poisson",
                    "rate_per_s": 25.0,
                    "requests": 150,
                    "prompt_tokens": {"dist": "lognormal", "median": 600, "sigma": 0.8},
                    "output_tokens": {"dist": "lognormal", "median": 120, "sigma": 0.8},
                    "prefix": {
                        "kind": "system_prompt",
                        "prompt_tokens": {"dist": "fixed", "value": 512},
                    },
                }
            },
            "policies": POLICY_CASES[name],
        }
    )
    fast = run_scenario(scenario)
    slow = run_scenario(scenario, step_mode=True)
    pd.testing.assert_frame_equal(fast.requests, slow.requests, check_exact=True)
    assert (fast.requests["status"] == "finished").all()
    assert len(fast.steps) < len(slow.steps)
    assert (slow.steps["kv_blocks_used"] <= fast.memory.num_blocks).all()


def _registered() -> list[tuple[str, str]]:
    listing = list_policies()
    return [(kind, name) for kind in STRATEGY_KINDS for name, _, _ in listing[kind]]


def _composable(parts: dict[str, str]) -> bool:
    merging = parts.get("merging")
    if merging is None or not get_policy("merging", merging).requires_eviction:
        return True
    return get_policy("selection", parts.get("selection", "full")).evicts


MATRIX = [(p,) for p in _registered()] + [
    (a, b) for a, b in itertools.combinations(_registered(), 2) if a[0] != b[0]
]


@pytest.mark.parametrize("parts", MATRIX, ids=lambda ps: "+".join(n for _, n in ps))
def test_every_policy_and_pair_runs_in_the_engine(parts: tuple[tuple[str, str], ...]) -> None:
    tables = {kind: {"name": name} for kind, name in parts}
    if not _composable({kind: name for kind, name in parts}):
        with pytest.raises(KvsimError) as err:
            _scenario(tables)
        assert err.value.field == "policies.merging.name"
        return
    scenario = _scenario(tables, requests=12, fraction=0.25)
    result = run_scenario(scenario)
    assert result.summary["requests_completed"] == 12
    steps = result.steps
    assert (steps["kv_blocks_used"] <= result.memory.num_blocks).all()
    # No sequence ever holds more bytes than the uncompressed fp16 cache of its context
    # (plus a side index, plus one block of rounding), checked on the footprint the engine used.
    footprint = resolve(scenario).footprint
    full = KvFootprint(KvStrategy(), get_model(MODEL))
    tokens = np.arange(1, 4300, 7)
    held = footprint.blocks(tokens, 4000) * footprint.bytes_per_token
    prompts = np.full_like(tokens, 4000)
    index = footprint.strategy.kv_bytes(footprint.model, tokens, prompts).index_bytes / 16
    slack = index + footprint.bytes_per_token + 1e-6
    assert np.all(held <= full.blocks(tokens, 4000) * full.bytes_per_token + slack)


def test_architecture_transform_in_the_scenario_changes_kv_bytes() -> None:
    base = resolve(_scenario({}))
    gqa2 = resolve(_scenario({}, model={"name": MODEL, "architecture": "gqa2"}))
    # Llama-3.1-8B has 8 KV heads; GQA-2 keeps 2: a quarter of the KV bytes per token
    # (128 KiB → 32 KiB), so four times the tokens in a slightly larger pool (fewer weights).
    assert gqa2.memory.kv_bytes_per_token * 4 == base.memory.kv_bytes_per_token
    assert gqa2.memory.max_kv_tokens >= 4 * base.memory.max_kv_tokens
    with pytest.raises(KvsimError, match="transform 'gqa3'"):
        resolve(_scenario({}, model={"name": MODEL, "architecture": "gqa3"}))
