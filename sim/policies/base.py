"""What each kind of KV policy offers the engine, the cost model and the real executor.

Every policy is a frozen dataclass whose fields are its parameters (shared names across
policies: ``budget_tokens`` or ``budget_fraction``, ``sink_tokens``, ``window_tokens``,
``bits``, ``group_size``, ``residual_tokens``, ``rank_fraction``). The *simulation face*
counts tokens, bytes and FLOPs with numpy, vectorised over sequences; the *tensor face*
(methods that import torch lazily from :mod:`sim.policies.tensor`) acts on real tensors.
Token counts are per sequence and per layer, averaged over KV heads where a method keeps a
different number per head.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from hardware.errors import KvsimError
from workloads.model import ModelSpec


def as_tokens(values: np.ndarray | list[int] | int, field: str) -> np.ndarray:
    """Token counts as a 1-D int64 array, rejecting negatives."""
    array = np.asarray(values, dtype=np.int64).reshape(-1)
    if array.size and array.min() < 0:
        raise KvsimError(f"token counts must be >= 0, got {int(array.min())}", field=field)
    return array


def check_positive_int(value: Any, field: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise KvsimError(f"must be an integer >= {minimum}, got {value!r}", field=field)


def check_fraction(
    value: Any, field: str, *, allow_zero: bool = False, allow_one: bool = True
) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    low_ok = ok and (value >= 0 if allow_zero else value > 0)
    high_ok = ok and (value <= 1 if allow_one else value < 1)
    if not (low_ok and high_ok):
        low = "0 <=" if allow_zero else "0 <"
        high = "<= 1" if allow_one else "< 1"
        raise KvsimError(f"must be a number with {low} x {high}, got {value!r}", field=field)


def check_choice(value: Any, field: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise KvsimError(f"must be one of {', '.join(choices)}, got {value!r}", field=field)


class PolicyBase:
    """Common behaviour: parameters as a dict, a label with the non-default parameters."""

    kind: ClassVar[str]
    name: ClassVar[str]

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def label(self) -> str:
        defaults = type(self)()  # every policy has a paper default for each parameter
        changed = [f"{k}={v}" for k, v in self.params().items() if getattr(defaults, k) != v]
        return self.name + (f"({', '.join(changed)})" if changed else "")


class BudgetMixin:
    """A token budget given either as ``budget_tokens`` or as ``budget_fraction`` of the
    tokens the method compresses. Exactly one is set. A fraction keeps
    ``max(1, floor(fraction · n))`` of ``n`` tokens (kvpress ScorerPress keeps
    ``int(n · (1 − compression_ratio))``; kvsim keeps at least one token so attention stays
    defined), never more than ``n``."""

    budget_tokens: int | None
    budget_fraction: float | None

    def _check_budget(self, minimum: int = 1) -> None:
        if (self.budget_tokens is None) == (self.budget_fraction is None):
            raise KvsimError(
                "set exactly one of budget_tokens and budget_fraction", field="budget_tokens"
            )
        if self.budget_tokens is not None:
            check_positive_int(self.budget_tokens, "budget_tokens", minimum)
        else:
            check_fraction(self.budget_fraction, "budget_fraction")

    def nominal_budget(self, tokens: np.ndarray) -> np.ndarray:
        """The budget for ``tokens`` tokens before capping at ``tokens``."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if self.budget_tokens is not None:
            return np.full_like(tokens, self.budget_tokens)
        assert self.budget_fraction is not None
        # The epsilon absorbs binary rounding (0.29 · 100 = 28.999…96).
        return np.maximum(np.floor(tokens * self.budget_fraction + 1e-9).astype(np.int64), 1)

    def budget(self, tokens: np.ndarray) -> np.ndarray:
        """Tokens kept out of ``tokens`` (elementwise), capped at ``tokens``."""
        tokens = np.asarray(tokens, dtype=np.int64)
        return np.minimum(tokens, self.nominal_budget(tokens))


