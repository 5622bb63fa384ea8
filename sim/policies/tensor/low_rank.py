"""Palu-style low-rank projections: truncated SVD of a KV projection weight.

``W ≈ up @ down`` with ``down = S_r V_rᵀ`` (cache ``x @ downᵀ``, r elements per token) and
``up = U_r`` (reconstruct ``latent @ upᵀ``). By Eckart–Young the Frobenius error of the
rank-r product is ``sqrt(Σ_{i>r} σ_i²)``, the least any rank-r matrix achieves.
"""

from __future__ import annotations

import torch


def svd_factorize(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
    return s[:rank, None] * vh[:rank], u[:, :rank]


def project(hidden: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """Latent to cache: ``(T, hidden) → (T, r)``."""
    return hidden.float() @ down.T


def reconstruct(latent: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Keys (or values) back from the latent: ``(T, r) → (T, g·d)``."""
    return latent @ up.T
