"""The KV-aware (Mooncake-style) and session-affinity routers (``sim/router.py``): their
rules on hand-made arrays, their parameters, and their choices inside the engine on small
hand-worked clusters (prefix blocks of 512 tokens, the engine's 16-token blocks)."""

from __future__ import annotations

import numpy as np
import pytest

from hardware.errors import KvsimError
from sim.router import (
    kv_aware,
    overloaded,
    router_spec,
    session_affinity,
    uncached_tokens,
)
from sim.run import run_scenario
from sim.scenario import (
    HardwareConfig,
    ModelConfig,
    PolicyTable,
    RouterConfig,
    Scenario,
    SchedulerSection,
    WorkloadConfig,
)
from workloads.workload import Workload


# ---- rules -----------------------------------------------------------------------------------
def test_uncached_tokens_keep_the_last_prompt_token() -> None:
    assert list(uncached_tokens(1100, np.array([0, 64, 80]), 16)) == [1100, 76, 1]


def test_kv_aware_trades_cached_prefix_against_backlog() -> None:
    """Scores (backlog + uncached): [0 + 1100, 500 + 76, 2000 + 1] -> replica 1; with 1,100
    more queued tokens on replica 1 its score 1,676 loses to replica 0's 1,100."""
    uncached = np.array([1100, 76, 1])
    assert kv_aware(uncached, np.array([0, 500, 2000]), np.array([0, 3, 9])) == 1
    assert kv_aware(uncached, np.array([0, 1600, 2000]), np.array([0, 3, 9])) == 0
    # Equal scores: fewest outstanding, then lowest position.
    assert kv_aware(np.array([10, 10, 10]), np.array([5, 5, 5]), np.array([2, 1, 1])) == 1


def test_session_affinity_sticks_until_the_sglang_imbalance_test_fails() -> None:
    """SGLang router defaults: overloaded when load - min > 64 and load > 1.5 · min."""
    load = np.array([100, 30, 40])
    assert overloaded(100, load, 64, 1.5)  # 70 > 64 and 100 > 45
    assert not overloaded(90, np.array([90, 30]), 64, 1.5)  # 60 <= 64
    assert not overloaded(100, np.array([100, 70]), 0, 1.5)  # 100 <= 105
    assert session_affinity(0, load, 64, 1.5) == 1
    assert session_affinity(2, load, 64, 1.5) == 2
    assert session_affinity(-1, load, 64, 1.5) == 1  # no session: least outstanding


def test_router_parameters_are_validated() -> None:
    spec = router_spec("session_affinity", balance_abs_threshold=4, balance_rel_threshold=2.0)
    assert (spec.balance_abs_threshold, spec.balance_rel_threshold) == (4, 2.0)
    assert router_spec("session_affinity").balance_abs_threshold == 64
    for name, params, field in (
        ("kv_aware", {"balance_abs_threshold": 4}, "router.balance_abs_threshold"),
        ("session_affinity", {"balance_rel_threshold": 0.5}, "router.balance_rel_threshold"),
        ("session_affinity", {"balance_abs_threshold": -1}, "router.balance_abs_threshold"),
    ):
        with pytest.raises(KvsimError) as err:
            router_spec(name, **params)
        assert err.value.field == field
    with pytest.raises(KvsimError) as err:
        RouterConfig(name="round_robin", balance_abs_threshold=3)
    assert err.value.field == "router.balance_abs_threshold"


# ---- in the engine ---------------------------------------------------------------------------
def _run(workload: Workload, router: RouterConfig, max_num_seqs: int = 256):
    scenario = Scenario(
        model=ModelConfig(name="llama-3.1-8b"),
        hardware=HardwareConfig(accelerator="h100-sxm", replicas=2),
        workload=WorkloadConfig(inline=workload),
        router=router,
        scheduler=SchedulerSection(max_num_seqs=max_num_seqs),
        policies=(PolicyTable(kind="prefix_cache", name="prefix_cache"),),
    )
    result = run_scenario(scenario)
    assert (result.requests["status"] == "finished").all()
    return result.requests


