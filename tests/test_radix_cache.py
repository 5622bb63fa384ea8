"""SGLang-style radix prefix cache (``mem_cache/radix_cache.py``): hand-built trees with
exact block ids, edge splits, lock refs and leaf-only LRU eviction order."""

from __future__ import annotations

import numpy as np

from sim.kv import RadixBlockPool


def _keys(pool: RadixBlockPool) -> dict[tuple[int, ...], tuple[list[int], int]]:
    return {tuple(node.key): (node.value, node.lock_ref) for node in pool.nodes()}


def test_split_lock_and_leaf_only_lru_eviction():
    """12 blocks of 4 tokens; free list starts 0..11 and is taken from the front."""
    pool = RadixBlockPool(12, 4)
    # A inserts [1, 2, 3] in blocks 0, 1, 2.
    assert pool.allocate(1, 12, np.array([1, 2, 3])) == 0
    pool.cache_full_blocks(1, np.array([1, 2, 3]), 3)
    assert pool.block_hash(2) == 3
    # A pure lookup of a partial edge neither splits nor touches the tree.
    assert pool.match_prefix(np.array([1, 2, 5])) == 2 and len(pool.nodes()) == 1
    # B matches [1, 2]: the edge splits into [1, 2] -> [3]; B takes blocks 3, 4 for [5, 6].
    assert pool.allocate(2, 16, np.array([1, 2, 5, 6])) == 8
    pool.cache_full_blocks(2, np.array([1, 2, 5, 6]), 4)
    assert pool.block_ids(2) == [0, 1, 3, 4]
    assert _keys(pool) == {(1, 2): ([0, 1], 2), (3,): ([2], 1), (5, 6): ([3, 4], 1)}
    # D inserts an unrelated [8, 9] in blocks 5, 6.
    assert pool.allocate(4, 8, np.array([8, 9])) == 0
    pool.cache_full_blocks(4, np.array([8, 9]), 2)
    # A and D finish: their leaves become evictable; B still locks [1, 2] -> [5, 6].
    pool.free(1)
    pool.free(4)
    assert pool.num_cached_free_blocks == 3 and pool.num_free_blocks == 5 + 3
    # E needs 7 blocks, 5 are on the free list: evict the LRU unlocked leaf [3] (block 2),
    # then [8, 9] (blocks 5, 6): whole leaves, so 3 blocks go for a shortfall of 2.
    assert pool.allocate(5, 28) == 0
    assert pool.block_ids(5) == [7, 8, 9, 10, 11, 2, 5]
    assert pool.evictions == 3 and pool.block_hash(2) is None
    assert pool.match_prefix(np.array([1, 2, 5, 6])) == 4  # the locked path survived
    assert pool.match_prefix(np.array([1, 2, 3])) == 2
    pool.check_invariants()
    # B and E finish. The older inner node [1, 2] is not a leaf, so leaf [5, 6] goes first,
    # and [1, 2] only becomes a candidate once childless (prefix-closed).
    pool.free(2)
    pool.free(5)
    assert pool.allocate(6, 40) == 0  # 10 blocks: 8 free + evict [5, 6]
    assert pool.evictions == 5
    assert _keys(pool) == {(1, 2): ([0, 1], 0)}
    assert pool.allocate(7, 8) == 0  # 2 blocks: 0 free -> evict [1, 2]
    assert pool.evictions == 7 and pool.nodes() == []
    pool.check_invariants()


def test_hit_refreshes_recency():
    pool = RadixBlockPool(6, 4)
    for seq, key in ((1, [1, 2]), (2, [3, 4])):
        pool.allocate(seq, 8, np.array(key))
        pool.cache_full_blocks(seq, np.array(key), 2)
        pool.free(seq)
    # A later hit on [1, 2] makes [3, 4] the least recently used leaf.
    assert pool.allocate(3, 8, np.array([1, 2])) == 8
    pool.free(3)
    assert pool.allocate(4, 16) == 0
    assert pool.block_ids(4) == [4, 5, 2, 3]
    assert pool.match_prefix(np.array([1, 2])) == 2
    assert pool.match_prefix(np.array([3, 4])) == 0


def test_concurrent_insert_adopts_tree_blocks_and_frees_duplicates():
    pool = RadixBlockPool(8, 4)
    key = np.array([7, 8, 9])
    assert pool.allocate(1, 13, key) == 0  # blocks 0..3
    assert pool.allocate(2, 13, key) == 0  # nothing cached yet: blocks 4..7
    pool.cache_full_blocks(1, key, 3)
    pool.cache_full_blocks(2, key, 3)
    # B adopts A's blocks 0, 1, 2; its duplicates 4, 5, 6 return to the free list.
    assert pool.block_ids(2) == [0, 1, 2, 7]
    assert pool.num_free_blocks == 3
    assert _keys(pool) == {(7, 8, 9): ([0, 1, 2], 2)}
    pool.check_invariants()


def test_allocation_is_all_or_nothing():
    pool = RadixBlockPool(4, 4)
    pool.allocate(1, 8, np.array([1, 2]))
    pool.cache_full_blocks(1, np.array([1, 2]), 2)
    pool.free(1)
    # Hits 2 blocks (which become protected) + 3 new > 4 - 2 unprotected.
    assert not pool.can_allocate(20, np.array([1, 2]))
    assert pool.allocate(2, 20, np.array([1, 2])) is None
    assert len(pool.nodes()) == 1 and pool.num_free_blocks == 4 and pool.evictions == 0
    assert pool.allocate(2, 16, np.array([1, 2])) == 8
    pool.check_invariants()
