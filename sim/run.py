"""Run a scenario end to end: the one entry point of the CLI, planner, sweeps and dashboard.

:func:`run_scenario` resolves the scenario's catalog ids, plans each replica's memory (an
error if the model does not fit), builds the cost model, the workload and one scheduler per
replica, runs the engine, and returns the records as DataFrames with the summary metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hardware.catalog import get_accelerator, get_link
from hardware.errors import KvsimError
from hardware.specs import Accelerator
from sim.cost import BatchShape, CostModel, MemoryPlan, plan_memory
from sim.cost.roofline import transfer_time_s
from sim.engine import NS, Engine, EngineConfig
from sim.executor import CostModelExecutor, Executor
from sim.kv.tier_setup import (
    ResolvedTier,
    build_links,
    build_stores,
    resolve_tiers,
    tier_rates,
)
from sim.kv.tiers import TieredStore
from sim.metrics import MetricsContext, summarize
from sim.policies.footprint import KvFootprint, strategy_summary
from sim.policies.offload import OffloadedKv, PlacementBase, PrefixStore
from sim.scenario import Scenario
from sim.scheduler import ReplicaScheduler, SchedulerConfig
from sim.scheduling import CostEstimates, SchedulingInputs, predict_output_tokens
from sim.transfer import SharedLink
from workloads.model import ModelSpec
from workloads.workload import Workload


@dataclass(frozen=True)
class RunResult:
    """Per-request and per-step records (:mod:`sim.records`), the summary metrics
    (:func:`sim.metrics.summarize`) and the scenario that produced them."""

    requests: pd.DataFrame
    steps: pd.DataFrame
    summary: dict
    scenario: Scenario
    memory: MemoryPlan
    context: MetricsContext

    def write_parquet(self, out_dir: str | Path) -> list[Path]:
        """Write ``requests.parquet`` and ``steps.parquet`` atomically into ``out_dir``."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name, frame in (("requests", self.requests), ("steps", self.steps)):
            path = out / f"{name}.parquet"
            tmp = path.with_name(f".{path.name}.tmp")
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
            tmp.replace(path)
            written.append(path)
        return written


@dataclass(frozen=True)
class Resolved:
    """The scenario's catalog entries and derived sizes; the KV tiers below HBM and the
    ``[policies.offload]`` policy, if any."""

    model: ModelSpec
    accelerator: Accelerator
    memory: MemoryPlan
    max_model_len: int
    footprint: KvFootprint
    tiers: tuple[ResolvedTier, ...] = ()
    offload: Any = None


def resolve(scenario: Scenario) -> Resolved:
    """Look up the model and accelerator, apply the KV strategy, and plan one replica's
    memory: the KV pool counts blocks at the strategy's storage format
    (:class:`~sim.policies.footprint.KvFootprint`). A model that does not fit the replica is
    a :class:`KvsimError` naming the scenario and the shortfall."""
    hw, sched = scenario.hardware, scenario.scheduler
    model = scenario.model.spec()
    try:
        footprint = KvFootprint(scenario.kv_strategy(), model, sched.block_tokens)
    except KvsimError as err:
        raise KvsimError(err.message, source=scenario.source, field=err.field) from None
    accelerator = get_accelerator(hw.accelerator)
    if hw.price_usd_per_hour is not None:
        accelerator = accelerator.with_price(hw.price_usd_per_hour)
    try:
        memory = plan_memory(
            model,
            accelerator,
            tp=hw.tp,
            pp=hw.pp,
            weight_dtype=scenario.model.weight_dtype,
            kv_dtype=footprint.kv_format(),
            gpu_memory_fraction=hw.gpu_memory_fraction,
            max_batched_tokens=sched.max_batched_tokens,
            block_tokens=sched.block_tokens,
            max_num_seqs=sched.max_num_seqs,
        )
    except KvsimError as err:
        field = f"hardware.{err.field}" if err.field in ("tp", "pp") else "hardware"
        raise KvsimError(err.message, source=scenario.source, field=field) from None
    max_model_len = sched.max_model_len or model.max_context_tokens
    tiers = resolve_tiers(
        accelerator,
        hw.host_memory_tier,
        hw.host_memory_capacity_bytes,
        hw.disk_tier,
        hw.disk_capacity_bytes,
    )
    offload = scenario.offload_policy()
    if isinstance(offload, PlacementBase):
        memory = _placed_memory(scenario, offload, memory, tiers, footprint)
    return Resolved(model, accelerator, memory, max_model_len, footprint, tiers, offload)


