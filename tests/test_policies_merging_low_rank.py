"""Merging and low-rank tensor faces on hand-built cases, and their simulation figures."""

from __future__ import annotations

import pytest

from sim.policies import KvLayout, get_policy
from workloads.model_catalog import get_model

torch = pytest.importorskip("torch")
LLAMA = get_model("llama-3.1-8b")


def test_similarity_merge_folds_evicted_value_into_most_similar_kept_token():
    # One head, 3 tokens; token 1 is evicted and its key is closest to token 2's.
    keys = torch.tensor([[[1.0, 0.0], [0.1, 1.0], [0.0, 1.0]]])
    values = torch.tensor([[[1.0, 1.0], [4.0, 0.0], [0.0, 2.0]]])
    keep = torch.tensor([[True, False, True]])
    scores = torch.tensor([[0.5, 1.0, 3.0]])
    merged_keys, merged_values = get_policy("merging", "similarity_merge").merge(
        keys, values, keep, scores
    )
    assert torch.equal(merged_keys, keys[:, [0, 2]])
    # v2 <- (3·[0, 2] + 1·[4, 0]) / (3 + 1) = [1, 1.5]; v0 untouched.
    assert torch.allclose(merged_values, torch.tensor([[[1.0, 1.0], [1.0, 1.5]]]))


def test_similarity_threshold_blocks_dissimilar_merges():
    keys = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.9, 0.1]]])
    values = torch.tensor([[[1.0, 0.0], [5.0, 5.0], [0.0, 1.0]]])
    keep = torch.tensor([[True, False, True]])
    scores = torch.ones(1, 3)
    policy = get_policy("merging", "similarity_merge", similarity_threshold=0.5)
    _, merged = policy.merge(keys, values, keep, scores)
    assert torch.equal(merged, values[:, [0, 2]])  # cosine -0.99 < 0.5: dropped, not merged


def test_minicache_identical_layers_restore_exactly_and_retained_tokens_are_exact():
    gen = torch.Generator().manual_seed(0)
    layer = torch.randn(2, 20, 8, generator=gen)
    policy = get_policy("merging", "minicache", retention_fraction=0.1)
    first, second = policy.restore(policy.merge(layer, layer * 3))
    assert torch.allclose(first, layer, atol=1e-5) and torch.allclose(second, layer * 3, atol=1e-5)
    other = torch.randn(2, 20, 8, generator=gen)
    pair = policy.merge(layer, other)
    assert pair.retained.shape == (2, 2)  # floor(0.1 · 20) tokens per head
    first, second = policy.restore(pair)
    index = pair.retained.unsqueeze(-1).expand(-1, -1, 8)
    assert torch.equal(first.gather(1, index), layer.gather(1, index))
    # merged tokens keep each layer's own magnitude
    assert torch.allclose(first.norm(dim=-1), layer.norm(dim=-1), atol=1e-4)


def test_palu_svd_error_is_the_eckart_young_tail():
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(64, 96, generator=gen)
    policy = get_policy("low_rank", "palu", rank_fraction=0.25)
    down, up = policy.factorize(weight)
    assert down.shape == (16, 96) and up.shape == (64, 16)
    sigma = torch.linalg.svdvals(weight)
    error = torch.linalg.norm(weight - up @ down)
    assert error.item() == pytest.approx(sigma[16:].square().sum().sqrt().item(), rel=1e-4)
    full_down, full_up = get_policy("low_rank", "palu", rank_fraction=1.0).factorize(weight)
    assert torch.allclose(full_up @ full_down, weight, atol=1e-4)


def test_palu_layout_and_reconstruction_flops():
    palu = get_policy("low_rank", "palu", rank_fraction=0.5, head_group_size=4)
    # 8 KV heads in 2 groups of 4: rank round(0.5 · 4 · 128) = 256 per group, for K and V.
    assert palu.layout(LLAMA) == KvLayout(512, 512, 256)
    assert palu.bytes_factor(LLAMA) == 0.5
    assert palu.reconstruction_flops_per_token(LLAMA) == 2 * 256 * 4 * 128 * 2
