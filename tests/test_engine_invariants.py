"""Invariants of the engine on small random clusters (hypothesis).

Whatever the workload, pool size, batch limits, preemption mode, prefix caching, router,
replica count or disaggregation: every request finishes or is rejected for a reason that its
own size explains; each request's timestamps are ordered; a replica's steps never overlap
and time never runs backwards; KV blocks stay within the pool and are all returned at the
end; and fast-forwarded decode stretches give exactly the per-request records of
step-by-step execution.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardware.catalog import get_accelerator
from sim.cost import CostModel
from sim.engine import NS, Engine, EngineConfig
from sim.executor import CostModelExecutor, FixedStepExecutor
from sim.kv.block_pool import blocks_for
from sim.router import ROUTERS, router_spec
from sim.scheduler import ReplicaScheduler, SchedulerConfig
from sim.transfer import SharedLink
from workloads.model_catalog import get_model
from workloads.workload import Workload

PREFIX_BLOCK = 64
STEP_S = 0.003
COST = CostModel(get_model("smollm2-135m"), get_accelerator("h100-sxm"))


@st.composite
def clusters(draw):
    n = draw(st.integers(1, 25))
    # A 3 ms grid lines arrivals up with the fixed 3 ms steps: ties exercise the tie rule.
    grid = draw(st.sampled_from([1, 3]))
    arrival_ms = sorted(
        grid * x for x in draw(st.lists(st.integers(0, 150), min_size=n, max_size=n))
    )
    prompt = draw(st.lists(st.integers(1, 700), min_size=n, max_size=n))
    output = draw(st.lists(st.integers(1, 90), min_size=n, max_size=n))
    family = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    prefixes = [
        [f * 1000 + j for j in range(-(-p // PREFIX_BLOCK))]
        for f, p in zip(family, prompt, strict=True)
    ]
    workload = Workload(
        arrival_s=np.array(arrival_ms) / 1000,
        prompt_tokens=prompt,
        output_tokens=output,
        prefix_offsets=np.concatenate([[0], np.cumsum([len(p) for p in prefixes])]),
        prefix_hashes=[h for p in prefixes for h in p],
        prefix_block_tokens=PREFIX_BLOCK,
    )
    block = draw(st.sampled_from([8, 16, 32]))
    max_seqs = draw(st.integers(1, 8))
    chunked = draw(st.booleans())
    max_model_len = draw(st.sampled_from([512, 1024]))
    budget = draw(st.integers(max_seqs, 512)) if chunked else max_model_len
    disaggregated = draw(st.booleans())
    preemption = "recompute" if disaggregated else draw(st.sampled_from(["recompute", "swap"]))
    config = SchedulerConfig(
        max_model_len=max_model_len,
        max_num_seqs=max_seqs,
        max_batched_tokens=budget,
        chunked_prefill=chunked,
        block_tokens=block,
        preemption=preemption,
        prefix_caching=draw(st.sampled_from(["none", "hash", "radix"])),
    )
    replicas = 2 if disaggregated else draw(st.integers(1, 3))
    return {
        "workload": workload,
        "config": config,
        "num_blocks": draw(st.integers(4, 120)),
        "replicas": replicas,
        "router": draw(st.sampled_from(sorted(ROUTERS))),
        "disaggregated": disaggregated,
        "fixed_step": draw(st.booleans()),
    }


def _run(case: dict, step_mode: bool):
    config = case["config"]
    schedulers = [ReplicaScheduler(config, case["num_blocks"]) for _ in range(case["replicas"])]
    roles: tuple[str, ...] = ()
    links: tuple[SharedLink, ...] = ()
    if case["disaggregated"]:
        roles = ("prefill", "decode")
        links = (SharedLink(2e9, 1e-5, resolution_s=1 / NS),)
    executor = FixedStepExecutor(STEP_S) if case["fixed_step"] else CostModelExecutor(COST)
    engine = Engine(
        case["workload"],
        schedulers,
        executor,
        EngineConfig(
            router=router_spec(case["router"]),
            block_tokens=config.block_tokens,
            prefix_caching=config.prefix_caching != "none",
            step_mode=step_mode,
            roles=roles,
            links=links,
            kv_bytes_per_token=1000.0,
        ),
    )
    records, steps = engine.run()
    return records.to_frame(), steps.to_frame(), schedulers


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters())
def test_engine_invariants(case: dict) -> None:
    requests, steps, schedulers = _run(case, step_mode=False)
    config, num_blocks = case["config"], case["num_blocks"]

    # Every request finished, or was rejected for a reason its size explains.
    total = requests["prompt_tokens"] + requests["output_tokens"]
    too_long = total > config.max_model_len
    too_big = ~too_long & (
        np.array([blocks_for(t - 1, config.block_tokens) for t in total]) > num_blocks
    )
    expected = np.where(too_long, "exceeds_max_model_len", np.where(too_big, "exceeds_kv_pool", ""))
    assert list(requests["reject_reason"]) == list(expected)
    assert list(requests["status"]) == ["rejected" if r else "finished" for r in expected]

    # Each finished request's timestamps are in order.
    done = requests[requests["status"] == "finished"]
    assert (done["scheduled_s"] >= done["arrival_s"]).all()
    assert (done["first_token_s"] >= done["scheduled_s"]).all()
    assert (done["finish_s"] >= done["first_token_s"]).all()
    if case["disaggregated"]:
        handed = done[done["output_tokens"] > 1]
        assert (handed["transfer_start_s"] >= handed["first_token_s"]).all()
        assert (handed["transfer_end_s"] >= handed["transfer_start_s"]).all()
        assert (handed["finish_s"] > handed["transfer_end_s"]).all()

    # Per replica, steps follow one another: time never goes backwards.
    for _, rows in steps.groupby("replica"):
        start = np.rint(rows["start_s"].to_numpy() * NS).astype(np.int64)
        end = np.rint(rows["end_s"].to_numpy() * NS).astype(np.int64)
        assert (end > start).all()
        assert (start[1:] >= end[:-1]).all()

    # KV blocks stay within the pool and are all returned.
    assert steps["kv_blocks_used"].between(0, num_blocks).all()
    for scheduler in schedulers:
        assert scheduler.used_blocks == 0
        assert scheduler.outstanding_requests == 0
        scheduler.pool.check_invariants()

    # Fast-forwarded stretches change nothing per request.
    reference, step_rows, _ = _run(case, step_mode=True)
    pd.testing.assert_frame_equal(requests, reference, check_exact=True)
    assert steps["steps"].sum() == step_rows["steps"].sum()
