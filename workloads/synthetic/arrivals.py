"""Arrival processes: when requests (or sessions) arrive.

Time 0 is an arrival epoch of the process that is not itself a request, so the first
request arrives one inter-arrival gap after 0 and ``arrival_s[k]`` is the sum of ``k + 1``
gaps. Renewal processes (inter-arrival gaps i.i.d., mean ``1 / rate_per_s``):

- ``poisson``: exponential gaps, CV 1.
- ``gamma``: Gamma gaps with coefficient of variation ``cv`` (shape ``1 / cv²``). BurstGPT
  (Wang et al., KDD'25) and ServeGen (Xiang et al., arXiv 2505.09999) find LLM-serving
  arrivals are Gamma (60-88 % of ServeGen traffic) or Weibull rather than Poisson.
- ``weibull``: Weibull gaps of ``shape`` k (scale ``1 / (rate Γ(1 + 1/k))``), CV
  ``sqrt(Γ(1 + 2/k) / Γ(1 + 1/k)² - 1)``; give ``shape`` or ``cv``.

Modulated processes use the time-rescaling theorem: a unit-rate renewal process in
"operational time" ``u`` mapped through the inverse of the cumulative intensity
``Λ(t) = ∫₀ᵗ λ(τ) dτ`` (Çinlar 1975; Brown et al. 2002). With ``cv = 1`` this is an exact
non-homogeneous Poisson process; with another ``cv`` it is ServeGen's recipe of Gamma
arrivals at a time-varying rate.

- ``mmpp``: two-state Markov-modulated Poisson process (Fischer & Meier-Hellstern 1993):
  exponential sojourns of mean ``mean_on_s`` at rate ``rates_per_s[0]`` and ``mean_off_s`` at
  ``rates_per_s[1]`` (0 gives on/off bursts); it starts in its stationary state.
- ``diurnal``: ``λ(t) = rate_per_s (1 + amplitude cos(2π (t - peak_s) / period_s))``.
- ``rate_table``: piecewise-constant ``λ`` from ``table = [[t_s, rate_per_s], ...]``; each rate
  holds until the next row and the last one holds on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import brentq
from scipy.special import gammaln

from hardware.errors import KvsimError
from workloads.synthetic.fields import Fields, check_number, fail

ARRIVAL_KINDS = ("poisson", "gamma", "weibull", "mmpp", "diurnal", "rate_table")


# ---- unit-mean renewal gaps ---------------------------------------------------------
def gamma_gaps(rng: np.random.Generator, n: int, cv: float) -> np.ndarray:
    """``n`` unit-mean Gamma gaps with coefficient of variation ``cv`` (exponential at 1)."""
    if cv == 1.0:
        return rng.exponential(1.0, n)
    shape = 1.0 / cv**2
    return rng.gamma(shape, 1.0 / shape, n)


def weibull_cv(shape: float) -> float:
    """CV of a Weibull distribution of ``shape`` k: ``sqrt(Γ(1+2/k) / Γ(1+1/k)² - 1)``."""
    return math.sqrt(math.expm1(gammaln(1 + 2 / shape) - 2 * gammaln(1 + 1 / shape)))


def weibull_shape_for_cv(cv: float, path: str) -> float:
    """The Weibull shape whose CV is ``cv`` (CV decreases monotonically in the shape)."""
    low, high = 0.05, 200.0
    if not weibull_cv(high) <= cv <= weibull_cv(low):
        raise fail(path, f"must be in [{weibull_cv(high):.3g}, {weibull_cv(low):.3g}], got {cv:g}")
    return float(brentq(lambda k: weibull_cv(k) - cv, low, high, xtol=1e-12))


def _points(draw, requests: int | None, horizon: float | None) -> np.ndarray:
    """Cumulative sums of gaps from ``draw(n)``: the first ``requests`` of them, those below
    ``horizon``, or both limits (whichever comes first)."""
    if requests is None and horizon is None:
        raise KvsimError("an arrival process needs requests or duration_s to end")
    if requests is not None:
        points = np.cumsum(draw(requests))
        return points if horizon is None else points[points < horizon]
    chunks: list[np.ndarray] = []
    total = 0.0
    while total < horizon:
        chunk = total + np.cumsum(draw(math.ceil(1.25 * (horizon - total)) + 64))
        chunks.append(chunk)
        total = float(chunk[-1])
    points = np.concatenate(chunks)
    return points[points < horizon]


# ---- homogeneous renewal processes ---------------------------------------------------
def _renewal(draw, rate_per_s: float, requests: int | None, duration_s: float | None) -> np.ndarray:
    horizon = None if duration_s is None else duration_s * rate_per_s
    return _points(draw, requests, horizon) / rate_per_s


@dataclass(frozen=True)
class PoissonArrivals:
    rate_per_s: float

    @property
    def cv(self) -> float:
        return 1.0

    def sample(
        self, rng: np.random.Generator, requests: int | None, duration_s: float | None
    ) -> np.ndarray:
        return _renewal(lambda n: rng.exponential(1.0, n), self.rate_per_s, requests, duration_s)

    def scaled(self, factor: float) -> PoissonArrivals:
        return replace(self, rate_per_s=self.rate_per_s * factor)


@dataclass(frozen=True)
class GammaArrivals:
    rate_per_s: float
    cv: float

    def sample(
        self, rng: np.random.Generator, requests: int | None, duration_s: float | None
    ) -> np.ndarray:
        return _renewal(
            lambda n: gamma_gaps(rng, n, self.cv), self.rate_per_s, requests, duration_s
        )

    def scaled(self, factor: float) -> GammaArrivals:
        return replace(self, rate_per_s=self.rate_per_s * factor)


@dataclass(frozen=True)
class WeibullArrivals:
    rate_per_s: float
    shape: float

    @property
    def cv(self) -> float:
        return weibull_cv(self.shape)

    def sample(
        self, rng: np.random.Generator, requests: int | None, duration_s: float | None
    ) -> np.ndarray:
        mean = math.exp(gammaln(1 + 1 / self.shape))
        return _renewal(
            lambda n: rng.weibull(self.shape, n) / mean, self.rate_per_s, requests, duration_s
        )

    def scaled(self, factor: float) -> WeibullArrivals:
        return replace(self, rate_per_s=self.rate_per_s * factor)


# ---- modulated processes (time rescaling) --------------------------------------------
@dataclass(frozen=True, eq=False)
class PiecewiseIntensity:
    """Piecewise-constant rate: ``rates_per_s[k]`` from ``times_s[k]`` to ``times_s[k+1]``,
    the last rate holding on; ``cumulative`` is Λ and ``inverse`` is ``inf{t: Λ(t) >= u}``."""

    times_s: np.ndarray
    rates_per_s: np.ndarray

    def __post_init__(self) -> None:
        cum = np.concatenate([[0.0], np.cumsum(self.rates_per_s[:-1] * np.diff(self.times_s))])
        object.__setattr__(self, "_cum", cum)
        positive = self.rates_per_s > 0
        object.__setattr__(self, "_positive", (self.times_s[positive], cum[positive]))

    @property
    def total(self) -> float:
        """Λ at the last breakpoint."""
        return float(self._cum[-1])

    def cumulative(self, t_s: np.ndarray | float) -> np.ndarray:
        index = np.searchsorted(self.times_s, t_s, side="right") - 1
        return self._cum[index] + self.rates_per_s[index] * (t_s - self.times_s[index])

    def inverse(self, u: np.ndarray) -> np.ndarray:
        starts, cum = self._positive
        rates = self.rates_per_s[self.rates_per_s > 0]
        index = np.maximum(np.searchsorted(cum, u, side="right") - 1, 0)
        return starts[index] + (u - cum[index]) / rates[index]


def _modulated(
    rng: np.random.Generator,
    cv: float,
    requests: int | None,
    duration_s: float | None,
    intensity: PiecewiseIntensity | DiurnalArrivals,
) -> np.ndarray:
    horizon = None if duration_s is None else float(intensity.cumulative(duration_s))
    return intensity.inverse(_points(lambda n: gamma_gaps(rng, n, cv), requests, horizon))


@dataclass(frozen=True)
class MmppArrivals:
    """Two-state MMPP; state 0 ("on") has rate ``rates_per_s[0]`` and mean sojourn
    ``mean_on_s``, state 1 ("off") ``rates_per_s[1]`` and ``mean_off_s``."""

    rates_per_s: tuple[float, float]
    mean_on_s: float
    mean_off_s: float

    @property
    def mean_rate_per_s(self) -> float:
        on, off = self.rates_per_s
        return (on * self.mean_on_s + off * self.mean_off_s) / (self.mean_on_s + self.mean_off_s)

    def index_of_dispersion(self, window_s: float) -> float:
        """Var/mean of the count in a window of ``window_s`` (Fischer & Meier-Hellstern 1993,
        eq. for the IDC of the MMPP-2): ``1 + 2 (λ₁-λ₂)² r₁r₂ / ((r₁+r₂)² (λ₁r₂+λ₂r₁))
        × (1 - (1 - e^{-(r₁+r₂)T}) / ((r₁+r₂)T))`` with ``rᵢ = 1 / mean sojourn``."""
        (l1, l2), r1, r2 = self.rates_per_s, 1 / self.mean_on_s, 1 / self.mean_off_s
        a = r1 + r2
        factor = 2 * (l1 - l2) ** 2 * r1 * r2 / (a**2 * (l1 * r2 + l2 * r1))
        return 1 + factor * (1 - (-math.expm1(-a * window_s)) / (a * window_s))

    def sample(
        self, rng: np.random.Generator, requests: int | None, duration_s: float | None
    ) -> np.ndarray:
        def draw(n: int) -> np.ndarray:
            return rng.exponential(1.0, n)

        points = None if requests is None else _points(draw, requests, None)
        need_u = float(points[-1]) if points is not None and len(points) else 0.0
        intensity = self._path(rng, duration_s or 0.0, need_u)
        horizon = None if duration_s is None else float(intensity.cumulative(duration_s))
        if points is None:
            points = _points(draw, None, horizon)
        elif horizon is not None:
            points = points[points < horizon]
        return intensity.inverse(points)

    def _path(self, rng: np.random.Generator, until_s: float, until_u: float) -> PiecewiseIntensity:
        """A stationary on/off path covering at least ``until_s`` seconds and operational
        time ``until_u``: the first state drawn from ``π_on = mean_on / (mean_on + mean_off)``,
        exponential sojourns (memoryless, so the first residual sojourn is exponential too)."""
        on_first = rng.random() < self.mean_on_s / (self.mean_on_s + self.mean_off_s)
        order = [0, 1] if on_first else [1, 0]
        means = np.tile(np.array([self.mean_on_s, self.mean_off_s])[order], 128)
        rates = np.tile(np.array(self.rates_per_s)[order], 128)
        chunks: list[np.ndarray] = []
        covered_s = covered_u = 0.0
        while covered_s < until_s or covered_u <= until_u:
            chunk = rng.exponential(means)
            chunks.append(chunk)
            covered_s += float(chunk.sum())
            covered_u += float((chunk * rates).sum())
        sojourns = np.concatenate(chunks)
        times = np.concatenate([[0.0], np.cumsum(sojourns)])
        return PiecewiseIntensity(times, np.resize(rates, len(times)))

    def scaled(self, factor: float) -> MmppArrivals:
        on, off = self.rates_per_s
        return replace(self, rates_per_s=(on * factor, off * factor))


@dataclass(frozen=True)
class DiurnalArrivals:
    """``λ(t) = rate_per_s (1 + amplitude cos(2π (t - peak_s) / period_s))``, mean
    ``rate_per_s`` over a period; renewal gaps of ``cv`` in operational time."""

    rate_per_s: float
    amplitude: float
    period_s: float = 86_400.0
    peak_s: float = 0.0
    cv: float = 1.0

    def cumulative(self, t_s: np.ndarray | float) -> np.ndarray:
        w = 2 * math.pi / self.period_s
        wave = np.sin(w * (np.asarray(t_s) - self.peak_s)) + math.sin(w * self.peak_s)
        return self.rate_per_s * (np.asarray(t_s) + self.amplitude * wave / w)

    def inverse(self, u: np.ndarray) -> np.ndarray:
        """Λ⁻¹ by vectorised bisection: ``|Λ(t) - rate t| <= 2 rate amplitude / w``."""
        slack = 2 * self.amplitude * self.period_s / (2 * math.pi)
        low = np.maximum(u / self.rate_per_s - slack, 0.0)
        high = u / self.rate_per_s + slack
        for _ in range(64):
            mid = 0.5 * (low + high)
            below = self.cumulative(mid) < u
            low = np.where(below, mid, low)
            high = np.where(below, high, mid)
        return high

    def sample(
        self, rng: np.random.Generator, requests: int | None, duration_s: float | None
    ) -> np.ndarray:
        return _modulated(rng, self.cv, requests, duration_s, self)

    def scaled(self, factor: float) -> DiurnalArrivals:
        return replace(self, rate_per_s=self.rate_per_s * factor)


@dataclass(frozen=True)
class RateTableArrivals:
    """Piecewise-constant rate ``rates_per_s[k]`` from ``times_s[k]``; gaps of ``cv`` in
    operational time."""

    times_s: tuple[float, ...]
    rates_per_s: tuple[float, ...]
    cv: float = 1.0

    @property
    def intensity(self) -> PiecewiseIntensity:
        return PiecewiseIntensity(np.array(self.times_s), np.array(self.rates_per_s))

    def sample(
        self, rng: np.random.Generator, requests: int | None, duration_s: float | None
    ) -> np.ndarray:
        if duration_s is None and self.rates_per_s[-1] == 0:
            raise KvsimError(
                "the rate table ends at rate 0, so requests alone cannot bound it: give duration_s"
            )
        return _modulated(rng, self.cv, requests, duration_s, self.intensity)

    def scaled(self, factor: float) -> RateTableArrivals:
        return replace(self, rates_per_s=tuple(r * factor for r in self.rates_per_s))


ArrivalProcess = (
    PoissonArrivals
    | GammaArrivals
    | WeibullArrivals
    | MmppArrivals
    | DiurnalArrivals
    | RateTableArrivals
)


# ---- parsing ----------------------------------------------------------------------------
def parse_arrival(fields: Fields) -> ArrivalProcess:
    """The arrival process named by ``arrival`` (default ``poisson``) and its keys."""
    kind = fields.string("arrival", ARRIVAL_KINDS, "poisson")
    if kind == "poisson":
        return PoissonArrivals(fields.number("rate_per_s", gt=0))
    if kind == "gamma":
        return GammaArrivals(fields.number("rate_per_s", gt=0), fields.number("cv", gt=0))
    if kind == "weibull":
        rate = fields.number("rate_per_s", gt=0)
        if fields.has("shape") == fields.has("cv"):
            raise fail(fields.child("shape"), "give exactly one of shape and cv for weibull")
        if fields.has("shape"):
            return WeibullArrivals(rate, fields.number("shape", gt=0))
        return WeibullArrivals(
            rate, weibull_shape_for_cv(fields.number("cv", gt=0), fields.child("cv"))
        )
    if kind == "mmpp":
        path = fields.child("rates_per_s")
        rates = fields.raw("rates_per_s")
        if not isinstance(rates, list) or len(rates) != 2:
            raise fail(path, f"must be [on_rate, off_rate], got {rates!r}")
        on, off = (check_number(r, f"{path}[{i}]", ge=0) for i, r in enumerate(rates))
        if on + off == 0:
            raise fail(path, "at least one rate must be > 0")
        return MmppArrivals(
            (on, off), fields.number("mean_on_s", gt=0), fields.number("mean_off_s", gt=0)
        )
    if kind == "diurnal":
        return DiurnalArrivals(
            fields.number("rate_per_s", gt=0),
            fields.number("amplitude", ge=0, le=1),
            fields.number("period_s", 86_400.0, gt=0),
            fields.number("peak_s", 0.0),
            fields.number("cv", 1.0, gt=0),
        )
    return _parse_rate_table(fields)


def _parse_rate_table(fields: Fields) -> RateTableArrivals:
    path = fields.child("table")
    table = fields.raw("table")
    if not isinstance(table, list) or not table:
        raise fail(path, "must be a non-empty list of [t_s, rate_per_s] rows")
    times: list[float] = []
    rates: list[float] = []
    for i, row in enumerate(table):
        if not isinstance(row, list) or len(row) != 2:
            raise fail(f"{path}[{i}]", f"must be [t_s, rate_per_s], got {row!r}")
        times.append(check_number(row[0], f"{path}[{i}][0]", ge=0))
        rates.append(check_number(row[1], f"{path}[{i}][1]", ge=0))
    if times[0] != 0:
        raise fail(f"{path}[0][0]", f"the first row must start at t_s = 0, got {times[0]:g}")
    for i in range(1, len(times)):
        if times[i] <= times[i - 1]:
            raise fail(f"{path}[{i}][0]", "t_s must increase strictly from row to row")
    if not any(rates):
        raise fail(path, "at least one rate must be > 0")
    return RateTableArrivals(tuple(times), tuple(rates), fields.number("cv", 1.0, gt=0))
