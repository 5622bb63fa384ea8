"""Quantization: exact byte accounting against the papers' formulas (KIVI §3.2: ``b + 32/G``
bits for the quantized part, fp16 residual; fp8 = half of fp16; grouped int4 = 5/16 of fp16)
and quantize→dequantize error within each method's theoretical bound."""

from __future__ import annotations

import numpy as np
import pytest

from sim.policies import KvLayout, get_policy
from workloads.kv_format import kv_format
from workloads.model_catalog import get_model

torch = pytest.importorskip("torch")

LLAMA = KvLayout.of(get_model("llama-3.1-8b"))  # 8 KV heads x 128: 1024 K + 1024 V elements


def quant(name, **params):
    return get_policy("quantization", name, **params)


def test_fp8_halves_fp16_and_grouped_formats_match_b_plus_32_over_g():
    tokens = np.array([1, 17, 4096])
    fp16 = quant("fp16").layer_bytes(tokens, LLAMA)
    assert np.array_equal(fp16, tokens * 2048 * 2.0)
    assert np.array_equal(quant("fp8").layer_bytes(tokens, LLAMA), fp16 / 2)
    assert np.allclose(quant("int4").layer_bytes(tokens, LLAMA), fp16 * 5 / 16)
    assert np.allclose(quant("int2").layer_bytes(tokens, LLAMA), fp16 * 3 / 16)
    # int8 per token: 8 bits + one fp16 scale per 128-element head vector.
    assert np.allclose(quant("int8").bits_per_element(tokens, LLAMA), 8 + 16 / 128)
    # The same figures as workloads.kv_format's catalogue of formats.
    assert quant("int4").kv_format(LLAMA).bits_per_element == kv_format("int4").bits_per_element


def test_kivi2_quantized_part_is_three_bits_per_element():
    kivi = quant("kivi", bits=2, group_size=32)
    assert kivi.quantized_bits_per_element(LLAMA) == 3.0
    assert quant("kivi", bits=4, group_size=32).quantized_bits_per_element(LLAMA) == 5.0
    # With no residual everything is quantized: exactly 3 bits per element.
    no_residual = quant("kivi", bits=2, group_size=32, residual_tokens=0)
    assert no_residual.bits_per_element(np.array([64, 4096]), LLAMA).tolist() == [3.0, 3.0]


def test_kivi_residual_split_and_bytes_by_hand():
    kivi = quant("kivi", bits=2, group_size=32, residual_tokens=128)
    # 300 tokens: keys keep 300 mod 128 = 44 fp16 (256 quantized), values keep the last 128.
    key_q, value_q = kivi.split(np.array([300, 100, 1024]))
    assert key_q.tolist() == [256, 0, 1024] and value_q.tolist() == [172, 0, 896]
    expected = (256 * 1024 * 3 / 8 + 44 * 1024 * 2) + (172 * 1024 * 3 / 8 + 128 * 1024 * 2)
    assert kivi.layer_bytes(np.array([300]), LLAMA)[0] == pytest.approx(expected)
    # Below R everything is fp16.
    assert kivi.layer_bytes(np.array([100]), LLAMA)[0] == 100 * 2048 * 2


def test_kivi_rejects_mla_and_bad_residual():
    from hardware.errors import KvsimError

    mla = KvLayout.of(get_model("deepseek-v2"))
    with pytest.raises(KvsimError):
        quant("kivi").layer_bytes(np.array([10]), mla)
    with pytest.raises(KvsimError) as err:
        quant("kivi", residual_tokens=100)
    assert err.value.field == "policies.quantization.residual_tokens"


def test_dequant_flops():
    kivi = quant("kivi", residual_tokens=128)
    # 300 tokens: 256 key tokens and 172 value tokens quantized, 2 FLOPs each element.
    assert kivi.dequant_flops(np.array([300]), LLAMA)[0] == 2 * (256 + 172) * 1024
    assert quant("int4").dequant_flops(np.array([10]), LLAMA)[0] == 2 * 10 * 2048
    assert quant("fp16").dequant_flops(np.array([10]), LLAMA)[0] == 0


# ---- tensor faces ----------------------------------------------------------------------------
def sample(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen) * 3 + 0.5


