"""Metrics of a run: pure functions over the request and step DataFrames of
:mod:`sim.records`. Definitions and formulas are in ``docs/engine.md`` §Metrics.

* TTFT = first_token − arrival; TPOT = (finish − first_token) / (output − 1), defined for
  outputs of at least 2 tokens; E2E = finish − arrival; queue wait = first scheduled −
  arrival. Percentiles use numpy's default linear interpolation.
* ITL (inter-token latency) from the step records: each decode step gives every sequence in
  it one token after the step's duration, so ITL samples are step durations weighted by the
  step's decode count (a stretch row contributes its mean step duration, weighted by decode
  count × steps).
* Throughput over the makespan (first arrival to last finish): completed requests/s, output
  tokens/s, prompt+output tokens/s. Goodput (DistServe, Zhong et al. OSDI 2024): completed
  requests whose TTFT, TPOT and E2E each meet the SLO, per second.
* Utilisation: fraction of the makespan replicas spent running steps, averaged over replicas.
* Cost: accelerator price × GPUs gives USD/hour; USD per million output tokens = USD/hour ×
  makespan (h) / output tokens × 10⁶.
* Priority classes (:class:`SloClass`, needs a ``priority`` column): per class, request
  counts, TTFT/TPOT/E2E p90 and SLO attainment against the class's own targets
  (:func:`class_summary`, ``docs/scheduling.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hardware.errors import KvsimError

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class SloClass:
    """A priority class with its own SLO: requests whose workload ``priority`` equals
    ``priority``, with per-request targets in seconds (``None``: not bounded)."""

    name: str
    priority: int
    ttft_p90_s: float | None = None
    tpot_p90_s: float | None = None
    e2e_p90_s: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise KvsimError(f"must be an integer, got {self.priority!r}", field="priority")
        for name in ("ttft_p90_s", "tpot_p90_s", "e2e_p90_s"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise KvsimError(f"must be > 0, got {value}", field=name)


@dataclass(frozen=True)
class MetricsContext:
    """What the records alone do not say: cluster size, prices, KV block size, SLOs
    (run-wide, and per priority class)."""

    replicas: int = 1
    num_gpus: int = 1
    usd_per_gpu_hour: float | None = None
    kv_bytes_per_block: float = 0.0
    kv_blocks_per_replica: int = 0
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    e2e_slo_s: float | None = None
    classes: tuple[SloClass, ...] = ()


def completed(requests: pd.DataFrame) -> pd.DataFrame:
    """The rows of requests that finished."""
    return requests[requests["status"] == "finished"]


def percentiles(values: pd.Series | np.ndarray, qs: tuple[int, ...] = PERCENTILES) -> dict:
    """``{q: value}`` over the finite values (NaN when there are none)."""
    array = np.asarray(values, dtype=float)
    array = array[np.isfinite(array)]
    if not array.size:
        return {q: math.nan for q in qs}
    return dict(zip(qs, np.percentile(array, qs).tolist(), strict=True))


def weighted_percentiles(
    values: np.ndarray, weights: np.ndarray, qs: tuple[int, ...] = PERCENTILES
) -> dict:
    """Percentiles of ``values`` repeated ``weights`` times (inverted CDF: the smallest value
    whose cumulative weight reaches q% of the total)."""
    values = np.asarray(values, dtype=float)
    weights = np.asarray(weights, dtype=float)
    keep = (weights > 0) & np.isfinite(values)
    values, weights = values[keep], weights[keep]
    if not values.size:
        return {q: math.nan for q in qs}
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    out = {}
    for q in qs:
        position = int(np.searchsorted(cumulative, q / 100 * cumulative[-1], side="left"))
        out[q] = float(values[order][min(position, values.size - 1)])
    return out


def makespan_s(requests: pd.DataFrame) -> float:
    """First arrival to last finish (0 without finished requests)."""
    done = completed(requests)
    if done.empty:
        return 0.0
    return float(done["finish_s"].max() - requests["arrival_s"].min())


def itl_samples(steps: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per-row step durations and their weights (decode tokens produced)."""
    rows = steps[steps["num_decode"] > 0]
    per_step = rows["duration_s"].to_numpy() / rows["steps"].to_numpy()
    return per_step, rows["decode_tokens"].to_numpy()


