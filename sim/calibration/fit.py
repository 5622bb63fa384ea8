"""Fit the cost model's efficiency parameters to measured step times.

The model being fitted is the simulator's own :class:`~sim.cost.CostModel`: for a parameter
vector θ (some fields of :class:`~hardware.specs.Efficiency`) every measured step is priced by
``CostModel(model, accelerator.with_efficiency(θ)).step(batch)``, so the fitted profile means
exactly what the simulator will do with it. The residual of step ``i`` is its relative error
``r_i = t̂_i(θ) / t_i − 1`` (step times span two orders of magnitude, and the figure of merit is
the mean absolute percentage error), minimised with SciPy's trust-region reflective
``least_squares`` under a robust loss (``soft_l1``: ρ(z) = 2(√(1+z) − 1), so a step slowed by a
burst of background load pulls the fit linearly, not quadratically; Branch, Coleman and Li,
SIAM J. Sci. Comput. 1999, for the bounded trust-region method).

Bounds keep the parameters physical: achieved fractions of peak in (0, 1] (here [1e-4, 1]) and
fixed overheads >= 0. The roofline ``max`` makes the objective piecewise smooth with several
local minima, so the fit starts from the prior and from a grid of starting points and keeps
the lowest cost.

**Identifiability.** A parameter can only be fitted if some step's predicted time depends on
it. A fraction whose kernels are bound by the other side of the roofline in every measured
step has a zero Jacobian column: any value at or above the fitted one predicts the same
times, so it is set to ``max(fitted, prior)`` — which leaves every prediction unchanged — and
reported as not identified. Which parameters are free by default and why the others stay at
their priors (all-reduce and host-link fractions need tensor parallelism or offload traffic;
``layer_overhead_s`` is collinear with ``step_overhead_s`` for a single model) is explained in
``docs/calibration.md``. Standard errors come from the Gauss–Newton covariance
``s²(JᵀJ)⁺`` (pseudo-inverse) with ``s² = Σr²/(m − n)`` at the solution.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import least_squares

from hardware.errors import KvsimError
from hardware.specs import Accelerator, Efficiency
from sim.cost import BatchShape, CostModel
from workloads.model import ModelSpec

#: Efficiency fields that are fractions of a peak (bounded to (0, 1]).
FRACTIONS = (
    "gemm_fraction",
    "attention_fraction",
    "decode_attention_fraction",
    "hbm_fraction",
    "allreduce_bus_fraction",
    "host_link_fraction",
)
#: Efficiency fields that are fixed overheads in seconds (bounded below by 0).
OVERHEADS = ("step_overhead_s", "layer_overhead_s")
#: What a single-device calibration fits by default (module doc).
DEFAULT_FREE = (
    "gemm_fraction",
    "attention_fraction",
    "decode_attention_fraction",
    "hbm_fraction",
    "step_overhead_s",
)
#: Smallest fraction the fit may reach (the open bound 0 made closed).
MIN_FRACTION = 1e-4
#: Starting values of each free fraction on the multi-start grid.
START_FRACTIONS = (0.02, 0.3)


@dataclass(frozen=True)
class Precision:
    """Dtypes of the measured run as the cost model names them: bytes per weight and per KV
    element, and the peak (``Accelerator.peak_flops_per_s``) the GEMMs run at."""

    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    compute_dtype: str = "bf16"

    @classmethod
    def of(cls, dtype: str) -> Precision:
        """Everything in one torch dtype (``bf16``, ``fp16`` or ``fp32``)."""
        return cls(dtype, dtype, dtype)


#: The default precision: bf16 weights, KV and compute.
BF16 = Precision()


@dataclass(frozen=True)
class FittedParameter:
    """One efficiency field after the fit: its value, the prior it started from, the
    standard error (``None`` when not fitted or not identified), whether it was free,
    identified by the data, and whether it ended on a bound."""

    name: str
    value: float
    prior: float
    stderr: float | None
    free: bool
    identified: bool
    at_bound: bool


@dataclass(frozen=True)
class FitResult:
    """The fitted :class:`Efficiency`, per-parameter details, and the fitted steps' measured
    and predicted seconds."""

    efficiency: Efficiency
    parameters: tuple[FittedParameter, ...]
    measured_s: np.ndarray
    predicted_s: np.ndarray
    cost: float
    starts: int
    evaluations: int

    @property
    def relative_error(self) -> np.ndarray:
        """``predicted / measured − 1`` per fitted step."""
        return self.predicted_s / self.measured_s - 1.0

    @property
    def mape(self) -> float:
        """Mean absolute percentage error over the fitted steps, as a fraction."""
        return float(np.mean(np.abs(self.relative_error)))

    def parameter(self, name: str) -> FittedParameter:
        for item in self.parameters:
            if item.name == name:
                return item
        raise KvsimError(f"no parameter {name!r}", field="name")


def cost_model(
    model: ModelSpec, accelerator: Accelerator, precision: Precision = BF16, tp: int = 1
) -> CostModel:
    """The simulator's cost model of ``model`` on ``tp`` ``accelerator`` s in ``precision``."""
    return CostModel(
        model,
        accelerator,
        tp=tp,
        weight_dtype=precision.weight_dtype,
        kv_dtype=precision.kv_dtype,
        compute_dtype=precision.compute_dtype,
    )


