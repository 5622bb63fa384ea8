"""Token selection and budget allocation: which KV tokens a sequence keeps.

Simulation face: for sequences with ``context_tokens`` in KV (prompt plus generated) and
``prompt_tokens`` prompt, arrays of shape ``(sequences, layers)`` of tokens kept (the method's
definition, averaged over KV heads), physically stored, and read per decode step.
Prefill-once methods (SnapKV, PyramidKV, Ada-KV, Knorm) compress when the prompt completes
and append decoded tokens uncompressed (KVCache-Factory ``update_kv`` runs once at prefill;
reference §3.1); decode-time methods (StreamingLLM, H2O, TOVA) hold their budget at every
step. Tensor faces live in :mod:`sim.policies.tensor.selection`. Mechanisms and defaults:
``shared/reference/policies.md`` §1.1–§1.2, §2.2, §3.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from hardware.errors import KvsimError
from sim.policies.base import (
    BudgetMixin,
    PolicyBase,
    as_tokens,
    ceil_div,
    check_choice,
    check_fraction,
    check_positive_int,
)
from sim.policies.registry import register
from workloads.model import ModelSpec

POOLINGS = ("avg", "max")


def _broadcast(per_sequence: np.ndarray, num_layers: int) -> np.ndarray:
    return np.repeat(per_sequence.astype(np.float64)[:, None], num_layers, axis=1)


def _inputs(context_tokens: Any, prompt_tokens: Any) -> tuple[np.ndarray, np.ndarray]:
    ctx = as_tokens(context_tokens, "context_tokens")
    prompt = as_tokens(prompt_tokens, "prompt_tokens")
    if ctx.shape != prompt.shape:
        raise KvsimError(
            f"{ctx.size} context counts for {prompt.size} prompt counts", field="prompt_tokens"
        )
    return ctx, prompt


def prefill_once(ctx: np.ndarray, prompt: np.ndarray, kept_prompt: np.ndarray) -> np.ndarray:
    """Tokens held by a method that compresses the prompt once, when it completes, and
    appends decoded tokens: the context while the prompt is still being prefilled, then
    ``kept_prompt`` plus the tokens generated since."""
    return np.where(ctx < prompt, ctx, kept_prompt + np.maximum(ctx - prompt, 0))


class SelectionBase(PolicyBase):
    """Defaults shared by selection policies: stored = kept when the method shrinks tensors
    (``physical``), else the whole context; read = stored; no index; no scoring work."""

    physical: ClassVar[bool] = True
    evicts: ClassVar[bool] = True

    def _kept(self, ctx: np.ndarray, prompt: np.ndarray, num_layers: int) -> np.ndarray:
        raise NotImplementedError

    def kept_tokens_per_layer(
        self, context_tokens: Any, prompt_tokens: Any, num_layers: int = 1
    ) -> np.ndarray:
        """Tokens the method retains per sequence and layer (mean over KV heads)."""
        ctx, prompt = _inputs(context_tokens, prompt_tokens)
        return self._kept(ctx, prompt, num_layers)

    def stored_tokens_per_layer(
        self, context_tokens: Any, prompt_tokens: Any, num_layers: int = 1
    ) -> np.ndarray:
        """Tokens physically held per sequence and layer."""
        if self.physical:
            return self.kept_tokens_per_layer(context_tokens, prompt_tokens, num_layers)
        ctx, _ = _inputs(context_tokens, prompt_tokens)
        return _broadcast(ctx, num_layers)

    def read_tokens_per_layer(
        self, context_tokens: Any, prompt_tokens: Any, num_layers: int = 1
    ) -> np.ndarray:
        """Tokens one decode step reads per sequence and layer."""
        return self.stored_tokens_per_layer(context_tokens, prompt_tokens, num_layers)

    def index_tokens_per_layer(
        self, context_tokens: Any, prompt_tokens: Any, num_layers: int = 1
    ) -> np.ndarray:
        """Token-equivalents of an fp16 side index stored and read per step (Quest pages)."""
        ctx, _ = _inputs(context_tokens, prompt_tokens)
        return np.zeros((ctx.size, num_layers))

    def kept_tokens(
        self, context_tokens: Any, prompt_tokens: Any, num_layers: int = 1
    ) -> np.ndarray:
        return self.kept_tokens_per_layer(context_tokens, prompt_tokens, num_layers).mean(axis=1)

    def stored_tokens(
        self, context_tokens: Any, prompt_tokens: Any, num_layers: int = 1
    ) -> np.ndarray:
        return self.stored_tokens_per_layer(context_tokens, prompt_tokens, num_layers).mean(axis=1)

    def read_tokens(
        self, context_tokens: Any, prompt_tokens: Any, num_layers: int = 1
    ) -> np.ndarray:
        return self.read_tokens_per_layer(context_tokens, prompt_tokens, num_layers).mean(axis=1)

    def prefill_score_flops(self, model: ModelSpec, prompt_tokens: Any) -> np.ndarray:
        """FLOPs spent once per sequence, at the end of its prefill, choosing what to keep."""
        return np.zeros(as_tokens(prompt_tokens, "prompt_tokens").size)

    def decode_score_flops(
        self, model: ModelSpec, context_tokens: Any, prompt_tokens: Any
    ) -> np.ndarray:
        """FLOPs spent per decode step per sequence scoring tokens."""
        ctx, _ = _inputs(context_tokens, prompt_tokens)
        return np.zeros(ctx.size)


def _window_scoring_flops(model: ModelSpec, prompt: np.ndarray, window: int) -> np.ndarray:
    """Observation-window scoring (SnapKV §4): ``w`` window queries against all ``P`` keys in
    every layer and query head: ``2d`` per score plus one add to the column sum."""
    queries = np.minimum(prompt, window)
    return model.num_layers * model.num_heads * queries * prompt * (2.0 * model.head_dim + 1)


# ---- policies -----------------------------------------------------------------------------
@register("selection", "full")
@dataclass(frozen=True)
class FullCache(SelectionBase):
    """Keep every token: the uncompressed baseline."""

    evicts: ClassVar[bool] = False

    def _kept(self, ctx: np.ndarray, prompt: np.ndarray, num_layers: int) -> np.ndarray:
        return _broadcast(ctx, num_layers)

    def keep_mask(self, keys: Any, **_: Any) -> Any:
        from sim.policies.tensor import selection as ts

        return ts.full_mask(keys)


@register("selection", "streaming_llm")
@dataclass(frozen=True)
class StreamingLLM(SelectionBase):
    """StreamingLLM (Xiao et al., ICLR 2024): keep the first ``sink_tokens`` attention sinks
    and the most recent ``window_tokens``; evict the oldest non-sink token (FIFO).
    ``sink_tokens=4`` is the paper's and kvpress' ``n_sink``; ``window_tokens=1020`` is kvsim's
    choice, giving a 1024-token cache."""

    sink_tokens: int = 4
    window_tokens: int = 1020

    def __post_init__(self) -> None:
        check_positive_int(self.sink_tokens, "sink_tokens", 0)
        check_positive_int(self.window_tokens, "window_tokens")

    def _kept(self, ctx: np.ndarray, prompt: np.ndarray, num_layers: int) -> np.ndarray:
        return _broadcast(np.minimum(ctx, self.sink_tokens + self.window_tokens), num_layers)

    def keep_mask(self, keys: Any, **_: Any) -> Any:
        from sim.policies.tensor import selection as ts

        return ts.streaming_mask(keys, self.sink_tokens, self.window_tokens)


@register("selection", "h2o")
@dataclass(frozen=True)
class H2O(BudgetMixin, SelectionBase):
    """H2O (Zhang et al., NeurIPS 2023): heavy hitters by accumulated attention plus recent
    tokens, evicted greedily at every decode step. Paper default: 20% of the cache, half heavy
    hitters and half recent (``recent_fraction=0.5``). The budget is a fraction of the current
    context, as in the paper's ``heavy_budget_ratio · seq_len``."""

    budget_fraction: float | None = 0.2
    budget_tokens: int | None = None
    recent_fraction: float = 0.5

    def __post_init__(self) -> None:
        self._check_budget()
        check_fraction(self.recent_fraction, "recent_fraction", allow_zero=True)

    def _kept(self, ctx: np.ndarray, prompt: np.ndarray, num_layers: int) -> np.ndarray:
        return _broadcast(self.budget(ctx), num_layers)

    def prefill_score_flops(self, model: ModelSpec, prompt_tokens: Any) -> np.ndarray:
        """Column sums of the causal prompt attention: ``P(P+1)/2`` adds per layer and head."""
        prompt = as_tokens(prompt_tokens, "prompt_tokens").astype(np.float64)
        return model.num_layers * model.num_heads * prompt * (prompt + 1) / 2

    def decode_score_flops(
        self, model: ModelSpec, context_tokens: Any, prompt_tokens: Any
    ) -> np.ndarray:
        """One add per held token per layer and query head to accumulate the new row."""
        held = self.stored_tokens(context_tokens, prompt_tokens)
        return model.num_layers * model.num_heads * held

    def keep_mask(self, keys: Any, *, attention: Any, **_: Any) -> Any:
        from sim.policies.tensor import selection as ts

        budget = int(self.budget(np.array([keys.shape[-2]]))[0])
        return ts.h2o_mask(keys, attention, budget, self.recent_fraction)