def slo_met_mask(requests: pd.DataFrame, ctx: MetricsContext) -> np.ndarray:
    """Per finished request: whether TTFT, TPOT (when defined) and E2E meet every SLO."""
    done = completed(requests)
    ok = np.ones(len(done), dtype=bool)
    for column, limit in (
        ("ttft_s", ctx.ttft_slo_s),
        ("tpot_s", ctx.tpot_slo_s),
        ("e2e_s", ctx.e2e_slo_s),
    ):
        if limit is not None:
            values = done[column].to_numpy()
            ok &= ~(values > limit)  # NaN (one-token output has no TPOT) meets it
    return ok


def goodput_req_per_s(requests: pd.DataFrame, ctx: MetricsContext) -> float:
    span = makespan_s(requests)
    return float(slo_met_mask(requests, ctx).sum() / span) if span > 0 else 0.0


def kv_over_time(steps: pd.DataFrame, kv_bytes_per_block: float = 0.0) -> pd.DataFrame:
    """KV blocks in use summed over replicas after every step row (``time_s`` is the row's
    end): each replica's last reported count holds until its next row."""
    if steps.empty:
        return pd.DataFrame({"time_s": [], "kv_blocks": [], "kv_bytes": []})
    frame = steps[["replica", "end_s", "kv_blocks_used"]].sort_values(
        ["end_s", "replica"], kind="stable"
    )
    delta = frame.groupby("replica", sort=False)["kv_blocks_used"].diff()
    delta = delta.fillna(frame["kv_blocks_used"])
    per_time = delta.groupby(frame["end_s"].to_numpy(), sort=True).sum()
    blocks = per_time.cumsum()
    return pd.DataFrame(
        {
            "time_s": per_time.index.to_numpy(dtype=float),
            "kv_blocks": blocks.to_numpy(dtype=np.int64),
            "kv_bytes": blocks.to_numpy(dtype=float) * kv_bytes_per_block,
        }
    )


def batch_over_time(steps: pd.DataFrame) -> pd.DataFrame:
    """Per step row: start time, replica, sequences in the batch and tokens per step."""
    tokens = steps["prefill_tokens"] + steps["decode_tokens"]
    return pd.DataFrame(
        {
            "time_s": steps["start_s"],
            "replica": steps["replica"],
            "batch_size": steps["num_prefill"] + steps["num_decode"],
            "tokens_per_step": tokens / steps["steps"],
        }
    )


def utilisation(steps: pd.DataFrame, span_s: float, replicas: int) -> float:
    """Mean over replicas of busy time / makespan."""
    if span_s <= 0 or replicas <= 0:
        return 0.0
    return float(steps["duration_s"].sum() / (span_s * replicas))


def littles_law(requests: pd.DataFrame) -> dict[str, float]:
    """Little's law terms over the makespan of a run where every request left: ``L`` by
    integrating the number in system over time (a step function of sorted arrivals and
    departures), ``lambda`` the arrival rate, ``W`` the mean time in system."""
    done = completed(requests)
    arrivals = done["arrival_s"].to_numpy()
    departures = done["finish_s"].to_numpy()
    if not arrivals.size:
        return {"L": 0.0, "lambda": 0.0, "W": 0.0}
    times = np.concatenate([arrivals, departures])
    change = np.concatenate([np.ones(arrivals.size), -np.ones(departures.size)])
    order = np.argsort(times, kind="stable")
    times, change = times[order], change[order]
    in_system = np.cumsum(change)[:-1]
    area = float(np.sum(in_system * np.diff(times)))
    span = float(times[-1] - times[0])
    return {
        "L": area / span if span > 0 else 0.0,
        "lambda": arrivals.size / span if span > 0 else 0.0,
        "W": float(np.mean(departures - arrivals)),
    }


def cost(span_s: float, output_tokens: int, ctx: MetricsContext) -> dict[str, float | None]:
    if ctx.usd_per_gpu_hour is None:
        return {"usd_per_hour": None, "usd_per_m_output_tokens": None}
    per_hour = ctx.usd_per_gpu_hour * ctx.num_gpus
    per_m = per_hour * span_s / 3600 / output_tokens * 1e6 if output_tokens else None
    return {"usd_per_hour": per_hour, "usd_per_m_output_tokens": per_m}


