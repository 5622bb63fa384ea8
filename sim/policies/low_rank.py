"""Low-rank KV: cache a rank-r latent of the keys and values instead of the full heads.

Palu (Chang et al., 2024; reference §1.5): offline SVD of the key and value projections per
group of ``head_group_size`` KV heads ("group-head low rank"); each token caches a latent of
``r = round(rank_fraction · g · d)`` elements per group for K and for V, so KV bytes shrink by
``rank_fraction``. Keys are reconstructed on the fly (``2·r·g·d`` FLOPs per group and token
read); the value up-projection is fused into the output projection and costs nothing per
token. Defaults: 50% rank (the paper's "50% compression") and groups of 4 heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hardware.errors import KvsimError
from sim.policies.base import KvLayout, PolicyBase, check_fraction, check_positive_int
from sim.policies.registry import register
from workloads.model import ModelSpec


@register("low_rank", "palu")
@dataclass(frozen=True)
class Palu(PolicyBase):
    """Palu-style group-head low-rank latent KV cache."""

    rank_fraction: float = 0.5
    head_group_size: int = 4

    def __post_init__(self) -> None:
        check_fraction(self.rank_fraction, "rank_fraction")
        check_positive_int(self.head_group_size, "head_group_size")

    def _groups(self, model: ModelSpec) -> tuple[int, int]:
        if model.attention == "mla":
            raise KvsimError(
                "MLA already caches a low-rank latent; Palu applies to MHA/GQA/MQA models",
                source=model.id,
                field="policies.low_rank.name",
            )
        group = min(self.head_group_size, model.num_kv_heads)
        if model.num_kv_heads % group:
            raise KvsimError(
                f"{model.num_kv_heads} KV heads do not split into groups of {group}",
                source=model.id,
                field="policies.low_rank.head_group_size",
            )
        rank = max(1, round(self.rank_fraction * group * model.head_dim))
        return model.num_kv_heads // group, rank

    def layout(self, model: ModelSpec) -> KvLayout:
        """Per token and layer: ``groups · r`` latent elements for K and for V."""
        groups, rank = self._groups(model)
        return KvLayout(groups * rank, groups * rank, rank)

    def bytes_factor(self, model: ModelSpec) -> float:
        """Latent elements over full elements (``≈ rank_fraction``)."""
        return self.layout(model).elements / KvLayout.of(model).elements

    def reconstruction_flops_per_token(self, model: ModelSpec) -> float:
        """Key reconstruction per token read and layer: ``2·r·g·d`` per group."""
        groups, rank = self._groups(model)
        group = model.num_kv_heads // groups
        return 2.0 * rank * group * model.head_dim * groups

    def factorize(self, weight: Any) -> tuple[Any, Any]:
        """Truncated SVD of one group's projection ``(g·d, hidden)`` → ``down (r, hidden)``,
        ``up (g·d, r)`` with ``r = round(rank_fraction · g·d)``."""
        from sim.policies.tensor import low_rank as tl

        rank = max(1, round(self.rank_fraction * weight.shape[0]))
        return tl.svd_factorize(weight, rank)
