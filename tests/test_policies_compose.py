"""The acceptance matrix: every registered policy alone and every pair of policies of
different kinds composed, on one short scenario, against invariants (bytes never exceed the
full cache, more compression never costs more memory, kept counts follow each method's
formula); block-granularity physical bytes vs logical bytes; multiplicative composition."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from hardware.errors import KvsimError
from sim.policies import KvStrategy, as_cla, get_policy, list_policies
from sim.policies.compose import STRATEGY_KINDS
from workloads.model_catalog import get_model

LLAMA = get_model("llama-3.1-8b")  # 32 layers, 8 KV heads x 128: 4096 fp16 bytes/token/layer
# Scenario: a sequence mid-prefill, short and long prompts, some decoded tokens.
PROMPT = np.array([3000, 100, 3000, 9000, 20])
CTX = np.array([1200, 150, 3300, 9500, 20])
FULL = np.minimum(CTX, np.inf)


def registered():
    listing = list_policies()
    return [(kind, name) for kind in STRATEGY_KINDS for name, _, _ in listing[kind]]


def build(*pairs):
    parts = {kind: get_policy(kind, name) for kind, name in pairs}
    return KvStrategy(**parts)


def expected_kept(name, policy, ctx, prompt):
    """Each method's kept-token formula, written from its paper/reference (mean per layer)."""

    def budget(n):
        if policy.budget_tokens is not None:
            return np.minimum(n, policy.budget_tokens)
        return np.minimum(n, np.maximum(np.floor(n * policy.budget_fraction + 1e-9), 1))

    generated = np.maximum(ctx - prompt, 0)
    once = lambda kept_prompt: np.where(ctx < prompt, ctx, kept_prompt + generated)  # noqa: E731
    if name in ("full", "quest"):
        return ctx
    if name == "streaming_llm":
        return np.minimum(ctx, policy.sink_tokens + policy.window_tokens)
    if name in ("h2o", "tova"):
        return budget(ctx)
    if name in ("snapkv", "ada_kv"):
        return once(budget(prompt))
    if name == "knorm":
        return once(budget(prompt))  # dense_layers = 0 by default
    if name == "duo_attention":
        f = policy.streaming_head_fraction
        return f * np.minimum(ctx, policy.sink_tokens + policy.window_tokens) + (1 - f) * ctx
    if name == "pyramidkv":
        return None  # its per-layer schedule is tested by hand in test_policies_selection
    raise AssertionError(f"no formula for {name}: add one")


def check_invariants(strategy):
    b = strategy.kv_bytes(LLAMA, CTX, PROMPT, block_tokens=16)
    tol = 1e-6
    assert np.all(b.stored_bytes <= b.full_bytes * (1 + tol))
    assert np.all(b.physical_bytes - b.index_bytes <= b.full_physical_bytes * (1 + tol))
    assert np.all(b.logical_bytes <= b.stored_bytes * (1 + tol))
    assert np.all(b.physical_bytes >= b.stored_bytes * (1 - tol))
    read = strategy.read_bytes_per_decode_step(LLAMA, CTX, PROMPT)
    assert np.all(read <= b.stored_bytes + b.index_bytes + tol)
    assert np.all(strategy.decode_extra_flops(LLAMA, CTX, PROMPT) >= 0)
    assert np.all(strategy.prefill_extra_flops(LLAMA, PROMPT) >= 0)
    kept = strategy.selection.kept_tokens(CTX, PROMPT, LLAMA.num_layers)
    assert np.all(kept <= CTX)
    formula = expected_kept(strategy.selection.name, strategy.selection, CTX, PROMPT)
    if formula is not None:
        assert np.allclose(kept, formula)


def needs_eviction_but_has_none(parts):
    merging = parts.get("merging")
    selection = get_policy("selection", parts.get("selection", "full"))
    return (
        merging is not None
        and get_policy("merging", merging).requires_eviction
        and not selection.evicts
    )


@pytest.mark.parametrize("pair", registered(), ids=lambda p: f"{p[0]}.{p[1]}")
def test_every_policy_alone(pair):
    if needs_eviction_but_has_none(dict([pair])):
        with pytest.raises(KvsimError) as err:
            build(pair)
        assert err.value.field == "policies.merging.name"
        return
    check_invariants(build(pair))


PAIRS = [(a, b) for a, b in itertools.combinations(registered(), 2) if a[0] != b[0]]


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0][1]}+{p[1][1]}")
def test_every_pair_composed(pair):
    if needs_eviction_but_has_none(dict(pair)):
        with pytest.raises(KvsimError) as err:
            build(*pair)
        assert err.value.field == "policies.merging.name"
        return
    check_invariants(build(*pair))