def predict_s(
    model: ModelSpec,
    accelerator: Accelerator,
    batches: Sequence[BatchShape],
    precision: Precision = BF16,
) -> np.ndarray:
    """Cost-model seconds of each step in ``batches``."""
    costs = cost_model(model, accelerator, precision)
    return np.array([costs.step(batch).duration_s for batch in batches], dtype=float)


def prior_value(efficiency: Efficiency, name: str) -> float:
    """The value of field ``name`` the cost model uses: an unset
    ``decode_attention_fraction`` follows ``attention_fraction``."""
    value = getattr(efficiency, name)
    return efficiency.attention_fraction if value is None else float(value)


def _bounds(name: str, measured_s: np.ndarray) -> tuple[float, float]:
    if name in FRACTIONS:
        return MIN_FRACTION, 1.0
    if name in OVERHEADS:
        return 0.0, float(measured_s.max())
    raise KvsimError(f"cannot fit {name!r}; expected one of {FRACTIONS + OVERHEADS}", field="free")


def fit_efficiency(
    model: ModelSpec,
    accelerator: Accelerator,
    batches: Sequence[BatchShape],
    measured_s: Sequence[float] | np.ndarray,
    *,
    precision: Precision = BF16,
    free: Sequence[str] = DEFAULT_FREE,
    loss: str = "soft_l1",
    f_scale: float = 0.05,
) -> FitResult:
    """Fit the ``free`` efficiency fields of ``accelerator`` to steps ``batches`` that took
    ``measured_s`` seconds (module doc). ``f_scale`` is the relative error beyond which the
    robust loss turns linear."""
    measured = np.asarray(measured_s, dtype=float)
    if len(batches) != measured.size:
        raise KvsimError(f"{len(batches)} steps but {measured.size} times", field="measured_s")
    if measured.size == 0 or not np.all(np.isfinite(measured) & (measured > 0)):
        raise KvsimError("measured times must be positive and finite", field="measured_s")
    names = tuple(dict.fromkeys(free))
    bounds = np.array([_bounds(name, measured) for name in names]).T.reshape(2, len(names))
    if measured.size <= len(names):
        raise KvsimError(
            f"{measured.size} steps cannot fit {len(names)} parameters", field="measured_s"
        )
    prior = accelerator.efficiency
    cost_model(model, accelerator, precision)  # a bad model, device or dtype fails here, once

    def efficiency(x: np.ndarray) -> Efficiency:
        return replace(prior, **{name: float(v) for name, v in zip(names, x, strict=True)})

    def predict(x: np.ndarray) -> np.ndarray:
        return predict_s(model, accelerator.with_efficiency(efficiency(x)), batches, precision)

    def residuals(x: np.ndarray) -> np.ndarray:
        return predict(x) / measured - 1.0

    best, starts, evaluations = None, 0, 0
    for x0 in _starts(names, prior, bounds, measured):
        result = least_squares(
            residuals, x0, bounds=bounds, loss=loss, f_scale=f_scale, x_scale="jac"
        )
        starts += 1
        evaluations += int(result.nfev)
        if best is None or result.cost < best.cost:
            best = result
    assert best is not None
    x = best.x.copy()
    jacobian = _jacobian(residuals, x, bounds)
    # Relative change of the residuals when a parameter sweeps its whole range.
    identified = np.linalg.norm(jacobian, axis=0) * (bounds[1] - bounds[0]) > 1e-6
    for k, name in enumerate(names):
        if not identified[k] and name in FRACTIONS:
            # Any value at or above the fitted one predicts the same times (module doc).
            x[k] = max(x[k], prior_value(prior, name))
    stderr = _standard_errors(jacobian[:, identified], residuals(x))
    errors = dict(zip(np.flatnonzero(identified).tolist(), stderr.tolist(), strict=True))
    fitted = efficiency(x)
    parameters = []
    for name in FRACTIONS + OVERHEADS:
        k = names.index(name) if name in names else None
        parameters.append(
            FittedParameter(
                name=name,
                value=prior_value(fitted, name),
                prior=prior_value(prior, name),
                stderr=errors.get(k) if k is not None else None,
                free=k is not None,
                identified=k is not None and bool(identified[k]),
                at_bound=k is not None
                and bool(np.isclose(x[k], bounds[0, k]) or np.isclose(x[k], bounds[1, k])),
            )
        )
    return FitResult(
        efficiency=fitted,
        parameters=tuple(parameters),
        measured_s=measured,
        predicted_s=predict(x),
        cost=float(best.cost),
        starts=starts,
        evaluations=evaluations,
    )


