"""KV merging: fold what would be dropped, or duplicated across layers, into what is kept.

* ``similarity_merge`` (intra-layer; CaM, Zhang et al. ICML 2024 and D2O, Wan et al. 2024;
  kvpress ``MergingPress``, KVCache-Factory ``merge_kv``): each token a selection policy
  evicts is merged into the kept token whose key is most cosine-similar, if that similarity
  exceeds ``similarity_threshold``; that kept token's value becomes the attention-weighted
  average ``(a_j v_j + Σ a_e v_e) / (a_j + Σ a_e)`` (``a``: the tokens' accumulated attention
  scores), keys unchanged. Memory equals the eviction policy's; quality differs.
* ``minicache`` (cross-layer; Liu et al., 2024): from layer ``L·start_layer_fraction`` on,
  adjacent KV-holding layers are paired; each token stores one shared direction (SLERP of the
  two layers' unit vectors) plus one magnitude per layer and head vector, except the
  ``retention_fraction`` least similar tokens, which stay unmerged in both layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from sim.policies.base import KvLayout, PolicyBase, check_fraction
from sim.policies.registry import register
from workloads.model import ModelSpec


@register("merging", "similarity_merge")
@dataclass(frozen=True)
class SimilarityMerge(PolicyBase):
    """CaM/D2O-style merging of evicted values into the most similar kept token.
    ``similarity_threshold=0.0`` is kvpress ``MergingPress``' default."""

    similarity_threshold: float = 0.0
    requires_eviction: ClassVar[bool] = True

    def __post_init__(self) -> None:
        value = self.similarity_threshold
        if not isinstance(value, int | float) or isinstance(value, bool) or not -1 <= value <= 1:
            from hardware.errors import KvsimError

            raise KvsimError(
                f"must be a cosine in [-1, 1], got {value!r}", field="similarity_threshold"
            )

    def layer_bytes_factor(self, model: ModelSpec, layout: KvLayout) -> np.ndarray:
        return np.ones(model.num_layers)

    def merge_flops(
        self, model: ModelSpec, new_tokens: Any, evicted_tokens: Any, kept_tokens: Any
    ) -> np.ndarray:
        """Per evicted token, KV head and layer: a cosine against every kept key (``2d``
        each) and a weighted value update (``3d``)."""
        evicted = np.asarray(evicted_tokens, dtype=np.float64)
        kept = np.asarray(kept_tokens, dtype=np.float64)
        d = model.head_dim
        return model.num_layers * model.num_kv_heads * evicted * (2.0 * d * kept + 3.0 * d)

    def merge(self, keys: Any, values: Any, keep_mask: Any, scores: Any) -> tuple[Any, Any]:
        from sim.policies.tensor import merging as tm

        return tm.similarity_merge(keys, values, keep_mask, scores, self.similarity_threshold)


@register("merging", "minicache")
@dataclass(frozen=True)
class MiniCache(PolicyBase):
    """MiniCache cross-layer merging. ``start_layer_fraction=0.5`` is the paper's "from the
    middle layer"; ``retention_fraction=0.05`` is kvsim's choice (the reference gives none).
    Magnitudes are stored at the cache's precision; the retained-token index is not counted."""

    start_layer_fraction: float = 0.5
    retention_fraction: float = 0.05
    requires_eviction: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_fraction(self.start_layer_fraction, "start_layer_fraction", allow_zero=True)
        check_fraction(self.retention_fraction, "retention_fraction", allow_zero=True)

    def merged_pairs(self, model: ModelSpec) -> list[tuple[int, int]]:
        """Adjacent KV-holding layers paired from the start layer on."""
        start = int(model.num_layers * self.start_layer_fraction)
        holding = [i for i in range(start, model.num_layers) if model.holds_kv(i)]
        return [(holding[i], holding[i + 1]) for i in range(0, len(holding) - 1, 2)]

    def layer_bytes_factor(self, model: ModelSpec, layout: KvLayout) -> np.ndarray:
        """Each merged layer stores ``((1−ρ)(E + 2V)/2 + ρE) / E`` of its bytes: half a shared
        direction and its own ``V`` magnitudes for merged tokens, everything for retained."""
        rho = self.retention_fraction
        vectors = layout.elements // layout.vector_elements
        e = layout.elements
        merged = ((1 - rho) * (e + 2 * vectors) / 2 + rho * e) / e
        factor = np.ones(model.num_layers)
        for a, b in self.merged_pairs(model):
            factor[[a, b]] = merged
        return factor

    def merge_flops(
        self, model: ModelSpec, new_tokens: Any, evicted_tokens: Any, kept_tokens: Any
    ) -> np.ndarray:
        """Per new token, merged pair and K/V head vector: two norms and a dot (``6d``) and
        the SLERP combination (``3d``)."""
        new = np.asarray(new_tokens, dtype=np.float64)
        pairs = len(self.merged_pairs(model))
        return new * pairs * 2 * model.num_kv_heads * 9.0 * model.head_dim

    def merge(self, first: Any, second: Any) -> Any:
        from sim.policies.tensor import merging as tm

        return tm.minicache_merge(first, second, self.retention_fraction)

    def restore(self, merged: Any) -> tuple[Any, Any]:
        from sim.policies.tensor import merging as tm

        return tm.minicache_restore(merged)
