"""KV tiers below HBM: LRU stores of block hashes in host DRAM, on NVMe, in a remote pool.

The HBM prefix cache (:class:`~sim.kv.block_pool.BlockPool`, vLLM V1) keeps a freed block's
KV until the block is reused; reusing it *evicts* the KV. With a tiered store, an evicted
cached block is written to the first tier below HBM instead of being lost, and a request
whose prompt misses in HBM but hits a lower tier loads those blocks over the tier's link
rather than recomputing them. This is the LMCache design (``LocalCPUBackend`` →
``LocalDiskBackend`` → remote; chained prefix hashes as keys; LRU eviction; asynchronous put,
blocking get) and CachedAttention's HBM → DRAM → SSD hierarchy (Gao et al., USENIX ATC 2024),
on vLLM's block hashes (``sim.kv.hashing``), so a block keeps its name across tiers.

* :class:`LruBlockStore`: one tier, a capacity in blocks (``None``: unbounded) and LRU order
  (``OrderedDict``, most recent last), as LMCache's default ``cache_policy = "LRU"``.
* :class:`TieredStore`: tiers ordered fastest first. A block written to tier ``i`` that
  overflows it pushes that tier's least recently used block to tier ``i + 1`` (cascading
  HBM → host → disk); the last tier's overflow is dropped. :meth:`TieredStore.match` finds,
  after the HBM hit, the leading blocks present in *some* tier and in which one.
* :class:`SpillingBlockPool`: vLLM's block pool whose free-queue evictions are written to a
  :class:`TieredStore`.

Writes are asynchronous (LMCache ``put``, CachedAttention's async saving) and take the GPU →
host direction of the link, which loads (host → GPU) do not use, so a written block is
available at once and writes cost no step time; their volume is counted
(:attr:`TierStats.written_blocks`). Loads are on the critical path and are timed by the
engine over a :class:`~sim.transfer.SharedLink` per tier (``docs/offloading.md``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from hardware.errors import KvsimError
from sim.kv.block_pool import BlockPool


@dataclass
class TierStats:
    """Running block counts of one tier: written to it (from HBM or the tier above), loaded
    from it into HBM, and evicted from it (to the tier below, or dropped from the last)."""

    written_blocks: int = 0
    loaded_blocks: int = 0
    evicted_blocks: int = 0


class LruBlockStore:
    """Block hashes held by one tier, least recently used first; at most ``capacity_blocks``
    (``None``: unbounded)."""

    def __init__(self, name: str, capacity_blocks: int | None) -> None:
        if capacity_blocks is not None and (
            isinstance(capacity_blocks, bool)
            or not isinstance(capacity_blocks, int)
            or capacity_blocks < 0
        ):
            raise KvsimError(
                f"expected an integer >= 0 or None, got {capacity_blocks!r}",
                source=name,
                field="capacity_blocks",
            )
        self.name = name
        self.capacity_blocks = capacity_blocks
        self.stats = TierStats()
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block_hash: int) -> bool:
        return block_hash in self._blocks

    def put(self, hashes: Iterable[int]) -> list[int]:
        """Write ``hashes`` (most recent last); return the hashes pushed out, oldest first.
        Re-writing a held hash refreshes its recency."""
        blocks = self._blocks
        written = 0
        for block_hash in hashes:
            if block_hash in blocks:
                blocks.move_to_end(block_hash)
            else:
                blocks[block_hash] = None
            written += 1
        self.stats.written_blocks += written
        capacity = self.capacity_blocks
        if capacity is None or len(blocks) <= capacity:
            return []
        overflow = [blocks.popitem(last=False)[0] for _ in range(len(blocks) - capacity)]
        self.stats.evicted_blocks += len(overflow)
        return overflow

    def touch(self, hashes: Iterable[int]) -> None:
        """Count a load of ``hashes`` and mark them as just used. A hash the same admission's
        own HBM evictions already pushed out of this tier was read before it was replaced,
        so it counts as loaded but is not re-inserted."""
        blocks = self._blocks
        count = 0
        for block_hash in hashes:
            if block_hash in blocks:
                blocks.move_to_end(block_hash)
            count += 1
        self.stats.loaded_blocks += count


@dataclass(frozen=True)
class TierMatch:
    """Where the blocks after an HBM prefix hit live: the match starts at block ``start`` of
    the prompt and ``tiers[k]`` is the tier holding its ``k``-th block (an index into
    :attr:`TieredStore.tiers`)."""

    start: int = 0
    tiers: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def blocks(self) -> int:
        return int(self.tiers.size)

    def blocks_per_tier(self, num_tiers: int) -> np.ndarray:
        return np.bincount(self.tiers, minlength=num_tiers)


class TieredStore:
    """Tiers below HBM, fastest first, with cascading LRU eviction (module docstring)."""

    def __init__(self, tiers: Sequence[LruBlockStore]) -> None:
        if not tiers:
            raise KvsimError("a tiered store needs at least one tier", field="tiers")
        self.tiers = tuple(tiers)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(tier.name for tier in self.tiers)

    def put(self, hashes: Iterable[int]) -> None:
        """Write blocks evicted from HBM to the first tier; overflow cascades down."""
        spill: Iterable[int] = hashes
        for tier in self.tiers:
            spill = tier.put(spill)
            if not spill:
                return

    def match(self, hashes: np.ndarray, start: int, stop: int) -> TierMatch:
        """The leading run of ``hashes[start:stop]`` present in some tier (the first that holds
        each block); stops at the first block no tier holds. No side effects."""
        found: list[int] = []
        tiers = self.tiers
        for block_hash in hashes[start:stop].tolist():
            for position, tier in enumerate(tiers):
                if block_hash in tier:
                    found.append(position)
                    break
            else:
                break
        return TierMatch(start, np.asarray(found, dtype=np.int64))

    def load(self, hashes: np.ndarray, match: TierMatch) -> None:
        """Record that the matched blocks of ``hashes`` were read into HBM: each tier
        refreshes their recency (LRU) and counts the load."""
        keys = hashes[match.start : match.start + match.blocks].tolist()
        for position, tier in enumerate(self.tiers):
            tier.touch(k for k, t in zip(keys, match.tiers.tolist(), strict=True) if t == position)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per tier: blocks held, written, loaded and evicted so far."""
        return {
            tier.name: {
                "held_blocks": len(tier),
                "written_blocks": tier.stats.written_blocks,
                "loaded_blocks": tier.stats.loaded_blocks,
                "evicted_blocks": tier.stats.evicted_blocks,
            }
            for tier in self.tiers
        }


class SpillingBlockPool(BlockPool):
    """vLLM's hash-caching block pool whose evictions are written to ``store``: when a free
    block that still carries a hash is taken from the free-queue head, its hash (the KV it
    held) goes to the store before the block is reused."""

    def __init__(self, num_blocks: int, block_tokens: int, store: TieredStore) -> None:
        super().__init__(num_blocks, block_tokens, enable_prefix_caching=True)
        self.store = store

    def _pop_free(self, count: int) -> list[int]:
        evicted = [
            block_hash
            for block in islice(self._free_queue, count)
            if (block_hash := self._hash[block]) is not None
        ]
        if evicted:
            self.store.put(evicted)
        return super()._pop_free(count)