@runtime_checkable
class SelectionPolicy(Protocol):
    """Which tokens a sequence keeps (``kept``), physically holds (``stored``) and reads per
    decode step (``read``), per layer. ``physical`` is False for masking-only methods
    (head-wise budgets in HF-style implementations): they keep fewer tokens logically but
    hold the full cache."""

    kind: ClassVar[str]
    name: ClassVar[str]
    physical: bool
    evicts: ClassVar[bool]

    def kept_tokens_per_layer(
        self, context_tokens: np.ndarray, prompt_tokens: np.ndarray, num_layers: int
    ) -> np.ndarray: ...

    def stored_tokens_per_layer(
        self, context_tokens: np.ndarray, prompt_tokens: np.ndarray, num_layers: int
    ) -> np.ndarray: ...

    def read_tokens_per_layer(
        self, context_tokens: np.ndarray, prompt_tokens: np.ndarray, num_layers: int
    ) -> np.ndarray: ...

    def index_tokens_per_layer(
        self, context_tokens: np.ndarray, prompt_tokens: np.ndarray, num_layers: int
    ) -> np.ndarray: ...

    def prefill_score_flops(self, model: ModelSpec, prompt_tokens: np.ndarray) -> np.ndarray: ...

    def decode_score_flops(
        self, model: ModelSpec, context_tokens: np.ndarray, prompt_tokens: np.ndarray
    ) -> np.ndarray: ...


@runtime_checkable
class QuantizationPolicy(Protocol):
    """How stored KV elements are encoded: exact bytes for ``tokens`` tokens of one layer and
    the dequantisation FLOPs per element read."""

    kind: ClassVar[str]
    name: ClassVar[str]
    dequant_flops_per_element: float

    def layer_bytes(self, tokens: np.ndarray, layout: KvLayout) -> np.ndarray: ...


@runtime_checkable
class LowRankPolicy(Protocol):
    """Caches a rank-r latent instead of K and V: fewer elements, reconstruction FLOPs."""

    kind: ClassVar[str]
    name: ClassVar[str]

    def layout(self, model: ModelSpec) -> KvLayout: ...

    def reconstruction_flops_per_token(self, model: ModelSpec) -> float: ...


@runtime_checkable
class MergingPolicy(Protocol):
    """Folds KV that would be dropped (intra-layer) or duplicated across layers
    (cross-layer) into what is kept; ``layer_bytes_factor`` scales each layer's stored bytes."""

    kind: ClassVar[str]
    name: ClassVar[str]
    requires_eviction: ClassVar[bool]

    def layer_bytes_factor(self, model: ModelSpec) -> np.ndarray: ...

    def merge_flops_per_token(self, model: ModelSpec) -> float: ...


@dataclasses.dataclass(frozen=True)
class KvLayout:
    """The elements one token stores in one KV-holding layer.

    ``key_elements``/``value_elements`` per token (MLA's joint latent: all in
    ``value_elements``, ``key_elements`` 0, ``joint`` True); ``vector_elements`` the length of
    one stored head vector (per-token scales are kept per vector)."""

    key_elements: int
    value_elements: int
    vector_elements: int
    joint: bool = False

    @property
    def elements(self) -> int:
        return self.key_elements + self.value_elements

    @classmethod
    def of(cls, model: ModelSpec) -> KvLayout:
        if model.attention == "mla":
            width = model.kv_lora_rank + model.qk_rope_head_dim
            return cls(0, width, width, joint=True)
        per_side = model.num_kv_heads * model.head_dim
        return cls(per_side, per_side, model.head_dim)


def ceil_div(a: np.ndarray | int, b: int) -> np.ndarray | int:
    if isinstance(a, int):
        return -(-a // b)
    return -(-np.asarray(a) // b)


def groups_per_vector(elements: int, group_size: int) -> int:
    return math.ceil(elements / group_size)
