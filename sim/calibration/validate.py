"""Validate a calibrated profile: per-step errors on held-out steps, and end-to-end replays.

**Per step.** The held-out half of the design (:mod:`sim.calibration.design`), never used by
the fit, is timed on the real model and priced by the cost model with the calibrated profile;
the error of a step is ``predicted / measured − 1`` and the figure of merit the mean absolute
percentage error (MAPE), reported for prefill and decode steps separately.

**End to end.** A held-out workload (different arrival processes, rates, prompt and output
lengths and scheduler limits from anything fitted) runs through the same engine twice: once on
the real model (``sim.real.executor.TorchExecutor``) and once on the cost model with the
calibrated profile. The engine, scheduler and block accounting are identical (DESIGN.md), so
differences in TTFT, TPOT, end-to-end latency and throughput come from step durations alone —
the cost model's error, compounded through queueing. During the real run every step is also
priced by the cost model (:class:`RecordingExecutor`), which gives per-step errors on the
steps a real scheduler builds, mixed prefill+decode steps included. The torch model runs each
step packed, as the cost model prices it (:mod:`sim.real.model`: one GEMM row per real token,
each sequence attending its own context), so both see the same work.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hardware.catalog import HARDWARE_PATH_ENV
from hardware.errors import KvsimError
from hardware.specs import Accelerator
from sim.calibration.design import DECODE, MIXED, PREFILL
from sim.calibration.fit import BF16, Precision, predict_s
from sim.calibration.measure import StepTiming, clock_function
from sim.cost import plan_memory
from sim.executor import CostModelExecutor, StepResult
from sim.scenario import Scenario, WorkloadConfig
from workloads.model import ModelSpec
from workloads.workload import Workload

if TYPE_CHECKING:
    from sim.run import RunResult
    from sim.scheduler import StepPlan

#: Summary metrics compared end to end (:func:`sim.metrics.summarize` keys).
E2E_METRICS = (
    "ttft_p50_s",
    "ttft_p90_s",
    "tpot_p50_s",
    "tpot_p90_s",
    "e2e_p50_s",
    "e2e_p90_s",
    "throughput_tok_per_s",
    "throughput_req_per_s",
)


# ---- per step --------------------------------------------------------------------------------
def step_errors(
    timings: Sequence[StepTiming],
    model: ModelSpec,
    accelerator: Accelerator,
    precision: Precision = BF16,
) -> pd.DataFrame:
    """One row per timed step: ``split``, ``kind``, ``label``, ``measured_ms`` (median),
    ``p10_ms``, ``p90_ms``, ``predicted_ms`` and ``error`` (predicted/measured − 1)."""
    points = [t.point for t in timings]
    predicted = predict_s(model, accelerator, [p.batch_shape() for p in points], precision)
    frame = pd.DataFrame(
        {
            "split": [p.split for p in points],
            "kind": [p.kind for p in points],
            "label": [p.label for p in points],
            "measured_ms": [t.median_s * 1e3 for t in timings],
            "p10_ms": [t.p10_s * 1e3 for t in timings],
            "p90_ms": [t.p90_s * 1e3 for t in timings],
            "predicted_ms": predicted * 1e3,
        }
    )
    frame["error"] = frame["predicted_ms"] / frame["measured_ms"] - 1.0
    return frame


# ---- end to end ------------------------------------------------------------------------------
class RecordingExecutor:
    """Runs every step on ``inner`` (the real executor) and records its measured duration
    beside the cost model's price of the same step (``reference``, which also charges swap
    traffic as the simulation would).

    With ``clock="thread"`` the step's duration handed to the engine is the CPU time of the
    calling thread spent in ``inner.step`` instead of the inner executor's wall time
    (:func:`sim.calibration.measure.clock_function`: one torch thread on CPU, no I/O waits).
    """

    supports_stretch = False

    def __init__(self, inner: Any, reference: CostModelExecutor, clock: str = "wall") -> None:
        self.inner = inner
        self.reference = reference
        self.clock = clock
        self._thread = clock_function(clock, "cpu") if clock == "thread" else None
        self._rows: list[tuple[str, int, int, int, float, float, float]] = []

    def step(self, plan: StepPlan) -> StepResult:
        start = self._thread() if self._thread else 0.0
        result = self.inner.step(plan)
        wall_s = result.duration_s
        if self._thread is not None:
            result = StepResult(duration_s=self._thread() - start)
        predicted = self.reference.step(plan).duration_s
        prefill, decode = int(plan.prefill_tokens.sum()), len(plan.decode)
        kind = MIXED if prefill and decode else (PREFILL if prefill else DECODE)
        self._rows.append(
            (kind, len(plan.prefill), prefill, decode, result.duration_s, wall_s, predicted)
        )
        return result

    def decode_stretch(self, plan: StepPlan, steps: int) -> np.ndarray:
        raise KvsimError("real steps run one at a time", field="executor")

    def frame(self) -> pd.DataFrame:
        """One row per recorded step: ``kind``, ``num_prefill``, ``prefill_tokens``,
        ``num_decode``, ``measured_ms`` (the clock's), ``wall_ms``, ``predicted_ms`` and
        ``error``."""
        frame = pd.DataFrame(
            self._rows,
            columns=[
                "kind",
                "num_prefill",
                "prefill_tokens",
                "num_decode",
                "measured_ms",
                "wall_ms",
                "predicted_ms",
            ],
        )
        frame[["measured_ms", "wall_ms", "predicted_ms"]] *= 1e3
        frame["error"] = frame["predicted_ms"] / frame["measured_ms"] - 1.0
        return frame


@dataclass(frozen=True)
class Replay:
    """One held-out scenario run on the real model and on the cost model, and the real run's
    steps with their cost-model prices."""

    name: str
    real: RunResult
    simulated: RunResult
    steps: pd.DataFrame
    wall_s: float

    def metric_errors(self) -> pd.DataFrame:
        """``metric``, ``real``, ``simulated`` and ``error`` (simulated/real − 1) for each of
        :data:`E2E_METRICS`."""

        def value(result: RunResult, name: str) -> float:
            item = result.summary.get(name)
            return math.nan if item is None else float(item)

        rows = []
        for name in E2E_METRICS:
            real, sim = value(self.real, name), value(self.simulated, name)
            ok = real and math.isfinite(real)
            rows.append(
                {
                    "metric": name,
                    "real": real,
                    "simulated": sim,
                    "error": sim / real - 1.0 if ok else math.nan,
                }
            )
        return pd.DataFrame(rows)


def pool_fraction(
    model: ModelSpec, accelerator: Accelerator, scenario_data: dict, pool_tokens: int
) -> float:
    """The ``gpu_memory_fraction`` that leaves a KV pool of ``pool_tokens`` tokens on
    ``accelerator`` after weights and activations (:func:`sim.cost.plan_memory`), so a real
    run allocates a small, known cache whatever the machine's memory."""
    sched = scenario_data.get("scheduler", {})
    kwargs = {
        "weight_dtype": scenario_data["model"].get("weight_dtype", "bf16"),
        "max_batched_tokens": sched.get("max_batched_tokens", 8192),
        "block_tokens": sched.get("block_tokens", 16),
        "max_num_seqs": sched.get("max_num_seqs", 256),
    }
    whole = plan_memory(model, accelerator, gpu_memory_fraction=1.0, **kwargs)
    other = accelerator.memory_bytes - whole.kv_pool_bytes_per_gpu
    pool = (pool_tokens + 0.5 * kwargs["block_tokens"]) * whole.kv_bytes_per_token_per_gpu
    fraction = (other + pool) / accelerator.memory_bytes
    if not 0 < fraction <= 1:
        raise KvsimError(
            f"{accelerator.id} cannot hold {model.id} and {pool_tokens} KV tokens",
            field="hardware.gpu_memory_fraction",
        )
    return fraction


def held_out_scenarios(
    model: ModelSpec, accelerator: Accelerator, seed: int = 1
) -> tuple[Scenario, ...]:
    """Three workloads unlike anything fitted (the design times isolated steps; these are
    queues): (A) steady Poisson arrivals of short requests with small prefill chunks, (B)
    bursty gamma arrivals (CV 3) of longer prompts with a KV pool small enough to preempt, and
    (C) an offline batch — 8 equal requests at t = 0, prefilled in one step and decoded
    together, so no queueing amplifies the step errors. All run on
    ``accelerator`` (the calibrated profile) with a pool sized by :func:`pool_fraction`."""
    base = {
        "model": {"name": model.id, "weight_dtype": "bf16", "compute_dtype": "bf16"},
        "hardware": {"accelerator": accelerator.id},
        "seed": seed,
    }
    steady = {
        **base,
        "name": "held-out A: steady Poisson 1.5 req/s, short prompts, 128-token chunks",
        "workload": {
            "synthetic": {
                "arrival": "poisson",
                "rate_per_s": 1.5,
                "requests": 24,
                "prompt_tokens": {"dist": "uniform", "low": 32, "high": 256},
                "output_tokens": {"dist": "uniform", "low": 8, "high": 48},
            }
        },
        "scheduler": {
            "max_num_seqs": 8,
            "max_batched_tokens": 128,
            "block_tokens": 16,
            "max_model_len": 1024,
        },
    }
    bursty = {
        **base,
        "name": "held-out B: bursty gamma (CV 3) 3 req/s, long prompts, small KV pool",
        "workload": {
            "synthetic": {
                "arrival": "gamma",
                "rate_per_s": 3.0,
                "cv": 3.0,
                "requests": 20,
                "prompt_tokens": {"dist": "lognormal", "median": 320, "sigma": 0.5},
                "output_tokens": {"dist": "uniform", "low": 12, "high": 40},
                "max_context_tokens": 1024,
            }
        },
        "scheduler": {
            "max_num_seqs": 12,
            "max_batched_tokens": 512,
            "block_tokens": 16,
            "max_model_len": 1024,
        },
    }
    batch = {
        **base,
        "name": "held-out C: offline batch, 8 requests of 128 + 48 tokens at t = 0",
        "workload": {"synthetic": {"arrival": "poisson", "rate_per_s": 1.0, "requests": 1}},
        "scheduler": {
            "max_num_seqs": 8,
            "max_batched_tokens": 1024,
            "block_tokens": 16,
            "max_model_len": 1024,
        },
    }
    offline = Workload(
        arrival_s=np.zeros(8), prompt_tokens=np.full(8, 128), output_tokens=np.full(8, 48)
    )
    out = []
    for data, pool in ((steady, 4096), (bursty, 2048), (batch, 4096)):
        data["hardware"] = {
            **data["hardware"],
            "gpu_memory_fraction": pool_fraction(model, accelerator, data, pool),
        }
        out.append(Scenario.from_dict(data, source=f"kvsim validate: {data['name']}"))
    out[2] = replace(out[2], workload=WorkloadConfig(inline=offline))
    return tuple(out)


@contextlib.contextmanager
def profile_on_path(profile: str | Path) -> Iterator[None]:
    """Make the accelerator in ``profile`` resolvable by id (``KVSIM_HARDWARE_PATH`` points at
    a temporary folder holding a copy) for the duration of the block."""
    old = os.environ.get(HARDWARE_PATH_ENV)
    with tempfile.TemporaryDirectory(prefix="kvsim-profile-") as folder:
        shutil.copyfile(profile, Path(folder) / Path(profile).name)
        os.environ[HARDWARE_PATH_ENV] = os.pathsep.join(p for p in (folder, old) if p)
        try:
            yield
        finally:
            if old is None:
                os.environ.pop(HARDWARE_PATH_ENV, None)
            else:
                os.environ[HARDWARE_PATH_ENV] = old


def replay(
    scenario: Scenario,
    accelerator: Accelerator,
    *,
    device: str = "cpu",
    threads: int | None = None,
    checkpoint: str | Path | None = None,
    text: str | Path | None = None,
    workload: Workload | None = None,
    clock: str = "wall",
    real_executor: Any = None,
) -> Replay:
    """Run ``scenario`` (or ``workload`` under its settings) on the real model and on the cost
    model with ``accelerator`` (the calibrated profile); both use the scenario's own memory
    plan (module doc). ``real_executor`` replaces the torch executor built from the other
    arguments (any :class:`~sim.executor.Executor`)."""
    from sim.run import build_executor, resolve, run_scenario

    resolved = resolve(scenario)
    priced = replace(resolved, accelerator=accelerator)
    reference = build_executor(scenario, priced)
    if not isinstance(reference, CostModelExecutor):
        raise KvsimError("expected the cost-model executor", field="executor")
    if real_executor is None:
        from sim.real.executor import build_torch_executor

        real_executor = build_torch_executor(
            scenario, resolved, device=device, checkpoint=checkpoint, text=text, threads=threads
        )
    recorder = RecordingExecutor(real_executor, reference, clock)
    try:
        real = run_scenario(scenario, executor=recorder, workload=workload)
    finally:
        close = getattr(real_executor, "close", None)
        if close is not None:
            close()
    simulated = run_scenario(scenario, executor=build_executor(scenario, priced), workload=workload)
    steps = recorder.frame()
    wall_s = float(steps["wall_ms"].sum() / 1e3)
    return Replay(scenario.name, real, simulated, steps, wall_s)