@register("selection", "tova")
@dataclass(frozen=True)
class TOVA(BudgetMixin, SelectionBase):
    """TOVA (Oren et al., 2024): at each step evict the token with the lowest attention from
    the current query, averaged over heads (kvpress ``TOVAPress``: last query only, mean over
    heads, newest token kept). Default budget: 1/8 of the context, the paper's headline
    setting ("1/8 cache ≈ full quality")."""

    budget_fraction: float | None = 0.125
    budget_tokens: int | None = None

    def __post_init__(self) -> None:
        self._check_budget()

    def _kept(self, ctx: np.ndarray, prompt: np.ndarray, num_layers: int) -> np.ndarray:
        return _broadcast(self.budget(ctx), num_layers)

    def decode_score_flops(
        self, model: ModelSpec, context_tokens: Any, prompt_tokens: Any
    ) -> np.ndarray:
        """Averaging the current query's weights over heads: one add per head and token."""
        held = self.stored_tokens(context_tokens, prompt_tokens)
        return model.num_layers * model.num_heads * held

    def keep_mask(self, keys: Any, *, attention: Any, **_: Any) -> Any:
        from sim.policies.tensor import selection as ts

        budget = int(self.budget(np.array([keys.shape[-2]]))[0])
        return ts.tova_mask(keys, attention, budget)