def _starts(
    names: tuple[str, ...], prior: Efficiency, bounds: np.ndarray, measured: np.ndarray
) -> list[np.ndarray]:
    """The prior (clipped into the bounds) and a grid: each free fraction at
    :data:`START_FRACTIONS`, each free overhead at 0 and at half the fastest step."""
    grids = [
        START_FRACTIONS if name in FRACTIONS else (0.0, 0.5 * float(measured.min()))
        for name in names
    ]
    first = np.array([prior_value(prior, name) for name in names], dtype=float)
    points = [first] + [np.array(p, dtype=float) for p in itertools.product(*grids)]
    return [np.clip(p, bounds[0], bounds[1]) for p in points]


def _jacobian(residuals, x: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Central differences with a relative step (one-sided at a bound)."""
    base = residuals(x)
    columns = []
    for k in range(x.size):
        step = 1e-4 * max(abs(x[k]), 1e-6)
        up, down = x.copy(), x.copy()
        up[k] = min(x[k] + step, bounds[1, k])
        down[k] = max(x[k] - step, bounds[0, k])
        width = up[k] - down[k]
        columns.append((residuals(up) - residuals(down)) / width if width > 0 else 0 * base)
    return np.column_stack(columns) if columns else np.zeros((base.size, 0))


def _standard_errors(jacobian: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """Gauss–Newton standard errors: sqrt(diag(s²(JᵀJ)⁺)), s² = Σr²/(m − n)."""
    m, n = jacobian.shape
    if n == 0:
        return np.zeros(0)
    dof = max(m - n, 1)
    covariance = np.linalg.pinv(jacobian.T @ jacobian) * float(residual @ residual) / dof
    return np.sqrt(np.clip(np.diag(covariance), 0.0, None))
