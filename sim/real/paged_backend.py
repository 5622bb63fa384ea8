"""The full-precision paged KV backend: the engine's block pool made of real tensors.

:class:`PagedKvBackend` implements :class:`~sim.real.backend.KvBackend` over one
:class:`~sim.real.kv_cache.PagedKVCache` of ``num_blocks`` blocks, the size of the engine's
KV pool (vLLM's ``num_gpu_blocks``; Kwon et al., SOSP 2023). It keeps its own block
allocator and one block table per sequence; a sequence holding ``n`` cached tokens owns
``ceil(n / block_tokens)`` blocks, which is exactly what the engine's
:class:`~sim.kv.block_pool.BlockPool` charges it (without prefix caching), so whenever the
engine's pool has room the real cache has room too, and the real cache never holds more than
the engine's pool allows. Physical block ids are the backend's own: the engine's ids are
bookkeeping; these are addresses.

``offload`` gathers a sequence's cached keys and values (only its ``n`` tokens, not the
unused tail of its last block) into ``[layers, n, kv_heads, head_dim]`` tensors, moves them
to the second memory tier (:mod:`sim.real.offload`) and frees its blocks; ``restore``
allocates fresh blocks (usually different ones) and writes the tensors back through the new
block table. Both are index gathers and scatters over all layers at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from hardware.errors import KvsimError
from sim.real.backend import SeqWork
from sim.real.model import LlamaModel, StepBatch
from sim.real.offload import OffloadTier


@dataclass
class _SeqState:
    """A live sequence: its block table and how many tokens its blocks hold."""

    table: list[int] = field(default_factory=list)
    length: int = 0


class PagedKvBackend:
    """Live sequences' KV in a paged cache of ``num_blocks`` blocks of ``block_tokens``
    tokens, in the model's dtype on its device; swapped-out KV in ``tier`` (required for
    :meth:`offload`)."""

    def __init__(
        self,
        model: LlamaModel,
        num_blocks: int,
        block_tokens: int = 16,
        tier: OffloadTier | None = None,
    ) -> None:
        self.model = model
        self.cache = model.new_cache(num_blocks, block_tokens)
        self.tier = tier
        self._free: deque[int] = deque(range(num_blocks))
        self._seqs: dict[int, _SeqState] = {}
        self._offloaded: dict[int, int] = {}

    # ---- sizes ---------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return self.cache.num_blocks

    @property
    def block_tokens(self) -> int:
        return self.cache.block_tokens

    @property
    def block_bytes(self) -> int:
        """Bytes of keys and values one block holds over all layers."""
        return self.cache.size_bytes // self.cache.num_blocks

    @property
    def kv_bytes_per_token(self) -> int:
        return self.block_bytes // self.cache.block_tokens

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def length(self, seq_id: int) -> int:
        """Tokens of ``seq_id`` in the cache (0 for an unknown sequence)."""
        state = self._seqs.get(seq_id)
        return 0 if state is None else state.length

    def is_offloaded(self, seq_id: int) -> bool:
        return seq_id in self._offloaded

    def stored_bytes(self) -> int:
        """Bytes of the blocks live sequences own (whole blocks, as the engine's pool counts)."""
        return (self.num_blocks - len(self._free)) * self.block_bytes

    # ---- blocks --------------------------------------------------------------------------
    def _grow(self, seq_id: int, state: _SeqState, tokens: int) -> None:
        need = -(-tokens // self.block_tokens) - len(state.table)
        if need > len(self._free):
            raise KvsimError(
                f"sequence {seq_id} needs {need} more KV blocks but {len(self._free)} of "
                f"{self.num_blocks} are free: the real cache is the engine's pool, so the "
                "engine and the executor disagree on block accounting",
                field="num_blocks",
            )
        state.table.extend(self._free.popleft() for _ in range(max(need, 0)))

    def _slots(self, table: list[int], length: int) -> torch.Tensor:
        """Flat cache slots of positions ``0 .. length-1`` through ``table``."""
        device = self.cache.k.device
        positions = torch.arange(length, device=device)
        blocks = torch.tensor(table, dtype=torch.int64, device=device)
        return blocks[positions // self.block_tokens] * self.block_tokens + (
            positions % self.block_tokens
        )

    # ---- KvBackend -----------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, work: Sequence[SeqWork], *, all_logits: bool = False) -> torch.Tensor:
        """Append each sequence's new tokens and return their logits (see
        :meth:`sim.real.backend.KvBackend.step`). A sequence must continue where its cache
        ends (``start_position`` = its cached length), the first step of a new one at 0."""
        if not work:
            raise KvsimError("a step needs at least one sequence", field="work")
        tables = []
        for item in work:
            if item.seq_id in self._offloaded:
                raise KvsimError(
                    f"sequence {item.seq_id} is offloaded; restore it first", field="seq_id"
                )
            state = self._seqs.get(item.seq_id)
            if state is None:
                state = self._seqs[item.seq_id] = _SeqState()
            if item.start_position != state.length:
                raise KvsimError(
                    f"sequence {item.seq_id} has {state.length} cached tokens but the step "
                    f"starts at position {item.start_position}",
                    field="start_position",
                )
            self._grow(item.seq_id, state, item.start_position + len(item.token_ids))
            tables.append(state.table)
        batch = StepBatch.from_lists(
            [item.token_ids for item in work],
            [item.start_position for item in work],
            tables,
            self.block_tokens,
            self.cache.k.device,
        )
        logits = self.model(batch, self.cache, last_only=not all_logits)
        for item in work:
            self._seqs[item.seq_id].length += len(item.token_ids)
        return logits

    def release(self, seq_id: int) -> None:
        """Free the sequence's blocks (and its offloaded copy, if any)."""
        state = self._seqs.pop(seq_id, None)
        if state is not None:
            self._free.extend(state.table)
        elif self._offloaded.pop(seq_id, None) is not None:
            assert self.tier is not None
            self.tier.discard(seq_id)
        else:
            raise KvsimError(f"sequence {seq_id} holds no KV", field="seq_id")

    @torch.inference_mode()
    def offload(self, seq_id: int) -> int:
        """Move the sequence's cached tokens to the tier and free its blocks; bytes moved."""
        if self.tier is None:
            raise KvsimError("this backend has no second memory tier to offload to", field="tier")
        state = self._seqs.get(seq_id)
        if state is None:
            raise KvsimError(f"sequence {seq_id} holds no KV in device memory", field="seq_id")
        slots = self._slots(state.table, state.length)
        transfer = self.tier.store(seq_id, (self.cache.k[:, slots], self.cache.v[:, slots]))
        del self._seqs[seq_id]
        self._free.extend(state.table)
        self._offloaded[seq_id] = state.length
        return transfer.size_bytes

    @torch.inference_mode()
    def restore(self, seq_id: int) -> int:
        """Bring an offloaded sequence back into freshly allocated blocks; bytes moved."""
        if seq_id not in self._offloaded:
            raise KvsimError(f"sequence {seq_id} is not offloaded", field="seq_id")
        assert self.tier is not None
        length = self._offloaded[seq_id]
        state = _SeqState()
        self._grow(seq_id, state, length)
        (keys, values), transfer = self.tier.load(seq_id, self.cache.k.device)
        del self._offloaded[seq_id]
        slots = self._slots(state.table, length)
        self.cache.k[:, slots] = keys
        self.cache.v[:, slots] = values
        state.length = length
        self._seqs[seq_id] = state
        return transfer.size_bytes