@dataclass(frozen=True)
class _WindowScored(BudgetMixin, SelectionBase):
    """Shared parameters of observation-window methods (SnapKV and its descendants)."""

    budget_tokens: int | None = 2048
    budget_fraction: float | None = None
    window_tokens: int = 32
    kernel_size: int = 5
    pooling: str = "avg"

    def __post_init__(self) -> None:
        self._check_budget()
        check_positive_int(self.window_tokens, "window_tokens")
        check_positive_int(self.kernel_size, "kernel_size")
        if self.kernel_size % 2 == 0:
            raise KvsimError(
                f"must be odd (same-length pooling), got {self.kernel_size}", field="kernel_size"
            )
        check_choice(self.pooling, "pooling", POOLINGS)
        if self.budget_tokens is not None and self.budget_tokens <= self.window_tokens:
            raise KvsimError(
                f"must exceed window_tokens {self.window_tokens} (KVCache-Factory asserts "
                f"budget - window > 0), got {self.budget_tokens}",
                field="budget_tokens",
            )

    def _kept(self, ctx: np.ndarray, prompt: np.ndarray, num_layers: int) -> np.ndarray:
        return _broadcast(prefill_once(ctx, prompt, self.budget(prompt)), num_layers)

    def prefill_score_flops(self, model: ModelSpec, prompt_tokens: Any) -> np.ndarray:
        prompt = as_tokens(prompt_tokens, "prompt_tokens")
        compresses = prompt > self.budget(prompt)
        return np.where(compresses, _window_scoring_flops(model, prompt, self.window_tokens), 0.0)


