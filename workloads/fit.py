"""Fit a synthetic generator to a trace, and scale a trace's load.

:func:`fit` keeps what capacity planning needs from a trace (Splitwise/ServeGen practice):

- **rate**: ``(n - 1) / duration`` (gaps over the span they cover).
- **burstiness**: the inter-arrival CV ``c`` and the index of dispersion ``I(w)`` of counts in
  ``window_s`` windows (60 s by default). A stationary renewal process has ``I(w) -> c²`` for
  windows much longer than a gap (Cox & Lewis 1966), and under that hypothesis
  ``(m - 1) I / c²`` is about χ² with ``m - 1`` degrees of freedom over ``m`` windows. When the
  trace's ``I(w)`` exceeds ``c² (1 + 3 sqrt(2 / (m - 1)))`` the rate itself moves between
  windows (Azure 2023 conversation: CV 1.09 but ``I(60 s)`` 20.6), so the fit is a
  ``rate_table`` of the per-window rates with renewal gaps of the CV measured in operational
  time ``Λ(t)`` (time rescaling, as the generator samples it). Otherwise it is a renewal
  process: Poisson when ``|c - 1| <= 3 / sqrt(n - 1)`` (the sample CV of ``n - 1`` exponential
  gaps has standard error ``1 / sqrt(n - 1)``, delta method), Gamma with CV ``c`` otherwise
  (BurstGPT and ServeGen find Gamma arrivals).
- **lengths**: empirical resampling of the prompt and output columns (each independently, so
  their correlation is not kept).

Prefix sharing and sessions are not fitted (the generated ids are all unique).

:func:`scale` gives "the same traffic at ``factor`` times the load", either by compressing
time (the trace itself, every gap divided by ``factor``) or by drawing from the fitted
generator at ``factor`` times the rate over the same duration.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from hardware.errors import KvsimError
from workloads.synthetic.arrivals import (
    ArrivalProcess,
    GammaArrivals,
    PiecewiseIntensity,
    PoissonArrivals,
    RateTableArrivals,
)
from workloads.synthetic.distributions import Empirical
from workloads.synthetic.prefix import NoPrefix
from workloads.synthetic.spec import SyntheticSpec, generate
from workloads.workload import Workload

SCALE_METHODS = ("compress", "resample")


def _cv(gaps: np.ndarray) -> float:
    return float(gaps.std() / gaps.mean())


def _renewal_cv(cv: float, gaps: int) -> float:
    """``cv``, or exactly 1 when it is within three standard errors of Poisson's."""
    return 1.0 if abs(cv - 1.0) <= 3.0 / math.sqrt(gaps) else cv


def fit_arrivals(arrival_s: np.ndarray, window_s: float = 60.0) -> ArrivalProcess:
    """The arrival process for sorted ``arrival_s`` (see the module docstring)."""
    t = arrival_s - arrival_s[0]
    duration_s = float(t[-1])
    gaps = np.diff(t)
    cv = _cv(gaps)
    windows = max(1, round(duration_s / window_s))
    width_s = duration_s / windows
    counts = np.histogram(t, bins=windows, range=(0.0, duration_s))[0]
    dispersion = counts.var() / counts.mean()
    if windows < 3 or dispersion <= cv**2 * (1 + 3 * math.sqrt(2 / (windows - 1))):
        rate = len(gaps) / duration_s
        renewal_cv = _renewal_cv(cv, len(gaps))
        return PoissonArrivals(rate) if renewal_cv == 1.0 else GammaArrivals(rate, renewal_cv)
    times = np.arange(windows) * width_s
    rates = counts / width_s
    operational = PiecewiseIntensity(times, rates).cumulative(t)
    cv_op = _renewal_cv(_cv(np.diff(operational)), len(gaps))
    return RateTableArrivals(tuple(times.tolist()), tuple(rates.tolist()), cv_op)


def fit(workload: Workload, *, window_s: float = 60.0) -> SyntheticSpec:
    """A synthetic spec reproducing ``workload``'s rate, burstiness and length distributions
    over the same duration."""
    if len(workload) < 3 or workload.duration_s <= 0:
        raise KvsimError(
            "needs at least 3 requests spread over a positive duration to fit",
            source=workload.name,
            field="arrival_s",
        )
    return SyntheticSpec(
        arrival=fit_arrivals(workload.arrival_s, window_s),
        prompt_tokens=Empirical(workload.prompt_tokens, f"{workload.name}:prompt"),
        output_tokens=Empirical(workload.output_tokens, f"{workload.name}:output"),
        duration_s=workload.duration_s,
        prefix=NoPrefix(workload.prefix_block_tokens),
    )


def scale(
    workload: Workload,
    factor: float,
    method: str = "compress",
    rng: np.random.Generator | None = None,
) -> Workload:
    """``workload`` at ``factor`` times its request rate.

    ``compress`` divides every arrival offset from the first request by ``factor`` (same
    requests, prefixes and sessions, think times compressed too); ``resample`` draws from
    ``fit(workload)`` at ``factor`` times the rate for the same duration, using ``rng``.
    """
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor > 0:
        raise KvsimError(f"must be a number > 0, got {factor!r}", field="factor")
    name = f"{workload.name} x{factor:g}"
    if method == "compress":
        start = workload.arrival_s[0] if len(workload) else 0.0
        return workload.with_arrivals(start + (workload.arrival_s - start) / factor, name=name)
    if method == "resample":
        if rng is None:
            raise KvsimError("resample draws new requests: pass rng", field="rng")
        return replace(generate(fit(workload).scaled(factor), rng), name=name)
    raise KvsimError(f"must be one of {', '.join(SCALE_METHODS)}, got {method!r}", field="method")