def _placed_memory(
    scenario: Scenario,
    placement: PlacementBase,
    memory: MemoryPlan,
    tiers: tuple[ResolvedTier, ...],
    footprint: KvFootprint,
) -> MemoryPlan:
    """The KV pool under a static placement: HBM holds only the GPU share of each sequence,
    so the pool grows to what HBM, host and disk bound together
    (:meth:`~sim.policies.offload.PlacementBase.pool_blocks`)."""
    if placement.needs_selection and footprint.reads_context:
        raise KvsimError(
            f"{placement.name} fetches only the tokens a selection policy reads: add a "
            "[policies.selection] that reads fewer tokens than it holds (e.g. quest)",
            source=scenario.source,
            field="policies.offload.name",
        )
    capacity = {t.spec.kind: t.capacity_bytes for t in tiers}
    host = capacity.get("dram", capacity.get("cxl"))
    blocks = placement.pool_blocks(
        memory.num_blocks,
        memory.kv_bytes_per_token * memory.block_tokens,
        host,
        capacity.get("nvme"),
    )
    return replace(memory, num_blocks=blocks, max_kv_tokens=blocks * memory.block_tokens)


def load_workload(scenario: Scenario, max_context_tokens: int | None = None) -> Workload:
    """The scenario's requests: the inline workload, the trace file, or the synthetic spec
    drawn with the scenario's seed; arrivals at or after ``duration_s`` are dropped."""
    spec = scenario.workload
    try:
        if spec.inline is not None:
            workload = spec.inline
        elif spec.trace is not None:
            from workloads.traces import read_trace

            workload = read_trace(spec.trace, spec.format, time_scale=spec.time_scale)
        else:
            from workloads.synthetic import generate_workload

            workload = generate_workload(
                spec.synthetic_spec,
                scenario.seed,
                max_context_tokens=max_context_tokens,
                base_dir=Path(scenario.base_dir) if scenario.base_dir else None,
            )
    except KvsimError as err:
        if err.source is None:
            field = err.field if err.field and "." in err.field else f"workload.{err.field or ''}"
            raise KvsimError(err.message, source=scenario.source, field=field) from None
        raise
    if scenario.duration_s is not None:
        keep = int(np.searchsorted(workload.arrival_s, scenario.duration_s, side="left"))
        if keep < len(workload):
            workload = workload.take(np.arange(keep))
    return workload


def build_cost_model(scenario: Scenario, resolved: Resolved) -> CostModel:
    """The analytical cost model of one replica (dtypes and KV format of the scenario)."""
    hw = scenario.hardware
    try:
        return CostModel(
            resolved.model,
            resolved.accelerator,
            tp=hw.tp,
            pp=hw.pp,
            weight_dtype=scenario.model.weight_dtype,
            kv_dtype=resolved.footprint.kv_format(),
            compute_dtype=scenario.model.compute_dtype,
            kv_dequant_flops_per_element=resolved.footprint.dequant_flops_per_element,
        )
    except KvsimError as err:
        field = f"hardware.{err.field}" if err.field in ("tp", "pp") else err.field
        raise KvsimError(
            f"{resolved.model.id}: {err.message}", source=scenario.source, field=field
        ) from None


