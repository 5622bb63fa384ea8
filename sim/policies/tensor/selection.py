"""Which tokens each selection policy keeps, on real tensors (kvpress/KVCache-Factory style).

Every function returns a boolean keep mask ``(H_kv, T)``; :func:`mask_to_indices` turns a
mask with equal counts per head into sorted ``(H_kv, k)`` indices for ``gather``. Sources of
each rule: ``shared/reference/policies.md`` §1.1–§1.2, §2.2, §3.1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _group_mean(per_query_head: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """Average consecutive query heads of a GQA group: ``(H_q, ...)`` → ``(H_kv, ...)``."""
    heads = per_query_head.shape[0]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} KV heads")
    return per_query_head.reshape(kv_heads, heads // kv_heads, *per_query_head.shape[1:]).mean(1)


def _topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        mask.scatter_(-1, scores.topk(k, dim=-1).indices, True)
    return mask


def mask_to_indices(mask: torch.Tensor) -> torch.Tensor:
    """Sorted kept positions per head; every head must keep the same count."""
    counts = mask.sum(-1)
    if not bool((counts == counts[0]).all()):
        raise ValueError("heads keep different counts; use the mask (variable-length heads)")
    return torch.nonzero(mask)[:, 1].reshape(mask.shape[0], int(counts[0]))


def full_mask(keys: torch.Tensor) -> torch.Tensor:
    return torch.ones(keys.shape[:-1], dtype=torch.bool)


def streaming_mask(keys: torch.Tensor, sinks: int, window: int) -> torch.Tensor:
    """StreamingLLM: the first ``sinks`` and the last ``window`` tokens."""
    heads, length = keys.shape[:2]
    position = torch.arange(length)
    keep = (position < sinks) | (position >= length - window)
    return keep.expand(heads, length).clone()


def streaming_visible(
    key_positions: torch.Tensor, query_positions: torch.Tensor, sinks: int, window: int
) -> torch.Tensor:
    """StreamingLLM seen from each query: a query at position ``p`` reads the first ``sinks``
    positions and the last ``window`` positions of ``0..p`` (itself included), i.e.
    :func:`streaming_mask` of its own ``p + 1``-token context. Works on positions, so it stays
    right for caches that hold gaps or padding. ``key_positions`` ``(..., L)`` and
    ``query_positions`` ``(..., T)`` give ``(..., T, L)``; causality is the caller's."""
    keys = key_positions.unsqueeze(-2)
    queries = query_positions.unsqueeze(-1)
    return (keys < sinks) | (keys > queries - window)


def duo_mask(
    keys: torch.Tensor, streaming_heads: torch.Tensor, sinks: int, window: int
) -> torch.Tensor:
    """DuoAttention: streaming heads keep sinks + recent, retrieval heads keep everything."""
    streaming = torch.as_tensor(streaming_heads, dtype=torch.bool).reshape(-1, 1)
    return torch.where(streaming, streaming_mask(keys, sinks, window), full_mask(keys))


def knorm_mask(keys: torch.Tensor, budget: int) -> torch.Tensor:
    """Knorm: the ``budget`` keys with the lowest L2 norm per head (score ``−‖k‖₂``)."""
    return _topk_mask(-keys.float().norm(dim=-1), min(budget, keys.shape[-2]))


def h2o_mask(
    keys: torch.Tensor, attention: torch.Tensor, budget: int, recent_fraction: float
) -> torch.Tensor:
    """H2O: the last ``floor(budget·recent_fraction)`` tokens plus the heavy hitters with
    the largest attention accumulated over all queries in ``attention`` (``(H_q, T_q, T)``;
    group-averaged for GQA), as KVCache-Factory's ``H2OKVCluster``."""
    heads, length = keys.shape[:2]
    if budget >= length:
        return full_mask(keys)
    recent = math.floor(budget * recent_fraction)
    accumulated = _group_mean(attention.float().sum(dim=1), heads)
    mask = torch.zeros((heads, length), dtype=torch.bool)
    mask[:, length - recent :] = True
    mask[:, : length - recent] = _topk_mask(accumulated[:, : length - recent], budget - recent)
    return mask


def tova_mask(keys: torch.Tensor, attention: torch.Tensor, budget: int) -> torch.Tensor:
    """TOVA: the ``budget`` tokens with the largest attention from the last query averaged
    over all heads (one set shared by every head), the newest token always kept."""
    heads, length = keys.shape[:2]
    scores = attention[:, -1, :].float().mean(dim=0)
    scores[-1] = math.inf
    return _topk_mask(scores, min(budget, length)).expand(heads, length).clone()


