"""Executors: what runs one engine step and says how long it took.

The engine (:mod:`sim.engine`) owns time, queues and KV accounting; each step it hands the
scheduler's :class:`~sim.scheduler.StepPlan` to an executor, which returns a
:class:`StepResult`. :class:`CostModelExecutor` prices the step with the analytical roofline
model (:class:`~sim.cost.CostModel`); :class:`FixedStepExecutor` gives every step the same
duration, which turns a replica into a deterministic server for queueing-theory checks
(M/D/1, Little's law). The real executor, which runs the step on a GPU and measures it, is
``sim.real.TorchExecutor``.

An executor with ``supports_stretch = True`` also prices ``steps`` consecutive pure-decode
steps of an unchanged batch at once (:meth:`Executor.decode_stretch`); the engine then
advances that stretch in one event. Its durations must equal what :meth:`Executor.step`
returns for each of those steps, to the engine's 1 ns time resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from hardware.errors import KvsimError

if TYPE_CHECKING:
    from sim.cost import CostModel
    from sim.cost.batch import BatchShape
    from sim.cost.roofline import StepCost
    from sim.policies.footprint import KvFootprint
    from sim.policies.offload import OffloadedKv
    from sim.scheduler import StepPlan


@dataclass(frozen=True)
class StepResult:
    """How long one step took and where the time went (seconds; the parts sum to
    ``duration_s`` for the cost model, and are 0 where an executor cannot tell)."""

    duration_s: float
    compute_s: float = 0.0
    memory_s: float = 0.0
    communication_s: float = 0.0
    transfer_s: float = 0.0
    overhead_s: float = 0.0

    @classmethod
    def from_cost(cls, cost: StepCost) -> StepResult:
        """The cost model's step breakdown as a result."""
        return cls(
            duration_s=cost.duration_s,
            compute_s=cost.compute_s,
            memory_s=cost.memory_s,
            communication_s=cost.communication_s,
            transfer_s=cost.transfer_s,
            overhead_s=cost.overhead_s,
        )


@runtime_checkable
class Executor(Protocol):
    """Runs engine steps. ``supports_stretch`` says whether :meth:`decode_stretch` may be
    used to advance many identical-batch decode steps in one event."""

    supports_stretch: bool

    def step(self, plan: StepPlan) -> StepResult:
        """Run (or price) one step of ``plan``."""
        ...

    def decode_stretch(self, plan: StepPlan, steps: int) -> np.ndarray:
        """Durations in seconds of ``steps`` consecutive pure-decode steps, the first being
        ``plan`` (a pure-decode plan) and each later one attending one more token per
        sequence."""
        ...