def build_scheduling_inputs(
    scenario: Scenario, resolved: Resolved, workload: Workload
) -> SchedulingInputs:
    """What the queue, admission and preemption policies read (:mod:`sim.scheduling`):
    predicted output lengths (``sjf``, drawn with the scenario seed), the cost model's
    estimates of a prefill chunk and of a one-way KV move over the host link (``cost``
    preemption, ``reject`` admission; whatever executor runs the steps), and the TTFT
    targets of the priority classes."""
    sched, slo = scenario.scheduler, scenario.slo
    policy = sched.queue_policy()
    estimates = None
    if sched.preemption == "cost" or sched.admission != "none":
        cost_model = build_cost_model(scenario, resolved)
        per_token = resolved.memory.kv_bytes_per_token
        accelerator = resolved.accelerator

        def prefill_chunk_s(tokens: int, context: int) -> float:
            return cost_model.step(BatchShape([tokens], [context], [])).duration_s

        def kv_transfer_s(tokens: int) -> float:
            return transfer_time_s(tokens * per_token, accelerator)

        estimates = CostEstimates(prefill_chunk_s, kv_transfer_s, sched.max_batched_tokens)
    return SchedulingInputs(
        predicted_output_tokens=predict_output_tokens(
            workload.output_tokens, policy, scenario.seed
        ),
        estimates=estimates,
        ttft_slo_s=slo.ttft_targets_s(),
        default_ttft_slo_s=slo.ttft_p90_s,
    )


def build_executor(scenario: Scenario, resolved: Resolved) -> Executor:
    """The default executor: the analytical cost model of one replica. Under
    disaggregation, KV arriving at a decode replica was already priced on the link, so no
    swap traffic is charged (swap preemption is not allowed there)."""
    cost_model = build_cost_model(scenario, resolved)
    per_token = 0.0 if scenario.disaggregation else resolved.memory.kv_bytes_per_token
    offload = None
    if isinstance(resolved.offload, PlacementBase):
        offload = OffloadedKv(
            resolved.offload,
            tier_rates(resolved.accelerator, resolved.tiers),
            resolved.memory.kv_bytes_per_token,
        )
    return CostModelExecutor(
        cost_model,
        kv_bytes_per_token=per_token,
        footprint=resolved.footprint,
        offload=offload,
    )


