"""The KV tiers of a scenario's replicas: catalog specs, capacities, load paths, links, stores.

A replica reaches its host DRAM (or CXL) and its NVMe drive over the accelerator's host link
(PCIe or NVLink-C2C), so a load from a tier runs at ``min(host link × its efficiency, tier
read rate)`` and pays the tier's latency once per transfer. A ``remote`` tier (a
Mooncake-style pooled DRAM store, reached over RDMA at the rate its catalog entry gives) is
one store and one link shared by every replica: their writes share its capacity and their
loads its bandwidth. Every other tier is private to a replica, with the capacity
``[hardware] *_capacity_bytes`` gives (default: the catalog capacity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hardware.catalog import get_tier
from hardware.specs import Accelerator, MemoryTier
from sim.kv.tiers import LruBlockStore, TieredStore
from sim.policies.offload import TierRates
from sim.transfer import SharedLink

#: The engine clock's resolution in seconds (``sim.engine.NS``), for link completions.
_CLOCK_S = 1e-9


@dataclass(frozen=True)
class ResolvedTier:
    """One tier as a replica sees it: the catalog spec, the bytes it may fill, the achieved
    rate of a load into HBM and its latency, and whether all replicas share it."""

    spec: MemoryTier
    capacity_bytes: int
    load_bytes_per_s: float
    latency_s: float
    shared: bool

    @property
    def name(self) -> str:
        return self.spec.id


def host_link_bytes_per_s(accelerator: Accelerator) -> float:
    """The accelerator's achieved host-link rate (peak × ``host_link_fraction``)."""
    return accelerator.host_link_bytes_per_s * accelerator.efficiency.host_link_fraction


def resolve_tiers(
    accelerator: Accelerator,
    host_tier: str | None,
    host_capacity_bytes: int | None,
    disk_tier: str | None,
    disk_capacity_bytes: int | None,
) -> tuple[ResolvedTier, ...]:
    """The host tier then the disk tier, those named; fastest first."""
    link = host_link_bytes_per_s(accelerator)
    out = []
    for tier_id, capacity in ((host_tier, host_capacity_bytes), (disk_tier, disk_capacity_bytes)):
        if tier_id is None:
            continue
        spec = get_tier(tier_id)
        shared = spec.kind == "remote"
        out.append(
            ResolvedTier(
                spec=spec,
                capacity_bytes=int(capacity if capacity is not None else spec.capacity_bytes),
                load_bytes_per_s=spec.read_bytes_per_s
                if shared
                else min(link, spec.read_bytes_per_s),
                latency_s=spec.latency_s,
                shared=shared,
            )
        )
    return tuple(out)


def tier_rates(accelerator: Accelerator, tiers: Sequence[ResolvedTier]) -> TierRates:
    """The paths a static KV placement uses (:class:`~sim.policies.offload.TierRates`): the
    host link, the host tier's read rate, the disk tier's read rate."""
    host = next((t for t in tiers if t.spec.kind in ("dram", "cxl")), None)
    disk = next((t for t in tiers if t.spec.kind == "nvme"), None)
    return TierRates(
        link_bytes_per_s=host_link_bytes_per_s(accelerator),
        host_bytes_per_s=host.spec.read_bytes_per_s if host is not None else 0.0,
        disk_bytes_per_s=disk.spec.read_bytes_per_s if disk is not None else 0.0,
    )


def build_stores(
    tiers: Sequence[ResolvedTier], replicas: int, block_bytes: float
) -> list[TieredStore]:
    """One :class:`TieredStore` per replica, capacities in blocks of ``block_bytes``; a
    shared tier is one :class:`LruBlockStore` in every replica's store."""
    shared = {
        t.name: LruBlockStore(t.name, int(t.capacity_bytes // block_bytes))
        for t in tiers
        if t.shared
    }
    return [
        TieredStore(
            [
                shared[t.name]
                if t.shared
                else LruBlockStore(t.name, int(t.capacity_bytes // block_bytes))
                for t in tiers
            ]
        )
        for _ in range(replicas)
    ]


def build_links(tiers: Sequence[ResolvedTier], replicas: int) -> tuple[tuple[SharedLink, ...], ...]:
    """Per replica, one processor-sharing link per tier; a shared tier's link is one object."""
    shared = {
        t.name: SharedLink(t.load_bytes_per_s, t.latency_s, resolution_s=_CLOCK_S)
        for t in tiers
        if t.shared
    }
    return tuple(
        tuple(
            shared[t.name]
            if t.shared
            else SharedLink(t.load_bytes_per_s, t.latency_s, resolution_s=_CLOCK_S)
            for t in tiers
        )
        for _ in range(replicas)
    )
