"""The shape of one engine step, as the cost model sees it.

An engine step runs a mixed batch (Sarathi-style chunked prefill, vLLM's scheduler): some
prefill chunks, each computing ``c`` new tokens on top of ``p`` tokens already in the KV cache
(a prefix-cache hit or earlier chunks of the same prompt), and some decode sequences, each
computing one token that attends its whole (or windowed, or selected) context. The cost model
only needs these token counts, so a batch is four integer arrays and no request objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hardware.errors import KvsimError


def _as_counts(values: np.ndarray | list[int] | tuple[int, ...], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.int64).reshape(-1)
    if array.size and array.min() < 0:
        raise KvsimError(f"token counts must be >= 0, got {int(array.min())}", field=name)
    return array


@dataclass(frozen=True)
class BatchShape:
    """Token counts of one step.

    ``prefill_tokens[i]`` new tokens computed by prefill chunk ``i``;
    ``prefill_context[i]`` tokens already in KV before that chunk;
    ``decode_context[j]`` KV tokens decode sequence ``j`` attends, its newest token included;
    ``decode_read_tokens[j]`` tokens actually read by sequence ``j`` when a selection policy
    (Quest, SnapKV) reads fewer than it stores (``None``: the context, windows applied; a
    mean over layers, so not necessarily whole);
    ``prefill_emits[i]`` whether chunk ``i`` finishes its prompt and so samples a token
    (``None``: every chunk does); ``transfer_bytes`` KV bytes moved between HBM and host memory
    in this step and not overlapped with compute (offload/reload; 0 without a lower tier);
    ``policy_flops`` the KV policies' extra work in this step over the whole replica (token
    scoring, low-rank reconstruction, merging; :class:`~sim.policies.footprint.KvFootprint`);
    ``overlapped_transfer_s`` seconds of KV work off the GPU (offloaded KV fetched over the
    host link, or its attention run on the CPU) that proceeds layer by layer alongside the
    step's layers (FlexGen's overlap; :mod:`sim.policies.offload`): the layers then take
    max(their own time, this).
    """

    prefill_tokens: np.ndarray
    prefill_context: np.ndarray
    decode_context: np.ndarray
    decode_read_tokens: np.ndarray | None = None
    prefill_emits: np.ndarray | None = None
    transfer_bytes: float = 0.0
    policy_flops: float = 0.0
    overlapped_transfer_s: float = 0.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "prefill_tokens", _as_counts(self.prefill_tokens, "prefill_tokens"))
        set_(self, "prefill_context", _as_counts(self.prefill_context, "prefill_context"))
        set_(self, "decode_context", _as_counts(self.decode_context, "decode_context"))
        if self.prefill_tokens.shape != self.prefill_context.shape:
            raise KvsimError(
                f"{self.prefill_tokens.size} prefill chunks but "
                f"{self.prefill_context.size} prefill contexts",
                field="prefill_context",
            )
        if self.decode_context.size and self.decode_context.min() < 1:
            raise KvsimError(
                "a decode sequence attends at least its own token (context >= 1)",
                field="decode_context",
            )
        if self.decode_read_tokens is not None:
            read = np.asarray(self.decode_read_tokens, dtype=np.float64).reshape(-1)
            if read.size and read.min() < 0:
                raise KvsimError("token counts must be >= 0", field="decode_read_tokens")
            if read.shape != self.decode_context.shape:
                raise KvsimError(
                    f"{read.size} read counts for {self.decode_context.size} decode sequences",
                    field="decode_read_tokens",
                )
            set_(self, "decode_read_tokens", read)
        if self.prefill_emits is not None:
            emits = np.asarray(self.prefill_emits, dtype=bool).reshape(-1)
            if emits.shape != self.prefill_tokens.shape:
                raise KvsimError(
                    f"{emits.size} emit flags for {self.prefill_tokens.size} prefill chunks",
                    field="prefill_emits",
                )
            set_(self, "prefill_emits", emits)
        if self.transfer_bytes < 0:
            raise KvsimError(f"must be >= 0, got {self.transfer_bytes}", field="transfer_bytes")
        if self.policy_flops < 0:
            raise KvsimError(f"must be >= 0, got {self.policy_flops}", field="policy_flops")
        if not self.overlapped_transfer_s >= 0:
            raise KvsimError(
                f"must be >= 0, got {self.overlapped_transfer_s}", field="overlapped_transfer_s"
            )

    @classmethod
    def prefill(cls, batch: int, prompt_tokens: int, cached_tokens: int = 0) -> BatchShape:
        """``batch`` whole prompts of ``prompt_tokens`` each (after ``cached_tokens`` of prefix
        hit), every one finishing its prompt in this step."""
        empty = np.zeros(0, dtype=np.int64)
        return cls(
            prefill_tokens=np.full(batch, prompt_tokens, dtype=np.int64),
            prefill_context=np.full(batch, cached_tokens, dtype=np.int64),
            decode_context=empty,
        )

    @classmethod
    def decode(cls, batch: int, context_tokens: np.ndarray | list[int] | int) -> BatchShape:
        """A pure decode step of ``batch`` sequences; ``context_tokens`` is one int for all of
        them or one count per sequence."""
        if np.ndim(context_tokens) == 0:
            context = np.full(batch, int(context_tokens), dtype=np.int64)  # type: ignore[arg-type]
        else:
            context = np.asarray(context_tokens, dtype=np.int64)
            if context.size != batch:
                raise KvsimError(
                    f"{context.size} contexts for a batch of {batch}", field="decode_context"
                )
        empty = np.zeros(0, dtype=np.int64)
        return cls(prefill_tokens=empty, prefill_context=empty, decode_context=context)

    @property
    def num_prefill_tokens(self) -> int:
        return int(self.prefill_tokens.sum())

    @property
    def num_decode(self) -> int:
        return int(self.decode_context.size)

    @property
    def num_tokens(self) -> int:
        """Tokens through the GEMMs this step: every prefill token plus one per decode."""
        return self.num_prefill_tokens + self.num_decode

    @property
    def num_emitting(self) -> int:
        """Rows of logits this step: every decode sequence and every finishing chunk."""
        finishing = (
            self.prefill_tokens.size
            if self.prefill_emits is None
            else int(np.count_nonzero(self.prefill_emits))
        )
        return self.num_decode + finishing