@register("selection", "snapkv")
@dataclass(frozen=True)
class SnapKV(_WindowScored):
    """SnapKV (Li et al., NeurIPS 2024): once at prefill, score each prefix token by the
    attention it receives from the last ``window_tokens`` prompt queries, smooth with 1-D
    pooling (``kernel_size``), keep the top ``budget − window`` plus the window; decoded
    tokens are appended. Defaults are KVCache-Factory's ``SnapKVCluster`` class defaults
    (window 32, kernel 5, avg-pool, ``max_capacity_prompt`` 4096)."""

    budget_tokens: int | None = 4096

    def keep_mask(self, keys: Any, *, queries: Any = None, attention: Any = None, **_: Any) -> Any:
        from sim.policies.tensor import selection as ts

        budget = int(self.budget(np.array([keys.shape[-2]]))[0])
        scores = ts.window_scores(
            keys, queries, attention, self.window_tokens, self.kernel_size, self.pooling
        )
        return ts.snapkv_mask(scores, keys.shape[-2], budget, self.window_tokens)


def pyramid_layer_budgets(
    prompt_tokens: np.ndarray, budget: np.ndarray, window: int, beta: int, num_layers: int
) -> np.ndarray:
    """PyramidKV per-layer prompt tokens kept (window included), KVCache-Factory's
    ``PyramidKVCluster.update_kv`` exactly (reference §1.2, §3.1), for prompts of ``n`` tokens
    and a per-layer budget ``B`` (``max_capacity_prompt``):

    * ``n < B``: no compression; ``n < 2(B−w)``: uniform ``B``;
    * else ``min = (B−w)//β``, ``max = 2(B−w) − min``; if ``max ≥ n−w``: ``max = n−w``,
      ``min = 2(B−w) − max``; ``steps = (max−min)//(L−1)``; layer ℓ keeps
      ``max − ℓ·steps + w``.

    A budget ``B <= w`` keeps the last ``min(n, B)`` tokens. The schedule's mean is ``(max+min)/2 = B−w`` before flooring ``steps``, so the layers
    together keep ``L·B`` plus ``L·r/2`` where ``r = (max−min) mod (L−1)``."""
    n = prompt_tokens.astype(np.int64)[:, None]
    b = budget.astype(np.int64)[:, None]
    base = b - window
    low = base // beta
    high = 2 * base - low
    clipped = high >= n - window
    high = np.where(clipped, n - window, high)
    low = np.where(clipped, 2 * base - high, low)
    steps = (high - low) // max(num_layers - 1, 1)
    layer = np.arange(num_layers, dtype=np.int64)[None, :]
    pyramid = high - layer * steps + window
    kept = np.where(n < b, n, np.where(n < 2 * base, b, pyramid))
    # A budget no larger than the window keeps the last ``B`` tokens (as SnapKV's mask does).
    kept = np.where(base <= 0, np.minimum(n, b), kept)
    return np.broadcast_to(kept, (prompt_tokens.size, num_layers)).astype(np.int64)


@register("selection", "pyramidkv")
@dataclass(frozen=True)
class PyramidKV(_WindowScored):
    """PyramidKV (Cai et al., 2024): SnapKV scoring with per-layer budgets decreasing
    arithmetically from the first layer to the last (:func:`pyramid_layer_budgets`,
    ``beta=20``). Defaults: KVCache-Factory class defaults (window 32, kernel 5, avg-pool,
    ``max_capacity_prompt`` 2048) and its ``beta=20``."""

    beta: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(self.beta, "beta")

    def layer_budgets(self, prompt_tokens: Any, num_layers: int) -> np.ndarray:
        prompt = as_tokens(prompt_tokens, "prompt_tokens")
        return pyramid_layer_budgets(
            prompt, self.nominal_budget(prompt), self.window_tokens, self.beta, num_layers
        )

    def _kept(self, ctx: np.ndarray, prompt: np.ndarray, num_layers: int) -> np.ndarray:
        kept_prompt = self.layer_budgets(prompt, num_layers)
        return prefill_once(ctx[:, None], prompt[:, None], kept_prompt).astype(np.float64)

    def keep_mask(
        self,
        keys: Any,
        *,
        queries: Any = None,
        attention: Any = None,
        layer: int = 0,
        num_layers: int = 1,
        **_: Any,
    ) -> Any:
        from sim.policies.tensor import selection as ts

        length = keys.shape[-2]
        budget = int(self.layer_budgets(np.array([length]), num_layers)[0, layer])
        scores = ts.window_scores(
            keys, queries, attention, self.window_tokens, self.kernel_size, self.pooling
        )
        return ts.snapkv_mask(scores, length, budget, self.window_tokens)


