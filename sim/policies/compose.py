"""A KV strategy: one selection, one quantization, optionally a low-rank latent and merging,
composed on one model, with physical and logical bytes kept apart.

Per KV-holding layer ``ℓ`` (CLA: one in ``kv_share_factor``; sliding-window layers cap every
count at their window) and sequence:

* ``kept_ℓ``, ``stored_ℓ``, ``read_ℓ`` tokens from the selection policy;
* the layout (elements per token) from the model, or the low-rank latent;
* bytes of ``t`` tokens ``q(t)`` from the quantization policy on that layout, times the
  merging policy's layer factor ``m_ℓ``.

``stored_bytes = Σ m_ℓ·q(stored_ℓ)``; ``physical_bytes`` charges whole blocks,
``Σ m_ℓ·q(ceil(stored_ℓ / block)·block)`` — a block with one surviving token stays allocated
(vLLM pages, reference §5.2; KIVI rounds its quantized and fp16 parts separately) — plus the fp16 side index (Quest page summaries);
``logical_bytes = Σ m_ℓ·q(kept_ℓ)`` is what the method retains from the model's point of view
(masking-only methods: logical < physical). The baseline ``full_bytes`` is the uncompressed
fp16 cache of the whole context. Savings multiply: tokens × bits per element × rank fraction
× merge factor, each on the quantity it acts on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from hardware.errors import KvsimError
from sim.policies.base import KvLayout, as_tokens
from sim.policies.quantization import FP16_BYTES, Fp16
from sim.policies.registry import policy_from_table
from sim.policies.selection import FullCache
from workloads.model import ModelSpec

#: The kinds a strategy composes, in the order they act.
STRATEGY_KINDS = ("selection", "quantization", "low_rank", "merging")


@dataclass(frozen=True)
class KvBytes:
    """Per-sequence KV bytes of one strategy (arrays over sequences)."""

    physical_bytes: np.ndarray
    stored_bytes: np.ndarray
    logical_bytes: np.ndarray
    index_bytes: np.ndarray
    full_bytes: np.ndarray
    full_physical_bytes: np.ndarray

    @property
    def physical_savings_bytes(self) -> np.ndarray:
        """Memory actually freed against the full fp16 cache, blocks included."""
        return self.full_physical_bytes - self.physical_bytes

    @property
    def logical_savings_bytes(self) -> np.ndarray:
        """What the method drops from the model's view, whether or not memory is freed."""
        return self.full_bytes - self.logical_bytes


