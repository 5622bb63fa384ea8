"""Ranking plans and their Pareto set over cost, latency and quality.

Feasible plans rank by USD/hour, then by the latency the fleet measured on the first SLO's
metric. The Pareto set holds the feasible plans no other feasible plan dominates: at most
the cost and the latency, at least the quality, and better in one. Quality is only
compared where it is known: a lossless plan is at least as good as any; two plans with
table entries compare by retained fraction; an ``unknown`` plan compares only with
lossless plans and with plans of its own KV strategy (same policy, same quality).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Rankable(Protocol):
    feasible: bool
    usd_per_hour: float | None
    latency_s: float | None
    quality_retained: float | None
    kv_strategy: str


def sort_key(plan: Rankable) -> tuple:
    """Feasible first; then USD/hour, latency (missing last)."""
    inf = float("inf")
    return (
        not plan.feasible,
        plan.usd_per_hour if plan.usd_per_hour is not None else inf,
        plan.latency_s if plan.latency_s is not None else inf,
    )


def quality_at_least(a: Rankable, b: Rankable) -> bool:
    """Whether ``a``'s quality is known to be at least ``b``'s."""
    if a.quality_retained == 1.0:
        return True
    if a.quality_retained is not None and b.quality_retained is not None:
        return a.quality_retained >= b.quality_retained
    return (
        a.quality_retained is None and b.quality_retained is None and a.kv_strategy == b.kv_strategy
    )


def dominates(a: Rankable, b: Rankable) -> bool:
    """``a`` is no worse than ``b`` in cost, latency and quality, and better in one."""
    if None in (a.usd_per_hour, a.latency_s, b.usd_per_hour, b.latency_s):
        return False
    if not (a.usd_per_hour <= b.usd_per_hour and a.latency_s <= b.latency_s):
        return False
    if not quality_at_least(a, b):
        return False
    strictly = (
        a.usd_per_hour < b.usd_per_hour or a.latency_s < b.latency_s or not quality_at_least(b, a)
    )
    return strictly


def pareto_mask(plans: Sequence[Rankable]) -> list[bool]:
    """Per plan: feasible and dominated by no other feasible plan."""
    feasible = [p for p in plans if p.feasible]
    return [p.feasible and not any(dominates(q, p) for q in feasible if q is not p) for p in plans]
