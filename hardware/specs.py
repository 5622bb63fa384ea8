"""Frozen hardware specifications: accelerators, memory tiers, links, nodes, efficiencies.

All numbers are in base SI units named by the field suffix: bytes, bytes/s, FLOP/s, seconds,
watts, USD. Peak numbers are *dense* (no 2:4 sparsity). Achieved performance is peak times an
:class:`Efficiency` fraction; the defaults come from measured ratios in the reference
(``shared/reference/hardware.md`` §2.4) and calibration replaces them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hardware.errors import KvsimError

#: Compute dtypes with a peak-rate field on :class:`Accelerator`.
COMPUTE_DTYPES = ("bf16", "fp16", "fp8", "int8", "fp4", "fp32")


@dataclass(frozen=True)
class Efficiency:
    """Achieved fractions of peak and fixed overheads of one device running an LLM engine.

    Defaults are the measured ratios of ``reference/hardware.md`` §2.4: dense BF16 GEMM median
    over large shapes (~0.71 on H100/H200, 0.75 on A100), NVIDIA's own estimator's HBM derate
    (0.8, aiconfigurator), NCCL all-reduce bus bandwidth (~0.75 of link), pinned PCIe copies
    (~0.8), FlashAttention-3's 75% of peak for attention. Calibration writes fitted values.

    ``decode_attention_fraction`` is the achieved fraction of peak of single-query (decode)
    attention, which kernels run far less efficiently than many-query prefill attention
    (Flash-Decoding, Dao et al. 2023, exists for that reason; on a CPU PyTorch's fused kernel
    reaches a few percent of peak with one query). ``None`` means the same as
    ``attention_fraction``. On GPUs decode attention is bound by KV reads, so it rarely binds.
    """

    gemm_fraction: float = 0.7
    attention_fraction: float = 0.6
    hbm_fraction: float = 0.8
    allreduce_bus_fraction: float = 0.75
    host_link_fraction: float = 0.8
    step_overhead_s: float = 3.0e-4
    layer_overhead_s: float = 0.0
    source: str = "defaults from reference/hardware.md §2.4"
    decode_attention_fraction: float | None = None

    def __post_init__(self) -> None:
        for name in (
            "gemm_fraction",
            "attention_fraction",
            "hbm_fraction",
            "allreduce_bus_fraction",
            "host_link_fraction",
        ):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise KvsimError(f"must be in (0, 1], got {value}", field=f"efficiency.{name}")
        decode = self.decode_attention_fraction
        if decode is not None and not 0.0 < decode <= 1.0:
            raise KvsimError(
                f"must be in (0, 1], got {decode}", field="efficiency.decode_attention_fraction"
            )
        for name in ("step_overhead_s", "layer_overhead_s"):
            if getattr(self, name) < 0:
                raise KvsimError(
                    f"must be >= 0, got {getattr(self, name)}", field=f"efficiency.{name}"
                )


@dataclass(frozen=True)
class Accelerator:
    """One GPU/TPU/accelerator chip: peak rates, memory, links, power and price.

    ``*_flops_per_s`` are dense peaks per dtype (``None`` where the chip has no such unit);
    ``memory_bytes`` is the capacity usable by the framework; ``scale_up_bytes_per_s`` is the
    per-direction NVLink/Infinity-Fabric/ICI bandwidth per device (0 where there is none, so
    tensor parallelism falls back to the host link); ``host_link_bytes_per_s`` is per
    direction. ``price_usd_per_hour`` is per device-hour, dated, user-overridable.
    """

    id: str
    name: str
    vendor: str
    bf16_flops_per_s: float
    memory_bytes: int
    memory_bytes_per_s: float
    host_link_bytes_per_s: float
    fp16_flops_per_s: float | None = None
    fp8_flops_per_s: float | None = None
    int8_flops_per_s: float | None = None
    fp4_flops_per_s: float | None = None
    fp32_flops_per_s: float | None = None
    l2_bytes: int | None = None
    scale_up_bytes_per_s: float = 0.0
    scale_up_domain: int = 1
    tdp_w: float | None = None
    price_usd_per_hour: float | None = None
    price_date: str | None = None
    price_source: str | None = None
    efficiency: Efficiency = field(default_factory=Efficiency)

    def peak_flops_per_s(self, dtype: str) -> float:
        """Dense peak for ``dtype``; fp16 falls back to bf16; a dtype the chip lacks (or whose
        rate the catalog does not give, like fp32) is an error naming the device."""
        if dtype not in COMPUTE_DTYPES:
            raise KvsimError(f"unknown compute dtype {dtype!r}; expected one of {COMPUTE_DTYPES}")
        value = getattr(self, f"{dtype}_flops_per_s")
        if value is None and dtype == "fp16":
            value = self.bf16_flops_per_s
        if value is None:
            raise KvsimError(f"{self.name} has no {dtype} tensor unit", source=self.id)
        return value

    def with_price(self, usd_per_hour: float) -> Accelerator:
        """The same device at a user-supplied price."""
        from dataclasses import replace

        return replace(self, price_usd_per_hour=usd_per_hour, price_source="user override")

    def with_efficiency(self, efficiency: Efficiency) -> Accelerator:
        """The same device with calibrated efficiency factors."""
        from dataclasses import replace

        return replace(self, efficiency=efficiency)


@dataclass(frozen=True)
class MemoryTier:
    """A place KV can live below HBM: host DRAM, CXL, NVMe, a remote store.

    ``read_bytes_per_s``/``write_bytes_per_s`` are achievable sequential rates of the medium;
    the link it is reached over (PCIe, C2C, RDMA) may be the tighter bound and is modelled
    separately as a :class:`Link`.
    """

    id: str
    name: str
    kind: str  # "dram" | "cxl" | "nvme" | "remote"
    capacity_bytes: int
    read_bytes_per_s: float
    write_bytes_per_s: float
    latency_s: float = 0.0
    price_usd_per_hour: float | None = None
    source: str = ""


@dataclass(frozen=True)
class Link:
    """A point-to-point or switched link: PCIe, NVLink-C2C, RDMA NIC.

    ``bytes_per_s`` is the peak per direction; ``efficiency`` the achieved fraction for large
    pinned transfers (e.g. 0.79 for PCIe 4.0 H2D measured by nvbandwidth).
    """

    id: str
    name: str
    bytes_per_s: float
    latency_s: float = 0.0
    efficiency: float = 0.8
    source: str = ""

    @property
    def achieved_bytes_per_s(self) -> float:
        return self.bytes_per_s * self.efficiency


@dataclass(frozen=True)
class Node:
    """A server: ``accelerators_per_node`` devices sharing a scale-up domain, a host memory
    tier reached over ``host_link``, an optional disk tier and network link."""

    accelerator: Accelerator
    accelerators_per_node: int = 8
    host_tier: MemoryTier | None = None
    host_link: Link | None = None
    disk_tier: MemoryTier | None = None
    network_link: Link | None = None
