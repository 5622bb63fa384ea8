"""Transformer architecture description and its KV, parameter and FLOP arithmetic.

KV bytes per token follow the reference formula (``shared/reference/models.md`` §3):
``2 (K and V) × layers × kv_heads × head_dim × bytes`` for MHA/GQA/MQA, and
``layers × (kv_lora_rank + qk_rope_head_dim) × bytes`` for DeepSeek's MLA (the compressed latent
plus the decoupled RoPE key, as vLLM and SGLang cache it). Sliding-window layers hold at most
``window`` tokens; cross-layer attention (CLA, Brandon et al. 2024) stores KV on one layer in
``kv_share_factor``.
"""

from __future__ import annotations

from dataclasses import dataclass

from hardware.errors import KvsimError
from workloads.kv_format import KvFormat, kv_format, weight_bytes_per_param

ATTENTION_KINDS = ("mha", "gqa", "mqa", "mla")
SLIDING_PATTERNS = ("none", "all", "alternate")


@dataclass(frozen=True)
class MoeSpec:
    """Mixture-of-experts FFN: ``num_experts`` routed experts of ``expert_ffn_size``, of which
    ``active_experts`` run per token, plus ``shared_experts`` that always run; the first
    ``dense_layers`` layers use the dense FFN of ``ModelSpec.ffn_size`` instead."""

    num_experts: int
    active_experts: int
    expert_ffn_size: int
    shared_experts: int = 0
    dense_layers: int = 0

    def __post_init__(self) -> None:
        for name in ("num_experts", "active_experts", "expert_ffn_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise KvsimError(f"must be a positive integer, got {value!r}", field=name)
        for name in ("shared_experts", "dense_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise KvsimError(f"must be a non-negative integer, got {value!r}", field=name)
        if self.active_experts > self.num_experts:
            raise KvsimError(
                f"{self.active_experts} active experts exceed {self.num_experts} experts",
                field="active_experts",
            )


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer, enough to count its bytes and FLOPs exactly."""

    id: str
    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_size: int
    vocab_size: int
    max_context_tokens: int
    attention: str = "gqa"
    gated_ffn: bool = True
    tied_embeddings: bool = False
    rope_theta: float = 10000.0
    # MLA (DeepSeek-V2/V3): latent ranks and per-head dims.
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    # Sliding-window attention.
    sliding_window_tokens: int | None = None
    sliding_window_pattern: str = "none"
    # Cross-layer KV sharing: one KV-holding layer per ``kv_share_factor`` layers.
    kv_share_factor: int = 1
    moe: MoeSpec | None = None
    source: str = ""

    def __post_init__(self) -> None:
        positive = (
            "num_layers",
            "hidden_size",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "ffn_size",
            "vocab_size",
            "max_context_tokens",
            "kv_share_factor",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise KvsimError(
                    f"must be a positive integer, got {value!r}", source=self.id, field=name
                )
        for name in (
            "kv_lora_rank",
            "q_lora_rank",
            "qk_rope_head_dim",
            "qk_nope_head_dim",
            "v_head_dim",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise KvsimError(
                    f"must be a non-negative integer, got {value!r}", source=self.id, field=name
                )
        window = self.sliding_window_tokens
        if window is not None and (not isinstance(window, int) or window <= 0):
            raise KvsimError(
                f"must be a positive integer, got {window!r}",
                source=self.id,
                field="sliding_window_tokens",
            )
        if self.moe is not None and self.moe.dense_layers > self.num_layers:
            raise KvsimError(
                f"{self.moe.dense_layers} dense layers exceed {self.num_layers} layers",
                source=self.id,
                field="moe.dense_layers",
            )
        if self.attention not in ATTENTION_KINDS:
            raise KvsimError(
                f"unknown attention kind {self.attention!r}; expected one of {ATTENTION_KINDS}",
                source=self.id,
                field="attention",
            )
        if self.num_heads % self.num_kv_heads:
            raise KvsimError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}",
                source=self.id,
                field="num_kv_heads",
            )
        expected_kv = {"mha": self.num_heads, "mqa": 1}.get(self.attention)
        if expected_kv is not None and self.num_kv_heads != expected_kv:
            raise KvsimError(
                f"{self.attention.upper()} needs {expected_kv} KV heads, got {self.num_kv_heads}",
                source=self.id,
                field="num_kv_heads",
            )
        if self.attention == "mla":
            for name in ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"):
                if getattr(self, name) <= 0:
                    raise KvsimError("MLA needs a value > 0", source=self.id, field=name)
        if self.sliding_window_pattern not in SLIDING_PATTERNS:
            raise KvsimError(
                f"unknown pattern {self.sliding_window_pattern!r}; expected one of {SLIDING_PATTERNS}",
                source=self.id,
                field="sliding_window_pattern",
            )
        if self.sliding_window_pattern != "none" and not self.sliding_window_tokens:
            raise KvsimError(
                "a sliding-window pattern needs sliding_window_tokens > 0",
                source=self.id,
                field="sliding_window_tokens",
            )

    # ---- layer structure -------------------------------------------------------------
    def is_sliding_layer(self, layer: int) -> bool:
        """Gemma-2 alternates, sliding on even 0-based layers (transformers' Gemma2Config:
        layer i slides when i+1 is odd); Mistral-7B-v0.1 slides on every layer."""
        if self.sliding_window_pattern == "all":
            return True
        if self.sliding_window_pattern == "alternate":
            return layer % 2 == 0
        return False

    def layer_window_tokens(self, layer: int) -> int | None:
        return self.sliding_window_tokens if self.is_sliding_layer(layer) else None

    def holds_kv(self, layer: int) -> bool:
        """Under CLA only the first layer of each sharing group stores KV."""
        return layer % self.kv_share_factor == 0

    @property
    def kv_layers(self) -> int:
        return -(-self.num_layers // self.kv_share_factor)

    def is_moe_layer(self, layer: int) -> bool:
        return self.moe is not None and layer >= self.moe.dense_layers

    # ---- KV bytes --------------------------------------------------------------------
    @property
    def kv_elements_per_token_per_layer(self) -> int:
        if self.attention == "mla":
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.num_kv_heads * self.head_dim

    def kv_bytes_per_token(self, kv_dtype: str | KvFormat = "fp16") -> float:
        """Bytes of KV one token adds across all KV-holding layers (no window cap)."""
        fmt = kv_format(kv_dtype) if isinstance(kv_dtype, str) else kv_dtype
        return self.kv_layers * self.kv_elements_per_token_per_layer * fmt.bytes_per_element

    def kv_bytes_for_sequence(self, tokens: int, kv_dtype: str | KvFormat = "fp16") -> float:
        """KV bytes of one sequence of ``tokens``, capping sliding-window layers at their
        window (reference: Gemma-2-9B at 8k holds 0.75 of the naive figure)."""
        if tokens < 0:
            raise KvsimError(f"must be >= 0, got {tokens}", field="tokens")
        fmt = kv_format(kv_dtype) if isinstance(kv_dtype, str) else kv_dtype
        per_layer = self.kv_elements_per_token_per_layer * fmt.bytes_per_element
        held = 0
        for layer in range(self.num_layers):
            if self.holds_kv(layer):
                window = self.layer_window_tokens(layer)
                held += tokens if window is None else min(tokens, window)
        return held * per_layer

    # ---- parameters ------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        """Width of the concatenated query heads (MLA: nope + rope per head)."""
        if self.attention == "mla":
            return self.num_heads * (self.qk_nope_head_dim + self.qk_rope_head_dim)
        return self.num_heads * self.head_dim

    @property
    def attention_params_per_layer(self) -> int:
        h = self.hidden_size
        if self.attention == "mla":
            heads = self.num_heads
            q = (
                h * self.q_lora_rank + self.q_lora_rank * self.q_dim
                if self.q_lora_rank
                else h * self.q_dim
            )
            kv_down = h * (self.kv_lora_rank + self.qk_rope_head_dim)
            kv_up = self.kv_lora_rank * heads * (self.qk_nope_head_dim + self.v_head_dim)
            out = heads * self.v_head_dim * h
            return q + kv_down + kv_up + out
        kv = 2 * h * self.num_kv_heads * self.head_dim
        return h * self.q_dim + kv + self.q_dim * h

    @property
    def _ffn_matrices(self) -> int:
        return 3 if self.gated_ffn else 2

    def ffn_params(self, layer: int) -> int:
        """All FFN weights of ``layer`` (every expert, shared experts and router for MoE)."""
        h = self.hidden_size
        if not self.is_moe_layer(layer):
            return self._ffn_matrices * h * self.ffn_size
        moe = self.moe
        assert moe is not None
        per_expert = self._ffn_matrices * h * moe.expert_ffn_size
        return (moe.num_experts + moe.shared_experts) * per_expert + h * moe.num_experts

    def active_ffn_params(self, layer: int) -> int:
        """FFN weights one token multiplies through in ``layer``."""
        h = self.hidden_size
        if not self.is_moe_layer(layer):
            return self._ffn_matrices * h * self.ffn_size
        moe = self.moe
        assert moe is not None
        per_expert = self._ffn_matrices * h * moe.expert_ffn_size
        return (moe.active_experts + moe.shared_experts) * per_expert + h * moe.num_experts

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def param_count(self) -> int:
        """Total weights, counting norms (2·hidden per layer + final) and untied LM head."""
        layers = sum(
            self.attention_params_per_layer + self.ffn_params(i) + 2 * self.hidden_size
            for i in range(self.num_layers)
        )
        head = 0 if self.tied_embeddings else self.lm_head_params
        return layers + self.embedding_params + head + self.hidden_size

    def active_param_count(self) -> int:
        """Weights touched per token (MoE: only active and shared experts)."""
        layers = sum(
            self.attention_params_per_layer + self.active_ffn_params(i) + 2 * self.hidden_size
            for i in range(self.num_layers)
        )
        head = 0 if self.tied_embeddings else self.lm_head_params
        return layers + self.embedding_params + head + self.hidden_size

    def param_bytes(self, weight_dtype: str = "bf16") -> float:
        return self.param_count() * weight_bytes_per_param(weight_dtype)

    # ---- FLOPs -------------------------------------------------------------------------
    def linear_flops_per_token(self) -> float:
        """2 FLOPs per multiply-accumulate over every active weight matrix, LM head included,
        embedding lookup excluded (Kaplan et al. 2020's 2N rule)."""
        per_layer = sum(
            self.attention_params_per_layer + self.active_ffn_params(i)
            for i in range(self.num_layers)
        )
        return 2.0 * (per_layer + self.lm_head_params)

    def attention_flops_per_token(self, context_tokens: int) -> float:
        """Score (QKᵀ) and value (PV) FLOPs for one query attending ``context_tokens`` keys in
        every layer, windows respected: 2·2·heads·head_dim per key (MLA: qk and v dims)."""
        if self.attention == "mla":
            per_key = 2 * self.num_heads * (self.q_dim // self.num_heads + self.v_head_dim)
        else:
            per_key = 4 * self.num_heads * self.head_dim
        keys = 0
        for layer in range(self.num_layers):
            window = self.layer_window_tokens(layer)
            keys += context_tokens if window is None else min(context_tokens, window)
        return float(per_key * keys)
