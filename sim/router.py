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
"""

from __future__ import annotations

from dataclasses import dataclass

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


def prefix_affinity(hit_blocks: np.ndarray, outstanding: np.ndarray) -> int:
    """The candidate caching most of the prompt's leading blocks; ties (including "no
    candidate caches any") by fewest outstanding requests."""
    order = np.lexsort((np.arange(len(hit_blocks)), outstanding, -np.asarray(hit_blocks)))
    return int(order[0])


@dataclass(frozen=True)
class RouterSpec:
    """What a router reads: outstanding counts, KV load, prefix hits. The engine gathers
    only what is needed, and brings replicas in a decode stretch up to date first when the
    router reads state that changes within a stretch (KV load, cached blocks)."""

    name: str
    needs_outstanding: bool
    needs_kv_load: bool
    needs_prefix_hits: bool


ROUTERS: dict[str, RouterSpec] = {
    "round_robin": RouterSpec("round_robin", False, False, False),
    "least_outstanding": RouterSpec("least_outstanding", True, False, False),
    "least_kv_load": RouterSpec("least_kv_load", True, True, False),
    "prefix_affinity": RouterSpec("prefix_affinity", True, False, True),
}


def router_spec(name: str) -> RouterSpec:
    try:
        return ROUTERS[name]
    except KeyError:
        raise KvsimError(
            f"unknown router {name!r}; expected one of {', '.join(ROUTERS)}", field="router.name"
        ) from None


def choose(
    spec: RouterSpec,
    counter: int,
    candidates: int,
    outstanding: np.ndarray | None = None,
    kv_load: np.ndarray | None = None,
    hit_blocks: np.ndarray | None = None,
) -> int:
    """Dispatch to the router ``spec`` names, given the arrays it needs."""
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
    assert hit_blocks is not None
    return prefix_affinity(hit_blocks, outstanding)
