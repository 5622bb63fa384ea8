"""The KV backend interface of the real execution mode.

A backend holds the KV cache of every live sequence of one real model and runs steps over
it. :class:`~sim.real.executor.TorchExecutor` turns each engine step into one
:meth:`KvBackend.step` call; the quality harness feeds a text through a backend chunk by
chunk. Two implementations share this interface: the paged full-precision cache (block tables
like the engine's) and the policy cache, which applies the KV policies' tensor faces
(selection, merging, quantization, low rank) as a serving engine would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SeqWork:
    """One sequence's share of a step: ``token_ids`` are new tokens at logical positions
    ``start_position …``; ``prompt_tokens`` is the sequence's prompt length, so that
    policies acting when the prompt completes (SnapKV, PyramidKV) know when that is."""

    seq_id: int
    token_ids: tuple[int, ...]
    start_position: int
    prompt_tokens: int


@runtime_checkable
class KvBackend(Protocol):
    """KV of the live sequences of one model, and the steps that read and extend it."""

    def step(self, work: Sequence[SeqWork], *, all_logits: bool = False) -> torch.Tensor:
        """Run one step: append each sequence's new tokens' KV and return float32 logits,
        ``[B, vocab]`` for each sequence's last new token, or ``[B, T, vocab]`` for every new
        token (right-padded to the longest) when ``all_logits``."""
        ...

    def release(self, seq_id: int) -> None:
        """Drop the sequence's KV (finished, or preempted for recompute)."""
        ...

    def offload(self, seq_id: int) -> int:
        """Move the sequence's KV to the second memory tier (swap-out); bytes moved."""
        ...

    def restore(self, seq_id: int) -> int:
        """Bring an offloaded sequence's KV back (swap-in); bytes moved."""
        ...

    def stored_bytes(self) -> int:
        """Bytes of KV held in device memory now, over all live sequences."""
        ...
