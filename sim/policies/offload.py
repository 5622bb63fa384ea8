"""Offload policies: where KV lives below HBM and what crosses the link when (kind ``offload``).

Each policy is a frozen dataclass registered under kind ``offload``; a scenario selects one
with ``[policies.offload] name = "..."`` and reaches the tiers named in ``[hardware]``
(``host_memory_tier``, ``disk_tier``). The model used for each, with its sources, is in
``docs/offloading.md``.

* ``prefix_store`` — LMCache / CachedAttention multi-turn store: KV blocks evicted from the
  HBM prefix cache are written to host DRAM (then disk) asynchronously, LRU; a later prompt
  that misses in HBM but hits a lower tier loads those blocks over the tier's link instead of
  recomputing them. With ``prefetch`` the load is layer-wise and overlapped with the prefill
  compute of the rest of the prompt (CachedAttention's layer-wise pre-loading, Gao et al.,
  USENIX ATC 2024, §3.2): the step takes max(compute, load); without it, load then compute.
* ``flexgen`` — FlexGen's static placement (Sheng et al., ICML 2023, §4): fixed fractions
  of every sequence's KV on GPU, CPU and disk. The pool holds ``1 / gpu_fraction`` times as
  many tokens (bounded by the host and disk capacities), and each step the offloaded part is
  either read by the CPU, which computes its attention (``attention = "cpu"``, FlexGen's
  compute delegation, the paper's choice for CPU-resident KV since it moves only activations),
  or fetched to the GPU over the host link (``attention = "gpu"``). Either runs layer by layer
  alongside the GPU's work, so a step takes max(GPU time, offloaded-KV time) (FlexGen's cost
  model overlaps I/O and compute with a max per layer; ``reference/policies.md`` §3.3).
* ``selective_fetch`` — InfiniGen (Lee et al., OSDI 2024) / ShadowKV (Sun et al., 2024):
  the KV is held in host memory (all of it with ``gpu_fraction = 0``) and each decode step
  fetches only the tokens the selection policy picks (:meth:`KvFootprint.decode_read_tokens`),
  overlapped with compute. Needs a ``[policies.selection]`` that reads fewer tokens than it
  holds (Quest-like).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from hardware.errors import KvsimError
from sim.policies.base import PolicyBase, check_choice, check_fraction
from sim.policies.registry import register

#: ``attention`` values of :class:`FlexGenPlacement`.
ATTENTION_SITES = ("cpu", "gpu")


def _field(name: str) -> str:
    return f"policies.offload.{name}"


@dataclass(frozen=True)
class TierRates:
    """Achieved rates of the paths offloaded KV takes, bytes/s: the accelerator's host link
    (PCIe or C2C, times its efficiency), host DRAM read (what CPU attention streams), and
    the disk tier's read rate (0 when there is no disk tier)."""

    link_bytes_per_s: float
    host_bytes_per_s: float = 0.0
    disk_bytes_per_s: float = 0.0


class PlacementBase(PolicyBase):
    """What a static KV placement (FlexGen, selective fetch) tells the engine: how big the
    replica's pool is, which share of the KV the GPU's attention reads from HBM, and the
    seconds of off-GPU KV work per step that overlap the GPU's layers."""

    needs_selection: ClassVar[bool] = False

    def fractions(self) -> tuple[float, float, float]:
        """(gpu, cpu, disk) fractions of every sequence's KV; they sum to 1."""
        raise NotImplementedError

    @property
    def cpu_attention(self) -> bool:
        return False

    def check_tiers(self, host_tier: str | None, disk_tier: str | None) -> None:
        """The tiers the fractions need must be named in ``[hardware]``."""
        _, cpu, disk = self.fractions()
        if (cpu > 0 or self.cpu_attention) and host_tier is None:
            raise KvsimError(
                f"{self.name} keeps KV in host memory: set hardware.host_memory_tier",
                field=_field("name"),
            )
        if disk > 0 and disk_tier is None:
            raise KvsimError(
                f"{self.name} keeps KV on disk: set hardware.disk_tier",
                field=_field("disk_fraction"),
            )

    def pool_blocks(
        self,
        gpu_blocks: int,
        block_bytes: float,
        host_capacity_bytes: float | None,
        disk_capacity_bytes: float | None,
    ) -> int:
        """Blocks the replica's pool holds: every sequence keeps ``gpu_fraction`` of its KV in
        the ``gpu_blocks`` of HBM, ``cpu_fraction`` in host memory and ``disk_fraction`` on
        disk, so the pool is the smallest of ``capacity / fraction`` over the places used."""
        gpu, cpu, disk = self.fractions()
        bounds = []
        if gpu > 0:
            bounds.append(gpu_blocks / gpu)
        if cpu > 0 and host_capacity_bytes is not None:
            bounds.append(host_capacity_bytes / (cpu * block_bytes))
        if disk > 0 and disk_capacity_bytes is not None:
            bounds.append(disk_capacity_bytes / (disk * block_bytes))
        if not bounds:
            raise KvsimError("no capacity bounds the KV pool", field=_field("name"))
        return int(np.floor(min(bounds) + 1e-9))

    def gpu_read_fraction(self) -> float:
        """Share of the read KV the GPU's attention kernel reads from HBM: all of it when the
        offloaded part is fetched (it lands in HBM first), the GPU's share under CPU
        attention."""
        return self.fractions()[0] if self.cpu_attention else 1.0

    def offload_s(self, kv_bytes: Any, rates: TierRates) -> Any:
        """Seconds the offloaded share of ``kv_bytes`` (KV read or written by the step's
        attention) takes off the GPU: the CPU and disk shares cross the path to the compute
        site (the host link when fetched, host DRAM under CPU attention) together, and the disk
        share also streams from the disk; the two run concurrently, so the slower sets the
        time. ``kv_bytes`` is a number or an array (one per step)."""
        _, cpu, disk = self.fractions()
        path = rates.host_bytes_per_s if self.cpu_attention else rates.link_bytes_per_s
        seconds = np.asarray(kv_bytes, dtype=np.float64) * ((cpu + disk) / path)
        if disk > 0:
            seconds = np.maximum(seconds, np.asarray(kv_bytes) * (disk / rates.disk_bytes_per_s))
        return seconds if seconds.ndim else float(seconds)