def window_scores(
    keys: torch.Tensor,
    queries: torch.Tensor | None,
    attention: torch.Tensor | None,
    window: int,
    kernel_size: int,
    pooling: str,
) -> torch.Tensor:
    """SnapKV scores of the ``T − w`` prefix tokens, ``(H_kv, T − w)``: the attention the
    last ``w`` queries pay them (causal softmax over all ``T`` keys, fp32), summed over the
    window, pooled with ``kernel_size`` (stride 1, padding ``k//2``), averaged over each GQA
    group. ``attention`` (eager weights ``(H_q, T, T)``) is used when given, else it is
    recomputed from ``queries`` as kvpress does under SDPA/flash attention."""
    heads, length, dim = keys.shape
    prefix = max(length - window, 0)
    if attention is not None:
        probs = attention[:, -window:, :].float()
    else:
        if queries is None:
            raise ValueError("window scoring needs queries or attention weights")
        group = queries.shape[0] // heads
        q = queries[:, -window:, :].float()
        k = keys.float().repeat_interleave(group, dim=0)
        logits = q @ k.transpose(-1, -2) / math.sqrt(dim)
        rows = torch.arange(length - q.shape[1], length).reshape(-1, 1)
        logits = logits.masked_fill(torch.arange(length).reshape(1, -1) > rows, -math.inf)
        probs = torch.softmax(logits, dim=-1)
    summed = probs[..., :prefix].sum(dim=-2)
    pool = F.avg_pool1d if pooling == "avg" else F.max_pool1d
    pooled = pool(summed.unsqueeze(1), kernel_size, stride=1, padding=kernel_size // 2).squeeze(1)
    return _group_mean(pooled, heads)


def snapkv_mask(scores: torch.Tensor, length: int, budget: int, window: int) -> torch.Tensor:
    """Top ``budget − window`` prefix tokens by ``scores`` plus the whole window; a budget
    no larger than the window keeps the last ``budget`` tokens."""
    heads = scores.shape[0]
    if budget >= length:
        return torch.ones((heads, length), dtype=torch.bool)
    mask = torch.zeros((heads, length), dtype=torch.bool)
    if budget <= window:
        mask[:, length - budget :] = True
        return mask
    mask[:, length - window :] = True
    mask[:, : length - window] = _topk_mask(scores, budget - window)
    return mask


def ada_kv_mask(
    scores: torch.Tensor, length: int, budget: int, window: int, alpha: float
) -> torch.Tensor:
    """Ada-KV (kvpress ``AdaKVPress``): every head first keeps its top
    ``floor(alpha·(B−w))``; the layer's ``H_kv·(B−w)`` prefix slots go to the highest scores
    over all heads; the window is kept in every head."""
    heads = scores.shape[0]
    if budget >= length or budget <= window:
        return snapkv_mask(scores, length, budget, window)
    per_head = budget - window
    safe = math.floor(alpha * per_head)
    boosted = scores.float().clone()
    if safe:
        boosted.scatter_(-1, boosted.topk(safe, dim=-1).indices, math.inf)
    chosen = _topk_mask(boosted.reshape(-1), heads * per_head).reshape(heads, -1)
    mask = torch.zeros((heads, length), dtype=torch.bool)
    mask[:, length - window :] = True
    mask[:, : length - window] = chosen
    return mask


def quest_mask(keys: torch.Tensor, query: torch.Tensor, budget: int, page: int) -> torch.Tensor:
    """Quest: pages of ``page`` tokens scored by ``Σ_c max(q_c·min_c, q_c·max_c)`` with the
    page's per-channel key min and max; the top ``ceil(budget/page)`` pages are read. Under
    GQA the group's query heads sum their bounds, so a KV head reads one page set."""
    return quest_query_mask(keys, query.unsqueeze(1), budget, page)[:, 0]


def quest_query_mask(
    keys: torch.Tensor,
    queries: torch.Tensor,
    budget: int,
    page: int,
    lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`quest_mask` for ``T_q`` queries ``(H_q, T_q, d)`` at once: ``(H_kv, T_q, T)``.
    Since ``max ≥ min`` per channel, ``max(q·min, q·max) = relu(q)·max + min(q, 0)·min``, so
    bounds are matrix products. ``lengths`` ``(T_q,)``: query ``t`` reads only the first
    ``lengths[t]`` keys (its causal context, as in a decode chunk); its page summaries then
    cover only those keys (running min/max within each page) and pages past them are no
    candidates, so row ``t`` equals ``quest_mask(keys[:, :lengths[t]], ...)``."""
    heads, length, dim = keys.shape
    pages = -(-length // page)
    padded = pages * page - length
    k = keys.float()
    low = F.pad(k, (0, 0, 0, padded), value=math.inf).reshape(heads, pages, page, dim)
    high = F.pad(k, (0, 0, 0, padded), value=-math.inf).reshape(heads, pages, page, dim)
    q = queries.float().reshape(heads, -1, queries.shape[1], dim).transpose(1, 2)
    positive = q.clamp_min(0)  # (H_kv, T_q, group, d)

    def bounds(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """``(H_kv, T_q or 1, P', d)`` page summaries → ``(H_kv, T_q, P')`` bounds."""
        both = positive @ high.transpose(-1, -2) + (q - positive) @ low.transpose(-1, -2)
        return both.sum(2)

    whole = pages if lengths is None else int(lengths.min()) // page  # read whole by all
    bound = bounds(low[:, :whole].amin(2).unsqueeze(1), high[:, :whole].amax(2).unsqueeze(1))
    if lengths is not None and whole < pages:
        first = whole * page
        seen = lengths.view(-1, 1) - first - torch.arange(pages - whole).view(1, -1) * page
        seen = seen.clamp(0, page)  # readable keys of each remaining page, (T_q, P - whole)
        last = (seen - 1).clamp_min(0)
        column = torch.arange(pages - whole).view(1, -1)
        part_low = low[:, whole:].cummin(2).values[:, column, last]  # (H_kv, T_q, P - whole, d)
        part_high = high[:, whole:].cummax(2).values[:, column, last]
        tail = bounds(part_low, part_high).masked_fill(seen.unsqueeze(0) == 0, -math.inf)
        bound = torch.cat((bound.expand(-1, tail.shape[1], -1), tail), dim=-1)
    chosen = _topk_mask(bound, min(pages, -(-budget // page)))
    return chosen.repeat_interleave(page, dim=-1)[..., :length]