class CostModelExecutor:
    """Step durations from the analytical cost model. Swap traffic of a step (KV blocks
    moved between HBM and the host tier by swap preemption) is priced as a non-overlapped
    transfer of ``(swap_out_tokens + swap_in_tokens) × kv_bytes_per_token`` bytes.

    With a ``footprint`` (a KV strategy that reads fewer tokens than it holds, or spends
    work choosing them), each decode sequence reads
    :meth:`~sim.policies.footprint.KvFootprint.decode_read_tokens` tokens and the step adds
    the policies' FLOPs: per decode sequence per step, and once per sequence in the step
    that completes its prompt.

    With ``offload`` (a static KV placement, :mod:`sim.policies.offload`: FlexGen, selective
    fetch), the offloaded share of the KV each step's attention touches is fetched or
    computed off the GPU, overlapped with the layers (``BatchShape.overlapped_transfer_s``);
    decode reads count the tokens the selection policy reads, so with selective fetch only
    those cross the link."""

    supports_stretch = True

    def __init__(
        self,
        cost_model: CostModel,
        kv_bytes_per_token: float = 0.0,
        footprint: KvFootprint | None = None,
        offload: OffloadedKv | None = None,
    ) -> None:
        if kv_bytes_per_token < 0:
            raise KvsimError(f"must be >= 0, got {kv_bytes_per_token}", field="kv_bytes_per_token")
        self.cost_model = cost_model
        self.kv_bytes_per_token = kv_bytes_per_token
        active = footprint is not None and (
            not footprint.reads_context or footprint.has_extra_flops
        )
        self.footprint = footprint if active else None
        self.offload = offload

    def _decode_prompts(self, plan: StepPlan) -> np.ndarray:
        return np.fromiter(
            (seq.prompt_tokens for seq in plan.decode), dtype=np.int64, count=len(plan.decode)
        )

    def step(self, plan: StepPlan) -> StepResult:
        batch = plan.batch_shape()
        changes: dict[str, object] = {}
        swapped = plan.swap_out_tokens + plan.swap_in_tokens
        if swapped and self.kv_bytes_per_token:
            changes["transfer_bytes"] = batch.transfer_bytes + swapped * self.kv_bytes_per_token
        footprint = self.footprint
        if footprint is not None:
            prompts = self._decode_prompts(plan)
            if not footprint.reads_context:
                changes["decode_read_tokens"] = footprint.decode_read_tokens(
                    plan.decode_context, prompts
                )
            if footprint.has_extra_flops:
                completing = [
                    seq.prompt_tokens
                    for seq, emits in zip(plan.prefill, plan.prefill_emits.tolist(), strict=True)
                    if emits
                ]
                changes["policy_flops"] = float(
                    footprint.decode_extra_flops(plan.decode_context, prompts).sum()
                    + footprint.prefill_extra_flops(completing).sum()
                )
        if self.offload is not None:
            self._offload_step(batch, changes)
        if changes:
            from dataclasses import replace

            batch = replace(batch, **changes)
        return StepResult.from_cost(self.cost_model.step(batch))

    def _offload_step(self, batch: BatchShape, changes: dict[str, object]) -> None:
        """Price the offloaded KV of one step: decode reads (the selection's), and prefill
        chunks' cached-context reads and new-token writes; under CPU attention the GPU's
        kernel reads only its own share."""
        offload = self.offload
        assert offload is not None
        read = changes.get("decode_read_tokens", batch.decode_context)
        assert isinstance(read, np.ndarray)
        touched = float(read.sum() + batch.prefill_tokens.sum() + batch.prefill_context.sum())
        changes["overlapped_transfer_s"] = offload.step_s(touched)
        share = offload.placement.gpu_read_fraction()
        if share < 1 and read.size:
            changes["decode_read_tokens"] = read * share

    def decode_stretch(self, plan: StepPlan, steps: int) -> np.ndarray:
        contexts = plan.decode_context
        footprint = self.footprint
        if self.offload is not None and contexts.size:
            return self._offload_stretch(plan, steps)
        if footprint is None or not contexts.size:
            return self.cost_model.decode_stretch(contexts, steps)
        grid = contexts[None, :] + np.arange(steps)[:, None]
        prompts = np.broadcast_to(self._decode_prompts(plan), grid.shape).reshape(-1)
        read = flops = None
        if not footprint.reads_context:
            read = footprint.decode_read_tokens(grid.reshape(-1), prompts).reshape(grid.shape)
        if footprint.has_extra_flops:
            flops = footprint.decode_extra_flops(grid.reshape(-1), prompts)
            flops = flops.reshape(grid.shape).sum(axis=1)
        return self.cost_model.decode_stretch(contexts, steps, read_tokens=read, policy_flops=flops)

    def _offload_stretch(self, plan: StepPlan, steps: int) -> np.ndarray:
        """:meth:`decode_stretch` under a KV placement: the same per-step terms as
        :meth:`step`, for every step of the stretch at once."""
        offload = self.offload
        assert offload is not None
        contexts = plan.decode_context
        grid = contexts[None, :] + np.arange(steps)[:, None]
        footprint = self.footprint
        read = grid.astype(np.float64)
        flops = None
        selected = footprint is not None and not footprint.reads_context
        if footprint is not None:
            prompts = np.broadcast_to(self._decode_prompts(plan), grid.shape).reshape(-1)
            if selected:
                read = footprint.decode_read_tokens(grid.reshape(-1), prompts).reshape(grid.shape)
            if footprint.has_extra_flops:
                flops = footprint.decode_extra_flops(grid.reshape(-1), prompts)
                flops = flops.reshape(grid.shape).sum(axis=1)
        overlapped = offload.step_s(read.sum(axis=1))
        share = offload.placement.gpu_read_fraction()
        return self.cost_model.decode_stretch(
            contexts,
            steps,
            read_tokens=read * share if share < 1 or selected else None,
            policy_flops=flops,
            overlapped_transfer_s=overlapped,
        )


class FixedStepExecutor:
    """Every step, whatever its batch, takes ``step_s`` seconds.

    Used for queueing-theory checks: with ``max_num_seqs = 1`` and one-token outputs each
    request is served by exactly one step, so a replica is an M/D/1 server when arrivals are
    Poisson. Not a performance model of any hardware.
    """

    supports_stretch = True

    def __init__(self, step_s: float) -> None:
        if not (step_s > 0 and np.isfinite(step_s)):
            raise KvsimError(f"must be a positive number of seconds, got {step_s}", field="step_s")
        self.step_s = float(step_s)

    def step(self, plan: StepPlan) -> StepResult:
        return StepResult(duration_s=self.step_s, compute_s=self.step_s)

    def decode_stretch(self, plan: StepPlan, steps: int) -> np.ndarray:
        return np.full(steps, self.step_s)
