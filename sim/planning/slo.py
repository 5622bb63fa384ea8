"""Service-level objectives of the planner and the check of one simulated run against them.

An SLO bounds one summary metric of :func:`sim.metrics.summarize`: a percentile (p50, p90,
p99) or the mean of TTFT, TPOT, end-to-end latency or queue wait, or a percentile of ITL,
e.g. ``ttft_p90_s <= 1.0`` (DistServe, Zhong et al. OSDI 2024, states SLOs as percentile
targets). A run meets the SLOs when every bounded metric is within its limit, no request was
rejected, and, with a goodput target, at least that fraction of requests meets every
per-request limit on its own (DistServe's SLO attainment; goodput = rate × attainment).
A metric with no samples (TPOT of one-token outputs) meets its limit, as in
:func:`sim.metrics.slo_met_mask`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hardware.errors import KvsimError

#: Per-request latency columns of the request records an SLO may bound.
REQUEST_METRICS = ("ttft", "tpot", "e2e", "queue_wait")
SLO_KEYS = tuple(
    [f"{m}_{s}_s" for m in REQUEST_METRICS for s in ("p50", "p90", "p99", "mean")]
    + [f"itl_{s}_s" for s in ("p50", "p90", "p99")]
)


@dataclass(frozen=True)
class Slo:
    """``metric <= limit_s`` for one summary key (seconds)."""

    metric: str
    limit_s: float

    def __post_init__(self) -> None:
        if self.metric not in SLO_KEYS:
            raise KvsimError(
                f"unknown SLO metric {self.metric!r}; expected one of {', '.join(SLO_KEYS)}",
                field="slo",
            )
        if not (self.limit_s > 0 and math.isfinite(self.limit_s)):
            raise KvsimError(
                f"{self.metric}: must be a number > 0, got {self.limit_s}", field="slo"
            )

    @property
    def column(self) -> str | None:
        """The request-record column a per-request check reads (None for ITL)."""
        head = self.metric.rsplit("_", 2)[0]
        return f"{head}_s" if head in REQUEST_METRICS else None


def parse_slo(text: str) -> Slo:
    """``"ttft_p90_s=1.0"`` (``<=`` also accepted) to an :class:`Slo`."""
    key, sep, value = text.replace("<=", "=").partition("=")
    if not sep:
        raise KvsimError(f"expected METRIC=SECONDS, got {text!r}", field="--slo")
    try:
        limit = float(value)
    except ValueError:
        raise KvsimError(
            f"{key.strip()}: expected a number of seconds, got {value!r}", field="--slo"
        ) from None
    return Slo(key.strip(), limit)


@dataclass(frozen=True)
class SloCheck:
    """Whether a run met the SLOs, the measured value of each bounded metric, the SLO
    attainment, and the first violation in words (empty when met)."""

    met: bool
    values: Mapping[str, float | None]
    attainment: float
    violation: str


def attainment(requests: pd.DataFrame, slos: Iterable[Slo]) -> float:
    """Fraction of all requests that finished with every per-request metric within the
    limit of each SLO on it (a request missing a metric, e.g. TPOT of one token, meets it)."""
    if not len(requests):
        return math.nan
    ok = (requests["status"] == "finished").to_numpy().copy()
    for slo in slos:
        if slo.column is not None:
            values = requests[slo.column].to_numpy(dtype=float)
            ok &= ~(values > slo.limit_s)
    return float(np.mean(ok))


def check(
    summary: Mapping[str, object],
    requests: pd.DataFrame,
    slos: Iterable[Slo],
    min_attainment: float | None = None,
) -> SloCheck:
    """Check one run (:class:`sim.run.RunResult`'s summary and request records)."""
    slos = tuple(slos)
    values = {s.metric: _number(summary.get(s.metric)) for s in slos}
    share = attainment(requests, slos)
    violation = ""
    rejected = int(summary.get("requests_rejected") or 0)
    if rejected:
        violation = f"{rejected} of {len(requests)} requests rejected"
    for slo in slos:
        value = values[slo.metric]
        if not violation and value is not None and value > slo.limit_s:
            violation = f"{slo.metric} = {value:.4g} > {slo.limit_s:g}"
    if not violation and min_attainment is not None and not share >= min_attainment:
        violation = f"SLO attainment {share:.3f} < {min_attainment:g}"
    return SloCheck(not violation, values, share, violation)


def _number(value: object) -> float | None:
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    return None if math.isnan(number) else number
