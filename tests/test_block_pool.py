"""Block hashes and the vLLM V1 block pool: hand-worked block ids, hits and eviction order
(vLLM ``docs/design/prefix_caching.md``), plus invariants under random operation sequences."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.errors import KvsimError
from sim.kv import BlockPool, RadixBlockPool, engine_block_hashes

MASK = (1 << 64) - 1


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def _reference_hashes(ids: list[int], per_block: int, count: int) -> list[int]:
    """The documented recurrence, one block at a time with Python ints:
    r_j = r_{j-1} * P + splitmix(splitmix(id) + sub), h_j = splitmix(r_j)."""
    state, out = 0x9E3779B97F4A7C15, []
    for j in range(count):
        key = _splitmix((_splitmix(ids[j // per_block] & MASK) + j % per_block) & MASK)
        state = (state * 0x100000001B3 + key) & MASK
        value = _splitmix(state)
        out.append(value - (1 << 64) if value >= 1 << 63 else value)
    return out


class TestEngineBlockHashes:
    def test_matches_sequential_chain(self):
        ids = [5, 7, -3, 2**62]
        hashes = engine_block_hashes(np.array(ids), 512, 16, 4 * 512)
        assert hashes.dtype == np.int64
        assert hashes.tolist() == _reference_hashes(ids, 32, 128)

    def test_only_full_blocks_inside_prompt_and_known_prefix(self):
        # 2 prefix blocks of 32 tokens = 4 engine blocks of 16; a 50-token prompt holds 3 full.
        assert engine_block_hashes(np.array([1, 2]), 32, 16, 50).size == 3
        # A 200-token prompt with only 2 known prefix blocks: 4 hashed engine blocks.
        assert engine_block_hashes(np.array([1, 2]), 32, 16, 200).size == 4
        assert engine_block_hashes(np.array([], dtype=np.int64), 32, 16, 200).size == 0

    def test_chained_shared_prefix_then_divergence(self):
        a = engine_block_hashes(np.array([1, 2, 3]), 32, 16, 96)
        b = engine_block_hashes(np.array([1, 9, 3]), 32, 16, 96)
        assert a[:2].tolist() == b[:2].tolist()
        # Block ids 2.. differ, including those under the equal id 3: the chain carries it.
        assert np.all(a[2:] != b[2:])
        assert len(set(a.tolist())) == 6

    def test_block_tokens_must_divide_prefix_block(self):
        with pytest.raises(KvsimError) as err:
            engine_block_hashes(np.array([1]), 512, 48, 1024)
        assert err.value.field == "block_tokens"

    def test_identical_across_processes(self):
        code = (
            "import numpy as np; from sim.kv import engine_block_hashes; "
            "print(engine_block_hashes(np.array([11, 12]), 512, 16, 1024).tolist())"
        )
        env = {"PYTHONHASHSEED": "123"}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        )
        here = engine_block_hashes(np.array([11, 12]), 512, 16, 1024).tolist()
        assert out.stdout.strip() == str(here)


H = np.array([101, 102, 103], dtype=np.int64)


class TestVllmBlockPool:
    """Pool of 10 blocks of 4 tokens; the free queue starts 0..9 (vLLM's initial order)."""

    def test_shared_prefix_reverse_free_and_lru_eviction(self):
        pool = BlockPool(10, 4, enable_prefix_caching=True)
        # A: 14-token prompt, 3 full blocks with known hashes -> 4 blocks from the queue head.
        assert pool.allocate(1, 14, H) == 0
        assert pool.block_ids(1) == [0, 1, 2, 3]
        pool.cache_full_blocks(1, H, 3)
        # B shares the 3-block prefix: touches 0,1,2 and pops block 4.
        assert pool.match_prefix(H) == 3
        assert pool.allocate(2, 14, H) == 12
        assert pool.block_ids(2) == [0, 1, 2, 4]
        assert pool.num_free_blocks == 5
        # Freeing A: only its private last block drops to ref 0 and joins the tail.
        pool.free(1)
        assert pool.free_queue() == [5, 6, 7, 8, 9, 3]
        # Freeing B: reverse order, so the block hashing the longest prefix goes first.
        pool.free(2)
        assert pool.free_queue() == [5, 6, 7, 8, 9, 3, 4, 2, 1, 0]
        assert pool.num_cached_free_blocks == 3 and pool.num_free_blocks == 10
        # C matches 2 blocks ([101, 102, 999]); touching pulls 0, 1 out of the queue.
        assert pool.allocate(3, 13, np.array([101, 102, 999])) == 8
        assert pool.block_ids(3) == [0, 1, 5, 6]
        assert pool.free_queue() == [7, 8, 9, 3, 4, 2]
        # D takes 5 uncached blocks from the head: nothing is evicted.
        assert pool.allocate(4, 20) == 0
        assert pool.block_ids(4) == [7, 8, 9, 3, 4]
        assert pool.evictions == 0
        # E takes the last free block, block 2, which still caches hash 103: evicted.
        assert pool.allocate(5, 4) == 0
        assert pool.block_ids(5) == [2]
        assert pool.evictions == 1 and pool.block_hash(2) is None
        assert pool.match_prefix(H) == 2
        pool.check_invariants()

    def test_failed_allocation_has_no_side_effect(self):
        pool = BlockPool(4, 4, enable_prefix_caching=True)
        assert pool.allocate(1, 8, H[:2]) == 0
        pool.cache_full_blocks(1, H[:2], 2)
        pool.free(1)
        before = (pool.free_queue(), pool.num_cached_free_blocks, pool.evictions)
        # 2 hits (both free, so they count against the free blocks) + 3 new > 4 free.
        assert not pool.can_allocate(20, H[:2])
        assert pool.allocate(2, 20, H[:2]) is None
        assert not pool.grow(3, 20)
        assert (pool.free_queue(), pool.num_cached_free_blocks, pool.evictions) == before
        assert pool.can_allocate(16, H[:2]) and pool.allocate(2, 16, H[:2]) == 8
        pool.check_invariants()

    def test_concurrent_duplicates_stay_cached_until_evicted(self):
        pool = BlockPool(6, 4, enable_prefix_caching=True)
        assert pool.allocate(1, 8, H[:2]) == 0
        assert pool.allocate(2, 8, H[:2]) == 0  # A's blocks are not full/cached yet
        pool.cache_full_blocks(1, H[:2], 2)
        pool.cache_full_blocks(2, H[:2], 2)
        pool.check_invariants()
        assert pool.allocate(3, 9, H[:2]) == 8
        assert pool.block_ids(3)[:2] == [0, 1]  # the first cached holder wins

    def test_grow_and_blocks_needed(self):
        pool = BlockPool(5, 16, enable_prefix_caching=True)
        assert pool.allocate(7, 17) == 0 and pool.num_held_blocks(7) == 2
        assert pool.blocks_needed(7, 32) == 0 and pool.blocks_needed(7, 33) == 1
        assert pool.grow(7, 64) and pool.block_ids(7) == [0, 1, 2, 3]
        assert not pool.grow(7, 81)
        with pytest.raises(KvsimError):
            pool.allocate(7, 1)


class TestCountingPool:
    def test_counts_only(self):
        pool = BlockPool(8, 16)
        assert pool.allocate(1, 33) == 0 and pool.num_used_blocks == 3
        assert pool.allocate(2, 80, H) == 0  # hashes ignored without prefix caching
        assert pool.num_free_blocks == 0
        assert pool.allocate(3, 1) is None and not pool.grow(1, 49)
        assert pool.block_ids(1) == [] and pool.match_prefix(H) == 0
        pool.free(2)
        assert pool.grow(1, 49) and pool.num_held_blocks(1) == 4
        assert pool.num_cached_free_blocks == 0
        pool.check_invariants()

    def test_bad_sizes(self):
        with pytest.raises(KvsimError):
            BlockPool(0, 16)
        with pytest.raises(KvsimError):
            RadixBlockPool(4, 0)


_op = st.tuples(
    st.sampled_from(["alloc", "grow", "cache", "free"]),
    st.integers(0, 5),  # sequence
    st.integers(1, 40),  # tokens
    st.integers(0, 3),  # prefix family
)


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["none", "hash", "radix"]),
    num_blocks=st.integers(1, 12),
    ops=st.lists(_op, max_size=60),
)
def test_pool_invariants_under_random_operations(kind, num_blocks, ops):
    """Blocks are conserved and never over-allocated whatever the sequence of operations."""
    bt = 4
    pool = (
        RadixBlockPool(num_blocks, bt)
        if kind == "radix"
        else BlockPool(num_blocks, bt, enable_prefix_caching=kind == "hash")
    )
    families = [np.array([family * 10 + j for j in range(10)]) for family in range(4)]
    # Family 3 shares its first 3 blocks with family 0.
    families[3][:3] = families[0][:3]
    tokens: dict[int, int] = {}
    hashes: dict[int, np.ndarray] = {}
    for op, seq, amount, family in ops:
        if op == "alloc" and seq not in tokens:
            ok = pool.can_allocate(amount, families[family])
            free_before = pool.num_free_blocks
            hit = pool.allocate(seq, amount, families[family])
            assert (hit is not None) == ok
            if hit is None:
                assert pool.num_free_blocks == free_before
            else:
                assert hit % bt == 0 and hit <= amount
                tokens[seq], hashes[seq] = amount, families[family]
        elif op == "grow" and seq in tokens:
            if pool.grow(seq, tokens[seq] + amount):
                tokens[seq] += amount
        elif op == "cache" and seq in tokens:
            pool.cache_full_blocks(seq, hashes[seq], tokens[seq] // bt)
        elif op == "free" and seq in tokens:
            pool.free(seq)
            del tokens[seq], hashes[seq]
        pool.check_invariants()
        assert 0 <= pool.num_free_blocks <= num_blocks
        assert 0 <= pool.num_cached_free_blocks <= pool.num_free_blocks
        for held_seq, held_tokens in tokens.items():
            assert pool.num_held_blocks(held_seq) == -(-held_tokens // bt)
