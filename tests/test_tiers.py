"""Tiered KV store (``sim/kv/tiers.py``): LRU tiers with cascading eviction, HBM evictions
spilled to the host tier, prefix hits continued in the lower tiers and loaded over a shared
link, and, on the Mooncake conversation trace, the hit rate against the trace's ideal.

Expected values: LRU order and cascades by hand; the engine case's TTFT by hand from the
load size and the link's bandwidth (max(compute, load) with prefetch, their sum without);
the Mooncake ideal hit from ``workloads.stats.trace_stats`` (an unbounded cache over the
trace's ``hash_ids``, independent of the engine)."""

from __future__ import annotations

import numpy as np
import pytest

from hardware.errors import KvsimError
from sim.engine import Engine, EngineConfig
from sim.executor import FixedStepExecutor
from sim.kv.block_pool import BlockPool
from sim.kv.tiers import LruBlockStore, SpillingBlockPool, TieredStore
from sim.router import router_spec
from sim.scenario import Scenario
from sim.scheduler import ReplicaScheduler, SchedulerConfig
from sim.transfer import SharedLink
from workloads.workload import Workload


# ---- stores --------------------------------------------------------------------------------
def test_lru_store_evicts_least_recent_and_refreshes_on_rewrite():
    store = LruBlockStore("host", 3)
    assert store.put([1, 2, 3]) == []
    assert store.put([1]) == []  # 1 becomes the most recent: order 2, 3, 1
    assert store.put([4, 5]) == [2, 3]
    assert [h in store for h in (1, 2, 3, 4, 5)] == [True, False, False, True, True]
    store.touch([1])  # order 4, 5... then 1 most recent: 4, 5, 1
    assert store.put([6]) == [4]
    assert store.stats.written_blocks == 7 and store.stats.evicted_blocks == 3
    assert store.stats.loaded_blocks == 1


def test_unbounded_store_never_evicts():
    store = LruBlockStore("host", None)
    assert store.put(range(10_000)) == [] and len(store) == 10_000


def test_bad_capacity_is_named():
    with pytest.raises(KvsimError) as err:
        LruBlockStore("host", -1)
    assert err.value.field == "capacity_blocks"


def test_overflow_cascades_host_to_disk_and_drops_from_the_last():
    host, disk = LruBlockStore("host", 2), LruBlockStore("disk", 2)
    store = TieredStore([host, disk])
    store.put([1, 2, 3, 4])  # host keeps 3, 4; 1, 2 go to disk
    store.put([5, 6])  # host keeps 5, 6; 3, 4 go to disk, pushing 1, 2 out of it
    assert [h in host for h in (5, 6)] == [True, True]
    assert [h in disk for h in (1, 2, 3, 4)] == [False, False, True, True]
    assert host.stats.evicted_blocks == 4 and disk.stats.evicted_blocks == 2


def test_match_takes_the_leading_run_and_the_fastest_tier():
    host, disk = LruBlockStore("host", None), LruBlockStore("disk", None)
    store = TieredStore([host, disk])
    host.put([11, 13])
    disk.put([12, 13, 15])
    hashes = np.array([10, 11, 12, 13, 14, 15])
    match = store.match(hashes, 1, 6)  # block 0 hit in HBM; 14 is nowhere: stop there
    assert match.start == 1 and match.tiers.tolist() == [0, 1, 0]
    assert match.blocks_per_tier(2).tolist() == [2, 1]
    store.load(hashes, match)
    assert host.stats.loaded_blocks == 2 and disk.stats.loaded_blocks == 1


def test_spilling_pool_writes_exactly_its_evictions():
    """The same allocations on a plain and a spilling pool: the store receives one block per
    eviction the plain pool counts, and they are the blocks that became unreachable."""
    rng = np.random.default_rng(7)
    store = TieredStore([LruBlockStore("host", None)])
    plain, spilling = BlockPool(24, 4, enable_prefix_caching=True), SpillingBlockPool(24, 4, store)
    for seq in range(40):
        prefix = int(rng.integers(0, 5))
        hashes = np.arange(prefix * 100, prefix * 100 + 6, dtype=np.int64)
        for pool in (plain, spilling):
            assert pool.allocate(seq, 24, hashes) is not None
            pool.cache_full_blocks(seq, hashes, 6)
            pool.free(seq)
    assert spilling.evictions == plain.evictions > 0
    assert store.tiers[0].stats.written_blocks == plain.evictions


