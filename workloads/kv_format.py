"""Storage formats of KV-cache elements and their exact bit cost.

A grouped integer format stores ``bits`` per element plus, per group of ``group_size``
elements, ``metadata_bits_per_group`` of scale and zero point. KIVI (Liu et al., ICML 2024)
uses fp16 scale + fp16 zero per group of 32: 2 + 32/32 = 3 bits per element for KIVI-2,
5 bits for KIVI-4. FP8 (e4m3) carries one per-tensor scale, negligible per element.
"""

from __future__ import annotations

from dataclasses import dataclass

from hardware.errors import KvsimError


@dataclass(frozen=True)
class KvFormat:
    """How one KV element is stored: ``bits`` of payload plus per-group metadata."""

    name: str
    bits: int
    group_size: int | None = None
    metadata_bits_per_group: int = 0

    @property
    def bits_per_element(self) -> float:
        if self.group_size is None:
            return float(self.bits)
        return self.bits + self.metadata_bits_per_group / self.group_size

    @property
    def bytes_per_element(self) -> float:
        return self.bits_per_element / 8


KV_FORMATS: dict[str, KvFormat] = {
    "fp32": KvFormat("fp32", 32),
    "fp16": KvFormat("fp16", 16),
    "bf16": KvFormat("bf16", 16),
    "fp8": KvFormat("fp8", 8),
    # int8 per token: one fp16 scale per 128-element head vector (symmetric, no zero point).
    "int8": KvFormat("int8", 8, group_size=128, metadata_bits_per_group=16),
    # int4/int2 grouped, fp16 scale + fp16 zero per 32 elements (KIVI's G=32).
    "int4": KvFormat("int4", 4, group_size=32, metadata_bits_per_group=32),
    "int2": KvFormat("int2", 2, group_size=32, metadata_bits_per_group=32),
}


def kv_format(name: str) -> KvFormat:
    """Look up a KV storage format by name (``fp16``, ``bf16``, ``fp8``, ``int8``, ``int4``,
    ``int2``, ``fp32``)."""
    try:
        return KV_FORMATS[name.lower()]
    except KeyError:
        raise KvsimError(
            f"unknown KV dtype {name!r}; expected one of {', '.join(KV_FORMATS)}",
            field="kv_dtype",
        ) from None


#: Bytes per weight element for the weight dtypes users may name.
WEIGHT_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "fp16": 2.0,
    "bf16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
    "fp4": 0.5,
}


def weight_bytes_per_param(dtype: str) -> float:
    try:
        return WEIGHT_BYTES[dtype.lower()]
    except KeyError:
        raise KvsimError(
            f"unknown weight dtype {dtype!r}; expected one of {', '.join(WEIGHT_BYTES)}",
            field="weight_dtype",
        ) from None