def _prefixed(arrival, output, prefixes, session=None) -> Workload:
    lengths = [len(p) for p in prefixes]
    return Workload(
        arrival_s=arrival,
        prompt_tokens=[1100] * len(arrival),
        output_tokens=output,
        session_id=session,
        prefix_offsets=np.concatenate([[0], np.cumsum(lengths)]),
        prefix_hashes=[h for p in prefixes for h in p],
    )


def test_kv_aware_follows_the_cache_until_the_queue_outweighs_it() -> None:
    """One sequence per replica. A (prefix X, 400 outputs) at 0 goes to replica 0 (tie).
    B (prefix X, one output) at 0.5 s: replica 0 caches 1,024 of its 1,100 tokens (score 0 +
    76) against 1,100 on replica 1, so it queues behind A there. C (prefix X) at 0.6 s:
    replica 0's backlog is B's 1,100 queued tokens (score 1,176) and replica 1 scores 1,100,
    so C goes to replica 1 and misses the cache."""
    workload = _prefixed([0.0, 0.5, 0.6], [400, 1, 1], [[11, 12], [11, 12], [11, 12]])
    requests = _run(workload, RouterConfig(name="kv_aware"), max_num_seqs=1)
    assert list(requests["replica"]) == [0, 0, 1]
    assert list(requests["prefix_hit_tokens"]) == [0, 1024, 0]
    # least_outstanding ignores the cache: B goes to the idle replica 1, and so does C,
    # since B (one output token) has finished there by 0.6 s while A still decodes on 0.
    plain = _run(workload, RouterConfig(name="least_outstanding"), max_num_seqs=1)
    assert list(plain["replica"]) == [0, 1, 1]


def test_session_affinity_keeps_turns_together_until_overloaded() -> None:
    """Sessions 0 and 1 alternate turns (arrivals 0.1 s apart, 2-token outputs, no shared
    prefix). With the default thresholds the turns of a session stay on the replica of its
    first turn; session 0's first turn went to replica 0, session 1's to replica 1."""
    arrival = [0.0, 0.0, 0.1, 0.1, 0.2, 0.2]
    session = [0, 1, 0, 1, 0, 1]
    prefixes = [[100 * s + t] for t, s in enumerate(session)]
    workload = _prefixed(arrival, [2] * 6, prefixes, session=session)
    sticky = _run(workload, RouterConfig(name="session_affinity"))
    assert list(sticky["replica"]) == [0, 1, 0, 1, 0, 1]


def test_session_affinity_moves_an_overloaded_session() -> None:
    """Session 5's first turn (a long decode) lands on replica 0, then three long requests
    without a session arrive: least outstanding sends them to replicas 1, 0, 1. With
    thresholds 0 and 1.0 the sticky replica is overloaded as soon as it has more
    outstanding requests than the other, so session 5's second turn moves to the less
    loaded replica and the session follows it."""
    arrival = [0.0, 0.01, 0.01, 0.01, 0.02, 0.03]
    session = [5, -1, -1, -1, 5, 5]
    output = [300, 200, 200, 200, 2, 2]
    prefixes = [[t] for t in range(6)]
    workload = _prefixed(arrival, output, prefixes, session=session)
    tight = RouterConfig(
        name="session_affinity", balance_abs_threshold=0, balance_rel_threshold=1.0
    )
    requests = _run(workload, tight)
    # Outstanding at 0.01 s: replica 0 has 1 -> requests 1, 2, 3 go to 1, 0, 1. At 0.02 s
    # replica 0 holds 2 and replica 1 holds 2: not overloaded, session 5 stays on 0; then
    # replica 0 holds 3 against 2: session 5's third turn moves to replica 1.
    assert list(requests["replica"]) == [0, 1, 0, 1, 0, 1]
    loose = _run(workload, RouterConfig(name="session_affinity"))
    assert list(loose["replica"]) == [0, 1, 0, 1, 0, 0]