# Each built-in lossy policy's compression knob, values in increasing-memory order.
KNOBS = {
    ("selection", "streaming_llm"): ("window_tokens", [64, 512, 4096]),
    ("selection", "h2o"): ("budget_fraction", [0.05, 0.2, 0.6]),
    ("selection", "tova"): ("budget_fraction", [0.05, 0.125, 0.6]),
    ("selection", "snapkv"): ("budget_tokens", [64, 1024, 8192]),
    ("selection", "pyramidkv"): ("budget_tokens", [64, 1024, 8192]),
    ("selection", "ada_kv"): ("budget_tokens", [64, 1024, 8192]),
    ("selection", "quest"): ("budget_tokens", [64, 1024, 8192]),
    ("selection", "knorm"): ("budget_fraction", [0.1, 0.5, 0.9]),
    ("selection", "duo_attention"): ("streaming_head_fraction", [1.0, 0.5, 0.0]),
    ("quantization", "int4"): ("group_size", [128, 32, 8]),
    ("quantization", "int2"): ("group_size", [128, 32, 8]),
    ("quantization", "kivi"): ("residual_tokens", [0, 32, 128, 1024]),
    ("low_rank", "palu"): ("rank_fraction", [0.25, 0.5, 1.0]),
    ("merging", "minicache"): ("start_layer_fraction", [0.0, 0.5, 1.0]),
}
LOSSLESS_OR_FORMAT = {
    ("selection", "full"),
    ("quantization", "fp16"),
    ("quantization", "bf16"),
    ("quantization", "fp8"),
    ("quantization", "int8"),
    ("merging", "similarity_merge"),  # same memory as its eviction policy by definition
}


def test_every_builtin_has_a_knob():
    builtin = {
        (kind, name)
        for kind, rows in list_policies().items()
        for name, cls, _ in rows
        if cls.__module__.startswith("sim.policies") and kind in STRATEGY_KINDS
    }
    assert builtin - LOSSLESS_OR_FORMAT - set(KNOBS) == set()


@pytest.mark.parametrize("key", sorted(KNOBS), ids=lambda k: k[1])
def test_more_compression_never_costs_more_memory(key):
    kind, name = key
    param, values = KNOBS[key]
    stored, physical, read, logical = [], [], [], []
    for value in values:
        strategy = KvStrategy(**{kind: get_policy(kind, name, **{param: value})})
        if kind == "merging" and strategy.merging.requires_eviction:
            continue
        b = strategy.kv_bytes(LLAMA, CTX, PROMPT)
        stored.append(b.stored_bytes)
        physical.append(b.physical_bytes)
        logical.append(b.logical_bytes)
        read.append(strategy.read_bytes_per_decode_step(LLAMA, CTX, PROMPT))
    for series in (stored, physical, read, logical):
        assert all(np.all(a <= b + 1e-6) for a, b in itertools.pairwise(series))
    assert np.any(read[0] < read[-1]) or np.any(logical[0] < logical[-1]), "the knob must act"


def test_formats_order_by_bits():
    order = ["int2", "int4", "fp8", "int8", "fp16"]
    sizes = [
        KvStrategy(quantization=get_policy("quantization", n))
        .kv_bytes(LLAMA, CTX, PROMPT)
        .stored_bytes
        for n in order
    ]
    assert all(np.all(a < b) for a, b in itertools.pairwise(sizes))


def test_block_granularity_physical_vs_stored():
    # streaming keeps 4 + 13 = 17 tokens: blocks of 16 charge 32 tokens per layer.
    strategy = KvStrategy(get_policy("selection", "streaming_llm", sink_tokens=4, window_tokens=13))
    b = strategy.kv_bytes(LLAMA, [1000], [1000], block_tokens=16)
    assert b.stored_bytes[0] == 17 * 4096 * 32
    assert b.physical_bytes[0] == 32 * 4096 * 32
    assert b.full_bytes[0] == 1000 * 4096 * 32
    assert b.full_physical_bytes[0] == 1008 * 4096 * 32


def test_masking_saves_logically_not_physically():
    masked = KvStrategy(get_policy("selection", "ada_kv", budget_tokens=512))
    b = masked.kv_bytes(LLAMA, [4000], [4000])
    assert b.physical_savings_bytes[0] == 0
    assert b.logical_savings_bytes[0] == (4000 - 512) * 4096 * 32
    freed = KvStrategy(get_policy("selection", "ada_kv", budget_tokens=512, physical=True))
    assert (
        freed.kv_bytes(LLAMA, [4000], [4000]).physical_savings_bytes[0] == (4000 - 512) * 4096 * 32
    )


