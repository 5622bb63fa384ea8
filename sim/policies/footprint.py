"""What a KV strategy means to the engine: blocks held, tokens read, extra FLOPs.

The engine's block pool counts blocks of ``block_tokens`` tokens *at the strategy's storage
format* (quantization, low-rank latent and merging applied, no tokens dropped), so the pool of
one replica holds ``pool_bytes / (block_tokens × bytes_per_token)`` blocks and an fp8 cache
twice as many as an fp16 one. A sequence with ``t`` tokens in context then holds

    blocks(t) = ceil(physical_bytes(t) / (block_tokens × bytes_per_token))

blocks, where ``physical_bytes`` is :meth:`KvStrategy.kv_bytes` at block granularity per
layer (a block with one surviving token stays allocated; a side index such as Quest's page
summaries counts too). For the full cache in a per-token format this is ``ceil(t / B)``
exactly, and the engine takes that fast path (:attr:`KvFootprint.identity`).

With prefix caching, a sequence under an evicting policy references at most its held blocks
of a cached prefix: the block pool matches leading blocks, so a shared prefix longer than the
hold is partly recomputed, and only the blocks a sequence holds are registered for others to
hit. Memory is never over-counted; the prefix-cache benefit of such policies is a lower bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hardware.errors import KvsimError
from sim.policies.base import KvLayout
from sim.policies.compose import KvStrategy
from sim.policies.quantization import FP16_BYTES
from workloads.kv_format import KvFormat
from workloads.model import ModelSpec

#: Rows per vectorised evaluation, so a long stretch of a big batch stays within ~100 MB.
_CHUNK_ROWS = 32768
#: Block counts are tabulated per prompt length in runs of this many context lengths: the
#: engine asks about contexts near each sequence's current one, step after step.
_RUN_TOKENS = 256
#: Tabulated runs kept before the table is cleared (~8 MB).
_MAX_RUNS = 4096


def _chunked(fn: Any, *arrays: np.ndarray) -> np.ndarray:
    size = arrays[0].size
    if size <= _CHUNK_ROWS:
        return fn(*arrays)
    return np.concatenate(
        [fn(*(a[i : i + _CHUNK_ROWS] for a in arrays)) for i in range(0, size, _CHUNK_ROWS)]
    )


@dataclass(frozen=True)
class KvFootprint:
    """A :class:`KvStrategy` on one model, seen by the scheduler and the cost model."""

    strategy: KvStrategy
    model: ModelSpec
    block_tokens: int = 16
    bytes_per_token: float = field(init=False)
    identity: bool = field(init=False)
    reads_context: bool = field(init=False)
    has_extra_flops: bool = field(init=False)
    _runs: dict[tuple[int, int], np.ndarray] = field(
        init=False, default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.block_tokens, int) or self.block_tokens < 1:
            raise KvsimError(
                f"must be a positive integer, got {self.block_tokens!r}", field="block_tokens"
            )
        strategy, model = self.strategy, self.model
        layout = strategy.layout(model)
        factor, _ = strategy.layer_weights(model)
        per_layer = strategy.quantization.kv_format(layout).bytes_per_element * layout.elements
        set_ = object.__setattr__
        set_(self, "bytes_per_token", float(factor.sum() * per_layer))
        probe = np.concatenate(
            [np.arange(1, 3 * self.block_tokens + 1), [1000, 4097, 65537]]
        ).astype(np.int64)
        index = strategy.selection.index_tokens_per_layer(probe, probe, model.num_layers)
        exact = -(-probe // self.block_tokens)
        set_(
            self, "identity", not index.any() and np.array_equal(self._blocks(probe, probe), exact)
        )
        holds = factor > 0
        read = strategy.selection.read_tokens_per_layer(probe, probe, model.num_layers)
        set_(
            self,
            "reads_context",
            not index.any()
            and np.array_equal(read[:, holds].mean(axis=1), probe.astype(np.float64)),
        )
        extra = self._decode_extra(probe, probe).any() or self._prefill_extra(probe).any()
        set_(self, "has_extra_flops", bool(extra))

    @classmethod
    def full(cls, model: ModelSpec, block_tokens: int = 16) -> KvFootprint:
        return cls(KvStrategy(), model, block_tokens)

    # ---- memory ----------------------------------------------------------------------------
    def kv_format(self) -> KvFormat:
        """The strategy's steady-state bytes per token as a per-element format of the
        *model's own* KV elements (average bits; fractional for grouped or low-rank
        formats), for the memory plan and the cost model's KV traffic."""
        model = self.model
        base = KvLayout.of(model).elements * model.kv_layers
        bits = self.bytes_per_token * 8 / base
        return KvFormat(self.strategy.label(), bits)  # type: ignore[arg-type]

    def _blocks(self, tokens: np.ndarray, prompt: np.ndarray) -> np.ndarray:
        physical = self.strategy.kv_bytes(self.model, tokens, prompt, self.block_tokens)
        block_bytes = self.block_tokens * self.bytes_per_token
        return np.ceil(physical.physical_bytes / block_bytes - 1e-9).astype(np.int64)

    def blocks(self, tokens: Any, prompt_tokens: Any) -> np.ndarray:
        """Blocks held by sequences with ``tokens`` in KV and prompts of ``prompt_tokens``
        (tabulated in runs of context lengths per prompt length, computed on first use)."""
        t = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if self.identity:
            return -(-t // self.block_tokens)
        prompt = np.broadcast_to(np.asarray(prompt_tokens, dtype=np.int64), t.shape)
        runs = self._runs
        if t.size <= 8:  # the scheduler's per-sequence questions: plain lookups
            pairs = list(zip(prompt.tolist(), t.tolist(), strict=True))
            missing = list({(p, x // _RUN_TOKENS) for p, x in pairs} - runs.keys())
            if missing:
                self._tabulate(missing)
            return np.array(
                [runs[(p, x // _RUN_TOKENS)][x % _RUN_TOKENS] for p, x in pairs], dtype=np.int64
            )
        run = t // _RUN_TOKENS
        key = prompt * (1 << 32) + run
        unique, inverse = np.unique(key, return_inverse=True)
        pairs = [(int(k >> 32), int(k & 0xFFFFFFFF)) for k in unique.tolist()]
        missing = [pair for pair in pairs if pair not in runs]
        if missing:
            self._tabulate(missing)
        table = np.stack([runs[pair] for pair in pairs])
        return table[inverse, t % _RUN_TOKENS]

    def _tabulate(self, runs: list[tuple[int, int]]) -> None:
        if len(self._runs) + len(runs) > _MAX_RUNS:
            self._runs.clear()
        offsets = np.arange(_RUN_TOKENS)
        prompts = np.repeat([p for p, _ in runs], _RUN_TOKENS)
        tokens = (np.array([r for _, r in runs])[:, None] * _RUN_TOKENS + offsets).reshape(-1)
        held = _chunked(self._blocks, tokens, prompts)
        held = np.where(tokens > 0, held, 0).reshape(len(runs), _RUN_TOKENS)
        for (p, r), row in zip(runs, held, strict=True):
            self._runs[(p, r)] = row

    # ---- traffic and work ------------------------------------------------------------------
    def _read(self, context: np.ndarray, prompt: np.ndarray) -> np.ndarray:
        strategy, model = self.strategy, self.model
        factor, _ = strategy.layer_weights(model)
        holds = factor > 0
        selection = strategy.selection
        read = selection.read_tokens_per_layer(context, prompt, model.num_layers)[:, holds]
        index = selection.index_tokens_per_layer(context, prompt, model.num_layers)[:, holds]
        layout = strategy.layout(model)
        fp16_per_stored = FP16_BYTES * layout.elements / (self.bytes_per_token / holds.sum())
        return read.mean(axis=1) + index.mean(axis=1) * fp16_per_stored

    def decode_read_tokens(self, context_tokens: Any, prompt_tokens: Any) -> np.ndarray:
        """Token-equivalents one decode step reads per sequence, averaged over KV-holding
        layers before any sliding-window cap (the cost model applies windows per layer
        class): the selection's reads plus its fp16 side index converted to tokens of the
        stored format."""
        context = np.asarray(context_tokens, dtype=np.int64).reshape(-1)
        prompt = np.broadcast_to(np.asarray(prompt_tokens, dtype=np.int64), context.shape)
        return _chunked(self._read, context, np.ascontiguousarray(prompt))

    def _decode_extra(self, context: np.ndarray, prompt: np.ndarray) -> np.ndarray:
        return self.strategy.decode_extra_flops(self.model, context, prompt, dequant=False)

    def _prefill_extra(self, prompt: np.ndarray) -> np.ndarray:
        return self.strategy.prefill_extra_flops(self.model, prompt)

    def decode_extra_flops(self, context_tokens: Any, prompt_tokens: Any) -> np.ndarray:
        """Scoring, reconstruction and merging FLOPs per decode step and sequence
        (dequantisation is priced by the cost model per element read)."""
        context = np.asarray(context_tokens, dtype=np.int64).reshape(-1)
        prompt = np.broadcast_to(np.asarray(prompt_tokens, dtype=np.int64), context.shape)
        return _chunked(self._decode_extra, context, np.ascontiguousarray(prompt))

    def prefill_extra_flops(self, prompt_tokens: Any) -> np.ndarray:
        """FLOPs once per sequence when its prompt completes (SnapKV-style scoring, merging
        of the prompt tokens dropped)."""
        return self._prefill_extra(np.asarray(prompt_tokens, dtype=np.int64).reshape(-1))

    @property
    def dequant_flops_per_element(self) -> float:
        return float(self.strategy.quantization.dequant_flops_per_element)


LOSSLESS = "lossless"


def strategy_summary(
    footprint: KvFootprint, prompt_tokens: np.ndarray, output_tokens: np.ndarray
) -> dict[str, Any]:
    """The strategy's line in a run summary: its label, its quality per lossy component
    (from the quality table; ``unknown`` where there is no entry, never a guess), and the KV
    it saves on these requests at their final context (prompt + output − 1 tokens): physical
    savings count whole blocks against the fp16 cache; logical savings count what the method
    drops from the model's view, whether or not memory is freed (masking-only methods)."""
    from sim.policies.quality import quality_label

    strategy, model = footprint.strategy, footprint.model
    entries = strategy.quality(model.id)
    quality = "; ".join(f"{kind}: {quality_label(entry)}" for kind, entry in entries.items())
    prompt = np.asarray(prompt_tokens, dtype=np.int64).reshape(-1)
    final = prompt + np.asarray(output_tokens, dtype=np.int64).reshape(-1) - 1
    physical = logical = 0.0
    if final.size:
        b = strategy.kv_bytes(model, final, prompt, footprint.block_tokens)
        physical = 1.0 - float(b.physical_bytes.sum() / b.full_physical_bytes.sum())
        logical = 1.0 - float(b.logical_bytes.sum() / b.full_bytes.sum())
    return {
        "kv_strategy": strategy.label(),
        "kv_quality": quality or LOSSLESS,
        "kv_physical_savings": physical,
        "kv_logical_savings": logical,
    }