@pytest.mark.parametrize("name", ["int4", "int2"])
def test_grouped_error_within_half_a_step(name):
    policy = quant(name, group_size=32)
    x = sample((4, 50, 128))
    codes, scale, zero = policy.quantize(x)
    assert int(codes.max()) <= 2**policy.bits - 1
    error = (policy.dequantize(codes, scale, zero) - x).abs()
    bound = (scale / 2).expand(*codes.shape).reshape(x.shape)
    assert bool((error <= bound + 1e-5).all())
    # the bound is the per-group (max - min) / (2 (2^b - 1)) of the theory
    grouped = x.reshape(4, 50, 4, 32)
    span = grouped.amax(-1) - grouped.amin(-1)
    assert torch.allclose(scale.squeeze(-1), span / (2**policy.bits - 1))


def test_int8_per_token_error_within_half_a_step():
    policy = quant("int8")
    x = sample((4, 50, 128), seed=1)
    codes, scale, _ = policy.quantize(x)
    assert codes.dtype == torch.int8
    error = (policy.dequantize(codes, scale) - x).abs()
    assert bool((error <= scale / 2 + 1e-6).all())


def test_fp8_relative_error_at_most_two_to_minus_four():
    policy = quant("fp8")
    x = sample((4, 50, 128), seed=2)
    codes, scale, _ = policy.quantize(x)
    assert codes.dtype == torch.float8_e4m3fn
    error = (policy.dequantize(codes, scale) - x).abs()
    # normal e4m3 numbers (|x/scale| >= 2^-6): 3 mantissa bits, relative error <= 2^-4;
    # subnormals: absolute error <= half the subnormal spacing 2^-9.
    bound = torch.maximum(x.abs() * 2**-4, scale * 2**-10)
    assert bool((error <= bound * (1 + 1e-6)).all())


def test_kivi_tensor_face_matches_simulation_split_and_bounds():
    policy = quant("kivi", bits=2, group_size=32, residual_tokens=64)
    keys, values = sample((2, 200, 64), seed=3), sample((2, 200, 64), seed=4)
    cache = policy.quantize(keys, values)
    key_q, value_q = policy.split(np.array([200]))
    assert cache.quantized_key_tokens == key_q[0] == 192
    assert cache.quantized_value_tokens == value_q[0] == 136
    k_hat, v_hat = policy.dequantize(cache)
    # keys per channel over 32-token groups: error <= half of that group's step
    key_groups = keys[:, :192].transpose(1, 2).reshape(2, 64, 6, 32)
    key_step = (key_groups.amax(-1) - key_groups.amin(-1)) / 3
    key_error = (k_hat[:, :192] - keys[:, :192]).transpose(1, 2).reshape(2, 64, 6, 32).abs()
    assert bool((key_error <= key_step.unsqueeze(-1) / 2 + 1e-5).all())
    # values per token over 32-channel groups
    value_groups = values[:, :136].reshape(2, 136, 2, 32)
    value_step = (value_groups.amax(-1) - value_groups.amin(-1)) / 3
    value_error = (v_hat[:, :136] - values[:, :136]).reshape(2, 136, 2, 32).abs()
    assert bool((value_error <= value_step.unsqueeze(-1) / 2 + 1e-5).all())
    # the residual is fp16: relative error <= 2^-11
    assert torch.allclose(k_hat[:, 192:], keys[:, 192:], rtol=2**-11, atol=0)
    assert torch.allclose(v_hat[:, 136:], values[:, 136:], rtol=2**-11, atol=0)


def test_kivi_physical_blocks_round_each_part():
    kivi = quant("kivi", bits=2, group_size=32, residual_tokens=128)
    # 130 tokens, blocks of 16: keys 128 quantized + 2 fp16 (one block); values 2 quantized
    # (one block) + 128 fp16.
    expected = (128 * 1024 * 3 / 8 + 16 * 1024 * 2) + (16 * 1024 * 3 / 8 + 128 * 1024 * 2)
    assert kivi.layer_physical_bytes(np.array([130]), LLAMA, 16)[0] == pytest.approx(expected)
    assert expected <= quant("fp16").layer_physical_bytes(np.array([130]), LLAMA, 16)[0]
