"""Paged KV block pool of one replica with vLLM V1's hash-based prefix caching.

The mechanism mirrors vLLM V1's ``BlockPool`` / ``KVCacheManager``
(``vllm/v1/core/block_pool.py``, ``kv_cache_manager.py``, ``docs/design/prefix_caching.md``):

* every block is pre-allocated; a block has a reference count and, once full and cached, a
  block hash; ``hash -> blocks`` is the cache map (duplicates allowed: V1 block tables are
  append-only, so two requests that computed the same prefix concurrently both keep theirs);
* the *free queue* holds every block with no reference, in eviction order (head first);
  free blocks keep their hash, so a later request can still hit them;
* allocating for a new request first *touches* its cache hits (``ref += 1``, out of the free
  queue when the count was 0), then pops new blocks from the free-queue head; popping a block
  that still carries a hash evicts it (the hash leaves the map): LRU over free cached blocks;
* a block is cached as soon as it is full (``cache_full_blocks``);
* freeing a request decrements its blocks and appends the now unreferenced ones to the
  free-queue *tail in reverse order*, so the block that hashes the longest prefix is evicted
  first.

With prefix caching disabled no block identity matters, only counts: the pool is then a
counter (O(1) per operation, no per-block objects) and :meth:`BlockPool.block_ids` returns an
empty list.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from hardware.errors import KvsimError


def blocks_for(tokens: int, block_tokens: int) -> int:
    """Blocks that hold ``tokens`` tokens: ``ceil(tokens / block_tokens)``."""
    return -(-tokens // block_tokens)


def _check_size(num_blocks: int, block_tokens: int) -> None:
    if num_blocks < 1:
        raise KvsimError(f"a KV pool needs at least 1 block, got {num_blocks}", field="num_blocks")
    if block_tokens < 1:
        raise KvsimError(f"must be >= 1, got {block_tokens}", field="block_tokens")


class BlockPool:
    """KV blocks of one replica, vLLM V1 semantics (see the module docstring).

    ``seq_id`` is any int naming a sequence (the scheduler uses the workload row). All
    allocation methods are all-or-nothing: on failure they return ``None``/``False`` and
    change nothing.
    """

    def __init__(self, num_blocks: int, block_tokens: int, enable_prefix_caching: bool = False):
        _check_size(num_blocks, block_tokens)
        self.num_blocks = int(num_blocks)
        self.block_tokens = int(block_tokens)
        self.enable_prefix_caching = bool(enable_prefix_caching)
        #: Cached blocks evicted (their hash dropped) to make room, since creation.
        self.evictions = 0
        if self.enable_prefix_caching:
            self._ref = [0] * self.num_blocks
            self._hash: list[int | None] = [None] * self.num_blocks
            self._free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
            self._cache: dict[int, dict[int, None]] = {}
            self._blocks: dict[int, list[int]] = {}
            self._num_cached: dict[int, int] = {}
            self._cached_free = 0
        else:
            self._free_count = self.num_blocks
            self._held: dict[int, int] = {}

    # ------------------------------------------------------------------ counts
    @property
    def num_free_blocks(self) -> int:
        """Blocks with no reference, free-but-cached ones included (they are evictable)."""
        if self.enable_prefix_caching:
            return len(self._free_queue)
        return self._free_count

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def num_cached_free_blocks(self) -> int:
        """Free blocks that still carry a hash (a later request can hit them)."""
        return self._cached_free if self.enable_prefix_caching else 0

    def num_held_blocks(self, seq_id: int) -> int:
        """Blocks in ``seq_id``'s block table (0 if it holds none)."""
        if self.enable_prefix_caching:
            return len(self._blocks.get(seq_id, ()))
        return self._held.get(seq_id, 0)

    def blocks_needed(self, seq_id: int, total_tokens: int) -> int:
        """New blocks ``seq_id`` needs to hold ``total_tokens`` (prefix hits not counted)."""
        return max(blocks_for(total_tokens, self.block_tokens) - self.num_held_blocks(seq_id), 0)

    # ------------------------------------------------------------------ lookups
    def _hits(self, hashes: np.ndarray | None, max_blocks: int) -> list[int]:
        """Block ids of the longest cached prefix of ``hashes`` (at most ``max_blocks``)."""
        if not self.enable_prefix_caching or hashes is None:
            return []
        hits: list[int] = []
        for block_hash in hashes[:max_blocks].tolist():
            holders = self._cache.get(block_hash)
            if not holders:
                break
            hits.append(next(iter(holders)))
        return hits

    def match_prefix(self, hashes: np.ndarray | None) -> int:
        """Number of leading ``hashes`` with a cached block; no side effects."""
        if hashes is None:
            return 0
        return len(self._hits(hashes, len(hashes)))

    def _shortfall(self, hits: list[int], new_blocks: int) -> int:
        """Blocks missing to touch ``hits`` and take ``new_blocks`` more (<= 0: it fits)."""
        evictable_hits = sum(1 for block in hits if self._ref[block] == 0)
        return new_blocks + evictable_hits - len(self._free_queue)

    def can_allocate(self, total_tokens: int, hashes: np.ndarray | None = None) -> bool:
        """Whether :meth:`allocate` of a new sequence would succeed now; no side effects."""
        needed = blocks_for(total_tokens, self.block_tokens)
        if not self.enable_prefix_caching:
            return needed <= self._free_count
        hits = self._hits(hashes, total_tokens // self.block_tokens)
        return self._shortfall(hits, needed - len(hits)) <= 0

    # ------------------------------------------------------------------ mutations
    def _pop_free(self, count: int) -> list[int]:
        """Take ``count`` blocks from the free-queue head, evicting their hashes."""
        taken: list[int] = []
        for _ in range(count):
            block, _ = self._free_queue.popitem(last=False)
            block_hash = self._hash[block]
            if block_hash is not None:
                holders = self._cache[block_hash]
                del holders[block]
                if not holders:
                    del self._cache[block_hash]
                self._hash[block] = None
                self._cached_free -= 1
                self.evictions += 1
            self._ref[block] = 1
            taken.append(block)
        return taken

    def allocate(
        self, seq_id: int, total_tokens: int, hashes: np.ndarray | None = None
    ) -> int | None:
        """First allocation of ``seq_id`` so that it holds ``total_tokens`` tokens.

        Touches the cached blocks of the longest matching prefix of ``hashes`` (only blocks
        entirely within ``total_tokens``), then pops the remaining blocks from the free-queue
        head. Returns the prefix-hit tokens (hit blocks x ``block_tokens``), or ``None`` with
        no side effect when the pool cannot supply the blocks.
        """
        if seq_id in (self._blocks if self.enable_prefix_caching else self._held):
            raise KvsimError(f"sequence {seq_id} already holds blocks", field="seq_id")
        needed = blocks_for(total_tokens, self.block_tokens)
        if not self.enable_prefix_caching:
            if needed > self._free_count:
                return None
            self._free_count -= needed
            self._held[seq_id] = needed
            return 0
        hits = self._hits(hashes, total_tokens // self.block_tokens)
        if self._shortfall(hits, needed - len(hits)) > 0:
            return None
        for block in hits:
            if self._ref[block] == 0:
                del self._free_queue[block]
                self._cached_free -= 1
            self._ref[block] += 1
        self._blocks[seq_id] = hits + self._pop_free(needed - len(hits))
        self._num_cached[seq_id] = len(hits)
        return len(hits) * self.block_tokens

    def grow(self, seq_id: int, total_tokens: int) -> bool:
        """Extend ``seq_id``'s blocks to hold ``total_tokens``; ``False`` (no change) if short."""
        if not self.enable_prefix_caching:  # the hot path of every decode step: inlined
            held = self._held.get(seq_id, 0)
            needed = -(-total_tokens // self.block_tokens) - held
            if needed <= 0:
                return True
            if needed > self._free_count:
                return False
            self._free_count -= needed
            self._held[seq_id] = held + needed
            return True
        needed = self.blocks_needed(seq_id, total_tokens)
        if needed == 0:
            return True
        if needed > len(self._free_queue):
            return False
        self._blocks.setdefault(seq_id, []).extend(self._pop_free(needed))
        self._num_cached.setdefault(seq_id, 0)
        return True

    def cache_full_blocks(self, seq_id: int, hashes: np.ndarray, num_full_blocks: int) -> None:
        """Register the hashes of ``seq_id``'s blocks ``[already cached, num_full_blocks)``.

        Only blocks with a known hash (``len(hashes)``) are cached; a no-op when prefix caching
        is disabled.
        """
        if not self.enable_prefix_caching:
            return
        blocks = self._blocks[seq_id]
        start = self._num_cached[seq_id]
        stop = min(num_full_blocks, len(hashes), len(blocks))
        if stop <= start:
            return
        for block, block_hash in zip(blocks[start:stop], hashes[start:stop].tolist(), strict=True):
            self._hash[block] = block_hash
            self._cache.setdefault(block_hash, {})[block] = None
        self._num_cached[seq_id] = stop

    def shrink(self, seq_id: int, total_tokens: int) -> int:
        """Release ``seq_id``'s blocks beyond those holding ``total_tokens`` (a KV policy
        dropped or compressed tokens), last block first, like :meth:`free`; returns the
        blocks released (0 when it holds no more than that)."""
        keep = blocks_for(total_tokens, self.block_tokens)
        if not self.enable_prefix_caching:
            held = self._held.get(seq_id, 0)
            if held <= keep:
                return 0
            self._held[seq_id] = keep
            self._free_count += held - keep
            return held - keep
        blocks = self._blocks.get(seq_id, [])
        released = blocks[keep:]
        if not released:
            return 0
        del blocks[keep:]
        self._num_cached[seq_id] = min(self._num_cached[seq_id], keep)
        self._release(released)
        return len(released)

    def _release(self, blocks: list[int]) -> None:
        for block in reversed(blocks):
            self._ref[block] -= 1
            if self._ref[block] == 0:
                self._free_queue[block] = None
                if self._hash[block] is not None:
                    self._cached_free += 1

    def free(self, seq_id: int) -> None:
        """Release ``seq_id``'s blocks: unreferenced ones join the free-queue tail, last block
        first, and keep their hashes (still hittable until evicted)."""
        if not self.enable_prefix_caching:
            self._free_count += self._held.pop(seq_id)
            return
        blocks = self._blocks.pop(seq_id)
        del self._num_cached[seq_id]
        self._release(blocks)

    def block_ids(self, seq_id: int) -> list[int]:
        """``seq_id``'s block table; empty when prefix caching is disabled (ids not tracked)."""
        if not self.enable_prefix_caching:
            return []
        return list(self._blocks.get(seq_id, ()))

    def free_queue(self) -> list[int]:
        """Free block ids in eviction order (head first); empty when ids are not tracked."""
        return list(self._free_queue) if self.enable_prefix_caching else []

    def block_hash(self, block_id: int) -> int | None:
        """The hash a block is cached under, ``None`` if uncached or ids are not tracked."""
        return self._hash[block_id] if self.enable_prefix_caching else None

    # ------------------------------------------------------------------ checks
    def check_invariants(self) -> None:
        """Raise ``AssertionError`` unless the pool is consistent: every block is referenced or
        in the free queue exactly once, reference counts match the block tables, the hash map
        and the per-block hashes agree."""
        if not self.enable_prefix_caching:
            held = sum(self._held.values())
            if self._free_count < 0 or min(self._held.values(), default=0) < 0:
                raise AssertionError("negative block count")
            if held + self._free_count != self.num_blocks:
                raise AssertionError(f"{held} held + {self._free_count} free != {self.num_blocks}")
            return
        refs = [0] * self.num_blocks
        for seq_id, blocks in self._blocks.items():
            if len(set(blocks)) != len(blocks):
                raise AssertionError(f"sequence {seq_id} holds a block twice")
            for block in blocks:
                refs[block] += 1
        if refs != self._ref:
            raise AssertionError("reference counts disagree with the block tables")
        free = set(self._free_queue)
        unreferenced = {block for block, ref in enumerate(refs) if ref == 0}
        if free != unreferenced:
            raise AssertionError("free queue != unreferenced blocks")
        for block_hash, holders in self._cache.items():
            if not holders or any(self._hash[block] != block_hash for block in holders):
                raise AssertionError(f"hash map entry {block_hash} is inconsistent")
        mapped = sum(len(holders) for holders in self._cache.values())
        if mapped != sum(block_hash is not None for block_hash in self._hash):
            raise AssertionError("a hashed block is missing from the hash map")
        cached_free = sum(self._hash[block] is not None for block in free)
        if cached_free != self._cached_free:
            raise AssertionError(f"cached-free count {self._cached_free} != {cached_free}")