def run_scenario(
    scenario: Scenario,
    *,
    executor: Executor | None = None,
    progress: Callable[[int], None] | None = None,
    step_mode: bool = False,
    workload: Workload | None = None,
) -> RunResult:
    """Simulate ``scenario``. ``executor`` replaces the cost model (e.g.
    :class:`~sim.executor.FixedStepExecutor`, or the real ``TorchExecutor``); ``progress(n)``
    is called as ``n`` more requests complete or are rejected; ``step_mode`` runs every
    decode step as its own event (same results, slower); ``workload`` replaces the
    scenario's own requests."""
    resolved = resolve(scenario)
    sched = scenario.scheduler
    if workload is None:
        workload = load_workload(scenario, resolved.max_model_len)
    if executor is None:
        executor = build_executor(scenario, resolved)
    split = scenario.disaggregation
    if split is not None and sched.preemption != "recompute":
        raise KvsimError(
            f"{sched.preemption} preemption is not supported with disaggregation; use recompute",
            source=scenario.source,
            field="scheduler.preemption",
        )
    try:
        config = SchedulerConfig(
            max_model_len=resolved.max_model_len,
            max_num_seqs=sched.max_num_seqs,
            max_batched_tokens=sched.max_batched_tokens,
            chunked_prefill=sched.chunked_prefill,
            block_tokens=sched.block_tokens,
            preemption=sched.preemption,
            prefix_caching=scenario.prefix_caching,
            policy=sched.queue_policy(),
            admission=sched.admission,
            swap_space_blocks=(
                None
                if sched.swap_space_bytes is None
                else int(
                    sched.swap_space_bytes
                    // (resolved.memory.kv_bytes_per_token * sched.block_tokens)
                )
            ),
        )
    except KvsimError as err:
        raise KvsimError(err.message, source=scenario.source, field=err.field) from None
    store_policy = resolved.offload if isinstance(resolved.offload, PrefixStore) else None
    stores: list[TieredStore | None] = [None] * scenario.num_replicas
    tier_links: tuple[tuple[SharedLink, ...], ...] = ()
    if store_policy is not None:
        block_bytes = resolved.memory.kv_bytes_per_token * sched.block_tokens
        stores = list(build_stores(resolved.tiers, scenario.num_replicas, block_bytes))
        tier_links = build_links(resolved.tiers, scenario.num_replicas)
    inputs = build_scheduling_inputs(scenario, resolved, workload)
    schedulers = [
        ReplicaScheduler(config, resolved.memory.num_blocks, resolved.footprint, store, inputs)
        for store in stores
    ]
    roles: tuple[str, ...] = ()
    links: tuple[SharedLink, ...] = ()
    if split is not None:
        roles = ("prefill",) * split.prefill_replicas + ("decode",) * split.decode_replicas
        link = get_link(split.link)
        links = tuple(
            SharedLink(link.achieved_bytes_per_s, link.latency_s, resolution_s=1 / NS)
            for _ in range(split.prefill_replicas)
        )
    engine = Engine(
        workload,
        schedulers,
        executor,
        EngineConfig(
            router=scenario.router.spec(),
            block_tokens=sched.block_tokens,
            prefix_caching=scenario.prefix_caching != "none",
            step_mode=step_mode,
            roles=roles,
            links=links,
            kv_bytes_per_token=resolved.memory.kv_bytes_per_token,
            tier_links=tier_links,
            tier_prefetch=store_policy.prefetch if store_policy is not None else True,
        ),
        progress=progress,
    )
    records, steps = engine.run()
    requests_frame = records.to_frame()
    # The workload's priority, for per-class metrics.
    requests_frame.insert(4, "priority", workload.priority)
    steps_frame = steps.to_frame()
    slo = scenario.slo
    context = MetricsContext(
        replicas=scenario.num_replicas,
        num_gpus=scenario.num_gpus,
        usd_per_gpu_hour=resolved.accelerator.price_usd_per_hour,
        kv_bytes_per_block=resolved.memory.kv_bytes_per_token * sched.block_tokens,
        kv_blocks_per_replica=resolved.memory.num_blocks,
        ttft_slo_s=slo.ttft_p90_s,
        tpot_slo_s=slo.tpot_p90_s,
        e2e_slo_s=slo.e2e_p90_s,
        classes=slo.classes,
    )
    summary = summarize(requests_frame, steps_frame, context)
    if store_policy is not None:
        summary.update(_tier_summary(stores, sched.block_tokens))
    served = requests_frame[requests_frame["status"] == "finished"]
    summary.update(
        strategy_summary(
            resolved.footprint,
            served["prompt_tokens"].to_numpy(),
            served["output_tokens"].to_numpy(),
        )
    )
    return RunResult(requests_frame, steps_frame, summary, scenario, resolved.memory, context)


def _tier_summary(stores: list[TieredStore | None], block_tokens: int) -> dict[str, int]:
    """Token counts of the tiered prefix store over all replicas (a shared tier once):
    ``tier_loaded_tokens`` (prefix hits served by a lower tier, included in
    ``prefix_hit_rate``), and per tier ``tier_<id>_{loaded,written,evicted,held}_tokens``."""
    seen: dict[int, Any] = {}
    for store in stores:
        assert store is not None
        for tier in store.tiers:
            seen.setdefault(id(tier), tier)
    out: dict[str, int] = {"tier_loaded_tokens": 0}
    for tier in seen.values():
        counts = {
            "loaded": tier.stats.loaded_blocks,
            "written": tier.stats.written_blocks,
            "evicted": tier.stats.evicted_blocks,
            "held": len(tier),
        }
        for key, blocks in counts.items():
            name = f"tier_{tier.name}_{key}_tokens"
            out[name] = out.get(name, 0) + blocks * block_tokens
        out["tier_loaded_tokens"] += tier.stats.loaded_blocks * block_tokens
    return out
