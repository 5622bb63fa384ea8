"""KV quantization: exact bytes per layer, dequantisation work, and tensor faces.

Byte accounting per KV-holding layer for ``t`` stored tokens of a :class:`KvLayout` with
``E`` elements per token in ``V`` head vectors of ``d`` elements (fp16 metadata, 2 bytes):

* fp16/bf16: ``2tE``; fp8 (e4m3): ``tE`` (one per-tensor scale per layer, not per element);
* int8 per token, symmetric: ``tE + 2tV`` (an fp16 scale per head vector);
* int4/int2 grouped, asymmetric: ``t(E·b/8 + 4·V·ceil(d/G))`` (fp16 scale and zero per group
  of ``G`` channels; FlexGen/KIVI-style min-max);
* KIVI (Liu et al., ICML 2024, reference §3.2): keys per channel in groups of ``G`` tokens,
  values per token in groups of ``G`` channels, recent tokens fp16. Of ``t`` tokens the keys
  keep ``t mod R`` in fp16 (the residual fills to ``R`` then is quantized as a block) and the
  values keep ``min(t, R)``: ``keys = q_k·E_k·b/8 + 4·E_k·q_k/G + 2·E_k·(t−q_k)`` with
  ``q_k = t − t mod R``; ``values = q_v·E_v·(b/8) + 4·q_v·V_v·ceil(d/G) + 2·E_v·(t−q_v)``
  with ``q_v = t − min(t, R)``. The quantized part costs ``b + 32/G`` bits per element
  (KIVI-2, G=32: 3 bits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from hardware.errors import KvsimError
from sim.policies.base import KvLayout, PolicyBase, check_positive_int, groups_per_vector
from sim.policies.registry import register
from workloads.kv_format import KvFormat

FP16_BYTES = 2.0


def _tokens(tokens: Any) -> np.ndarray:
    return np.asarray(tokens, dtype=np.float64)


class QuantizationBase(PolicyBase):
    """``layer_bytes`` is linear in tokens for every format but KIVI."""

    dequant_flops_per_element: ClassVar[float] = 0.0

    def bytes_per_token(self, layout: KvLayout) -> float:
        raise NotImplementedError

    def layer_bytes(self, tokens: Any, layout: KvLayout) -> np.ndarray:
        """Exact bytes of ``tokens`` stored tokens in one layer (any array shape)."""
        return _tokens(tokens) * self.bytes_per_token(layout)

    def layer_physical_bytes(self, tokens: Any, layout: KvLayout, block_tokens: int) -> np.ndarray:
        """Bytes of the whole ``block_tokens``-token blocks holding ``tokens`` tokens: a
        partly filled block is charged in full."""
        return self.layer_bytes(np.ceil(_tokens(tokens) / block_tokens) * block_tokens, layout)

    def bits_per_element(self, tokens: Any, layout: KvLayout) -> np.ndarray:
        """Average stored bits per KV element over ``tokens`` tokens (NaN for 0 tokens)."""
        t = _tokens(tokens)
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.layer_bytes(t, layout) * 8 / (t * layout.elements)

    def dequant_flops(self, tokens: Any, layout: KvLayout) -> np.ndarray:
        """Dequantisation FLOPs to read ``tokens`` tokens of one layer."""
        return _tokens(tokens) * layout.elements * self.dequant_flops_per_element

    def kv_format(self, layout: KvLayout) -> KvFormat:
        """The steady-state per-element format, for code that takes a :class:`KvFormat`."""
        raise NotImplementedError


@register("quantization", "fp16")
@dataclass(frozen=True)
class Fp16(QuantizationBase):
    """Unquantized 16-bit KV (the baseline)."""

    def bytes_per_token(self, layout: KvLayout) -> float:
        return layout.elements * FP16_BYTES

    def kv_format(self, layout: KvLayout) -> KvFormat:
        return KvFormat(self.name, 16)


@register("quantization", "bf16")
@dataclass(frozen=True)
class Bf16(Fp16):
    """Unquantized bfloat16 KV: the same bytes as fp16."""


@register("quantization", "fp8")
@dataclass(frozen=True)
class Fp8(QuantizationBase):
    """FP8 e4m3 KV with one scale per tensor (vLLM ``kv_cache_dtype=fp8``): half of fp16.
    Dequantisation multiplies by the scale: 1 FLOP per element."""

    dequant_flops_per_element: ClassVar[float] = 1.0

    def bytes_per_token(self, layout: KvLayout) -> float:
        return float(layout.elements)

    def kv_format(self, layout: KvLayout) -> KvFormat:
        return KvFormat(self.name, 8)

    def quantize(self, x: Any) -> tuple[Any, Any, None]:
        from sim.policies.tensor import quantization as tq

        return tq.fp8_quantize(x)

    def dequantize(self, codes: Any, scale: Any, zero: Any = None) -> Any:
        from sim.policies.tensor import quantization as tq

        return tq.fp8_dequantize(codes, scale)


@register("quantization", "int8")
@dataclass(frozen=True)
class Int8(QuantizationBase):
    """INT8 per token, symmetric: ``q = round(x / s)`` with ``s = max|x| / 127`` per head
    vector, an fp16 scale each. Dequantisation: 1 FLOP per element."""

    dequant_flops_per_element: ClassVar[float] = 1.0

    def bytes_per_token(self, layout: KvLayout) -> float:
        vectors = layout.elements // layout.vector_elements
        return layout.elements + FP16_BYTES * vectors

    def kv_format(self, layout: KvLayout) -> KvFormat:
        return KvFormat(self.name, 8, group_size=layout.vector_elements, metadata_bits_per_group=16)

    def quantize(self, x: Any) -> tuple[Any, Any, None]:
        from sim.policies.tensor import quantization as tq

        return tq.int8_quantize(x)

    def dequantize(self, codes: Any, scale: Any, zero: Any = None) -> Any:
        from sim.policies.tensor import quantization as tq

        return tq.int8_dequantize(codes, scale)


@dataclass(frozen=True)
class _GroupedInt(QuantizationBase):
    """Asymmetric min-max integer quantization in groups of ``group_size`` channels of one
    token (fp16 scale and zero per group): ``b + 32/G`` bits per element when ``G`` divides
    the head dimension. Dequantisation ``q·s + z``: 2 FLOPs per element."""

    bits: ClassVar[int]
    group_size: int = 32
    dequant_flops_per_element: ClassVar[float] = 2.0

    def __post_init__(self) -> None:
        check_positive_int(self.group_size, "group_size")

    def bytes_per_token(self, layout: KvLayout) -> float:
        vectors = layout.elements // layout.vector_elements
        groups = vectors * groups_per_vector(layout.vector_elements, self.group_size)
        return layout.elements * self.bits / 8 + 2 * FP16_BYTES * groups

    def kv_format(self, layout: KvLayout) -> KvFormat:
        return KvFormat(
            self.name, self.bits, group_size=self.group_size, metadata_bits_per_group=32
        )

    def quantize(self, x: Any) -> tuple[Any, Any, Any]:
        from sim.policies.tensor import quantization as tq

        return tq.grouped_quantize(x, self.bits, self.group_size)

    def dequantize(self, codes: Any, scale: Any, zero: Any) -> Any:
        from sim.policies.tensor import quantization as tq

        return tq.grouped_dequantize(codes, scale, zero)


@register("quantization", "int4")
@dataclass(frozen=True)
class Int4(_GroupedInt):
    """4-bit grouped KV, ``G=32`` (KIVI's group): 5 bits per element, 5/16 of fp16."""

    bits: ClassVar[int] = 4


@register("quantization", "int2")
@dataclass(frozen=True)
class Int2(_GroupedInt):
    """2-bit grouped KV, ``G=32``: 3 bits per element."""

    bits: ClassVar[int] = 2


@register("quantization", "kivi")
@dataclass(frozen=True)
class Kivi(QuantizationBase):
    """KIVI (Liu et al., ICML 2024): keys per channel, values per token, group ``G``, recent
    tokens fp16 (module docstring for the exact split). Defaults: 2 bits, ``G=32``,
    ``R=128`` (the repository's LongBench runs; ``R % G == 0`` as KIVI asserts).
    Dequantisation: 2 FLOPs per quantized element read."""

    bits: int = 2
    group_size: int = 32
    residual_tokens: int = 128
    dequant_flops_per_element: ClassVar[float] = 2.0

    def __post_init__(self) -> None:
        if self.bits not in (1, 2, 4, 8):
            raise KvsimError(
                f"must be 1, 2, 4 or 8 (packed into int32), got {self.bits!r}", field="bits"
            )
        check_positive_int(self.group_size, "group_size")
        check_positive_int(self.residual_tokens, "residual_tokens", 0)
        if self.residual_tokens % self.group_size:
            raise KvsimError(
                f"must be a multiple of group_size {self.group_size} (KIVI asserts R % G == 0), "
                f"got {self.residual_tokens}",
                field="residual_tokens",
            )

    def _check(self, layout: KvLayout) -> None:
        if layout.joint:
            raise KvsimError(
                "KIVI quantizes keys per channel and values per token; an MLA latent has no "
                "separate keys and values (use int4 or int2)",
                field="policies.quantization.name",
            )

    def split(self, tokens: Any) -> tuple[np.ndarray, np.ndarray]:
        """Quantized key tokens ``t − t mod R`` and quantized value tokens ``t − min(t, R)``."""
        t = _tokens(tokens)
        if self.residual_tokens == 0:
            return t, t
        key_q = t - np.mod(t, self.residual_tokens)
        value_q = t - np.minimum(t, self.residual_tokens)
        return key_q, value_q

    def quantized_bits_per_element(self, layout: KvLayout) -> float:
        """Bits per element of the quantized part (keys and values together)."""
        key_bits = self.bits + 32 / self.group_size
        value_groups = groups_per_vector(layout.vector_elements, self.group_size)
        value_bits = self.bits + 32 * value_groups / layout.vector_elements
        return (
            key_bits * layout.key_elements + value_bits * layout.value_elements
        ) / layout.elements

    def _bytes(
        self,
        key_q: np.ndarray,
        key_fp: np.ndarray,
        value_q: np.ndarray,
        value_fp: np.ndarray,
        layout: KvLayout,
    ) -> np.ndarray:
        self._check(layout)
        ek, ev = layout.key_elements, layout.value_elements
        value_vectors = ev // layout.vector_elements
        value_groups = value_vectors * groups_per_vector(layout.vector_elements, self.group_size)
        keys = key_q * ek * self.bits / 8 + 2 * FP16_BYTES * ek * key_q / self.group_size
        values = value_q * (ev * self.bits / 8 + 2 * FP16_BYTES * value_groups)
        return keys + values + FP16_BYTES * (ek * key_fp + ev * value_fp)

    def layer_bytes(self, tokens: Any, layout: KvLayout) -> np.ndarray:
        t = _tokens(tokens)
        key_q, value_q = self.split(t)
        return self._bytes(key_q, t - key_q, value_q, t - value_q, layout)

    def layer_physical_bytes(self, tokens: Any, layout: KvLayout, block_tokens: int) -> np.ndarray:
        """The quantized keys, quantized values and the two fp16 residuals each occupy whole
        blocks (four block lists per layer). With ``R`` a multiple of the block size this
        never exceeds the fp16 cache's blocks."""
        t = _tokens(tokens)
        key_q, value_q = self.split(t)

        def up(x: np.ndarray) -> np.ndarray:
            return np.ceil(x / block_tokens) * block_tokens

        return self._bytes(up(key_q), up(t - key_q), up(value_q), up(t - value_q), layout)

    def dequant_flops(self, tokens: Any, layout: KvLayout) -> np.ndarray:
        key_q, value_q = self.split(tokens)
        quantized = key_q * layout.key_elements + value_q * layout.value_elements
        return quantized * self.dequant_flops_per_element

    def kv_format(self, layout: KvLayout) -> KvFormat:
        return KvFormat(
            f"kivi-{self.bits}", self.bits, group_size=self.group_size, metadata_bits_per_group=32
        )

    def quantize(self, keys: Any, values: Any) -> Any:
        """``(H, T, d)`` keys and values → a :class:`~sim.policies.tensor.quantization.KiviCache`."""
        from sim.policies.tensor import quantization as tq

        return tq.kivi_quantize(keys, values, self.bits, self.group_size, self.residual_tokens)

    def dequantize(self, cache: Any) -> tuple[Any, Any]:
        from sim.policies.tensor import quantization as tq

        return tq.kivi_dequantize(cache)
