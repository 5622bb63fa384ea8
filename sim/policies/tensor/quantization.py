"""Quantize and dequantize KV tensors (codes are kept one per byte; the simulation face does
the bit-packed byte accounting).

Error bounds, used by the tests: asymmetric ``b``-bit min-max (KIVI, reference §3.2:
``s = (max−min)/(2^b−1)``, ``q = clamp(round((x−min)/s))``, ``x̂ = q·s + min``) errs by at
most ``s/2`` per element; symmetric int8 (``s = max|x|/127``) by at most ``s/2``; fp8 e4m3
(3 mantissa bits, round to nearest) by at most ``2^-4`` relative for normal values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def _safe(scale: torch.Tensor) -> torch.Tensor:
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def fp8_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
    """Per-tensor scale ``max|x| / 448`` then cast to ``float8_e4m3fn``."""
    scale = _safe(x.float().abs().amax() / FP8_MAX)
    return (x.float() / scale).to(torch.float8_e4m3fn), scale, None


def fp8_dequantize(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return codes.float() * scale


def int8_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
    """Per token (last dimension = one head vector), symmetric."""
    scale = _safe(x.float().abs().amax(dim=-1, keepdim=True) / 127)
    codes = torch.round(x.float() / scale).clamp(-127, 127).to(torch.int8)
    return codes, scale, None


def int8_dequantize(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return codes.float() * scale


def grouped_quantize(
    x: torch.Tensor, bits: int, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric min-max in groups of ``group_size`` along the last dimension (which it must
    divide). Returns codes ``(..., n/G, G)`` as uint8, scale and zero (the group minimum)
    ``(..., n/G, 1)``."""
    if x.shape[-1] % group_size:
        raise ValueError(f"last dimension {x.shape[-1]} is not a multiple of {group_size}")
    grouped = x.float().reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)
    low = grouped.amin(dim=-1, keepdim=True)
    high = grouped.amax(dim=-1, keepdim=True)
    scale = _safe((high - low) / (2**bits - 1))
    codes = torch.round((grouped - low) / scale).clamp(0, 2**bits - 1).to(torch.uint8)
    return codes, scale, low


def grouped_dequantize(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor
) -> torch.Tensor:
    values = codes.float() * scale + zero
    return values.reshape(*values.shape[:-2], -1)


@dataclass(frozen=True)
class KiviCache:
    """One layer's KIVI cache: quantized keys per channel (``(H, d, q_k/G, G)`` codes over
    tokens), fp16 key residual, quantized values per token (``(H, q_v, d/G, G)``), fp16 value
    residual."""

    key_codes: torch.Tensor
    key_scale: torch.Tensor
    key_zero: torch.Tensor
    key_residual: torch.Tensor
    value_codes: torch.Tensor
    value_scale: torch.Tensor
    value_zero: torch.Tensor
    value_residual: torch.Tensor

    @property
    def quantized_key_tokens(self) -> int:
        return self.key_codes.shape[-2] * self.key_codes.shape[-1]

    @property
    def quantized_value_tokens(self) -> int:
        return self.value_codes.shape[1]


def kivi_quantize(
    keys: torch.Tensor, values: torch.Tensor, bits: int, group_size: int, residual: int
) -> KiviCache:
    """KIVI prefill of ``(H, T, d)`` keys and values: keys quantize the first
    ``T − T mod R`` tokens per channel (groups of ``G`` tokens), values the first
    ``T − min(T, R)`` tokens per token (groups of ``G`` channels); the rest stays fp16."""
    length = keys.shape[1]
    key_q = length - (length % residual if residual else 0)
    value_q = length - min(length, residual)
    key_codes, key_scale, key_zero = grouped_quantize(
        keys[:, :key_q].transpose(1, 2), bits, group_size
    )
    value_codes, value_scale, value_zero = grouped_quantize(values[:, :value_q], bits, group_size)
    return KiviCache(
        key_codes,
        key_scale,
        key_zero,
        keys[:, key_q:].half(),
        value_codes,
        value_scale,
        value_zero,
        values[:, value_q:].half(),
    )


def kivi_dequantize(cache: KiviCache) -> tuple[torch.Tensor, torch.Tensor]:
    keys = grouped_dequantize(cache.key_codes, cache.key_scale, cache.key_zero).transpose(1, 2)
    values = grouped_dequantize(cache.value_codes, cache.value_scale, cache.value_zero)
    return (
        torch.cat([keys, cache.key_residual.float()], dim=1),
        torch.cat([values, cache.value_residual.float()], dim=1),
    )
