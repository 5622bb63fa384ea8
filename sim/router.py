"""Cluster routers: which replica gets the next request.

Each router is a pure function of the candidate replicas' state at the request's arrival
(numpy arrays, one entry per candidate) returning the chosen position; ties go to the lowest
position, so routing is deterministic. The engine builds the arrays from live schedulers
(:mod:`sim.engine`) and keeps the one piece of router state, round robin's counter.

* ``round_robin``: candidates in turn (Vidur's default global scheduler).
* ``least_outstanding``: fewest requests admitted and not finished (running + waiting),
  the "least request" balancing of Envoy and the vLLM production-stack router.
* ``least_kv_load``: lowest fraction of KV blocks in use (Llumnix-style memory-load
  balancing, Sun et al., OSDI 2024).
* ``prefix_affinity``: most prompt blocks already cached, falling back to least outstanding
  when no replica holds any (SGLang's cache-aware router, Zheng et al., NeurIPS 2024).
* ``kv_aware``: the smallest estimated time to first token in prefill tokens: the replica's
  queued prefill backlog plus the prompt tokens it does not cache (Mooncake's Conductor,
  Qin et al., FAST 2025, with prefill time linear in tokens), so a long cached prefix wins
  unless its replica's queue outweighs it.
* ``session_affinity``: a conversation's turns stick to the replica of its first turn, unless
  that replica is overloaded by the SGLang router's imbalance test (more than
  ``balance_abs_threshold`` outstanding requests above the least-loaded replica *and* more
  than ``balance_rel_threshold`` times its load; 64 and 1.5 there), when the turn goes to the
  least-outstanding replica and the session moves with it. Requests without a session go to
  the least-outstanding replica.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from hardware.errors import KvsimError


def round_robin(counter: int, candidates: int) -> int:
    """The ``counter``-th request goes to candidate ``counter mod candidates``."""
    return counter % candidates


def least_outstanding(outstanding: np.ndarray) -> int:
    """The candidate with the fewest outstanding requests (lowest position on ties)."""
    return int(np.argmin(outstanding))


def least_kv_load(kv_load: np.ndarray, outstanding: np.ndarray) -> int:
    """The candidate with the lowest KV-block load fraction; ties by outstanding requests."""
    order = np.lexsort((np.arange(len(kv_load)), outstanding, kv_load))
    return int(order[0])


def uncached_tokens(prompt_tokens: int, hit_blocks: np.ndarray, block_tokens: int) -> np.ndarray:
    """Prompt tokens each candidate must compute: the prompt less its cached leading blocks,
    at least 1 (the last prompt token is always recomputed to sample, as in vLLM)."""
    return np.maximum(prompt_tokens - np.asarray(hit_blocks) * block_tokens, 1)


def kv_aware(uncached: np.ndarray, backlog_tokens: np.ndarray, outstanding: np.ndarray) -> int:
    """The candidate with the least prefill work before this request's first token,
    ``backlog_tokens + uncached`` (Mooncake's TTFT estimate with prefill time linear in
    tokens); ties by fewest outstanding requests, then lowest position."""
    score = np.asarray(backlog_tokens) + np.asarray(uncached)
    order = np.lexsort((np.arange(len(score)), outstanding, score))
    return int(order[0])


def overloaded(
    load: int, outstanding: np.ndarray, abs_threshold: int, rel_threshold: float
) -> bool:
    """The SGLang router's imbalance test for a replica with ``load`` outstanding requests:
    more than ``abs_threshold`` above the least-loaded candidate and more than
    ``rel_threshold`` times its load."""
    low = int(np.min(outstanding))
    return load - low > abs_threshold and load > rel_threshold * low


def session_affinity(
    sticky: int, outstanding: np.ndarray, abs_threshold: int, rel_threshold: float
) -> int:
    """``sticky`` (the position of the session's replica, -1 for none) unless it is
    :func:`overloaded`; else the least-outstanding candidate."""
    if sticky >= 0 and not overloaded(
        int(outstanding[sticky]), outstanding, abs_threshold, rel_threshold
    ):
        return sticky
    return least_outstanding(outstanding)


def prefix_affinity(hit_blocks: np.ndarray, outstanding: np.ndarray) -> int:
    """The candidate caching most of the prompt's leading blocks; ties (including "no
    candidate caches any") by fewest outstanding requests."""
    order = np.lexsort((np.arange(len(hit_blocks)), outstanding, -np.asarray(hit_blocks)))
    return int(order[0])


@dataclass(frozen=True)
class RouterSpec:
    """What a router reads: outstanding counts, KV load, prefix hits, prefill backlogs, the
    session's replica; and its parameters. The engine gathers only what is needed, and brings
    replicas in a decode stretch up to date first when the router reads state that changes
    within a stretch (KV load, cached blocks). Backlogs and outstanding counts do not change
    inside a stretch (its steps are pure decodes and none but the last finishes)."""

    name: str
    needs_outstanding: bool
    needs_kv_load: bool
    needs_prefix_hits: bool
    needs_backlog: bool = False
    needs_session: bool = False
    balance_abs_threshold: int = 64
    balance_rel_threshold: float = 1.5

    def __post_init__(self) -> None:
        value = self.balance_abs_threshold
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise KvsimError(
                f"must be an integer >= 0, got {value!r}", field="router.balance_abs_threshold"
            )
        if not (self.balance_rel_threshold >= 1.0 and np.isfinite(self.balance_rel_threshold)):
            raise KvsimError(
                f"must be a finite number >= 1, got {self.balance_rel_threshold!r}",
                field="router.balance_rel_threshold",
            )


ROUTERS: dict[str, RouterSpec] = {
    "round_robin": RouterSpec("round_robin", False, False, False),
    "least_outstanding": RouterSpec("least_outstanding", True, False, False),
    "least_kv_load": RouterSpec("least_kv_load", True, True, False),
    "prefix_affinity": RouterSpec("prefix_affinity", True, False, True),
    "kv_aware": RouterSpec("kv_aware", True, False, True, needs_backlog=True),
    "session_affinity": RouterSpec("session_affinity", True, False, False, needs_session=True),
}
#: Parameters each router accepts (``[router]`` keys besides ``name``).
ROUTER_PARAMS: dict[str, tuple[str, ...]] = {
    "session_affinity": ("balance_abs_threshold", "balance_rel_threshold"),
}


def router_spec(name: str, **params: float) -> RouterSpec:
    """The router ``name`` with ``params`` (only those of :data:`ROUTER_PARAMS`)."""
    try:
        spec = ROUTERS[name]
    except KeyError:
        raise KvsimError(
            f"unknown router {name!r}; expected one of {', '.join(ROUTERS)}", field="router.name"
        ) from None
    allowed = ROUTER_PARAMS.get(name, ())
    for key in params:
        if key not in allowed:
            raise KvsimError(
                f"router {name!r} has no parameter {key!r}"
                + (f"; expected one of {', '.join(allowed)}" if allowed else ""),
                field=f"router.{key}",
            )
    return replace(spec, **params) if params else spec


def choose(
    spec: RouterSpec,
    counter: int,
    candidates: int,
    outstanding: np.ndarray | None = None,
    kv_load: np.ndarray | None = None,
    hit_blocks: np.ndarray | None = None,
    backlog_tokens: np.ndarray | None = None,
    prompt_tokens: int = 1,
    block_tokens: int = 1,
    sticky: int = -1,
) -> int:
    """Dispatch to the router ``spec`` names, given what it needs: per-candidate arrays,
    the request's prompt tokens, the prefix block size, and the position of its session's
    replica (``-1``: none)."""
    if candidates == 1:
        return 0
    if spec.name == "round_robin":
        return round_robin(counter, candidates)
    assert outstanding is not None
    if spec.name == "least_outstanding":
        return least_outstanding(outstanding)
    if spec.name == "least_kv_load":
        assert kv_load is not None
        return least_kv_load(kv_load, outstanding)
    if spec.name == "session_affinity":
        return session_affinity(
            sticky, outstanding, spec.balance_abs_threshold, spec.balance_rel_threshold
        )
    assert hit_blocks is not None
    if spec.name == "kv_aware":
        assert backlog_tokens is not None
        uncached = uncached_tokens(prompt_tokens, hit_blocks, block_tokens)
        return kv_aware(uncached, backlog_tokens, outstanding)
    return prefix_affinity(hit_blocks, outstanding)