@register("selection", "ada_kv")
@dataclass(frozen=True)
class AdaKV(_WindowScored):
    """Ada-KV (Feng et al., 2024): head-wise budgets within a layer. SnapKV scores of all KV
    heads are pooled; each head first keeps its top ``alpha · (B−w)`` (safeguard floor), then
    the layer's ``H_kv · (B−w)`` slots go to the globally highest scores (kvpress
    ``AdaKVPress``, ``alpha_safeguard=0.2``); every head keeps the window. The layer keeps
    ``H_kv · B`` tokens, ``B`` per head on average. kvpress masks instead of shrinking
    (``physical=False``: no memory saved); KVCache-Factory's flattened variable-length cache
    frees it (``physical=True``). Window 32, kernel 7, max-pool: KVCache-Factory's AdaKV."""

    kernel_size: int = 7
    pooling: str = "max"
    alpha: float = 0.2
    physical: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction(self.alpha, "alpha", allow_zero=True)
        if not isinstance(self.physical, bool):
            raise KvsimError(f"must be true or false, got {self.physical!r}", field="physical")

    def keep_mask(self, keys: Any, *, queries: Any = None, attention: Any = None, **_: Any) -> Any:
        from sim.policies.tensor import selection as ts

        budget = int(self.budget(np.array([keys.shape[-2]]))[0])
        scores = ts.window_scores(
            keys, queries, attention, self.window_tokens, self.kernel_size, self.pooling
        )
        return ts.ada_kv_mask(scores, keys.shape[-2], budget, self.window_tokens, self.alpha)


@register("selection", "quest")
@dataclass(frozen=True)
class Quest(BudgetMixin, SelectionBase):
    """Quest (Tang et al., ICML 2024): query-aware page selection. All KV stays; each page of
    ``page_tokens`` keeps the per-channel min and max key; a decode query scores each page by
    ``Σ_c max(q_c·min_c, q_c·max_c)`` (an upper bound of q·k) and reads only the top
    ``ceil(budget/page)`` pages; the first ``dense_layers`` layers read everything. Saves
    bandwidth, not capacity. Paper: page 16, first two layers dense, budgets 256–4096
    (default 1024, inside that range). Reads are charged whole pages."""

    budget_tokens: int | None = 1024
    budget_fraction: float | None = None
    page_tokens: int = 16
    dense_layers: int = 2

    evicts: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self._check_budget()
        check_positive_int(self.page_tokens, "page_tokens")
        check_positive_int(self.dense_layers, "dense_layers", 0)

    def _sparse_layers(self, num_layers: int) -> np.ndarray:
        return np.arange(num_layers) >= self.dense_layers

    def _kept(self, ctx: np.ndarray, prompt: np.ndarray, num_layers: int) -> np.ndarray:
        return _broadcast(ctx, num_layers)

    def read_tokens_per_layer(
        self, context_tokens: Any, prompt_tokens: Any, num_layers: int = 1
    ) -> np.ndarray:
        ctx, _ = _inputs(context_tokens, prompt_tokens)
        pages = ceil_div(self.budget(ctx), self.page_tokens)
        sparse = np.minimum(ctx, pages * self.page_tokens).astype(np.float64)
        return np.where(
            self._sparse_layers(num_layers)[None, :], sparse[:, None], ctx[:, None] * 1.0
        )

    def index_tokens_per_layer(
        self, context_tokens: Any, prompt_tokens: Any, num_layers: int = 1
    ) -> np.ndarray:
        """Per page a min and a max key vector (``2·H_kv·d`` elements, the size of one token's
        K and V): ``ceil(n / page)`` token-equivalents in sparse layers."""
        ctx, _ = _inputs(context_tokens, prompt_tokens)
        pages = ceil_div(ctx, self.page_tokens).astype(np.float64)
        return np.where(self._sparse_layers(num_layers)[None, :], pages[:, None], 0.0)

    def decode_score_flops(
        self, model: ModelSpec, context_tokens: Any, prompt_tokens: Any
    ) -> np.ndarray:
        """Page scores: per page, channel and query head two products, a max and an add."""
        ctx, _ = _inputs(context_tokens, prompt_tokens)
        sparse = int(self._sparse_layers(model.num_layers).sum())
        pages = ceil_div(ctx, self.page_tokens)
        return sparse * model.num_heads * pages * 4.0 * model.head_dim

    def keep_mask(self, keys: Any, *, queries: Any, layer: int = 0, **_: Any) -> Any:
        """Tokens one decode query reads (``queries``: ``(H_q, d)``)."""
        from sim.policies.tensor import selection as ts

        if layer < self.dense_layers:
            return ts.full_mask(keys)
        budget = int(self.budget(np.array([keys.shape[-2]]))[0])
        return ts.quest_mask(keys, queries, budget, self.page_tokens)


