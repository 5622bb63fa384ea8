"""How many KV blocks a sequence holds, step by step, under a KV strategy.

Without a strategy (or one whose footprint is the identity), a sequence with ``t`` tokens in
KV holds ``ceil(t / B)`` blocks of ``B`` tokens, and decode growth has a closed form. Under a
strategy that drops, compresses or indexes tokens, :class:`~sim.policies.footprint.KvFootprint`
gives ``blocks(t, prompt)`` and this module turns it into what the scheduler asks of the block
pool (``docs/policies.md`` §In the engine):

* during a decode step a sequence holds the larger of its hold before and after the step;
* during a prefill chunk of ``n`` tokens it holds at least ``blocks(c) + ceil(n / B)`` (the
  chunk is written uncompressed, the policy compresses at the step's end);
* after each step it shrinks to ``blocks(t)``.

The block pools speak tokens, so a hold of ``k`` blocks is asked for as ``k · B`` tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sim.kv.block_pool import blocks_for

if TYPE_CHECKING:
    from sim.policies.footprint import KvFootprint


class BlockHolds:
    """Block holds of sequences on one replica (module docstring). ``largest_chunk_tokens``
    is the longest prefill chunk the scheduler may run (its token budget with chunked prefill,
    else unbounded): a request whose chunk cannot fit is rejected up front."""

    def __init__(
        self,
        block_tokens: int,
        footprint: KvFootprint | None = None,
        largest_chunk_tokens: int | None = None,
    ) -> None:
        self.block_tokens = block_tokens
        self.footprint = None if footprint is None or footprint.identity else footprint
        self.largest_chunk_tokens = largest_chunk_tokens

    @property
    def follows_policy(self) -> bool:
        """Whether holds differ from ``ceil(t / B)`` (a non-identity footprint)."""
        return self.footprint is not None

    # ---- one sequence ------------------------------------------------------------------------
    def held(self, prompt: int, tokens: int) -> int:
        """Blocks held with ``tokens`` tokens in KV."""
        if self.footprint is None:
            return blocks_for(tokens, self.block_tokens)
        return int(self.footprint.blocks([tokens], prompt)[0])

    def hold_tokens(self, prompt: int, tokens: int) -> int:
        """What to ask the pool for to hold :meth:`held` blocks."""
        if self.footprint is None:
            return tokens
        return self.held(prompt, tokens) * self.block_tokens

    def during_step(self, prompt: int, computed: int, new: int) -> int:
        """Blocks held while a step computes ``new`` tokens on top of ``computed``."""
        if self.footprint is None:
            return blocks_for(computed + new, self.block_tokens)
        before, after = self.footprint.blocks([computed, computed + new], prompt)
        if new == 1:
            return int(max(before, after))
        return int(max(after, before + blocks_for(new, self.block_tokens)))

    def during_step_tokens(self, prompt: int, computed: int, new: int) -> int:
        """What to ask the pool for to hold :meth:`during_step` blocks."""
        if self.footprint is None:
            return computed + new
        return self.during_step(prompt, computed, new) * self.block_tokens

    def peak(self, prompt: int, last: int) -> int:
        """The most blocks needed at once up to ``last`` tokens: the larger of the hold at
        prompt end, at ``last``, and while the first (largest) prefill chunk is written."""
        if self.footprint is None:
            return blocks_for(last, self.block_tokens)
        chunk = (
            prompt if self.largest_chunk_tokens is None else min(prompt, self.largest_chunk_tokens)
        )
        points = np.array([min(prompt, last), last], dtype=np.int64)
        held = int(self.footprint.blocks(points, prompt).max())
        return max(held, blocks_for(chunk, self.block_tokens))

    def kv_tokens(self, prompt: int, tokens: int) -> int:
        """KV at ``tokens`` tokens in tokens of the stored format: ``tokens`` for the full
        cache, else the held blocks' worth (what a swap or a transfer moves)."""
        return tokens if self.footprint is None else self.hold_tokens(prompt, tokens)

    # ---- a decode batch over many steps -------------------------------------------------------
    def _matrix(self, computed: np.ndarray, prompts: np.ndarray, steps: int) -> np.ndarray:
        """``[sequence, s]`` blocks held after ``s = 0 … steps`` more decode tokens."""
        assert self.footprint is not None
        width = steps + 1
        tokens = np.repeat(computed, width) + np.tile(np.arange(width), len(computed))
        held = self.footprint.blocks(tokens, np.repeat(prompts, width))
        return held.reshape(len(computed), width)

    def decode_growth(self, computed: np.ndarray, steps: int) -> int:
        """New blocks (full cache) over ``steps`` decode steps: a sequence with ``c`` tokens
        holds ``ceil(c / B)`` and after ``s`` more needs ``ceil((c + s) / B)``; the difference
        is ``floor((s + a) / B)`` with ``a = (c − 1) mod B``."""
        phase = (computed - 1) % self.block_tokens
        return int(((steps + phase) // self.block_tokens).sum())

    def stretch_growth(self, computed: np.ndarray, prompts: np.ndarray, horizon: int) -> np.ndarray:
        """Blocks the batch holds beyond today's during each of the next decode steps
        (non-decreasing), over the longest horizon ≤ ``horizon`` for which it is exact: a
        commit that shrinks a hold frees blocks a waiting sequence might take, so the
        stretch ends with that step."""
        if self.footprint is None:
            steps = np.arange(1, horizon + 1)
            phase = (computed - 1) % self.block_tokens
            return ((steps[:, None] + phase[None, :]) // self.block_tokens).sum(axis=1)
        held = self._matrix(computed, prompts, horizon)
        during = np.maximum(held[:, :-1], held[:, 1:])
        drops = (held[:, 1:] < held[:, :-1]).any(axis=0)
        if drops.any():
            during = during[:, : int(np.argmax(drops)) + 1]
        return (during - held[:, :1]).sum(axis=0)

    def growth_events(
        self, computed: np.ndarray, prompts: np.ndarray, steps: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sequence position, step, tokens to ask the pool for) of every decode step in which
        a hold grows, over ``steps`` steps, so the caller can allocate in step order."""
        bt = self.block_tokens
        if self.footprint is None:
            first = bt - (computed - 1) % bt
            events = np.maximum((steps - first) // bt + 1, 0)
            who = np.repeat(np.arange(len(computed)), events)
            offsets = np.arange(who.size) - np.repeat(np.cumsum(events) - events, events)
            when = first[who] + offsets * bt
            return who, when, computed[who] + when
        held = self._matrix(computed, prompts, steps)
        during = np.maximum(held[:, :-1], held[:, 1:])
        before = np.concatenate([held[:, :1], during[:, :-1]], axis=1)
        who, when = np.nonzero(during > before)
        return who, when + 1, during[who, when] * bt
