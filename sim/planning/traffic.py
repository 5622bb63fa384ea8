"""The planner's traffic: the user's workload at any request rate.

The workload (a trace, a synthetic spec, or inline requests) is read once. Rate probes of
one replica use ``replicates`` windows of ``probe_requests`` requests each: for a synthetic
spec, draws with seeds ``seed, seed + 1, ...``; for a trace, evenly spaced contiguous
slices (one window when the trace is no longer than a window). A window is played at rate
``r`` by compressing its time axis (:func:`workloads.fit.scale`, ``compress``): every gap
is divided by ``r / r₀``, where ``r₀ = (n − 1) / duration`` is the window's own rate, so
arrival shapes, lengths and prefix sharing are kept and every probe of a window sees the
same requests (common random numbers: pass/fail answers differ only through the rate).
Compressing a Poisson process gives a Poisson process of the new rate. The fleet is
verified on the whole workload compressed to the target rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hardware.errors import KvsimError
from sim.run import load_workload
from sim.scenario import Scenario
from workloads.fit import scale
from workloads.model_catalog import get_model
from workloads.workload import Workload


def native_rate_per_s(workload: Workload) -> float:
    """``(n − 1) / duration``: gaps over the span they cover."""
    if len(workload) < 2 or not workload.duration_s > 0:
        raise KvsimError(
            f"needs at least 2 requests over a positive duration to have a rate, got "
            f"{len(workload)} over {workload.duration_s:g} s",
            source=workload.name,
        )
    return (len(workload) - 1) / workload.duration_s


def at_rate(workload: Workload, rate_per_s: float) -> Workload:
    """``workload`` with its time axis compressed (or stretched) to ``rate_per_s``."""
    return scale(workload, rate_per_s / native_rate_per_s(workload), "compress")


def all_at_once(workload: Workload) -> Workload:
    """Every request arriving at time 0: a replica's saturated throughput."""
    return workload.with_arrivals(np.zeros(len(workload)), name=f"{workload.name} burst")


@dataclass(frozen=True, eq=False)
class Traffic:
    """Probe windows (each starting at 0, at its own rate) and the whole workload."""

    windows: tuple[Workload, ...]
    full: Workload

    @property
    def mean_output_tokens(self) -> float:
        return float(self.full.output_tokens.mean())

    @property
    def mean_context_tokens(self) -> float:
        """Mean prompt + output tokens per request: the KV one request holds at its end."""
        return float((self.full.prompt_tokens + self.full.output_tokens).mean())


def load_traffic(base: Scenario, replicates: int, probe_requests: int | None) -> Traffic:
    """Read ``base``'s workload and cut the probe windows (see the module docstring)."""
    context = base.scheduler.max_model_len or get_model(base.model.ref).max_context_tokens
    full = load_workload(base, context)
    native_rate_per_s(full)
    size = len(full) if probe_requests is None else min(probe_requests, len(full))
    if base.workload.synthetic is not None:
        windows = tuple(
            _rebase(
                load_workload(
                    base.with_overrides(
                        [f"seed={base.seed + i}", f"workload.synthetic.requests={size}"]
                    ),
                    context,
                )
            )
            for i in range(replicates)
        )
    else:
        count = 1 if size == len(full) else replicates
        starts = np.linspace(0, len(full) - size, count).round().astype(np.int64)
        windows = tuple(_rebase(full.take(np.arange(s, s + size))) for s in starts)
    for window in windows:
        native_rate_per_s(window)
    return Traffic(windows, full)


def _rebase(workload: Workload) -> Workload:
    start = workload.arrival_s[0] if len(workload) else 0.0
    return workload.with_arrivals(workload.arrival_s - start)