@lru_cache(maxsize=256)
def _layer_weights(strategy: KvStrategy, model: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    holds = np.array([model.holds_kv(i) for i in range(model.num_layers)], dtype=np.float64)
    factor = holds
    if strategy.merging is not None:
        factor = holds * strategy.merging.layer_bytes_factor(model, strategy.layout(model))
    windows = np.array([model.layer_window_tokens(i) or np.inf for i in range(model.num_layers)])
    factor.flags.writeable = False
    windows.flags.writeable = False
    return factor, windows


@dataclass(frozen=True)
class KvStrategy:
    """Selection + quantization + low rank + merging on one model."""

    selection: Any = field(default_factory=FullCache)
    quantization: Any = field(default_factory=Fp16)
    low_rank: Any | None = None
    merging: Any | None = None

    def __post_init__(self) -> None:
        for kind in STRATEGY_KINDS:
            policy = getattr(self, kind)
            if policy is not None and getattr(policy, "kind", None) != kind:
                raise KvsimError(
                    f"expected a {kind} policy, got {type(policy).__name__}",
                    field=f"policies.{kind}",
                )
        if (
            self.merging is not None
            and self.merging.requires_eviction
            and not self.selection.evicts
        ):
            raise KvsimError(
                f"{self.merging.name} merges evicted tokens, but selection "
                f"{self.selection.name!r} evicts none; pair it with an evicting policy",
                field="policies.merging.name",
            )

    @classmethod
    def from_tables(cls, tables: Mapping[str, Mapping[str, Any]]) -> KvStrategy:
        """From scenario tables ``{"selection": {"name": ...}, "quantization": {...}}``;
        other kinds in ``tables`` are ignored (they belong to other components)."""
        built = {k: policy_from_table(k, tables[k]) for k in STRATEGY_KINDS if k in tables}
        return cls(**built)

    def policies(self) -> list[Any]:
        return [p for p in (getattr(self, k) for k in STRATEGY_KINDS) if p is not None]

    def label(self) -> str:
        return " + ".join(p.label() for p in self.policies())

    # ---- layers ----------------------------------------------------------------------------
    def layout(self, model: ModelSpec) -> KvLayout:
        return self.low_rank.layout(model) if self.low_rank is not None else KvLayout.of(model)

    def layer_weights(self, model: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
        """Merge factor of each layer (0 for layers that hold no KV) and window caps
        (computed once per strategy and model; the arrays are read-only)."""
        return _layer_weights(self, model)

    def _counts(
        self, model: ModelSpec, context_tokens: Any, prompt_tokens: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        ctx = as_tokens(context_tokens, "context_tokens")
        prompt = as_tokens(prompt_tokens, "prompt_tokens")
        layers = model.num_layers
        _, windows = self.layer_weights(model)
        sel = self.selection
        full = np.minimum(ctx[:, None].astype(np.float64), windows[None, :])
        kept = np.minimum(sel.kept_tokens_per_layer(ctx, prompt, layers), windows[None, :])
        stored = np.minimum(sel.stored_tokens_per_layer(ctx, prompt, layers), windows[None, :])
        read = np.minimum(sel.read_tokens_per_layer(ctx, prompt, layers), windows[None, :])
        index = sel.index_tokens_per_layer(ctx, prompt, layers)
        return full, kept, stored, read, index

    # ---- bytes -----------------------------------------------------------------------------
    def kv_bytes(
        self, model: ModelSpec, context_tokens: Any, prompt_tokens: Any, block_tokens: int = 16
    ) -> KvBytes:
        """KV bytes per sequence (:class:`KvBytes`) with ``block_tokens``-token blocks."""
        if not isinstance(block_tokens, int) or block_tokens < 1:
            raise KvsimError(
                f"must be a positive integer, got {block_tokens!r}", field="block_tokens"
            )
        full, kept, stored, _, index = self._counts(model, context_tokens, prompt_tokens)
        factor, _ = self.layer_weights(model)
        holds = factor > 0
        layout = self.layout(model)
        base_layout = KvLayout.of(model)
        q = self.quantization

        def total(tokens: np.ndarray, fmt: Any, lay: KvLayout, weights: np.ndarray) -> np.ndarray:
            return (fmt.layer_bytes(tokens, lay) * weights[None, :]).sum(axis=1)

        index_bytes = (index * holds[None, :]).sum(axis=1) * layout.elements * FP16_BYTES
        base = Fp16()
        return KvBytes(
            physical_bytes=(
                q.layer_physical_bytes(stored, layout, block_tokens) * factor[None, :]
            ).sum(axis=1)
            + index_bytes,
            stored_bytes=total(stored, q, layout, factor),
            logical_bytes=total(kept, q, layout, factor),
            index_bytes=index_bytes,
            full_bytes=total(full, base, base_layout, holds * 1.0),
            full_physical_bytes=total(
                np.ceil(full / block_tokens) * block_tokens, base, base_layout, holds * 1.0
            ),
        )

    def kv_bytes_per_sequence(
        self, model: ModelSpec, context_tokens: Any, prompt_tokens: Any, block_tokens: int = 16
    ) -> np.ndarray:
        """Physical bytes per sequence at block granularity."""
        return self.kv_bytes(model, context_tokens, prompt_tokens, block_tokens).physical_bytes

    def read_bytes_per_decode_step(
        self, model: ModelSpec, context_tokens: Any, prompt_tokens: Any
    ) -> np.ndarray:
        """KV bytes one decode step reads per sequence (selected tokens at the stored format,
        plus the side index)."""
        _, _, _, read, index = self._counts(model, context_tokens, prompt_tokens)
        factor, _ = self.layer_weights(model)
        layout = self.layout(model)
        kv = (self.quantization.layer_bytes(read, layout) * factor[None, :]).sum(axis=1)
        return kv + (index * (factor > 0)[None, :]).sum(axis=1) * layout.elements * FP16_BYTES

    def decode_read_tokens(
        self, model: ModelSpec, context_tokens: Any, prompt_tokens: Any
    ) -> np.ndarray:
        """Tokens read per decode step, averaged over KV-holding layers (windows applied)."""
        _, _, _, read, _ = self._counts(model, context_tokens, prompt_tokens)
        factor, _ = self.layer_weights(model)
        holds = factor > 0
        return read[:, holds].mean(axis=1)

    # ---- FLOPs -----------------------------------------------------------------------------
    def decode_extra_flops(
        self, model: ModelSpec, context_tokens: Any, prompt_tokens: Any, *, dequant: bool = True
    ) -> np.ndarray:
        """Extra FLOPs per decode step and sequence: scoring, dequantisation of what is read
        (unless ``dequant`` is False: the cost model prices it per element read), low-rank
        reconstruction of the keys read, and merging of tokens evicted this step."""
        ctx = as_tokens(context_tokens, "context_tokens")
        prompt = as_tokens(prompt_tokens, "prompt_tokens")
        _, _, _, read, _ = self._counts(model, ctx, prompt)
        factor, _ = self.layer_weights(model)
        holds = (factor > 0)[None, :]
        layout = self.layout(model)
        flops = self.selection.decode_score_flops(model, ctx, prompt)
        if dequant:
            flops = flops + (self.quantization.dequant_flops(read, layout) * holds).sum(axis=1)
        if self.low_rank is not None:
            per_token = self.low_rank.reconstruction_flops_per_token(model)
            flops = flops + (read * holds).sum(axis=1) * per_token
        if self.merging is not None:
            now = self.selection.kept_tokens(ctx, prompt, model.num_layers)
            before = self.selection.kept_tokens(np.maximum(ctx - 1, 0), prompt, model.num_layers)
            evicted = np.maximum(1 - (now - before), 0)
            flops = flops + self.merging.merge_flops(model, np.ones(ctx.size), evicted, now)
        return flops

    def prefill_extra_flops(self, model: ModelSpec, prompt_tokens: Any) -> np.ndarray:
        """Extra FLOPs once per sequence when its prompt completes: scoring and merging the
        prompt tokens the selection drops."""
        prompt = as_tokens(prompt_tokens, "prompt_tokens")
        flops = self.selection.prefill_score_flops(model, prompt)
        if self.merging is not None:
            kept = self.selection.kept_tokens(prompt, prompt, model.num_layers)
            flops = flops + self.merging.merge_flops(model, prompt, prompt - kept, kept)
        return flops

    # ---- quality ---------------------------------------------------------------------------
    def quality(self, model_id: str, table: Any = None) -> dict[str, Any]:
        """Quality entry (or None: unknown) for each lossy component on ``model_id``."""
        from sim.policies.quality import default_quality_table

        table = table if table is not None else default_quality_table()
        lossless = ("full", "fp16", "bf16")
        return {
            p.kind: table.lookup(model_id, p) for p in self.policies() if p.name not in lossless
        }
