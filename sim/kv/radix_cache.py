"""SGLang-style radix-tree prefix cache over KV blocks.

Mirrors SGLang's ``RadixCache`` (``python/sglang/srt/mem_cache/radix_cache.py``) and its LRU
eviction strategy (``evict_policy.py``), at block granularity: the key sequence of a prompt is
its engine-block hashes (:func:`sim.kv.hashing.engine_block_hashes`), SGLang's ``page_size``
set to the engine block.

* A node owns an edge: a run of block hashes (``key``) and the block ids holding their KV
  (``value``). Children are keyed by the first hash of their edge; a partial match splits an
  edge in two (``_split_node``), so the tree stays compressed.
* ``match_prefix`` walks the longest cached prefix; the allocation that follows bumps
  ``last_access`` of every node on the path (a logical clock, not wall time, so runs are
  reproducible).
* A running sequence holds a *lock reference* on its deepest cached node and, through it, on
  every ancestor (``inc_lock_ref`` / ``dec_lock_ref``); locked blocks are *protected*,
  unlocked tree blocks are *evictable*.
* Newly full prompt blocks are inserted as soon as they are computed (SGLang's
  ``cache_unfinished_req``); if the tree already holds some of them (another sequence computed
  the same prefix meanwhile) the sequence's duplicates are freed and it adopts the tree's blocks.
* Blocks outside the tree (a sequence's private tail: the partial last block and generated
  tokens, which have no hash) go back to the free list when the sequence is freed.
* Eviction pops unlocked *leaves* in least-recently-accessed order and deletes them; a parent
  left childless and unlocked becomes a candidate. Only leaves go, so the tree stays
  prefix-closed.

The public API is :class:`sim.kv.block_pool.BlockPool`'s, so the scheduler drives either.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from hardware.errors import KvsimError
from sim.kv.block_pool import _check_size, blocks_for


@dataclass(eq=False)
class RadixNode:
    """One edge of the tree: ``key`` block hashes whose KV sits in blocks ``value``."""

    node_id: int
    key: list[int]
    value: list[int]
    parent: RadixNode | None
    children: dict[int, RadixNode] = field(default_factory=dict)
    lock_ref: int = 0
    last_access: int = 0
    alive: bool = True


@dataclass(eq=False)
class _SeqState:
    node: RadixNode
    tree_blocks: int
    private: list[int]


def _common_length(key: list[int], hashes: list[int], start: int) -> int:
    length = 0
    limit = min(len(key), len(hashes) - start)
    while length < limit and key[length] == hashes[start + length]:
        length += 1
    return length


class RadixBlockPool:
    """KV blocks of one replica with an SGLang radix-tree prefix cache (module docstring).

    Same public API and all-or-nothing contract as :class:`~sim.kv.block_pool.BlockPool`.
    """

    enable_prefix_caching = True

    def __init__(self, num_blocks: int, block_tokens: int):
        _check_size(num_blocks, block_tokens)
        self.num_blocks = int(num_blocks)
        self.block_tokens = int(block_tokens)
        #: Blocks evicted from the tree to make room, since creation.
        self.evictions = 0
        self._free: deque[int] = deque(range(self.num_blocks))
        self._next_id = 1
        self.root = RadixNode(node_id=0, key=[], value=[], parent=None, lock_ref=1)
        self._clock = 0
        self._evictable = 0
        self._heap: list[tuple[int, int, int, RadixNode]] = []
        self._pushes = 0
        self._seqs: dict[int, _SeqState] = {}

    # ------------------------------------------------------------------ counts
    @property
    def num_free_blocks(self) -> int:
        """Free-list blocks plus evictable (unlocked) tree blocks."""
        return len(self._free) + self._evictable

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def num_cached_free_blocks(self) -> int:
        """Tree blocks no running sequence locks (hittable, evictable)."""
        return self._evictable

    def num_held_blocks(self, seq_id: int) -> int:
        state = self._seqs.get(seq_id)
        return 0 if state is None else state.tree_blocks + len(state.private)

    def blocks_needed(self, seq_id: int, total_tokens: int) -> int:
        """New blocks ``seq_id`` needs to hold ``total_tokens`` (prefix hits not counted)."""
        return max(blocks_for(total_tokens, self.block_tokens) - self.num_held_blocks(seq_id), 0)

    # ------------------------------------------------------------------ tree walks
    def _walk(self, hashes: list[int]) -> tuple[int, list[tuple[RadixNode, int]]]:
        """Longest cached prefix of ``hashes``: (blocks matched, [(node, blocks used)])."""
        node, matched, path = self.root, 0, []
        while matched < len(hashes):
            child = node.children.get(hashes[matched])
            if child is None:
                break
            used = _common_length(child.key, hashes, matched)
            path.append((child, used))
            matched += used
            if used < len(child.key):
                break
            node = child
        return matched, path

    def match_prefix(self, hashes: np.ndarray | None) -> int:
        """Number of leading ``hashes`` cached in the tree; no side effects."""
        if hashes is None or not len(hashes):
            return 0
        return self._walk(hashes.tolist())[0]

    def _newly_locked(self, path: list[tuple[RadixNode, int]]) -> int:
        return sum(used for node, used in path if node.lock_ref == 0)

    def can_allocate(self, total_tokens: int, hashes: np.ndarray | None = None) -> bool:
        """Whether :meth:`allocate` of a new sequence would succeed now; no side effects."""
        cap = total_tokens // self.block_tokens
        keys = [] if hashes is None else hashes[:cap].tolist()
        matched, path = self._walk(keys)
        new_blocks = blocks_for(total_tokens, self.block_tokens) - matched
        return new_blocks <= self.num_free_blocks - self._newly_locked(path)

    # ------------------------------------------------------------------ tree edits
    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _push_if_leaf(self, node: RadixNode) -> None:
        if node is not self.root and node.alive and not node.children and node.lock_ref == 0:
            self._pushes += 1
            heapq.heappush(self._heap, (node.last_access, node.node_id, self._pushes, node))

    def _split(self, node: RadixNode, length: int) -> RadixNode:
        """Split ``node``'s edge after ``length`` blocks; return the new upper node."""
        parent = node.parent
        assert parent is not None
        upper = RadixNode(
            node_id=self._next_id,
            key=node.key[:length],
            value=node.value[:length],
            parent=parent,
            lock_ref=node.lock_ref,
            last_access=node.last_access,
        )
        self._next_id += 1
        node.key, node.value, node.parent = node.key[length:], node.value[length:], upper
        upper.children[node.key[0]] = node
        parent.children[upper.key[0]] = upper
        return upper

    def _lock(self, node: RadixNode) -> None:
        while node is not self.root:
            if node.lock_ref == 0:
                self._evictable -= len(node.value)
            node.lock_ref += 1
            node = node.parent  # type: ignore[assignment]

    def _unlock(self, node: RadixNode) -> None:
        while node is not self.root:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._evictable += len(node.value)
                self._push_if_leaf(node)
            node = node.parent  # type: ignore[assignment]

    def _evict(self, num_blocks: int) -> None:
        """Free at least ``num_blocks`` tree blocks, least recently used unlocked leaf first."""
        evicted = 0
        while evicted < num_blocks and self._heap:
            access, _, _, node = heapq.heappop(self._heap)
            if not node.alive or node.children or node.lock_ref or node.last_access != access:
                continue
            self._free.extend(node.value)
            evicted += len(node.value)
            self._evictable -= len(node.value)
            node.alive = False
            parent = node.parent
            assert parent is not None
            del parent.children[node.key[0]]
            self._push_if_leaf(parent)
        self.evictions += evicted

    def _take(self, count: int) -> list[int]:
        if count > len(self._free):
            self._evict(count - len(self._free))
        return [self._free.popleft() for _ in range(count)]

    # ------------------------------------------------------------------ public mutations
    def allocate(
        self, seq_id: int, total_tokens: int, hashes: np.ndarray | None = None
    ) -> int | None:
        """First allocation of ``seq_id`` to hold ``total_tokens``: lock the longest cached
        prefix of ``hashes`` (blocks entirely within ``total_tokens``), take the rest from the
        free list (evicting leaves if needed). Returns prefix-hit tokens, or ``None`` with no
        side effect when the blocks cannot be supplied."""
        if seq_id in self._seqs:
            raise KvsimError(f"sequence {seq_id} already holds blocks", field="seq_id")
        cap = total_tokens // self.block_tokens
        keys = [] if hashes is None else hashes[:cap].tolist()
        matched, path = self._walk(keys)
        new_blocks = blocks_for(total_tokens, self.block_tokens) - matched
        if new_blocks > self.num_free_blocks - self._newly_locked(path):
            return None
        node = self.root
        if path:
            last, used = path[-1]
            if used < len(last.key):
                path[-1] = (self._split(last, used), used)
            now = self._tick()
            for path_node, _ in path:
                path_node.last_access = now
            node = path[-1][0]
        self._lock(node)
        self._seqs[seq_id] = _SeqState(node=node, tree_blocks=matched, private=[])
        self._seqs[seq_id].private = self._take(new_blocks)
        return matched * self.block_tokens

    def grow(self, seq_id: int, total_tokens: int) -> bool:
        """Extend ``seq_id`` to hold ``total_tokens``; ``False`` (no change) if short."""
        needed = self.blocks_needed(seq_id, total_tokens)
        if needed == 0:
            return True
        if needed > self.num_free_blocks:
            return False
        state = self._seqs.get(seq_id)
        if state is None:
            state = self._seqs[seq_id] = _SeqState(node=self.root, tree_blocks=0, private=[])
        state.private.extend(self._take(needed))
        return True

    def cache_full_blocks(self, seq_id: int, hashes: np.ndarray, num_full_blocks: int) -> None:
        """Insert ``seq_id``'s full blocks with known hashes into the tree and move its lock to
        the deepest inserted node; duplicates of blocks already in the tree are freed and the
        tree's blocks adopted (SGLang ``insert`` + ``cache_unfinished_req``)."""
        state = self._seqs[seq_id]
        stop = min(num_full_blocks, len(hashes), state.tree_blocks + len(state.private))
        if stop <= state.tree_blocks:
            return
        keys = hashes[:stop].tolist()
        blocks = self.block_ids(seq_id)
        now = self._tick()
        node, position = self.root, 0
        while position < stop:
            child = node.children.get(keys[position])
            if child is None:
                break
            used = _common_length(child.key, keys, position)
            if used < len(child.key):
                child = self._split(child, used)
            for offset, tree_block in enumerate(child.value):
                if blocks[position + offset] != tree_block:
                    self._free.append(blocks[position + offset])
                    blocks[position + offset] = tree_block
            child.last_access = now
            node, position = child, position + used
        if position < stop:
            leaf = RadixNode(
                node_id=self._next_id,
                key=keys[position:stop],
                value=blocks[position:stop],
                parent=node,
                last_access=now,
            )
            self._next_id += 1
            node.children[leaf.key[0]] = leaf
            self._evictable += len(leaf.value)  # unlocked until the _lock below
            node = leaf
        self._lock(node)
        self._unlock(state.node)
        state.node, state.tree_blocks, state.private = node, stop, blocks[stop:]

    def shrink(self, seq_id: int, total_tokens: int) -> int:
        """Release ``seq_id``'s private blocks beyond those holding ``total_tokens``; blocks
        in the tree stay locked (other requests may share them), so a sequence never drops
        below its tree path. Returns the blocks released."""
        state = self._seqs.get(seq_id)
        if state is None:
            return 0
        keep = max(blocks_for(total_tokens, self.block_tokens) - state.tree_blocks, 0)
        released = state.private[keep:]
        del state.private[keep:]
        self._free.extend(released)
        return len(released)

    def free(self, seq_id: int) -> None:
        """Release ``seq_id``: unlock its tree path (now evictable, still hittable) and return
        its private blocks to the free list."""
        state = self._seqs.pop(seq_id)
        self._unlock(state.node)
        self._free.extend(state.private)

    def block_ids(self, seq_id: int) -> list[int]:
        """``seq_id``'s block table: its tree path's blocks, then its private blocks."""
        state = self._seqs.get(seq_id)
        if state is None:
            return []
        edges: list[list[int]] = []
        node = state.node
        while node is not self.root:
            edges.append(node.value)
            node = node.parent  # type: ignore[assignment]
        return [block for edge in reversed(edges) for block in edge] + state.private

    def free_queue(self) -> list[int]:
        """Free-list block ids in allocation order (head first); tree blocks not included."""
        return list(self._free)

    def block_hash(self, block_id: int) -> int | None:
        """The hash a tree block is keyed by, ``None`` if the block is not in the tree."""
        for node in self.nodes():
            if block_id in node.value:
                return node.key[node.value.index(block_id)]
        return None

    def nodes(self) -> list[RadixNode]:
        """Every live node but the root, parents before children."""
        found, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            found.append(node)
            stack.extend(node.children.values())
        return found

    # ------------------------------------------------------------------ checks
    def check_invariants(self) -> None:
        """Raise ``AssertionError`` unless every block is free, in the tree or private exactly
        once, lock refs equal the sequences whose path crosses each node, the evictable count
        matches, and the tree is well-formed (prefix-closed)."""
        owners: list[int] = list(self._free)
        locks: dict[int, int] = {}
        evictable = 0
        for node in self.nodes():
            parent = node.parent
            if (
                not node.alive
                or not node.key
                or len(node.key) != len(node.value)
                or parent is None
                or parent.children.get(node.key[0]) is not node
            ):
                raise AssertionError(f"malformed node {node.node_id}")
            owners.extend(node.value)
            if node.lock_ref < 0:
                raise AssertionError(f"negative lock_ref on node {node.node_id}")
            if node.lock_ref == 0:
                evictable += len(node.value)
            locks[node.node_id] = 0
        for seq_id, state in self._seqs.items():
            owners.extend(state.private)
            depth, node = 0, state.node
            while node is not self.root:
                if not node.alive:
                    raise AssertionError(f"sequence {seq_id} locks an evicted node")
                locks[node.node_id] += 1
                depth += len(node.value)
                node = node.parent  # type: ignore[assignment]
            if depth != state.tree_blocks:
                raise AssertionError(f"sequence {seq_id} path depth {depth} != tree_blocks")
        if sorted(owners) != list(range(self.num_blocks)):
            raise AssertionError("blocks are not conserved (lost or owned twice)")
        for node in self.nodes():
            if node.lock_ref != locks[node.node_id]:
                raise AssertionError(f"lock_ref of node {node.node_id} != locking sequences")
        if evictable != self._evictable:
            raise AssertionError(f"evictable {self._evictable} != {evictable}")
