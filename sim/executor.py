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


@runtime_checkable
class Executor(Protocol):
    """Runs engine steps. ``supports_stretch`` says whether :meth:`decode_stretch` may be
    used to advance many identical-batch decode steps in one event."""

    supports_stretch: bool

    def step(self, plan: StepPlan) -> StepResult:
        """Run (or price) one step of ``plan``."""
        ...

    def decode_stretch(self, contexts: np.ndarray, steps: int) -> np.ndarray:
        """Durations in seconds of ``steps`` consecutive pure-decode steps of sequences whose
        first step attends ``contexts`` tokens and each later step one more."""
        ...


class CostModelExecutor:
    """Step durations from the analytical cost model. Swap traffic of a step (KV blocks
    moved between HBM and the host tier by swap preemption) is priced as a non-overlapped
    transfer of ``(swap_out_tokens + swap_in_tokens) × kv_bytes_per_token`` bytes."""

    supports_stretch = True

    def __init__(self, cost_model: CostModel, kv_bytes_per_token: float = 0.0) -> None:
        if kv_bytes_per_token < 0:
            raise KvsimError(f"must be >= 0, got {kv_bytes_per_token}", field="kv_bytes_per_token")
        self.cost_model = cost_model
        self.kv_bytes_per_token = kv_bytes_per_token

    def step(self, plan: StepPlan) -> StepResult:
        batch = plan.batch_shape()
        swapped = plan.swap_out_tokens + plan.swap_in_tokens
        if swapped and self.kv_bytes_per_token:
            from dataclasses import replace

            batch = replace(
                batch, transfer_bytes=batch.transfer_bytes + swapped * self.kv_bytes_per_token
            )
        cost = self.cost_model.step(batch)
        return StepResult(
            duration_s=cost.duration_s,
            compute_s=cost.compute_s,
            memory_s=cost.memory_s,
            communication_s=cost.communication_s,
            transfer_s=cost.transfer_s,
            overhead_s=cost.overhead_s,
        )

    def decode_stretch(self, contexts: np.ndarray, steps: int) -> np.ndarray:
        return self.cost_model.decode_stretch(contexts, steps)


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

    def decode_stretch(self, contexts: np.ndarray, steps: int) -> np.ndarray:
        return np.full(steps, self.step_s)