# ---- scheduler and engine ------------------------------------------------------------------
PROMPT = 512  # one 512-token Mooncake-style prefix block = 32 engine blocks of 16
BYTES_PER_TOKEN = 1e6
LINK_BYTES_PER_S = 1e9
LATENCY_S = 1e-5
STEP_S = 1e-3


def _three_requests() -> Workload:
    """A at 0 s and C at 0.2 s share prefix id 1; B at 0.1 s (prefix 2) evicts A's blocks."""
    return Workload(
        arrival_s=np.array([0.0, 0.1, 0.2]),
        prompt_tokens=np.full(3, PROMPT),
        output_tokens=np.ones(3, dtype=np.int64),
        prefix_offsets=np.array([0, 1, 2, 3]),
        prefix_hashes=np.array([1, 2, 1]),
    )


def _run(store: TieredStore | None, prefetch: bool = True):
    config = SchedulerConfig(max_model_len=1024, prefix_caching="hash")
    # 33 blocks: A holds 32 (ids 0-31); B takes id 32 then evicts A's ids 31..1 (vLLM frees
    # a sequence's blocks last-first, so the longest-prefix blocks go first); A's block 0
    # stays in HBM.
    scheduler = ReplicaScheduler(config, 33, store=store)
    links = ((SharedLink(LINK_BYTES_PER_S, LATENCY_S, resolution_s=1e-9),),) if store else ()
    engine = Engine(
        _three_requests(),
        [scheduler],
        FixedStepExecutor(STEP_S),
        EngineConfig(
            router=router_spec("round_robin"),
            block_tokens=16,
            prefix_caching=True,
            kv_bytes_per_token=BYTES_PER_TOKEN,
            tier_links=links,
            tier_prefetch=prefetch,
        ),
    )
    records, _ = engine.run()
    return records.to_frame()


def test_hbm_only_recomputes_the_evicted_prefix():
    frame = _run(None)
    assert frame["prefix_hit_tokens"].tolist() == [0, 0, 16]  # A's block 0 only
    assert frame["ttft_s"].iloc[2] == pytest.approx(STEP_S)


@pytest.mark.parametrize("prefetch", [True, False])
def test_host_hit_is_loaded_and_ttft_includes_the_load(prefetch):
    """C hits block 0 in HBM and blocks 1-30 (block 31 holds the last token, which vLLM
    recomputes) in the host tier: 30 × 16 = 480 tokens cross the link, 480 MB at 1 GB/s =
    0.48 s plus 10 µs latency; the step computes the remaining 32 tokens in 1 ms, hidden
    under the load with prefetch and added to it without."""
    store = TieredStore([LruBlockStore("host", None)])
    frame = _run(store, prefetch)
    assert frame["prefix_hit_tokens"].tolist() == [0, 0, 496]
    load_s = 480 * BYTES_PER_TOKEN / LINK_BYTES_PER_S + LATENCY_S
    expected = load_s if prefetch else load_s + STEP_S
    assert frame["ttft_s"].iloc[2] == pytest.approx(expected, abs=2e-9)
    assert store.tiers[0].stats.loaded_blocks == 30
    assert frame["ttft_s"].iloc[0] == pytest.approx(STEP_S)


def test_a_store_needs_hash_prefix_caching():
    store = TieredStore([LruBlockStore("host", None)])
    with pytest.raises(KvsimError) as err:
        ReplicaScheduler(SchedulerConfig(max_model_len=64, prefix_caching="radix"), 8, store=store)
    assert err.value.field == "policies.prefix_cache.kind"


# ---- scenario ------------------------------------------------------------------------------
def _scenario(trace: str, **hardware) -> dict:
    return {
        "model": {"name": "llama-3.1-8b"},
        "hardware": {"accelerator": "h100-sxm", **hardware},
        "workload": {"trace": trace, "format": "mooncake", "time_scale": 4.0},
        "policies": {"prefix_cache": {"enabled": True}},
    }