def test_quest_saves_bandwidth_not_capacity():
    quest = KvStrategy(get_policy("selection", "quest", budget_tokens=1000, page_tokens=16))
    b = quest.kv_bytes(LLAMA, [5000], [4000])
    pages = math.ceil(5000 / 16)
    assert b.stored_bytes[0] == 5000 * 4096 * 32
    assert b.index_bytes[0] == pages * 4096 * 30  # min+max keys, 30 sparse layers
    read = quest.read_bytes_per_decode_step(LLAMA, [5000], [4000])[0]
    assert read == (2 * 5000 + 30 * 1008) * 4096 + pages * 4096 * 30
    assert quest.decode_read_tokens(LLAMA, [5000], [4000])[0] == (2 * 5000 + 30 * 1008) / 32


def test_selection_quantization_low_rank_multiply():
    # SnapKV keeps 1024 + 100; int4 costs 5/16 of fp16; Palu keeps half the elements.
    strategy = KvStrategy(
        get_policy("selection", "snapkv", budget_tokens=1024),
        get_policy("quantization", "int4"),
        get_policy("low_rank", "palu", rank_fraction=0.5),
    )
    b = strategy.kv_bytes(LLAMA, [4100], [4000])
    assert b.stored_bytes[0] == pytest.approx(1124 * 4096 * 32 * (5 / 16) * 0.5)
    # Palu groups of 4 heads: rank 256 per group, 2 groups; keys rebuilt at 2·256·512 per group.
    extra = strategy.decode_extra_flops(LLAMA, [4100], [4000])[0]
    dequant = 2 * 1124 * 1024 * 32
    rebuild = 1124 * 32 * (2 * 256 * 4 * 128 * 2)
    assert extra == pytest.approx(dequant + rebuild)


def test_sliding_window_and_cla_layers():
    mistral = get_model("mistral-7b-v0.1")  # every layer slides over 4096 tokens
    b = KvStrategy().kv_bytes(mistral, [10_000], [10_000])
    assert b.full_bytes[0] == mistral.kv_bytes_for_sequence(10_000)
    cla = as_cla(LLAMA, 2)
    assert KvStrategy().kv_bytes(cla, [1000], [1000]).stored_bytes[0] == 1000 * 4096 * 16


def test_minicache_layer_factor_by_hand():
    strategy = KvStrategy(merging=get_policy("merging", "minicache"))
    # layers 16..31 form 8 pairs; each merged layer stores ((1-ρ)(E + 2V)/2 + ρE)/E of its
    # bytes with E = 2048 elements in V = 16 head vectors, ρ = 0.05.
    factor = (0.95 * (2048 + 32) / 2 + 0.05 * 2048) / 2048
    b = strategy.kv_bytes(LLAMA, [1000], [1000])
    assert b.stored_bytes[0] == pytest.approx(1000 * 4096 * (16 + 16 * factor))


def test_similarity_merge_costs_its_eviction_policys_memory():
    snap = get_policy("selection", "snapkv", budget_tokens=512)
    alone = KvStrategy(snap).kv_bytes(LLAMA, CTX, PROMPT)
    merged = KvStrategy(snap, merging=get_policy("merging", "similarity_merge"))
    assert np.array_equal(merged.kv_bytes(LLAMA, CTX, PROMPT).stored_bytes, alone.stored_bytes)
    # merging the 2488 dropped prompt tokens of the 3000-token prompt costs extra FLOPs
    extra = (
        merged.prefill_extra_flops(LLAMA, [3000])[0]
        - KvStrategy(snap).prefill_extra_flops(LLAMA, [3000])[0]
    )
    assert extra == 32 * 8 * 2488 * (2 * 128 * 512 + 3 * 128)


def test_from_tables_and_wrong_kind():
    strategy = KvStrategy.from_tables(
        {
            "selection": {"name": "h2o", "budget_tokens": 256},
            "quantization": {"name": "fp8"},
            "prefix_cache": {"enabled": True},
        }
    )
    assert strategy.label() == "h2o(budget_fraction=None, budget_tokens=256) + fp8"
    with pytest.raises(KvsimError) as err:
        KvStrategy(selection=get_policy("quantization", "fp8"))
    assert err.value.field == "policies.selection"
