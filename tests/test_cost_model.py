"""Roofline cost model and memory plan against hand calculations and published figures.

Specs are built here from ``shared/reference`` numbers (hardware.md §2.1, models.md §3) rather
than read from the catalog, so the expected values below do not move when catalog entries are
recalibrated. Independent truths used: the decode floor "all weights read once per step"
(JAX scaling book, "All About Transformer Inference"), 2 FLOPs per weight per token
(Kaplan et al. 2020), causal attention's c·p + c(c+1)/2 score count, the roofline ridge point
(Williams et al. 2009), the ring all-reduce volume 2(n−1)/n (Patarasuk & Yuan 2009), and
vLLM's memory accounting.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.errors import KvsimError
from hardware.specs import Accelerator, Efficiency
from sim.cli import main as cli_main
from sim.cost import BatchShape, CostModel, plan_memory
from sim.cost.roofline import COLLECTIVE_LATENCY_S, _windowed_key_sum
from workloads.model import ModelSpec, MoeSpec

EFF = Efficiency()  # gemm 0.7, attention 0.6, hbm 0.8, all-reduce 0.75, 300 µs per step

A100 = Accelerator(
    id="a100-80gb-sxm",
    name="A100 80GB SXM",
    vendor="nvidia",
    bf16_flops_per_s=312e12,
    memory_bytes=80_000_000_000,
    memory_bytes_per_s=2.039e12,
    host_link_bytes_per_s=32e9,
    scale_up_bytes_per_s=300e9,
    efficiency=EFF,
)
H100 = Accelerator(
    id="h100-sxm",
    name="H100 SXM",
    vendor="nvidia",
    bf16_flops_per_s=989e12,
    memory_bytes=80_000_000_000,
    memory_bytes_per_s=3.35e12,
    host_link_bytes_per_s=64e9,
    scale_up_bytes_per_s=450e9,
    efficiency=EFF,
)


def llama(id: str, layers: int, hidden: int, heads: int, kv: int, ffn: int, vocab: int, **kw):
    return ModelSpec(
        id=id,
        name=id,
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=128,
        ffn_size=ffn,
        vocab_size=vocab,
        max_context_tokens=131072,
        attention="mha" if kv == heads else "gqa",
        **kw,
    )


LLAMA2_7B = llama("llama-2-7b", 32, 4096, 32, 32, 11008, 32000)
LLAMA2_70B = llama("llama-2-70b", 80, 8192, 64, 8, 28672, 32000)
LLAMA31_405B = llama("llama-3.1-405b", 126, 16384, 128, 8, 53248, 128256)
MISTRAL_7B = llama(
    "mistral-7b-v0.1",
    32,
    4096,
    32,
    8,
    14336,
    32000,
    sliding_window_tokens=4096,
    sliding_window_pattern="all",
)
MIXTRAL = llama(
    "mixtral-8x7b", 32, 4096, 32, 8, 14336, 32000, moe=MoeSpec(8, 2, expert_ffn_size=14336)
)
GEMMA_LIKE_CLA = llama(
    "alt-window-cla",
    6,
    1024,
    8,
    4,
    2816,
    1000,
    sliding_window_tokens=64,
    sliding_window_pattern="alternate",
    kv_share_factor=2,
)
DEEPSEEK_V2 = ModelSpec(
    id="deepseek-v2",
    name="DeepSeek-V2",
    num_layers=60,
    hidden_size=5120,
    num_heads=128,
    num_kv_heads=128,
    head_dim=128,
    ffn_size=12288,
    vocab_size=102400,
    max_context_tokens=163840,
    attention="mla",
    kv_lora_rank=512,
    q_lora_rank=1536,
    qk_rope_head_dim=64,
    qk_nope_head_dim=128,
    v_head_dim=128,
    moe=MoeSpec(160, 6, expert_ffn_size=1536, shared_experts=2, dense_layers=1),
)


def hbm(acc: Accelerator) -> float:
    return acc.memory_bytes_per_s * acc.efficiency.hbm_fraction


def total_flops(step) -> float:
    return sum(c.flops for c in step.components)


# ---- the decode floor: weights / HBM bandwidth --------------------------------------------
def test_batch1_decode_is_weights_over_hbm_plus_overhead() -> None:
    """Scaling-book floor: a batch-1 decode step streams every weight once. Llama-2-7B: all
    matrices but the embedding table (one row is gathered) = 6.607e9 bf16 weights."""
    per_layer = 4 * 4096 * 4096 + 3 * 4096 * 11008
    weights = (32 * per_layer + 32000 * 4096) * 2
    floor_s = weights / (2.039e12 * 0.8)  # 8.10 ms
    step = CostModel(LLAMA2_7B, A100).step(BatchShape.decode(1, 1))
    assert step.duration_s >= floor_s + EFF.step_overhead_s
    assert step.duration_s == pytest.approx(floor_s + EFF.step_overhead_s, rel=0.01)
    assert step.compute_s == 0.0  # every kernel memory-bound at batch 1


def test_h100_over_a100_batch1_decode_is_the_hbm_ratio() -> None:
    ratio = 3.35 / 2.039
    a100 = CostModel(LLAMA2_70B, A100, tp=2).step(BatchShape.decode(1, 512))
    h100 = CostModel(LLAMA2_70B, H100, tp=2).step(BatchShape.decode(1, 512))
    assert a100.memory_s / h100.memory_s == pytest.approx(ratio, rel=1e-9)
    assert a100.duration_s / h100.duration_s == pytest.approx(ratio, rel=0.08)
    seven_a = CostModel(LLAMA2_7B, A100).decode_step_s(1, 512)
    seven_h = CostModel(LLAMA2_7B, H100).decode_step_s(1, 512)
    assert seven_a / seven_h == pytest.approx(ratio, rel=0.03)


# ---- prefill: 2N FLOPs per token plus causal attention ---------------------------------------
def test_prefill_flops_are_2n_per_token_plus_causal_attention() -> None:
    tokens = 8192
    per_layer = 4 * 4096 * 4096 + 3 * 4096 * 11008
    linear = 2 * tokens * 32 * per_layer + 2 * 32000 * 4096  # LM head: the last row only
    attention = 32 * 4 * 32 * 128 * (tokens * (tokens + 1) // 2)
    step = CostModel(LLAMA2_7B, A100).step(BatchShape.prefill(1, tokens))
    assert total_flops(step) == pytest.approx(linear + attention, rel=1e-12)
    non_embedding = LLAMA2_7B.param_count() - 2 * 32000 * 4096  # Kaplan's N
    assert total_flops(step) - attention == pytest.approx(2 * non_embedding * tokens, rel=1e-3)
    gemm_s = (linear - 2 * 32000 * 4096) / (312e12 * 0.7)
    attention_s = attention / (312e12 * 0.6)
    assert step.compute_s == pytest.approx(gemm_s + attention_s, rel=1e-9)
    assert step.component("attention_prefill").bound == "compute"


def test_chunked_prefill_attention_adds_up_to_the_whole_prompt() -> None:
    model = CostModel(MISTRAL_7B, A100)
    whole = model.step(BatchShape.prefill(1, 6000)).component("attention_prefill")
    chunks = BatchShape(
        prefill_tokens=np.array([2000, 2500, 1500]),
        prefill_context=np.array([0, 2000, 4500]),
        decode_context=np.zeros(0),
    )
    split = model.step(chunks).component("attention_prefill")
    assert split.flops == pytest.approx(whole.flops, rel=1e-12)


@given(
    first=st.integers(0, 300), length=st.integers(0, 300), window=st.none() | st.integers(1, 200)
)
@settings(max_examples=150, deadline=None)
def test_windowed_key_sum_matches_brute_force(first: int, length: int, window: int | None) -> None:
    expected = sum(
        n if window is None else min(n, window) for n in range(first + 1, first + length + 1)
    )
    got = _windowed_key_sum(np.array([first]), np.array([first + length]), window)
    assert int(got[0]) == expected


# ---- where decode turns compute-bound ----------------------------------------------------------
@pytest.mark.parametrize("weight_dtype, bytes_per_param", [("bf16", 2), ("fp8", 1)])
def test_gemm_crossover_batch_is_the_ridge_point(weight_dtype: str, bytes_per_param: int) -> None:
    """A GEMM over T tokens does 2·T·P FLOPs and reads P·b weight bytes, so it turns
    compute-bound at T* = (peak·0.7)/(HBM·0.8)·b/2 (A100 bf16: 133.9)."""
    crossover = 312e12 * 0.7 / (2.039e12 * 0.8) * bytes_per_param / 2
    model = CostModel(LLAMA2_7B, A100, weight_dtype=weight_dtype)
    below = model.step(BatchShape.decode(int(0.8 * crossover), 128)).component("ffn")
    above = model.step(BatchShape.decode(int(1.25 * crossover), 128)).component("ffn")
    assert below.bound == "memory"
    assert above.bound == "compute"


# ---- tensor and pipeline parallelism -----------------------------------------------------------
def test_tp2_halves_weight_bytes_and_adds_ring_allreduce() -> None:
    one = CostModel(LLAMA2_7B, A100).step(BatchShape.decode(1, 1))
    two = CostModel(LLAMA2_7B, A100, tp=2).step(BatchShape.decode(1, 1))
    for name in ("attn_proj", "ffn", "lm_head"):
        assert two.component(name).bytes / one.component(name).bytes == pytest.approx(0.5, rel=2e-3)
    message = 1 * 4096 * 2
    ring = 2 * (2 - 1) / 2 * message / (300e9 * 0.75) + COLLECTIVE_LATENCY_S
    assert two.component("tp_allreduce").time_s == pytest.approx(2 * 32 * ring, rel=1e-12)
    assert two.communication_s == two.component("tp_allreduce").time_s
    assert one.communication_s == 0.0
    pcie_only = dataclasses.replace(A100, scale_up_bytes_per_s=0.0)
    over_pcie = CostModel(LLAMA2_7B, pcie_only, tp=2).step(BatchShape.decode(1, 1))
    ring_pcie = message / (32e9 * 0.8) + COLLECTIVE_LATENCY_S
    assert over_pcie.component("tp_allreduce").time_s == pytest.approx(2 * 32 * ring_pcie)
    full = plan_memory(LLAMA2_70B, A100, tp=2).weights_bytes_per_gpu
    assert plan_memory(LLAMA2_70B, A100, tp=4).weights_bytes_per_gpu == pytest.approx(full / 2)


def test_pipeline_stages_add_sends_and_keep_kernel_time() -> None:
    batch = BatchShape.decode(16, 1000)
    one = CostModel(LLAMA2_70B, H100, tp=2).step(batch)
    two = CostModel(LLAMA2_70B, H100, tp=2, pp=2).step(batch)
    send = 16 * 8192 * 2 / (450e9 * 0.75) + COLLECTIVE_LATENCY_S
    assert two.component("pp_sendrecv").time_s == pytest.approx(send, rel=1e-12)
    assert two.compute_s + two.memory_s == pytest.approx(one.compute_s + one.memory_s, rel=1e-12)


# ---- MoE and sliding windows ---------------------------------------------------------------------
def test_mixtral_batch1_reads_two_of_eight_experts() -> None:
    expert = 3 * 4096 * 14336
    router = 4096 * 8
    io = (2 * 4096 + 3 * 2 * 14336 + 8) * 2  # activations in/out of the two experts + logits
    ffn = CostModel(MIXTRAL, A100).step(BatchShape.decode(1, 100)).component("ffn")
    assert ffn.bytes == pytest.approx(32 * ((2 * expert + router) * 2 + io), rel=1e-12)
    busy = CostModel(MIXTRAL, A100).step(BatchShape.decode(64, 100)).component("ffn")
    touched = 8 * (1 - (1 - 2 / 8) ** 64)  # ≈ 8: all experts
    io64 = 64 * io
    assert busy.bytes == pytest.approx(32 * ((touched * expert + router) * 2 + io64), rel=1e-12)


def test_mistral_decode_kv_reads_saturate_at_the_window() -> None:
    model = CostModel(MISTRAL_7B, A100)
    per_token_layer = 2 * 8 * 128 * 2

    def kv_bytes(context: int) -> float:
        return model.step(BatchShape.decode(4, context)).component("attention_decode").bytes

    assert kv_bytes(2048) == pytest.approx(32 * 4 * (2048 + 1) * per_token_layer)
    assert kv_bytes(4096) == pytest.approx(32 * 4 * (4096 + 1) * per_token_layer)
    assert kv_bytes(8192) == kv_bytes(4096) == kv_bytes(32000)
    no_window = CostModel(MIXTRAL, A100).step(BatchShape.decode(4, 8192))
    assert no_window.component("attention_decode").bytes == pytest.approx(
        2 * kv_bytes(4096), rel=1e-3
    )


def test_mla_decode_reads_the_replicated_latent() -> None:
    """DeepSeek-V2 caches 512 + 64 latent elements per layer; every TP rank holds all of it."""
    for tp in (1, 8):
        step = CostModel(DEEPSEEK_V2, H100, tp=tp).step(BatchShape.decode(1, 1000))
        assert step.component("attention_decode").bytes == pytest.approx(60 * 1001 * 576 * 2)


def test_selection_and_quantisation_shrink_decode_reads() -> None:
    model = CostModel(LLAMA2_7B, A100)
    full = BatchShape.decode(8, 4000)
    quest = BatchShape(
        prefill_tokens=np.zeros(0),
        prefill_context=np.zeros(0),
        decode_context=np.full(8, 4000),
        decode_read_tokens=np.full(8, 1000),
    )
    per_layer = 2 * 32 * 128 * 2
    assert model.step(quest).component("attention_decode").bytes == pytest.approx(
        32 * 8 * (1000 + 1) * per_layer
    )
    fp8 = CostModel(LLAMA2_7B, A100, kv_dtype="fp8").step(full).component("attention_decode")
    fp16 = model.step(full).component("attention_decode")
    assert fp8.bytes == pytest.approx(fp16.bytes / 2)
    dequant = CostModel(LLAMA2_7B, A100, kv_dtype="int4", kv_dequant_flops_per_element=2.0)
    extra = dequant.step(full).component("attention_decode").flops - fp16.flops
    assert extra == pytest.approx(2.0 * 32 * 8 * 4000 * 2 * 32 * 128)


def test_kv_transfer_time_is_bytes_over_the_host_link() -> None:
    batch = BatchShape(
        prefill_tokens=np.zeros(0),
        prefill_context=np.zeros(0),
        decode_context=np.full(4, 100),
        transfer_bytes=1e9,
    )
    step = CostModel(LLAMA2_7B, A100).step(batch)
    assert step.transfer_s == pytest.approx(1e9 / (32e9 * 0.8))


# ---- structure and the vectorised path ----------------------------------------------------------
@given(
    prefill=st.lists(st.tuples(st.integers(1, 3000), st.integers(0, 5000)), max_size=4),
    decode=st.lists(st.integers(1, 9000), max_size=40),
)
@settings(max_examples=60, deadline=None)
def test_breakdown_terms_add_up_to_the_duration(prefill, decode) -> None:
    batch = BatchShape(
        prefill_tokens=np.array([c for c, _ in prefill], dtype=np.int64),
        prefill_context=np.array([p for _, p in prefill], dtype=np.int64),
        decode_context=np.array(decode, dtype=np.int64),
    )
    for spec, acc, tp in ((MISTRAL_7B, A100, 2), (MIXTRAL, H100, 4), (GEMMA_LIKE_CLA, A100, 1)):
        step = CostModel(spec, acc, tp=tp).step(batch)
        terms = step.compute_s + step.memory_s + step.communication_s + step.transfer_s
        assert step.duration_s == pytest.approx(terms + step.overhead_s, rel=1e-12)
        assert sum(c.time_s for c in step.components) == pytest.approx(step.duration_s, rel=1e-12)
        assert (step.duration_s > 0) == (batch.num_tokens > 0)


@pytest.mark.parametrize("spec", [LLAMA2_7B, MISTRAL_7B, GEMMA_LIKE_CLA, MIXTRAL, DEEPSEEK_V2])
def test_decode_stretch_equals_a_loop_of_steps(spec: ModelSpec) -> None:
    rng = np.random.default_rng(7)
    context = rng.integers(1, 5000, size=37)
    context[:3] = [63, 64, 4095]  # straddle both windows
    model = CostModel(spec, H100, tp=2)
    fast = model.decode_stretch(context, 300)
    slow = np.array(
        [model.step(BatchShape.decode(context.size, context + k)).duration_s for k in range(300)]
    )
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=0)


# ---- memory plan -----------------------------------------------------------------------------------
def test_memory_plan_llama2_70b_tp2_a100_by_hand() -> None:
    h, ffn, layers, vocab = 8192, 28672, 80, 32000
    params = layers * (h * h * 2 + 2 * h * 1024 + 3 * h * ffn + 2 * h) + 2 * vocab * h + h
    weights = params * 2 / 2
    activations = 8192 * (2 * h + 3 * ffn / 2) * 2 + 256 * vocab / 2 * 4
    pool = 80e9 * 0.9 - weights - activations
    kv_per_gpu = layers * 2 * (8 // 2) * 128 * 2  # 163,840 B: 4 of 8 KV heads per GPU
    plan = plan_memory(LLAMA2_70B, A100, tp=2)
    assert plan.weights_bytes_per_gpu == pytest.approx(weights, rel=1e-12)
    assert plan.activation_bytes_per_gpu == pytest.approx(activations, rel=1e-12)
    assert plan.reserved_bytes_per_gpu == pytest.approx(8e9)
    assert plan.kv_pool_bytes_per_gpu == pytest.approx(pool, rel=1e-12)
    assert plan.kv_bytes_per_token_per_gpu == kv_per_gpu
    assert plan.kv_bytes_per_token == 327_680  # models.md §3: 320 KiB per token
    assert plan.num_blocks == math.floor(pool / (16 * kv_per_gpu))
    assert plan.max_kv_tokens == 16 * plan.num_blocks


def test_kv_heads_fewer_than_ranks_are_replicated() -> None:
    plan = plan_memory(LLAMA31_405B, H100, tp=16, weight_dtype="fp8")
    assert plan.kv_bytes_per_token_per_gpu == 126 * 2 * 1 * 128 * 2
    assert plan.kv_bytes_per_token == 2 * 516_096  # twice models.md's 504 KiB: 8 heads on 16 GPUs


def test_does_not_fit_names_model_device_and_shortfall() -> None:
    with pytest.raises(KvsimError) as info:
        plan_memory(LLAMA31_405B, H100)
    weights = LLAMA31_405B.param_count() * 2
    activations = 8192 * (2 * 16384 + 3 * 53248) * 2 + 256 * 128256 * 4
    block = 16 * 126 * 2 * 8 * 128 * 2
    short = math.ceil(weights + activations + block - 72e9)
    message = str(info.value)
    assert "llama-3.1-405b" in message and "h100-sxm" in message
    assert f"short by {short} bytes" in message
    assert info.value.field == "tp"
    assert "\n" not in message


# ---- CLI -------------------------------------------------------------------------------------------
def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli_main(["estimate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_estimate_json_is_one_object_matching_the_cost_model(capsys) -> None:
    from hardware.catalog import get_accelerator
    from workloads.model_catalog import get_model

    code, out, err = run_cli(
        capsys,
        *[
            "--model",
            "llama-3.1-70b",
            "--hardware",
            "h100-sxm",
            "--tp",
            "4",
            "--batch",
            "8",
            "--prompt",
            "2048",
        ],
        *["--context", "4096", "--json"],
    )
    assert code == 0
    result = json.loads(out)
    required = {
        "kv_bytes_per_token",
        "weights_bytes_per_gpu",
        "kv_pool_bytes_per_gpu",
        "max_kv_tokens",
        "prefill_s",
        "decode_step_s",
        "breakdown",
    }
    assert required <= result.keys()
    model = CostModel(get_model("llama-3.1-70b"), get_accelerator("h100-sxm"), tp=4)
    assert result["prefill_s"] == pytest.approx(model.prefill_s(8, 2048), rel=1e-12)
    assert result["decode_step_s"] == pytest.approx(model.decode_step_s(8, 4096), rel=1e-12)
    assert result["kv_bytes_per_token"] == 327_680
    assert result["breakdown"]["decode"]["duration_s"] == result["decode_step_s"]


def test_estimate_table_is_readable(capsys) -> None:
    code, out, _ = run_cli(
        capsys, *["--model", "llama-2-7b", "--hardware", "a100-80gb-sxm", "--prompt", "512"]
    )
    assert code == 0
    assert "max KV tokens" in out and "decode step" in out and "ffn" in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        ("--model no-such-model --hardware h100-sxm --prompt 8", "no-such-model"),
        ("--model llama-2-7b --hardware no-such-gpu --prompt 8", "no-such-gpu"),
        ("--model llama-3.1-405b --hardware h100-sxm --prompt 8", "short by"),
        ("--model llama-2-7b --hardware h100-sxm --prompt 0", "--prompt"),
        ("--model llama-2-7b --hardware h100-sxm --tp 3 --prompt 8", "tp"),
    ],
)
def test_estimate_errors_are_one_line_and_exit_2(capsys, argv: str, needle: str) -> None:
    code, out, err = run_cli(capsys, *argv.split(), "--json")
    assert code == 2
    assert out == ""
    assert needle in err and err.count("\n") == 1


def test_decode_attention_runs_at_its_own_fraction_and_defaults_to_attention() -> None:
    slow = dataclasses.replace(EFF, decode_attention_fraction=0.001)
    batch = BatchShape.decode(64, 4096)
    same = CostModel(LLAMA2_7B, A100).step(batch)
    explicit = CostModel(
        LLAMA2_7B, A100.with_efficiency(dataclasses.replace(EFF, decode_attention_fraction=0.6))
    ).step(batch)
    assert explicit.duration_s == same.duration_s  # None means attention_fraction
    cost = CostModel(LLAMA2_7B, A100.with_efficiency(slow)).step(batch)
    # compute-bound now: 32 layers x 64·4096 keys x 4·32·128 FLOPs / (312e12 x 0.001)
    flops = 32 * 64 * 4096 * 4 * 32 * 128
    assert cost.component("attention_decode").time_s == pytest.approx(flops / 312e9, rel=1e-12)
    assert cost.component("attention_decode").bound == "compute"
    prefill = BatchShape.prefill(1, 4096)
    fast, slowed = CostModel(LLAMA2_7B, A100).step(prefill), CostModel(
        LLAMA2_7B, A100.with_efficiency(slow)
    ).step(prefill)
    assert slowed.duration_s == fast.duration_s  # prefill attention keeps attention_fraction
