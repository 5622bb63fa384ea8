"""The largest request rate that passes a check, searched on a fixed geometric grid.

Rates are the grid points ``(1 + rel_tol)^k`` req/s (integer ``k``), so two searches that
see the same pass/fail answers at the same rates return the same point, whatever their
starting guess. From a start point the search gallops (steps of growing size) up while
probes pass or down while they fail until it holds a passing ``lo`` and a failing ``hi``,
then bisects the integer interval until they are neighbours (exponential search, Bentley &
Yao 1976). For a check that passes at every rate below some capacity and fails above it,
the result is the largest grid point below the capacity, within a factor ``1 + rel_tol``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from hardware.errors import KvsimError

#: The first gallop step, as a rate factor (rounded to whole grid steps).
FIRST_STEP_FACTOR = 1.25


@dataclass(frozen=True)
class SearchResult:
    """``rate_per_s``: the largest grid rate that passed (None when none did down to the
    floor); ``upper_per_s``: the smallest that failed above it (None when none did up to
    the ceiling); ``probes``: checks run; ``exhausted``: stopped by the probe cap before
    the bracket closed (``rate_per_s`` is then the best passing rate seen)."""

    rate_per_s: float | None
    upper_per_s: float | None
    probes: int
    exhausted: bool


def grid_rate(k: int, rel_tol: float) -> float:
    return (1.0 + rel_tol) ** k


def grid_index(rate_per_s: float, rel_tol: float) -> int:
    return round(math.log(rate_per_s) / math.log1p(rel_tol))


def max_passing_rate(
    passes: Callable[[float], bool],
    start_per_s: float,
    rel_tol: float,
    *,
    floor_per_s: float,
    ceiling_per_s: float,
    max_probes: int,
) -> SearchResult:
    """Search the grid between ``floor_per_s`` and ``ceiling_per_s`` from ``start_per_s``
    for the largest rate where ``passes(rate)`` holds, with at most ``max_probes`` calls."""
    if not 0 < rel_tol < 1:
        raise KvsimError(f"must be in (0, 1), got {rel_tol}", field="rel_tol")
    if not 0 < floor_per_s <= start_per_s <= ceiling_per_s:
        raise KvsimError(
            f"need 0 < floor ({floor_per_s:g}) <= start ({start_per_s:g}) <= ceiling "
            f"({ceiling_per_s:g})",
            field="rate",
        )
    if max_probes < 1:
        raise KvsimError(f"must be >= 1, got {max_probes}", field="max_probes")
    k_min = math.ceil(math.log(floor_per_s) / math.log1p(rel_tol) - 1e-9)
    k_max = math.floor(math.log(ceiling_per_s) / math.log1p(rel_tol) + 1e-9)
    k = min(max(grid_index(start_per_s, rel_tol), k_min), k_max)
    step = max(1, round(math.log(FIRST_STEP_FACTOR) / math.log1p(rel_tol)))
    lo: int | None = None
    hi: int | None = None
    probes = 0

    def probe(index: int) -> bool:
        nonlocal probes
        probes += 1
        return passes(grid_rate(index, rel_tol))

    if probe(k):
        lo = k
        while hi is None and lo < k_max and probes < max_probes:
            nxt = min(lo + step, k_max)
            if probe(nxt):
                lo = nxt
            else:
                hi = nxt
            step *= 2
    else:
        hi = k
        while lo is None and hi > k_min and probes < max_probes:
            nxt = max(hi - step, k_min)
            if probe(nxt):
                lo = nxt
            else:
                hi = nxt
            step *= 2
    while lo is not None and hi is not None and hi - lo > 1 and probes < max_probes:
        mid = (lo + hi) // 2
        if probe(mid):
            lo = mid
        else:
            hi = mid
    closed = (lo is not None and (hi == lo + 1 or (hi is None and lo >= k_max))) or (
        lo is None and hi is not None and hi <= k_min
    )
    return SearchResult(
        rate_per_s=None if lo is None else grid_rate(lo, rel_tol),
        upper_per_s=None if hi is None else grid_rate(hi, rel_tol),
        probes=probes,
        exhausted=not closed,
    )
