"""Merging on tensors: intra-layer similarity merge and MiniCache cross-layer SLERP merge."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sim.policies.tensor.selection import mask_to_indices


def similarity_merge(
    keys: torch.Tensor,
    values: torch.Tensor,
    keep_mask: torch.Tensor,
    scores: torch.Tensor,
    threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept keys ``(H, k, d)`` and merged values: every evicted token whose best cosine
    similarity to a kept key exceeds ``threshold`` is folded into that kept token's value,
    weighted by ``scores`` ``(H, T)`` (accumulated attention, > 0):
    ``v_j ← (a_j v_j + Σ_e a_e v_e) / (a_j + Σ_e a_e)``."""
    kept = mask_to_indices(keep_mask)
    heads, length, dim = keys.shape
    k = keys.float()
    v = values.float()
    a = scores.float()
    unit = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    kept_unit = unit.gather(1, kept.unsqueeze(-1).expand(-1, -1, dim))
    similarity = unit @ kept_unit.transpose(1, 2)  # (H, T, k)
    best_sim, best = similarity.max(dim=-1)
    merge = (~keep_mask) & (best_sim > threshold)
    weight = torch.where(merge, a, torch.zeros_like(a))
    kept_a = a.gather(1, kept)
    num = kept_a.unsqueeze(-1) * v.gather(1, kept.unsqueeze(-1).expand(-1, -1, dim))
    num = num.scatter_add(1, best.unsqueeze(-1).expand(-1, -1, dim), weight.unsqueeze(-1) * v)
    den = kept_a.scatter_add(1, best, weight)
    return k.gather(1, kept.unsqueeze(-1).expand(-1, -1, dim)), num / den.unsqueeze(-1)


@dataclass(frozen=True)
class MergedPair:
    """Two layers' ``(H, T, d)`` tensors stored as one shared direction, per-layer norms,
    and the retained (unmerged) tokens of both layers."""

    direction: torch.Tensor
    norm_first: torch.Tensor
    norm_second: torch.Tensor
    retained: torch.Tensor
    first_retained: torch.Tensor
    second_retained: torch.Tensor


def minicache_merge(first: torch.Tensor, second: torch.Tensor, retention: float) -> MergedPair:
    """SLERP at ``t = 1/2`` of the unit vectors of two adjacent layers, per token and head;
    the ``floor(retention · T)`` tokens with the lowest cosine similarity (per head) are kept
    unmerged, as MiniCache's token retention."""
    a, b = first.float(), second.float()
    norm_a = a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    norm_b = b.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    ua, ub = a / norm_a, b / norm_b
    cosine = (ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.arccos(cosine)
    sin = torch.sin(theta)
    half = torch.sin(theta / 2) / torch.where(sin > 1e-6, sin, torch.ones_like(sin))
    direction = torch.where(sin > 1e-6, half * (ua + ub), ua)
    count = math.floor(retention * a.shape[1])
    retained = (
        (-cosine.squeeze(-1)).topk(count, dim=-1).indices
        if count
        else torch.zeros((a.shape[0], 0), dtype=torch.long)
    )
    index = retained.unsqueeze(-1).expand(-1, -1, a.shape[-1])
    return MergedPair(direction, norm_a, norm_b, retained, a.gather(1, index), b.gather(1, index))


def minicache_restore(pair: MergedPair) -> tuple[torch.Tensor, torch.Tensor]:
    """Each layer's tensor: shared direction times its own norm; retained tokens exact."""
    first = pair.direction * pair.norm_first
    second = pair.direction * pair.norm_second
    index = pair.retained.unsqueeze(-1).expand(-1, -1, first.shape[-1])
    return first.scatter(1, index, pair.first_retained), second.scatter(
        1, index, pair.second_retained
    )