@register("offload", "prefix_store")
@dataclass(frozen=True)
class PrefixStore(PolicyBase):
    """LMCache / CachedAttention store of evicted prefix blocks in the lower tiers; loads
    overlapped layer-wise with the prefill when ``prefetch`` (module docstring)."""

    prefetch: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.prefetch, bool):
            raise KvsimError(f"must be true or false, got {self.prefetch!r}", field="prefetch")

    def check_tiers(self, host_tier: str | None, disk_tier: str | None) -> None:
        if host_tier is None and disk_tier is None:
            raise KvsimError(
                "prefix_store needs a tier below HBM: set hardware.host_memory_tier "
                "(and optionally hardware.disk_tier)",
                field=_field("name"),
            )


@register("offload", "flexgen")
@dataclass(frozen=True)
class FlexGenPlacement(PlacementBase):
    """FlexGen's KV placement: ``gpu_fraction``/``cpu_fraction`` of each sequence's KV on GPU
    and CPU, the rest on disk; ``attention`` says where the offloaded part's attention runs
    (module docstring). Defaults: FlexGen's OPT-175B policy keeps the KV cache 100% on CPU
    with CPU attention (paper Table 2 and §4)."""

    gpu_fraction: float = 0.0
    cpu_fraction: float = 1.0
    attention: str = "cpu"

    def __post_init__(self) -> None:
        check_fraction(self.gpu_fraction, "gpu_fraction", allow_zero=True)
        check_fraction(self.cpu_fraction, "cpu_fraction", allow_zero=True)
        check_choice(self.attention, "attention", ATTENTION_SITES)
        if self.gpu_fraction + self.cpu_fraction > 1 + 1e-9:
            raise KvsimError(
                f"gpu_fraction + cpu_fraction = {self.gpu_fraction + self.cpu_fraction} > 1 "
                "(the rest is the disk fraction)",
                field="cpu_fraction",
            )

    def fractions(self) -> tuple[float, float, float]:
        disk = max(1.0 - self.gpu_fraction - self.cpu_fraction, 0.0)
        return float(self.gpu_fraction), float(self.cpu_fraction), disk

    @property
    def cpu_attention(self) -> bool:
        return self.attention == "cpu" and self.gpu_fraction < 1


@register("offload", "selective_fetch")
@dataclass(frozen=True)
class SelectiveFetch(PlacementBase):
    """InfiniGen / ShadowKV: ``1 - gpu_fraction`` of the KV in host memory, and only the
    tokens the selection policy reads cross the link each decode step (module docstring)."""

    needs_selection: ClassVar[bool] = True

    gpu_fraction: float = 0.0

    def __post_init__(self) -> None:
        check_fraction(self.gpu_fraction, "gpu_fraction", allow_zero=True, allow_one=False)

    def fractions(self) -> tuple[float, float, float]:
        return float(self.gpu_fraction), 1.0 - float(self.gpu_fraction), 0.0


@dataclass(frozen=True)
class OffloadedKv:
    """A placement on one replica: the policy, the path rates, and the KV bytes per token
    at the stored format. Prices the off-GPU KV work of a step (seconds, overlapped with the
    GPU's layers by the cost model)."""

    placement: PlacementBase
    rates: TierRates
    bytes_per_token: float

    def step_s(self, kv_tokens: Any) -> Any:
        """Seconds of off-GPU work for steps whose attention touches ``kv_tokens`` tokens of
        KV in all (decode reads, prefill cached-context reads and new-token writes)."""
        return self.placement.offload_s(
            np.asarray(kv_tokens, dtype=np.float64) * self.bytes_per_token, self.rates
        )
