"""Summary statistics of a workload: size, rate, token distributions, burstiness, prefix reuse.

Definitions (as in the reference trace table, ``shared/reference/traces.md`` §1.2):

- ``rate_per_s`` = requests / (last arrival - first arrival).
- token percentiles: numpy's default (linear interpolation between order statistics).
- ``interarrival_cv`` = population std / mean of the gaps between consecutive arrivals
  (1 for a Poisson process).
- ``dispersion_index[w]`` = var / mean (population variance) of the request counts in
  consecutive windows ``[k w, (k+1) w)`` from the first arrival, ``floor(duration / w) + 1``
  windows (the last may be partial); 1 for Poisson, > 1 overdispersed (Cox & Lewis, "The
  Statistical Analysis of Series of Events", 1966, ch. 5).
- ``peak_to_mean[w]`` = largest window count / mean window count.
- ``ideal_prefix_hit`` = with an unbounded prefix cache, the fraction of referenced prefix
  blocks that are hits: request ``i`` (in arrival order) hits its first ``k`` blocks when its
  first ``k`` block ids, as a chain, are the first ``k`` ids of some earlier request (equal ids
  at equal positions below an equal prefix = same KV). ``ideal_prefix_hit_tokens`` weights the
  same hits by tokens: ``sum(min(k * block, prompt)) / sum(prompt)``.
"""

from __future__ import annotations

import numpy as np

from workloads.workload import Workload

WINDOWS_S = {"1s": 1.0, "10s": 10.0, "60s": 60.0}
PERCENTILES = (50, 90, 99)


def _summary(values: np.ndarray) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    p50, p90, p99 = np.percentile(values, PERCENTILES)
    return {
        "mean": float(values.mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(values.max()),
    }


def window_counts(arrival_s: np.ndarray, window_s: float) -> np.ndarray:
    """Requests per window ``[k w, (k+1) w)`` from the first arrival, ``floor(D/w) + 1``
    windows for a trace of duration ``D``."""
    if len(arrival_s) == 0:
        return np.zeros(0, dtype=np.int64)
    rebased = arrival_s - arrival_s[0]
    bins = np.floor(rebased / window_s).astype(np.int64)
    return np.bincount(bins, minlength=int(bins[-1]) + 1)


def interarrival_cv(arrival_s: np.ndarray) -> float | None:
    """Coefficient of variation of inter-arrival gaps; None with < 2 gaps or zero mean."""
    gaps = np.diff(arrival_s)
    if len(gaps) < 2 or gaps.mean() <= 0:
        return None
    return float(gaps.std() / gaps.mean())


def dispersion_index(arrival_s: np.ndarray, window_s: float) -> float | None:
    """var / mean of per-window request counts (None for an empty workload)."""
    counts = window_counts(arrival_s, window_s)
    return float(counts.var() / counts.mean()) if len(counts) else None


def peak_to_mean(arrival_s: np.ndarray, window_s: float) -> float | None:
    """Largest per-window request count / mean count (None for an empty workload)."""
    counts = window_counts(arrival_s, window_s)
    return float(counts.max() / counts.mean()) if len(counts) else None


def prefix_hit_blocks(prefix_offsets: np.ndarray, prefix_hashes: np.ndarray) -> np.ndarray:
    """Per request, how many leading prefix blocks an unbounded cache already holds.

    Processes one block depth at a time across all requests: a node at depth ``d`` is the
    pair (node at depth ``d - 1``, block id), numbered with :func:`numpy.unique`; the block is
    a hit when an earlier request reached the same node. Chaining makes hits a leading run.
    O(total blocks · log) work, one numpy pass per depth."""
    n = len(prefix_offsets) - 1
    hits = np.zeros(n, dtype=np.int64)
    if len(prefix_hashes) == 0:
        return hits
    lengths = np.diff(prefix_offsets)
    _, block = np.unique(prefix_hashes, return_inverse=True)
    distinct = int(block.max()) + 1
    node = np.zeros(n, dtype=np.int64)
    active = np.flatnonzero(lengths > 0)
    depth = 0
    while active.size:
        key = node[active] * distinct + block[prefix_offsets[active] + depth]
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        hits[active] += first[inverse] < np.arange(active.size)
        node[active] = inverse
        depth += 1
        active = active[lengths[active] > depth]
    return hits


def trace_stats(workload: Workload) -> dict:
    """The statistics listed in the module docstring, JSON-ready (None where undefined)."""
    n = len(workload)
    arrival = workload.arrival_s
    duration = workload.duration_s
    stats: dict = {
        "requests": n,
        "duration_s": duration,
        "rate_per_s": n / duration if duration > 0 else None,
        "input_tokens": _summary(workload.prompt_tokens),
        "output_tokens": _summary(workload.output_tokens),
        "interarrival_cv": interarrival_cv(arrival),
        "dispersion_index": {k: dispersion_index(arrival, w) for k, w in WINDOWS_S.items()},
        "peak_to_mean": {k: peak_to_mean(arrival, WINDOWS_S[k]) for k in ("1s", "60s")},
        "ideal_prefix_hit": None,
        "ideal_prefix_hit_tokens": None,
        "prefix_blocks": None,
    }
    if workload.has_prefixes:
        hits = prefix_hit_blocks(workload.prefix_offsets, workload.prefix_hashes)
        block = workload.prefix_block_tokens
        hit_tokens = np.minimum(hits * block, workload.prompt_tokens)
        stats["ideal_prefix_hit"] = float(hits.sum() / len(workload.prefix_hashes))
        stats["ideal_prefix_hit_tokens"] = float(hit_tokens.sum() / workload.prompt_tokens.sum())
        stats["prefix_blocks"] = {
            "references": len(workload.prefix_hashes),
            "unique": len(np.unique(workload.prefix_hashes)),
            "block_tokens": block,
        }
    return stats