@register("selection", "knorm")
@dataclass(frozen=True)
class KNorm(BudgetMixin, SelectionBase):
    """L2-norm selection (Devoto et al., EMNLP 2024): keep the keys with the lowest L2 norm,
    once at prefill; no attention needed. Default: kvpress' evaluation default for ``knorm``
    (``compression_ratio=0.5``: keep half); ``dense_layers=0`` as kvpress (KVCache-Factory
    skips layers 0 and 1)."""

    budget_fraction: float | None = 0.5
    budget_tokens: int | None = None
    dense_layers: int = 0

    def __post_init__(self) -> None:
        self._check_budget()
        check_positive_int(self.dense_layers, "dense_layers", 0)

    def _kept(self, ctx: np.ndarray, prompt: np.ndarray, num_layers: int) -> np.ndarray:
        compressed = prefill_once(ctx, prompt, self.budget(prompt)).astype(np.float64)
        dense = np.arange(num_layers) < self.dense_layers
        return np.where(dense[None, :], ctx[:, None] * 1.0, compressed[:, None])

    def prefill_score_flops(self, model: ModelSpec, prompt_tokens: Any) -> np.ndarray:
        """A squared norm per key and KV head: ``2d`` FLOPs, in the compressed layers."""
        prompt = as_tokens(prompt_tokens, "prompt_tokens")
        layers = max(model.num_layers - self.dense_layers, 0)
        return layers * model.num_kv_heads * prompt * 2.0 * model.head_dim

    def keep_mask(self, keys: Any, *, layer: int = 0, **_: Any) -> Any:
        from sim.policies.tensor import selection as ts

        if layer < self.dense_layers:
            return ts.full_mask(keys)
        budget = int(self.budget(np.array([keys.shape[-2]]))[0])
        return ts.knorm_mask(keys, budget)


@register("selection", "duo_attention")
@dataclass(frozen=True)
class DuoAttention(SelectionBase):
    """DuoAttention (Xiao et al., ICLR 2025): heads split offline into retrieval heads (full
    KV) and streaming heads (``sink_tokens`` + recent ``window_tokens``).
    ``streaming_head_fraction`` is kvpress' ``head_compression_ratio`` (0.5 is kvsim's
    choice); sink 128 and recent 256 are kvpress' on-the-fly pattern. The paper's
    implementation frees streaming heads' memory (``physical=True``); kvpress masks them
    (``physical=False``)."""

    streaming_head_fraction: float = 0.5
    sink_tokens: int = 128
    window_tokens: int = 256
    physical: bool = True

    def __post_init__(self) -> None:
        check_fraction(self.streaming_head_fraction, "streaming_head_fraction", allow_zero=True)
        check_positive_int(self.sink_tokens, "sink_tokens", 0)
        check_positive_int(self.window_tokens, "window_tokens")
        if not isinstance(self.physical, bool):
            raise KvsimError(f"must be true or false, got {self.physical!r}", field="physical")

    def _kept(self, ctx: np.ndarray, prompt: np.ndarray, num_layers: int) -> np.ndarray:
        streaming = np.minimum(ctx, self.sink_tokens + self.window_tokens)
        f = self.streaming_head_fraction
        return _broadcast(f * streaming + (1 - f) * ctx, num_layers)

    def keep_mask(self, keys: Any, *, streaming_heads: Any, **_: Any) -> Any:
        """``streaming_heads``: ``(H_kv,)`` booleans from the offline head classification."""
        from sim.policies.tensor import selection as ts

        return ts.duo_mask(keys, streaming_heads, self.sink_tokens, self.window_tokens)
