"""Distributions of token counts and of durations used by the synthetic generators.

Each is a frozen dataclass whose numbers are in the unit of the field that holds it: the
``median`` of ``prompt_tokens`` is in tokens, the ``mean`` of ``think_time_s`` in seconds.

- ``fixed``: always ``value``.
- ``lognormal``: ``exp(N(ln median, sigma²))``; the usual fit for LLM prompt and output
  lengths (heavy right tail, e.g. Splitwise/Azure 2023 medians 1,020 in / 129 out for chat).
- ``uniform``: on ``[low, high]`` (for token counts: every integer in it equally likely).
- ``exponential``: mean ``mean`` (durations only; memoryless think or tool times).
- ``empirical``: resampling with replacement from observed values, either inline ``values``
  or a trace column (``trace = path``, ``column = "prompt" | "output"``).

Token counts are rounded to integers and at least 1.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workloads.synthetic.fields import Fields, check_integer, check_number, fail
from workloads.traces import read_trace

TOKEN_KINDS = ("fixed", "lognormal", "uniform", "empirical")
DURATION_KINDS = ("fixed", "exponential", "lognormal", "uniform")
TRACE_COLUMNS = {"prompt": "prompt_tokens", "output": "output_tokens"}


class _TokenRounding(ABC):
    @abstractmethod
    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws as floats."""

    def sample_tokens(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` integer token counts, each at least 1."""
        return np.maximum(np.rint(self.sample(rng, n)), 1).astype(np.int64)


@dataclass(frozen=True)
class Fixed(_TokenRounding):
    value: float

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.value, dtype=np.float64)


@dataclass(frozen=True)
class Lognormal(_TokenRounding):
    median: float
    sigma: float

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.lognormal(math.log(self.median), self.sigma, n)


@dataclass(frozen=True)
class Uniform(_TokenRounding):
    low: float
    high: float

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(self.low, self.high, n)

    def sample_tokens(self, rng: np.random.Generator, n: int) -> np.ndarray:
        low = max(math.ceil(self.low), 1)
        return rng.integers(low, max(math.floor(self.high), low) + 1, n, dtype=np.int64)


@dataclass(frozen=True)
class Exponential(_TokenRounding):
    mean: float

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.exponential(self.mean, n)


@dataclass(frozen=True, eq=False)
class Empirical(_TokenRounding):
    """Resampling with replacement from ``values`` (read-only); ``source`` says where they
    came from (a trace path and column, or ``"inline"``)."""

    values: np.ndarray
    source: str = "inline"

    def __post_init__(self) -> None:
        values = np.array(self.values, dtype=np.float64)
        values.setflags(write=False)
        object.__setattr__(self, "values", values)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.values[rng.integers(0, len(self.values), n)]


Distribution = Fixed | Lognormal | Uniform | Exponential | Empirical


def parse_distribution(
    value: Any,
    path: str,
    *,
    tokens: bool,
    base_dir: Path | None = None,
) -> Distribution:
    """A distribution from a table ``{dist = ..., ...}`` or a bare number (``fixed``).

    ``tokens`` selects token counts (values >= 1, kinds :data:`TOKEN_KINDS`) rather than
    durations in seconds (values >= 0, kinds :data:`DURATION_KINDS`).
    """
    minimum = 1 if tokens else 0
    if not isinstance(value, dict):
        if tokens:
            return Fixed(check_integer(value, path, ge=1))
        return Fixed(check_number(value, path, ge=0))
    fields = Fields(value, path, base_dir=base_dir)
    kind = fields.string("dist", TOKEN_KINDS if tokens else DURATION_KINDS)
    if kind == "fixed":
        dist: Distribution = Fixed(
            fields.integer("value", ge=1) if tokens else fields.number("value", ge=0)
        )
    elif kind == "lognormal":
        dist = Lognormal(fields.number("median", gt=0), fields.number("sigma", gt=0))
    elif kind == "uniform":
        low = fields.number("low", ge=minimum)
        high = fields.number("high", ge=minimum)
        if high < low or (tokens and math.floor(high) < math.ceil(low)):
            raise fail(fields.child("high"), f"must be >= low ({low:g}), got {high:g}")
        dist = Uniform(low, high)
    elif kind == "exponential":
        dist = Exponential(fields.number("mean", gt=0))
    else:
        dist = _parse_empirical(fields)
    fields.done()
    return dist


def _parse_empirical(fields: Fields) -> Empirical:
    if fields.has("values"):
        raw = fields.raw("values")
        if not isinstance(raw, list) or not raw:
            raise fail(fields.child("values"), "must be a non-empty list of token counts")
        values = [
            check_integer(v, f"{fields.child('values')}[{i}]", ge=1) for i, v in enumerate(raw)
        ]
        return Empirical(np.asarray(values), "inline")
    path = fields.path_value("trace")
    column = fields.string("column", tuple(TRACE_COLUMNS))
    if not path.is_file():
        raise fail(fields.child("trace"), f"no such file: {path}")
    workload = read_trace(path)
    if len(workload) == 0:
        raise fail(fields.child("trace"), f"{path} holds no requests")
    return Empirical(getattr(workload, TRACE_COLUMNS[column]), f"{path}:{column}")
