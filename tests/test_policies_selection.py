"""Selection policies: simulation-face token counts against hand calculations and the
papers' formulas (PyramidKV's KVCache-Factory schedule), and tensor faces on hand-built
attention patterns whose kept set is known; tensor and simulation faces agree on counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.policies import get_policy, pyramid_layer_budgets

torch = pytest.importorskip("torch")


def kept(name, ctx, prompt, layers=1, **params):
    return get_policy("selection", name, **params).kept_tokens_per_layer(ctx, prompt, layers)


# ---- simulation face ------------------------------------------------------------------------
def test_streaming_keeps_sinks_plus_window():
    out = kept("streaming_llm", [3, 1024, 5000], [3, 1000, 100])
    assert out[:, 0].tolist() == [3, 1024, 1024]


def test_h2o_budget_is_a_fraction_of_the_current_context():
    # 20% of 1000 = 200; 20% of 3 floors to 0 and is raised to 1 token.
    assert kept("h2o", [1000, 3, 5], [900, 3, 5])[:, 0].tolist() == [200, 1, 1]
    assert kept("h2o", [1000, 50], [10, 10], budget_tokens=64)[:, 0].tolist() == [64, 50]


def test_snapkv_compresses_the_prompt_once_and_appends_decoded_tokens():
    ctx = [5000, 600, 2000]
    prompt = [4000, 500, 4000]
    # 1024 kept of the 4000-token prompt + 1000 decoded; 500 < 1024 kept whole; mid-prefill.
    assert kept("snapkv", ctx, prompt, budget_tokens=1024)[:, 0].tolist() == [2024, 600, 2000]


def test_quest_stores_everything_and_reads_whole_pages():
    policy = get_policy("selection", "quest", budget_tokens=1000, page_tokens=16, dense_layers=2)
    assert policy.stored_tokens_per_layer([5000], [4000], 4).tolist() == [[5000] * 4]
    # ceil(1000/16) = 63 pages = 1008 tokens in sparse layers, everything in the 2 dense ones.
    assert policy.read_tokens_per_layer([5000], [4000], 4).tolist() == [[5000, 5000, 1008, 1008]]
    assert policy.index_tokens_per_layer([5000], [4000], 4).tolist() == [[0, 0, 313, 313]]


def test_knorm_dense_layers_keep_everything():
    out = kept("knorm", [1000], [800], 3, budget_fraction=0.5, dense_layers=1)
    assert out.tolist() == [[1000, 600, 600]]


def test_duo_attention_mixes_streaming_and_retrieval_heads():
    # half the heads keep 128 + 256, half keep all 1000 tokens.
    assert kept("duo_attention", [1000], [1000])[0, 0] == pytest.approx(0.5 * 384 + 0.5 * 1000)


def test_masking_only_methods_store_the_full_context():
    ada = get_policy("selection", "ada_kv", budget_tokens=512)
    assert ada.kept_tokens([4000], [4000])[0] == 512
    assert ada.stored_tokens([4000], [4000])[0] == 4000
    physical = get_policy("selection", "ada_kv", budget_tokens=512, physical=True)
    assert physical.stored_tokens([4000], [4000])[0] == 512


def test_pyramidkv_hand_schedule_sums_to_the_total_budget():
    # B = 432, w = 32, beta = 20, L = 5: base 400, min 20, max 780, steps 190.
    out = pyramid_layer_budgets(np.array([2000]), np.array([432]), 32, 20, 5)
    assert out.tolist() == [[812, 622, 432, 242, 52]]
    assert out.sum() == 5 * 432
    # max >= n - w clips it: n = 800 -> max 768, min 32, steps 184.
    out = pyramid_layer_budgets(np.array([800]), np.array([432]), 32, 20, 5)
    assert out.tolist() == [[800, 616, 432, 248, 64]]
    assert out.sum() == 5 * 432


def test_pyramidkv_branches_and_flooring():
    # n < B: no compression; B <= n < 2(B - w): uniform B.
    assert pyramid_layer_budgets(
        np.array([300, 700]), np.array([432, 432]), 32, 20, 3
    ).tolist() == [
        [300, 300, 300],
        [432, 432, 432],
    ]
    # L = 32, B = 132 (base 100): min 5, max 195, steps 190 // 31 = 6 (remainder 4): the
    # Factory's floored steps keep L * r / 2 = 64 tokens more than L * B.
    out = pyramid_layer_budgets(np.array([10_000]), np.array([132]), 32, 20, 32)
    assert out[0, 0] == 195 + 32 and out[0, 31] == 195 - 31 * 6 + 32
    assert out.sum() == 32 * 132 + 64


@settings(max_examples=200, deadline=None)
@given(
    layers=st.integers(2, 80),
    base=st.integers(1, 4000),
    window=st.integers(1, 64),
    beta=st.integers(1, 40),
    extra=st.integers(0, 100_000),
)
def test_pyramid_total_is_budget_plus_floor_surplus(layers, base, window, beta, extra):
    budget = base + window
    n = max(2 * base, budget) + extra  # the pyramid branch: n >= B and n >= 2(B - w)
    low, high = base // beta, 2 * base - base // beta
    if high >= n - window:
        high, low = n - window, 2 * base - (n - window)
    out = pyramid_layer_budgets(np.array([n]), np.array([budget]), window, beta, layers)[0]
    assert np.all(np.diff(out) <= 0)
    remainder = (high - low) % (layers - 1)
    assert 2 * out.sum() == 2 * layers * budget + layers * remainder


def test_pyramidkv_policy_averages_layers_to_the_budget():
    policy = get_policy("selection", "pyramidkv", budget_tokens=432, window_tokens=32)
    per_layer = policy.kept_tokens_per_layer([2100], [2000], 5)
    assert per_layer.tolist() == [[912, 722, 532, 342, 152]]  # + 100 decoded tokens
    assert policy.kept_tokens([2100], [2000], 5)[0] == 532


# ---- tensor faces: hand-built patterns -------------------------------------------------------
def indices(mask):
    return [torch.nonzero(row).flatten().tolist() for row in mask]


def one_row_attention(scores):
    """(1, 1, T) attention whose only query row is ``scores`` (its column sums)."""
    return torch.tensor(scores, dtype=torch.float32).reshape(1, 1, -1)


def test_streaming_mask():
    mask = get_policy("selection", "streaming_llm", sink_tokens=2, window_tokens=3).keep_mask(
        torch.zeros(1, 10, 4)
    )
    assert indices(mask) == [[0, 1, 7, 8, 9]]


def test_knorm_keeps_lowest_norms():
    keys = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0]).reshape(1, 5, 1)
    mask = get_policy("selection", "knorm", budget_tokens=2).keep_mask(keys)
    assert indices(mask) == [[1, 3]]


def test_h2o_keeps_recent_plus_heavy_hitters():
    # T = 8, budget 4: recent 2 (tokens 6, 7) + the two largest accumulated scores of 0..5.
    attention = one_row_attention([0.1, 3.0, 0.2, 2.0, 0.5, 0.3, 0.0, 0.0])
    policy = get_policy("selection", "h2o", budget_tokens=4)
    assert indices(policy.keep_mask(torch.zeros(1, 8, 2), attention=attention)) == [[1, 3, 6, 7]]


def test_h2o_accumulates_over_queries_and_group_heads():
    # Two query heads of one KV head; token 2 wins only on the sum over queries and heads.
    attention = torch.zeros(2, 2, 6)
    attention[0, 0, 1] = 0.6
    attention[0, 0, 2] = 0.5
    attention[0, 1, 2] = 0.5
    attention[1, 0, 0] = 0.9
    policy = get_policy("selection", "h2o", budget_tokens=2, recent_fraction=0.0)
    assert indices(policy.keep_mask(torch.zeros(1, 6, 2), attention=attention)) == [[0, 2]]


def test_tova_uses_the_last_query_averaged_over_heads():
    attention = torch.zeros(2, 3, 6)
    attention[0, -1] = torch.tensor([0.9, 0.0, 0.1, 0.0, 0.0, 0.0])
    attention[1, -1] = torch.tensor([0.0, 0.0, 0.8, 0.2, 0.0, 0.0])
    attention[:, 0, 4] = 5.0  # an earlier query's weights do not count
    policy = get_policy("selection", "tova", budget_tokens=3)
    assert indices(policy.keep_mask(torch.zeros(2, 6, 2), attention=attention)) == [[0, 2, 5]] * 2


def test_snapkv_window_and_max_pooling_keep_neighbours():
    # T = 10, window 2: prefix 0..7. The window queries attend token 4 (and a bit token 1);
    # max-pooling with kernel 3 spreads token 4's score to 3 and 5, so a prefix budget of 3
    # keeps 3, 4, 5 -- SnapKV's clustering -- plus the window 8, 9.
    attention = torch.zeros(1, 10, 10)
    attention[0, -2:, 4] = 0.5
    attention[0, -2:, 1] = 0.2
    policy = get_policy(
        "selection", "snapkv", budget_tokens=5, window_tokens=2, kernel_size=3, pooling="max"
    )
    mask = policy.keep_mask(torch.zeros(1, 10, 4), attention=attention)
    assert indices(mask) == [[3, 4, 5, 8, 9]]


def test_snapkv_scores_from_queries_find_the_attended_key():
    # Orthogonal keys; every window query points at key 2.
    keys = torch.eye(8).reshape(1, 8, 8) * 4
    queries = torch.zeros(2, 8, 8)
    queries[:, :, 2] = 10.0
    policy = get_policy("selection", "snapkv", budget_tokens=3, window_tokens=2, kernel_size=1)
    assert indices(policy.keep_mask(keys, queries=queries)) == [[2, 6, 7]]


def test_ada_kv_floor_then_global_topk():
    from sim.policies.tensor.selection import ada_kv_mask

    scores = torch.tensor([[9.0, 8.0, 7.0, 6.0], [1.0, 0.5, 0.2, 0.1]])
    # T = 6, window 2, budget 4 per head -> 2 prefix slots per head, 4 in the layer.
    floor = ada_kv_mask(scores, 6, 4, 2, alpha=0.5)  # each head guaranteed 1
    assert indices(floor) == [[0, 1, 2, 4, 5], [0, 4, 5]]
    greedy = ada_kv_mask(scores, 6, 4, 2, alpha=0.0)
    assert indices(greedy) == [[0, 1, 2, 3, 4, 5], [4, 5]]
    assert floor[:, :4].sum() == greedy[:, :4].sum() == 2 * 2


def test_quest_reads_the_page_with_the_largest_upper_bound():
    # 1 head, T = 8, page 2: per-page channel-0 ranges (min, max):
    # page0 (0, 1), page1 (-5, 0.5), page2 (1, 3), page3 (0, 2).
    channel0 = torch.tensor([0.0, 1.0, -5.0, 0.5, 1.0, 3.0, 0.0, 2.0])
    keys = torch.stack([channel0, torch.zeros(8)], dim=-1).reshape(1, 8, 2)
    policy = get_policy("selection", "quest", budget_tokens=2, page_tokens=2, dense_layers=0)
    assert indices(policy.keep_mask(keys, queries=torch.tensor([[1.0, 0.0]]))) == [[4, 5]]
    # A negative query channel bounds q·k with the page minimum: page1 wins.
    assert indices(policy.keep_mask(keys, queries=torch.tensor([[-1.0, 0.0]]))) == [[2, 3]]


def test_duo_attention_mask_per_head():
    policy = get_policy("selection", "duo_attention", sink_tokens=1, window_tokens=2)
    mask = policy.keep_mask(torch.zeros(2, 6, 2), streaming_heads=torch.tensor([True, False]))
    assert indices(mask) == [[0, 4, 5], list(range(6))]


# ---- tensor face counts == simulation face counts ---------------------------------------------
SMALL = {
    "full": {},
    "streaming_llm": {"sink_tokens": 4, "window_tokens": 20},
    "h2o": {"budget_fraction": 0.3},
    "tova": {"budget_tokens": 17},
    "snapkv": {"budget_tokens": 24, "window_tokens": 8},
    "pyramidkv": {"budget_tokens": 24, "window_tokens": 8},
    "ada_kv": {"budget_tokens": 24, "window_tokens": 8},
    "quest": {"budget_tokens": 20, "page_tokens": 8, "dense_layers": 1},
    "knorm": {"budget_fraction": 0.5, "dense_layers": 1},
    "duo_attention": {"sink_tokens": 4, "window_tokens": 8},
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_tensor_counts_equal_simulation_counts(name):
    gen = torch.Generator().manual_seed(7)
    length, layers, kv_heads, q_heads, dim = 64, 4, 2, 4, 8
    keys = torch.randn(kv_heads, length, dim, generator=gen)
    queries = torch.randn(q_heads, length, dim, generator=gen)
    logits = torch.randn(q_heads, length, length, generator=gen)
    causal = torch.ones(length, length).triu(1).bool()
    attention = torch.softmax(logits.masked_fill(causal, -math.inf), dim=-1)
    policy = get_policy("selection", name, **SMALL[name])
    if name == "quest":
        sim = policy.read_tokens_per_layer([length], [length], layers)[0]
    else:
        sim = policy.kept_tokens_per_layer([length], [length], layers)[0]
    for layer in range(layers):
        mask = policy.keep_mask(
            keys,
            queries=queries[:, -1] if name == "quest" else queries,
            attention=attention,
            layer=layer,
            num_layers=layers,
            streaming_heads=torch.tensor([True, False]),
        )
        assert mask.shape == (kv_heads, length)
        assert mask.sum(-1).float().mean().item() == pytest.approx(sim[layer]), layer