def test_scenario_validation_names_the_field(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1]}\n')
    data = _scenario(str(trace))
    data["policies"]["offload"] = {"name": "prefix_store"}
    with pytest.raises(KvsimError) as err:
        Scenario.from_dict(data)
    assert err.value.field == "policies.offload.name"
    data["hardware"]["host_memory_tier"] = "ddr5-spr-socket"
    data["policies"]["offload"]["prefetch"] = "yes"
    with pytest.raises(KvsimError) as err:
        Scenario.from_dict(data)
    assert err.value.field == "policies.offload.prefetch"
    with pytest.raises(KvsimError) as err:
        Scenario.from_dict(_scenario(str(trace), disk_capacity_bytes=10**12))
    assert err.value.field == "hardware.disk_capacity_bytes"


@pytest.mark.slow
def test_mooncake_host_store_raises_hits_and_unbounded_tiers_reach_the_ideal(traces_dir):
    """The first 300 requests of the Mooncake conversation trace (arrivals stretched 4×) on
    one H100: HBM-only prefix caching, + the catalog's 512 GB host-DRAM store, + an unbounded
    store.
    The store raises the hit rate and lowers mean TTFT; unbounded, the hit rate equals the
    trace's ideal token hit over these requests (an unbounded cache; every hit is served
    from HBM or a tier), less what vLLM's 16-token blocks and last-token rule leave out."""
    from sim.run import run_scenario
    from workloads.stats import trace_stats
    from workloads.traces import read_trace

    path = str(traces_dir / "mooncake" / "conversation_trace.jsonl")
    workload = read_trace(path, "mooncake", time_scale=4.0).take(np.arange(300))
    ideal = trace_stats(workload)["ideal_prefix_hit_tokens"]
    results = {}
    for name, extra in {
        "hbm": {},
        "host": {"host_memory_tier": "ddr5-spr-socket"},
        "unbounded": {"host_memory_tier": "ddr5-spr-socket", "host_memory_capacity_bytes": 10**16},
    }.items():
        data = _scenario(path, **extra)
        if extra:
            data["policies"]["offload"] = {"name": "prefix_store"}
        results[name] = run_scenario(Scenario.from_dict(data), workload=workload).summary
    hbm, host, unbounded = results["hbm"], results["host"], results["unbounded"]
    assert hbm["prefix_hit_rate"] < host["prefix_hit_rate"] <= unbounded["prefix_hit_rate"]
    assert host["ttft_mean_s"] < hbm["ttft_mean_s"]
    assert unbounded["prefix_hit_rate"] == pytest.approx(ideal, abs=0.005)
    assert unbounded["prefix_hit_rate"] <= ideal + 1e-12


def test_stretches_do_not_change_records_with_a_store():
    """Decode stretches (fast-forward) and step-by-step execution give identical per-request
    records when prompts load from the host tier (``docs/engine.md``)."""
    workload = _three_requests()
    workload = Workload(
        arrival_s=workload.arrival_s,
        prompt_tokens=workload.prompt_tokens,
        output_tokens=np.array([40, 25, 30]),
        prefix_offsets=workload.prefix_offsets,
        prefix_hashes=workload.prefix_hashes,
    )
    frames = []
    for step_mode in (False, True):
        store = TieredStore([LruBlockStore("host", None)])
        engine = Engine(
            workload,
            [
                ReplicaScheduler(
                    SchedulerConfig(max_model_len=1024, prefix_caching="hash"), 40, store=store
                )
            ],
            FixedStepExecutor(STEP_S),
            EngineConfig(
                router=router_spec("round_robin"),
                block_tokens=16,
                prefix_caching=True,
                step_mode=step_mode,
                kv_bytes_per_token=BYTES_PER_TOKEN,
                tier_links=((SharedLink(LINK_BYTES_PER_S, LATENCY_S, resolution_s=1e-9),),),
            ),
        )
        frames.append(engine.run()[0].to_frame())
    assert frames[0]["prefix_hit_tokens"].iloc[2] > 0
    assert frames[0].equals(frames[1])