def class_summary(requests: pd.DataFrame, slo: SloClass) -> dict:
    """``class_<name>_*`` metrics of the requests with ``slo.priority``: counts
    (``requests``, ``completed``, ``rejected``), TTFT/TPOT/E2E p90 over the finished ones,
    ``slo_attainment`` (finished requests meeting each of the class's targets over all the
    class's requests, rejected ones included: DistServe's attainment, per class) and
    ``slo_met`` (each p90 within its target; ``None`` without targets)."""
    rows = requests[requests["priority"] == slo.priority]
    done = completed(rows)
    prefix = f"class_{slo.name}_"
    out: dict[str, float | int | bool | None] = {
        f"{prefix}requests": len(rows),
        f"{prefix}completed": len(done),
        f"{prefix}rejected": int((rows["status"] == "rejected").sum()),
    }
    p90 = {name: percentiles(done[f"{name}_s"], (90,))[90] for name in ("ttft", "tpot", "e2e")}
    for name, value in p90.items():
        out[f"{prefix}{name}_p90_s"] = value
    targets = MetricsContext(
        ttft_slo_s=slo.ttft_p90_s, tpot_slo_s=slo.tpot_p90_s, e2e_slo_s=slo.e2e_p90_s
    )
    met = slo_met_mask(rows, targets)
    out[f"{prefix}slo_attainment"] = float(met.sum() / len(rows)) if len(rows) else math.nan
    limits = {"ttft": slo.ttft_p90_s, "tpot": slo.tpot_p90_s, "e2e": slo.e2e_p90_s}
    if any(v is not None for v in limits.values()):
        out[f"{prefix}slo_met"] = all(
            limit is None or not p90[name] > limit for name, limit in limits.items()
        )
    else:
        out[f"{prefix}slo_met"] = None
    return out


def summarize(requests: pd.DataFrame, steps: pd.DataFrame, ctx: MetricsContext) -> dict:
    """The run's headline numbers (JSON-ready: floats, ints, ``None`` for undefined)."""
    done = completed(requests)
    span = makespan_s(requests)
    output = int(done["output_tokens"].sum())
    prompt = int(done["prompt_tokens"].sum())
    out: dict[str, float | int | bool | None] = {
        "requests_total": len(requests),
        "requests_completed": len(done),
        "requests_rejected": int((requests["status"] == "rejected").sum()),
        "makespan_s": span,
    }
    for name in ("ttft", "tpot", "e2e", "queue_wait"):
        values = percentiles(done[f"{name}_s"])
        for q, value in values.items():
            out[f"{name}_p{q}_s"] = value
        finite = done[f"{name}_s"].to_numpy(dtype=float)
        finite = finite[np.isfinite(finite)]
        out[f"{name}_mean_s"] = float(finite.mean()) if finite.size else math.nan
    for q, value in weighted_percentiles(*itl_samples(steps)).items():
        out[f"itl_p{q}_s"] = value
    out["throughput_req_per_s"] = len(done) / span if span > 0 else 0.0
    out["throughput_tok_per_s"] = output / span if span > 0 else 0.0
    out["throughput_total_tok_per_s"] = (prompt + output) / span if span > 0 else 0.0
    met = slo_met_mask(requests, ctx)
    out["goodput_req_per_s"] = float(met.sum() / span) if span > 0 else 0.0
    out["slo_attainment"] = float(met.sum() / len(requests)) if len(requests) else math.nan
    slos = {"ttft": ctx.ttft_slo_s, "tpot": ctx.tpot_slo_s, "e2e": ctx.e2e_slo_s}
    if any(v is not None for v in slos.values()):
        out["slo_met"] = all(
            limit is None or not out[f"{name}_p90_s"] > limit for name, limit in slos.items()
        )
    else:
        out["slo_met"] = None
    out["utilisation"] = utilisation(steps, span, ctx.replicas)
    preemptions = int(done["preemptions"].sum())
    out["preemptions"] = preemptions
    out["preemption_rate"] = preemptions / len(done) if len(done) else 0.0
    out["prefix_hit_rate"] = float(done["prefix_hit_tokens"].sum() / prompt) if prompt else 0.0
    kv = kv_over_time(steps, ctx.kv_bytes_per_block)
    out["kv_peak_bytes"] = float(kv["kv_bytes"].max()) if len(kv) else 0.0
    out["kv_capacity_bytes"] = ctx.kv_bytes_per_block * ctx.kv_blocks_per_replica * ctx.replicas
    out["steps"] = int(steps["steps"].sum())
    out["step_rows"] = len(steps)
    out.update(cost(span, output, ctx))
    for item in ctx.classes:
        out.update(class_summary(requests, item))
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}
