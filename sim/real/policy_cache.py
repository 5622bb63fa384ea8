"""The policy KV cache: a :class:`~sim.real.backend.KvBackend` that applies a
:class:`~sim.policies.KvStrategy`'s tensor faces to a real :class:`LlamaModel`, as a serving
engine would.

Per sequence and per layer it holds the kept KV as per-token rows of each KV head (or of each
Palu head group): original positions, the keys and values in the strategy's storage format, a
visibility flag (masking-only methods) and, where a method scores tokens by attention, the
attention each token has received. Heads that keep different tokens are padded with position
``-1`` and masked, so one batched attention serves every sequence.

**When each policy acts** (every step = after each :meth:`PolicyKvBackend.step`; a step's new
tokens are written first, attended together with the kept KV, then the policy runs):

* StreamingLLM (Xiao et al., ICLR 2024): evicts to ``sinks + window`` every step; decode
  queries (positions past the prompt) also see only their own sinks + last ``window``
  positions (:func:`~sim.policies.tensor.selection.streaming_visible`), so a decode chunk
  attends exactly as token-by-token decoding does.
* H2O (Zhang et al., NeurIPS 2023): accumulates each token's attention over all queries
  (prompt included) and evicts to the budget of the current context every step
  (:func:`~sim.policies.tensor.selection.h2o_mask`). TOVA (Oren et al., 2024): evicts every
  step by the last query's attention averaged over heads (``tova_mask``).
* SnapKV (Li et al., 2024), PyramidKV (Cai et al., 2024), Ada-KV (Feng et al., 2024) and
  K-norm (Devoto et al., 2024): once, when the prompt completes (KVCache-Factory's
  ``update_kv``), from the last ``window_tokens`` prompt queries kept during prefill (the
  policy's own ``keep_mask``); decoded tokens are appended. Ada-KV with ``physical=False``
  masks instead of evicting (kvpress), so it stores everything.
* Quest (Tang et al., ICML 2024): keeps everything; each decode query of a sparse layer reads
  only its top pages (:func:`~sim.policies.tensor.selection.quest_query_mask`, with page
  summaries over the keys that query can read, so a decode chunk selects as token-by-token
  decoding does; summaries are computed at read time, not held).
* DuoAttention (Xiao et al., ICLR 2025): when the prompt completes, KV heads are classified by
  kvpress' on-the-fly score (``duo_attention_on_the_fly``: attention of the last of 500
  RoPE-rotated copies of the mean query over copies of the mean key; the area under its
  cumulative curve) computed from this sequence's prompt, the ``streaming_head_fraction``
  lowest-scoring heads over all layers stream (sinks + window, as StreamingLLM), the others
  keep everything.
* Quantization: fp8, int8, int4 and int2 encode each token at write (codes plus fp16-counted
  scales); fp8's scale is per written tensor (one per step and layer). KIVI (Liu et al., ICML
  2024) writes new tokens to a full-precision residual and, after each step, quantizes keys
  per channel in blocks of ``R`` once ``R`` have gathered and values per token once they fall
  out of the last ``R``.
* Palu (Chang et al., 2024): caches rank-``r`` latents of the pre-RoPE keys and of the values
  per head group (``factorize``); keys are rebuilt and rotated at their positions on read.
* Similarity merging (CaM/D2O): when the selection evicts, evicted values are folded into the
  most similar kept token weighted by accumulated attention, and the merged values re-encoded.
  MiniCache (Liu et al., 2024): after each step the step's tokens of each paired layer are
  merged (SLERP direction + per-layer norms, ``floor(ρ·m)`` least similar tokens kept exact).

**Positions.** Kept tokens keep their original RoPE positions (keys are rotated once, at
write) and queries use their true positions, as kvpress and KVCache-Factory do. StreamingLLM
re-numbers positions inside its cache to stay inside the trained context for unbounded
streams; kvsim's texts stay inside the model's context (8,192 tokens for SmolLM2), where
original positions are in-distribution and every policy shares one convention.

**Bytes.** :meth:`PolicyKvBackend.stored_bytes` counts the held tokens in the policy's format
as :meth:`KvStrategy.kv_bytes` does (``stored_bytes``): bit-packed codes, fp16 scales and
zeros, 16-bit unquantized values. The CPU tensors themselves hold codes one per byte and
unquantized values at the model's dtype.

**Combinations.** KIVI and MiniCache need every token kept (selection ``full`` or ``quest``:
KIVI's key groups span tokens, MiniCache's direction is shared by two layers); Palu needs
selections that keep the same tokens in every head (``full``, ``quest``, ``streaming_llm``,
``tova``); similarity merging needs equal kept counts per head. Others raise a ``KvsimError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hardware.errors import KvsimError
from sim.policies.compose import KvStrategy
from sim.policies.low_rank import Palu
from sim.policies.merging import MiniCache, SimilarityMerge
from sim.policies.quantization import Bf16, Fp8, Fp16, Int8, Kivi, _GroupedInt
from sim.policies.selection import (
    H2O,
    TOVA,
    AdaKV,
    DuoAttention,
    FullCache,
    KNorm,
    Quest,
    StreamingLLM,
    _WindowScored,
)
from sim.policies.tensor import low_rank as tl
from sim.policies.tensor import merging as tm
from sim.policies.tensor import quantization as tq
from sim.policies.tensor import selection as ts
from sim.real.backend import SeqWork
from sim.real.model import LlamaModel, apply_rope, attend
from sim.real.weights import LlamaConfig
from workloads.model import ModelSpec

#: kvpress ``duo_attention_on_the_fly``: copies of the mean query and key scored.
DUO_SCORE_TOKENS = 500
FP16_BYTES = 2


def model_spec_of(config: LlamaConfig, model_id: str = "real") -> ModelSpec:
    """The :class:`ModelSpec` of a loaded model, for the simulation faces' counts."""
    heads, kv_heads = config.num_heads, config.num_kv_heads
    attention = "mha" if kv_heads == heads else "mqa" if kv_heads == 1 else "gqa"
    return ModelSpec(
        id=model_id,
        name=model_id,
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=config.head_dim,
        ffn_size=config.intermediate_size,
        vocab_size=config.vocab_size,
        max_context_tokens=config.max_position_embeddings,
        attention=attention,
        tied_embeddings=config.tie_word_embeddings,
        rope_theta=config.rope_theta,
    )


# ---- per-token rows ----------------------------------------------------------------------
class _Rows:
    """Named per-token tensors ``[heads, n, ...]`` sharing one token axis, grown by doubling
    so that an append copies only the new rows."""

    def __init__(self) -> None:
        self._data: dict[str, torch.Tensor] = {}
        self.length = 0

    def append(self, rows: dict[str, torch.Tensor]) -> None:
        new = next(iter(rows.values())).shape[1]
        need = self.length + new
        for name, value in rows.items():
            buffer = self._data.get(name)
            if buffer is None or buffer.shape[1] < need:
                capacity = max(need, 2 * (0 if buffer is None else buffer.shape[1]), 64)
                grown = value.new_zeros((value.shape[0], capacity, *value.shape[2:]))
                if buffer is not None:
                    grown[:, : self.length] = buffer[:, : self.length]
                self._data[name] = buffer = grown
            buffer[:, self.length : need] = value
        self.length = need

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._data[name][:, : self.length]

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """The rows named ``prefix.*``, keyed without the prefix."""
        start = len(prefix) + 1
        return {n[start:]: self[n] for n in self._data if n.startswith(prefix + ".")}

    def put(self, name: str, value: torch.Tensor, start: int = 0) -> None:
        """Overwrite rows ``start ..`` of ``name`` in place."""
        self._data[name][:, start : start + value.shape[1]] = value

    def select(self, index: torch.Tensor) -> None:
        """Keep rows ``index[h]`` (``[heads, k]``, any order) in each head, compacted."""
        keep = index.shape[1]
        for buffer in self._data.values():
            shape = (*index.shape, *([1] * (buffer.dim() - 2)))
            gathered = buffer[:, : self.length].gather(
                1, index.view(shape).expand(-1, -1, *buffer.shape[2:])
            )
            buffer[:, :keep] = gathered
        self.length = keep

    def move(self, device: torch.device | str) -> None:
        self._data = {n: t.to(device) for n, t in self._data.items()}


# ---- storage formats ---------------------------------------------------------------------
class _Plain:
    """Unquantized (fp16/bf16 policies, or none): held at the model's dtype, counted at 16
    bits per element as the simulation face's baseline."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": x.to(self.dtype)}

    def decode(self, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        return rows["x"]

    def settle(self, rows: _Rows, prefix: str) -> None:
        """Nothing to do after a step (KIVI quantizes its residual here)."""

    def nbytes(self, rows: dict[str, torch.Tensor], valid: torch.Tensor) -> float:
        return float(valid.sum()) * rows["x"].shape[-1] * FP16_BYTES


class _PerToken(_Plain):
    """fp8, int8, int4, int2: each head vector encoded when written, with the policy's
    ``quantize``/``dequantize`` faces."""

    def __init__(self, policy: Any, dim: int) -> None:
        self.policy = policy
        if isinstance(policy, _GroupedInt):
            if dim % policy.group_size:
                raise KvsimError(
                    f"group_size {policy.group_size} must divide the stored vector length {dim}",
                    field="policies.quantization.group_size",
                )
            self.row_bytes = dim * policy.bits / 8 + 2 * FP16_BYTES * dim // policy.group_size
        elif isinstance(policy, Int8):
            self.row_bytes = dim + FP16_BYTES
        else:  # fp8: one scale per tensor, not counted (simulation face)
            self.row_bytes = float(dim)

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        codes, scale, zero = self.policy.quantize(x)
        if scale.dim() == 0:  # fp8's per-tensor scale, copied to each row it covers
            scale = scale.expand(*x.shape[:2], 1)
        rows = {"q": codes, "s": scale}
        return rows if zero is None else {**rows, "z": zero}

    def decode(self, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.policy.dequantize(rows["q"], rows["s"], rows.get("z"))

    def nbytes(self, rows: dict[str, torch.Tensor], valid: torch.Tensor) -> float:
        return float(valid.sum()) * self.row_bytes


class _KiviSide(_Plain):
    """One side (keys or values) of a KIVI cache: rows start in a full-precision (fp16)
    residual and are quantized in place by :meth:`settle` (flag ``isq``). Keys: per channel,
    groups of ``G`` tokens, a block of ``R`` at a time once ``R`` residual keys gathered;
    values: per token, groups of ``G`` channels, once they fall out of the last ``R``."""

    def __init__(self, policy: Kivi, dim: int, keys: bool) -> None:
        if policy.residual_tokens < policy.group_size:
            raise KvsimError(
                "the real KIVI cache quantizes keys a block of residual_tokens at a time; "
                f"residual_tokens must be >= group_size {policy.group_size}",
                field="policies.quantization.residual_tokens",
            )
        if not keys and dim % policy.group_size:
            raise KvsimError(
                f"group_size {policy.group_size} must divide the stored vector length {dim}",
                field="policies.quantization.group_size",
            )
        self.bits, self.group, self.residual, self.keys = (
            policy.bits,
            policy.group_size,
            policy.residual_tokens,
            keys,
        )
        groups = dim if keys else dim // self.group  # scale columns per row
        self.meta_shape = (dim,) if keys else (groups, 1)
        self.code_shape = (dim,) if keys else (groups, self.group)
        metadata = 2 * FP16_BYTES * (dim / self.group if keys else math.ceil(dim / self.group))
        self.quantized_row_bytes = dim * self.bits / 8 + metadata
        self.residual_row_bytes = FP16_BYTES * dim

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        heads, new = x.shape[:2]
        zeros = x.new_zeros((heads, new, *self.meta_shape), dtype=torch.float32)
        return {
            "q": torch.zeros((heads, new, *self.code_shape), dtype=torch.uint8, device=x.device),
            "s": zeros,
            "z": zeros.clone(),
            "x": x.half(),
            "isq": torch.zeros((heads, new), dtype=torch.bool, device=x.device),
        }

    def decode(self, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        codes, scale, zero = rows["q"], rows["s"], rows["z"]
        if self.keys:  # per-channel statistics copied to each token of the group
            codes, scale, zero = codes.unsqueeze(-1), scale.unsqueeze(-1), zero.unsqueeze(-1)
        quantized = tq.grouped_dequantize(codes, scale, zero)
        return torch.where(rows["isq"].unsqueeze(-1), quantized, rows["x"].float())

    def settle(self, rows: _Rows, prefix: str) -> None:
        flags = rows[f"{prefix}.isq"]
        first = int(flags[0].sum())  # quantized rows precede the residual (no eviction)
        pending = rows.length - first
        count = (pending // self.residual) * self.residual if self.keys else pending - self.residual
        if count <= 0:
            return
        block = rows[f"{prefix}.x"][:, first : first + count].float()
        if self.keys:
            codes, scale, zero = tq.grouped_quantize(block.transpose(1, 2), self.bits, self.group)
            heads, dim = block.shape[0], block.shape[2]

            def per_token(t: torch.Tensor) -> torch.Tensor:
                return t.expand(*t.shape[:-1], self.group).reshape(heads, dim, count).mT

            codes, scale, zero = (
                codes.reshape(heads, dim, count).mT,
                per_token(scale),
                per_token(zero),
            )
        else:
            codes, scale, zero = tq.grouped_quantize(block, self.bits, self.group)
        for name, value in (("q", codes), ("s", scale), ("z", zero)):
            rows.put(f"{prefix}.{name}", value, first)
        rows.put(f"{prefix}.isq", torch.ones_like(flags[:, :count]), first)

    def nbytes(self, rows: dict[str, torch.Tensor], valid: torch.Tensor) -> float:
        quantized = float((rows["isq"] & valid).sum())
        residual = float(valid.sum()) - quantized
        return quantized * self.quantized_row_bytes + residual * self.residual_row_bytes


# ---- low rank ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _PaluFactors:
    """Per layer and head group: ``down`` ``[G, r, hidden]`` and ``up`` ``[G, g·d, r]`` for
    keys and for values (:meth:`Palu.factorize`)."""

    key_down: list[torch.Tensor]
    key_up: list[torch.Tensor]
    value_down: list[torch.Tensor]
    value_up: list[torch.Tensor]
    heads_per_group: int


def _palu_factors(model: LlamaModel, palu: Palu) -> list[_PaluFactors]:
    config = model.config
    group = min(palu.head_group_size, config.num_kv_heads)
    if config.num_kv_heads % group:
        raise KvsimError(
            f"{config.num_kv_heads} KV heads do not split into groups of {group}",
            field="policies.low_rank.head_group_size",
        )
    rows = group * config.head_dim
    out = []
    for block in model.layers:
        parts: dict[str, list[torch.Tensor]] = {"kd": [], "ku": [], "vd": [], "vu": []}
        for side, weight in (
            ("k", block.self_attn.k_proj.weight),
            ("v", block.self_attn.v_proj.weight),
        ):
            for start in range(0, weight.shape[0], rows):
                down, up = palu.factorize(weight[start : start + rows].detach())
                parts[side + "d"].append(down)
                parts[side + "u"].append(up)
        out.append(_PaluFactors(parts["kd"], parts["ku"], parts["vd"], parts["vu"], group))
    return out


# ---- per-sequence state ------------------------------------------------------------------
@dataclass
class _Pair:
    """A MiniCache layer pair: merged rows (shared direction, per-layer norms, retained exact
    rows) and each layer's tokens of the current step, merged after it."""

    merged: _Rows = field(default_factory=_Rows)
    pending: tuple[_Rows, _Rows] = field(default_factory=lambda: (_Rows(), _Rows()))
    restored: dict[str, torch.Tensor] | None = None


@dataclass
class _Sequence:
    prompt_tokens: int
    layers: list[_Rows]
    pairs: dict[int, _Pair]
    context_tokens: int = 0
    prompt_done: bool = False
    offloaded: bool = False
    window_queries: list[torch.Tensor | None] = field(default_factory=list)
    last_probs: list[torch.Tensor | None] = field(default_factory=list)
    duo_sums: torch.Tensor | None = None  # [L, H + H_kv, d] pre-RoPE q and k over the prompt
    streaming_heads: torch.Tensor | None = None  # [L, H_kv] DuoAttention classification


@dataclass(frozen=True)
class _StepView:
    """What one layer of one sequence attends to: ``[H_kv, n, d]`` keys and values, their
    positions and a readable flag ``[H_kv, n]``."""

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    readable: torch.Tensor


class PolicyKvBackend:
    """The KV of live sequences of ``model`` under ``strategy`` (module docstring).

    ``model_id`` names the model for error messages and the simulation-face counts.
    """

    def __init__(self, model: LlamaModel, strategy: KvStrategy, model_id: str = "real") -> None:
        self.model = model
        self.strategy = strategy
        self.config = model.config
        self.spec = model_spec_of(model.config, model_id)
        self.heads, self.kv_heads, self.head_dim = (
            self.config.num_heads,
            self.config.num_kv_heads,
            self.config.head_dim,
        )
        self.group = self.heads // self.kv_heads
        self.num_layers = self.config.num_layers
        self.selection = strategy.selection
        self._check_strategy()
        self.palu = (
            _palu_factors(model, strategy.low_rank) if strategy.low_rank is not None else None
        )
        store_heads_per_group = self.palu[0].heads_per_group if self.palu else 1
        self.store_group = store_heads_per_group
        dim = self.palu[0].key_down[0].shape[0] if self.palu else self.head_dim
        self.codecs = (self._codec(dim, keys=True), self._codec(dim, keys=False))
        merging = strategy.merging
        self.pairs = dict(merging.merged_pairs(self.spec)) if isinstance(merging, MiniCache) else {}
        self.pair_of = {b: a for a, b in self.pairs.items()} | {a: a for a in self.pairs}
        self.scores_needed = isinstance(self.selection, H2O) or isinstance(merging, SimilarityMerge)
        self.sequences: dict[int, _Sequence] = {}

    # ---- configuration ---------------------------------------------------------------------
    def _check_strategy(self) -> None:
        sel, strategy = self.selection, self.strategy
        known = (FullCache, StreamingLLM, H2O, TOVA, _WindowScored, KNorm, Quest, DuoAttention)
        if not isinstance(sel, known):
            raise KvsimError(
                f"the real execution mode has no tensor path for selection {sel.name!r}",
                field="policies.selection.name",
            )
        q = strategy.quantization
        if not isinstance(q, Fp16 | Fp8 | Int8 | _GroupedInt | Kivi):
            raise KvsimError(
                f"the real execution mode has no tensor path for quantization {q.name!r}",
                field="policies.quantization.name",
            )
        keeps_all = isinstance(sel, FullCache | Quest)
        if isinstance(q, Kivi) and not keeps_all:
            raise KvsimError(
                "KIVI quantizes keys per channel across groups of tokens, so the real cache "
                f"pairs it only with selections that keep every token (full, quest), not {sel.name!r}",
                field="policies.quantization.name",
            )
        if isinstance(strategy.merging, MiniCache) and (
            not keeps_all or not isinstance(q, Fp16) or strategy.low_rank is not None
        ):
            raise KvsimError(
                "MiniCache shares one direction between two layers' tokens; the real cache "
                "supports it with unquantized storage, no low rank, and selection full or quest",
                field="policies.merging.name",
            )
        if strategy.merging is not None and not isinstance(
            strategy.merging, MiniCache | SimilarityMerge
        ):
            raise KvsimError(
                f"the real execution mode has no tensor path for merging {strategy.merging.name!r}",
                field="policies.merging.name",
            )
        if isinstance(strategy.merging, SimilarityMerge) and isinstance(sel, DuoAttention | AdaKV):
            raise KvsimError(
                "similarity merging folds evicted tokens into kept ones head by head with equal "
                f"counts; {sel.name!r} keeps different counts per head",
                field="policies.merging.name",
            )
        if strategy.low_rank is not None:
            if not isinstance(strategy.low_rank, Palu):
                raise KvsimError(
                    f"no tensor path for low rank {strategy.low_rank.name!r}",
                    field="policies.low_rank.name",
                )
            if not isinstance(sel, FullCache | Quest | StreamingLLM | TOVA):
                raise KvsimError(
                    "Palu caches one latent per head group, so the real cache pairs it with "
                    "selections that keep the same tokens in every head (full, quest, "
                    f"streaming_llm, tova), not {sel.name!r}",
                    field="policies.low_rank.name",
                )

    def _codec(self, dim: int, keys: bool) -> _Plain:
        q = self.strategy.quantization
        if isinstance(q, Kivi):
            return _KiviSide(q, dim, keys)
        if isinstance(q, Fp16 | Bf16):
            return _Plain(self.model.embed_tokens.weight.dtype)
        return _PerToken(q, dim)

    # ---- the KvBackend protocol -------------------------------------------------------------
    @torch.inference_mode()
    def step(self, work: Sequence[SeqWork], *, all_logits: bool = False) -> torch.Tensor:
        """One step over ``work`` (see :class:`~sim.real.backend.KvBackend`)."""
        states = [self._state(w) for w in work]
        device = self.model.device
        widths = [len(w.token_ids) for w in work]
        width = max(widths)
        tokens = torch.tensor(
            [list(w.token_ids) + [0] * (width - len(w.token_ids)) for w in work], device=device
        )
        offsets = torch.arange(width, device=device)
        starts = torch.tensor([w.start_position for w in work], device=device)
        positions = starts.unsqueeze(1) + offsets
        counts = torch.tensor(widths, device=device)
        valid = offsets < counts.unsqueeze(1)
        x = self.model.embed_tokens(tokens)
        cos, sin = self._rope(positions, x.dtype)
        for layer, block in enumerate(self.model.layers):
            x = x + self._attention(
                layer, block, block.input_layernorm(x), states, work, positions, valid, cos, sin
            )
            x = x + block.mlp(block.post_attention_layernorm(x))
        for state, w in zip(states, work, strict=True):
            state.context_tokens = w.start_position + len(w.token_ids)
            self._after_step(state)
        if not all_logits:
            x = x[torch.arange(len(work), device=device), counts - 1]
        head = self.model.embed_tokens if self.model.lm_head is None else self.model.lm_head
        return torch.nn.functional.linear(self.model.norm(x), head.weight).float()

    def release(self, seq_id: int) -> None:
        """Drop the sequence's KV."""
        self.sequences.pop(seq_id, None)

    def offload(self, seq_id: int) -> int:
        """Move the sequence's KV to host memory; bytes moved (in the policy's format)."""
        state = self._live(seq_id)
        moved = self._sequence_bytes(state)
        self._move(state, "cpu")
        state.offloaded = True
        return int(moved)

    def restore(self, seq_id: int) -> int:
        """Bring an offloaded sequence's KV back to the model's device; bytes moved."""
        state = self.sequences.get(seq_id)
        if state is None or not state.offloaded:
            raise KvsimError(f"sequence {seq_id} is not offloaded", field="seq_id")
        self._move(state, self.model.device)
        state.offloaded = False
        return int(self._sequence_bytes(state))

    def stored_bytes(self) -> int:
        """Bytes of KV held in device memory, in the policy's format, over live sequences."""
        return int(sum(self._sequence_bytes(s) for s in self.sequences.values() if not s.offloaded))

    # ---- inspection (tests, reports) --------------------------------------------------------
    def kept_tokens(self, seq_id: int) -> np.ndarray:
        """Tokens each layer keeps (readable by the method), averaged over KV heads."""
        state = self._live(seq_id)
        return np.array(
            [
                float(self._view(state, i).readable.sum()) / self.kv_heads
                for i in range(self.num_layers)
            ]
        )

    def stored_tokens(self, seq_id: int) -> np.ndarray:
        """Tokens each layer physically holds, averaged over KV heads."""
        state = self._live(seq_id)
        return np.array(
            [
                float((self._view(state, i).positions >= 0).sum()) / self.kv_heads
                for i in range(self.num_layers)
            ]
        )

    def kept_positions(self, seq_id: int, layer: int) -> list[list[int]]:
        """Sorted positions each KV head of ``layer`` keeps."""
        view = self._view(self._live(seq_id), layer)
        return [sorted(p[r].tolist()) for p, r in zip(view.positions, view.readable, strict=True)]

    def streaming_heads(self, seq_id: int) -> torch.Tensor | None:
        """DuoAttention's ``[layers, KV heads]`` streaming flags, once the prompt completed."""
        return self._live(seq_id).streaming_heads

    # ---- state -------------------------------------------------------------------------------
    def _live(self, seq_id: int) -> _Sequence:
        state = self.sequences.get(seq_id)
        if state is None:
            raise KvsimError(f"no live sequence {seq_id}", field="seq_id")
        return state

    def _state(self, w: SeqWork) -> _Sequence:
        if not w.token_ids:
            raise KvsimError(f"sequence {w.seq_id} has no new tokens", field="token_ids")
        state = self.sequences.get(w.seq_id)
        if state is None:
            if w.start_position != 0:
                raise KvsimError(
                    f"sequence {w.seq_id} is new but starts at position {w.start_position}",
                    field="start_position",
                )
            layers = [_Rows() for _ in range(self.num_layers)]
            pairs = {a: _Pair() for a in self.pairs}
            state = _Sequence(w.prompt_tokens, layers, pairs)
            state.window_queries = [None] * self.num_layers
            state.last_probs = [None] * self.num_layers
            self.sequences[w.seq_id] = state
        elif state.offloaded:
            raise KvsimError(f"sequence {w.seq_id} is offloaded; restore it first", field="seq_id")
        elif w.start_position != state.context_tokens:
            raise KvsimError(
                f"sequence {w.seq_id} holds {state.context_tokens} tokens but the step starts "
                f"at {w.start_position}",
                field="start_position",
            )
        return state

    def _move(self, state: _Sequence, device: torch.device | str) -> None:
        for rows in state.layers:
            rows.move(device)
        for pair in state.pairs.values():
            pair.merged.move(device)

    def _sequence_bytes(self, state: _Sequence) -> float:
        total = 0.0
        for layer, rows in enumerate(state.layers):
            if layer in self.pair_of or not rows.length:
                continue
            valid = rows["pos"] >= 0
            for side, codec in zip("kv", self.codecs, strict=True):
                total += codec.nbytes(rows.group(side), valid)
        for pair in state.pairs.values():
            total += self._pair_bytes(pair)
        return total

    def _pair_bytes(self, pair: _Pair) -> float:
        merged = pair.merged
        if not merged.length:
            return 0.0
        retained = float(merged["k.ret"].sum() + merged["v.ret"].sum())
        total_rows = 2.0 * merged["pos"].numel()  # head vectors of K and V
        # merged rows: a shared d-vector and a norm per layer; retained: both layers' rows
        per_merged = (self.head_dim + 2) * FP16_BYTES
        return (total_rows - retained) * per_merged + retained * 2 * self.head_dim * FP16_BYTES

    # ---- one layer of a step -------------------------------------------------------------------
    def _rope(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions.unsqueeze(-1).float() * self.model.inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def _attention(
        self,
        layer: int,
        block: Any,
        hidden: torch.Tensor,
        states: list[_Sequence],
        work: Sequence[SeqWork],
        positions: torch.Tensor,
        valid: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> torch.Tensor:
        attn = block.self_attn
        batch, width, _ = hidden.shape
        rope = (cos.unsqueeze(2), sin.unsqueeze(2))
        raw_q = attn.q_proj(hidden).view(batch, width, self.heads, self.head_dim)
        q = apply_rope(raw_q, *rope)
        raw_k = attn.k_proj(hidden).view(batch, width, self.kv_heads, self.head_dim)
        keys = apply_rope(raw_k, *rope)
        values = attn.v_proj(hidden).view(batch, width, self.kv_heads, self.head_dim)
        views = []
        for b, (state, w) in enumerate(zip(states, work, strict=True)):
            new = len(w.token_ids)
            if not state.prompt_done:
                self._observe_prompt(state, layer, w, q[b, :new], raw_q[b, :new], raw_k[b, :new])
            self._append(
                state, layer, hidden[b, :new], keys[b, :new], values[b, :new], positions[b, :new]
            )
            views.append(self._view(state, layer))
        mask = self._mask(layer, states, work, views, q, positions)
        length = mask.shape[-1]
        k_batch, v_batch = self._batch(views, length, q.dtype)
        need_probs = self.scores_needed or isinstance(self.selection, TOVA)
        out, probs = attend(
            q.transpose(1, 2),
            k_batch,
            v_batch,
            mask.repeat_interleave(self.group, dim=1),
            with_probs=need_probs,
        )
        if probs is not None:
            self._record_probs(layer, states, views, probs, valid)
        return attn.o_proj(out.transpose(1, 2).reshape(batch, width, self.heads * self.head_dim))

    def _observe_prompt(
        self,
        state: _Sequence,
        layer: int,
        w: SeqWork,
        q: torch.Tensor,
        raw_q: torch.Tensor,
        raw_k: torch.Tensor,
    ) -> None:
        """Keep what prompt-completion policies score with: the last ``window_tokens`` prompt
        queries (SnapKV family) and the sums of pre-RoPE queries and keys (DuoAttention)."""
        in_prompt = max(0, min(len(w.token_ids), w.prompt_tokens - w.start_position))
        if isinstance(self.selection, _WindowScored):
            window = self.selection.window_tokens
            recent = q[:in_prompt].transpose(0, 1)
            kept = state.window_queries[layer]
            joined = recent if kept is None else torch.cat((kept, recent), dim=1)
            state.window_queries[layer] = joined[:, -window:].clone()
        if isinstance(self.selection, DuoAttention):
            if state.duo_sums is None:
                state.duo_sums = q.new_zeros(
                    (self.num_layers, self.heads + self.kv_heads, self.head_dim),
                    dtype=torch.float32,
                )
            state.duo_sums[layer, : self.heads] += raw_q[:in_prompt].float().sum(0)
            state.duo_sums[layer, self.heads :] += raw_k[:in_prompt].float().sum(0)

    def _append(
        self,
        state: _Sequence,
        layer: int,
        hidden: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        positions: torch.Tensor,
    ) -> None:
        new = positions.shape[0]
        if self.palu is not None:
            factors = self.palu[layer]
            keys = torch.stack([tl.project(hidden, d) for d in factors.key_down])
            values = torch.stack([tl.project(hidden, d) for d in factors.value_down])
        else:
            keys, values = keys.transpose(0, 1), values.transpose(0, 1)
        heads = keys.shape[0]
        rows = {
            "pos": positions.unsqueeze(0).expand(heads, new).clone(),
            "vis": torch.ones((heads, new), dtype=torch.bool, device=keys.device),
        }
        if self.scores_needed:
            rows["acc"] = keys.new_zeros((heads, new, self.group), dtype=torch.float32)
        if layer in self.pair_of:
            pair = state.pairs[self.pair_of[layer]]
            target = pair.pending[0 if layer in self.pairs else 1]
            target.append({**rows, "k": keys, "v": values})
            return
        for side, codec, x in (("k", self.codecs[0], keys), ("v", self.codecs[1], values)):
            rows |= {f"{side}.{n}": t for n, t in codec.encode(x).items()}
        state.layers[layer].append(rows)

    def _view(self, state: _Sequence, layer: int) -> _StepView:
        if layer in self.pair_of:
            return self._pair_view(state, layer)
        rows = state.layers[layer]
        keys = self.codecs[0].decode(rows.group("k"))
        values = self.codecs[1].decode(rows.group("v"))
        positions, visible = rows["pos"], rows["vis"]
        if self.palu is not None:
            keys, values, positions, visible = self._palu_rebuild(
                layer, keys, values, positions, visible
            )
        return _StepView(keys, values, positions, visible & (positions >= 0))

    def _palu_rebuild(
        self,
        layer: int,
        latent_k: torch.Tensor,
        latent_v: torch.Tensor,
        positions: torch.Tensor,
        visible: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys and values ``[H_kv, n, d]`` from the group latents; keys rotated at their
        positions (Palu caches pre-RoPE keys)."""
        factors = self.palu[layer]
        g, n, d = factors.heads_per_group, latent_k.shape[1], self.head_dim

        def heads(parts: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(parts).view(-1, n, g, d).transpose(1, 2).reshape(-1, n, d)

        dtype = self.model.embed_tokens.weight.dtype
        keys = heads([tl.reconstruct(latent_k[i].float(), u) for i, u in enumerate(factors.key_up)])
        values = heads(
            [tl.reconstruct(latent_v[i].float(), u) for i, u in enumerate(factors.value_up)]
        )
        positions = positions.repeat_interleave(g, dim=0)
        cos, sin = self._rope(positions, torch.float32)
        return (
            apply_rope(keys, cos, sin).to(dtype),
            values.to(dtype),
            positions,
            visible.repeat_interleave(g, dim=0),
        )

    def _pair_view(self, state: _Sequence, layer: int) -> _StepView:
        """A MiniCache layer: its restored merged tokens, then its tokens of this step."""
        first = self.pair_of[layer]
        pair = state.pairs[first]
        which = 0 if layer == first else 1
        parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        if pair.merged.length:
            if pair.restored is None:
                pair.restored = self._restore_pair(pair.merged)
            dtype = self.model.embed_tokens.weight.dtype
            restored = pair.restored
            parts.append(
                (
                    restored[f"k{which}"].to(dtype),
                    restored[f"v{which}"].to(dtype),
                    pair.merged["pos"],
                )
            )
        pending = pair.pending[which]
        if pending.length:
            parts.append((pending["k"], pending["v"], pending["pos"]))
        keys, values, positions = (torch.cat(t, dim=1) for t in zip(*parts, strict=True))
        return _StepView(keys, values, positions, positions >= 0)

    def _restore_pair(self, merged: _Rows) -> dict[str, torch.Tensor]:
        """Both layers' keys and values from the merged rows (``minicache_restore``)."""
        restored: dict[str, torch.Tensor] = {}
        for side in "kv":
            retained = ts.mask_to_indices(merged[f"{side}.ret"])
            index = retained.unsqueeze(-1).expand(-1, -1, self.head_dim)
            pair = tm.MergedPair(
                merged[f"{side}.dir"],
                merged[f"{side}.na"],
                merged[f"{side}.nb"],
                retained,
                merged[f"{side}.xa"].gather(1, index),
                merged[f"{side}.xb"].gather(1, index),
            )
            restored[f"{side}0"], restored[f"{side}1"] = tm.minicache_restore(pair)
        return restored

    def _mask(
        self,
        layer: int,
        states: list[_Sequence],
        work: Sequence[SeqWork],
        views: list[_StepView],
        q: torch.Tensor,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """``[B, H_kv, T, L]``: readable, causal, and the read-time rules of decode queries
        (StreamingLLM and DuoAttention windows, Quest pages)."""
        length = max(v.positions.shape[1] for v in views)
        batch, width = positions.shape
        mask = torch.zeros((batch, self.kv_heads, width, length), dtype=torch.bool, device=q.device)
        sel = self.selection
        for b, (state, w, view) in enumerate(zip(states, work, views, strict=True)):
            n = view.positions.shape[1]
            query_pos = positions[b]
            allowed = view.readable.unsqueeze(1) & (
                view.positions.unsqueeze(1) <= query_pos.view(1, -1, 1)
            )
            decoding = (query_pos >= w.prompt_tokens).view(1, -1, 1)
            if isinstance(sel, StreamingLLM):
                window = ts.streaming_visible(
                    view.positions,
                    query_pos.expand(self.kv_heads, -1),
                    sel.sink_tokens,
                    sel.window_tokens,
                )
                allowed &= window | ~decoding
            elif isinstance(sel, DuoAttention) and state.streaming_heads is not None:
                window = ts.streaming_visible(
                    view.positions,
                    query_pos.expand(self.kv_heads, -1),
                    sel.sink_tokens,
                    sel.window_tokens,
                )
                streaming = state.streaming_heads[layer].view(-1, 1, 1)
                allowed &= window | ~decoding | ~streaming
            elif isinstance(sel, Quest) and layer >= sel.dense_layers:
                rows = decoding.view(-1).nonzero().view(-1)
                if rows.numel():
                    budget = int(sel.budget(np.array([w.start_position + len(w.token_ids)]))[0])
                    readable = view.positions[0].view(1, -1) <= query_pos[rows].view(-1, 1)
                    pages = ts.quest_query_mask(
                        view.keys,
                        q[b, rows].transpose(0, 1),
                        budget,
                        sel.page_tokens,
                        readable.sum(-1),
                    )
                    allowed[:, rows] &= pages
            mask[b, :, :, :n] = allowed
        return mask

    def _batch(
        self, views: list[_StepView], length: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if len(views) == 1:
            return views[0].keys.unsqueeze(0).to(dtype), views[0].values.unsqueeze(0).to(dtype)
        shape = (len(views), self.kv_heads, length, self.head_dim)
        keys = torch.zeros(shape, dtype=dtype, device=views[0].keys.device)
        values = torch.zeros_like(keys)
        for b, view in enumerate(views):
            n = view.keys.shape[1]
            keys[b, :, :n] = view.keys
            values[b, :, :n] = view.values
        return keys, values

    def _record_probs(
        self,
        layer: int,
        states: list[_Sequence],
        views: list[_StepView],
        probs: torch.Tensor,
        valid: torch.Tensor,
    ) -> None:
        """Accumulate each kept token's received attention (H2O, merging) and remember the
        last query's row (TOVA)."""
        for b, (state, view) in enumerate(zip(states, views, strict=True)):
            n = view.positions.shape[1]
            rows = int(valid[b].sum())
            own = probs[b, :, :rows, :n]
            if self.scores_needed:
                received = own.sum(dim=1).view(self.kv_heads, self.group, n).transpose(1, 2)
                store = state.layers[layer]
                store.put("acc", store["acc"] + received)
            if isinstance(self.selection, TOVA):
                state.last_probs[layer] = own[:, -1:, :].clone()

    # ---- after a step ------------------------------------------------------------------------
    def _after_step(self, state: _Sequence) -> None:
        sel = self.selection
        ctx = state.context_tokens
        completes = not state.prompt_done and ctx >= state.prompt_tokens
        if completes and isinstance(sel, DuoAttention):
            state.streaming_heads = self._classify_heads(state)
        for layer in range(self.num_layers):
            if layer in self.pair_of:
                continue
            rows = state.layers[layer]
            if completes and isinstance(sel, _WindowScored | KNorm):
                view = self._view(state, layer)
                mask = sel.keep_mask(
                    view.keys,
                    queries=state.window_queries[layer],
                    layer=layer,
                    num_layers=self.num_layers,
                )
                self._keep(rows, view, mask.to(rows["pos"].device), sel.physical)
            elif isinstance(sel, StreamingLLM | H2O | TOVA) or (
                isinstance(sel, DuoAttention) and state.streaming_heads is not None
            ):
                mask = self._evict_mask(state, layer, ctx)
                view = self._view(state, layer) if self.strategy.merging is not None else None
                self._keep(rows, view, mask, getattr(sel, "physical", True))
            for side, codec in zip("kv", self.codecs, strict=True):
                codec.settle(rows, side)
        for pair in state.pairs.values():
            self._merge_pair(pair)
        if completes:
            state.prompt_done = True
            state.window_queries = [None] * self.num_layers

    def _evict_mask(self, state: _Sequence, layer: int, ctx: int) -> torch.Tensor:
        """The keep mask ``[stored heads, n]`` of an every-step policy at context ``ctx``.
        StreamingLLM and DuoAttention keep by position; H2O and TOVA by attention, with the
        budget the simulation face gives for this context (the faces read only the shape of
        the keys they are handed)."""
        sel = self.selection
        rows = state.layers[layer]
        positions = rows["pos"]
        if isinstance(sel, StreamingLLM | DuoAttention):
            last = torch.full((positions.shape[0], 1), ctx - 1, device=positions.device)
            window = ts.streaming_visible(positions, last, sel.sink_tokens, sel.window_tokens)
            window = window[:, 0] & (positions >= 0)
            if isinstance(sel, StreamingLLM):
                return window
            streaming = state.streaming_heads[layer].unsqueeze(1)
            return torch.where(streaming, window, positions >= 0)
        counts = sel.kept_tokens_per_layer(
            np.array([ctx]), np.array([state.prompt_tokens]), self.num_layers
        )
        budget = int(counts[0, layer])
        shape = positions.unsqueeze(-1)
        if isinstance(sel, H2O):
            received = rows["acc"].transpose(1, 2).reshape(self.heads, 1, -1)
            return ts.h2o_mask(shape, received, budget, sel.recent_fraction)
        return ts.tova_mask(shape, state.last_probs[layer], budget)

    def _keep(
        self, rows: _Rows, view: _StepView | None, mask: torch.Tensor, physical: bool
    ) -> None:
        """Apply a keep mask to stored rows: mask only, evict, or evict and merge (``view``:
        the decoded keys and values, needed only to merge)."""
        if not physical:
            rows.put("vis", rows["vis"] & mask)
            return
        merging = self.strategy.merging
        if isinstance(merging, SimilarityMerge) and view is not None and not bool(mask.all()):
            scores = rows["acc"].mean(dim=-1)
            _, merged_values = merging.merge(view.keys, view.values, mask, scores)
            rows.select(ts.mask_to_indices(mask))
            encoded = self.codecs[1].encode(merged_values)
            for name, value in encoded.items():
                rows.put(f"v.{name}", value)
            return
        counts = mask.sum(dim=-1)
        widest = int(counts.max())
        order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)[:, :widest]
        rows.select(order)
        padding = torch.arange(widest, device=mask.device).unsqueeze(0) >= counts.unsqueeze(1)
        if bool(padding.any()):
            rows.put("pos", rows["pos"].masked_fill(padding, -1))

    def _merge_pair(self, pair: _Pair) -> None:
        """MiniCache: merge this step's tokens of both layers of the pair."""
        first, second = pair.pending
        if not first.length:
            return
        merging = self.strategy.merging
        rows: dict[str, torch.Tensor] = {"pos": first["pos"]}
        for side in "kv":
            merged = merging.merge(first[side], second[side])
            retained = torch.zeros_like(first["pos"], dtype=torch.bool)
            retained.scatter_(1, merged.retained, True)
            index = merged.retained.unsqueeze(-1).expand(-1, -1, self.head_dim)
            exact_a = torch.zeros_like(merged.direction).scatter(1, index, merged.first_retained)
            exact_b = torch.zeros_like(merged.direction).scatter(1, index, merged.second_retained)
            rows |= {
                f"{side}.dir": merged.direction,
                f"{side}.na": merged.norm_first,
                f"{side}.nb": merged.norm_second,
                f"{side}.ret": retained,
                f"{side}.xa": exact_a,
                f"{side}.xb": exact_b,
            }
        pair.merged.append(rows)
        pair.pending = (_Rows(), _Rows())
        pair.restored = None

    def _classify_heads(self, state: _Sequence) -> torch.Tensor:
        """DuoAttention streaming heads ``[L, H_kv]`` by kvpress' on-the-fly score, from the
        mean pre-RoPE query and key of this sequence's prompt (module docstring)."""
        sel = self.selection
        assert state.duo_sums is not None
        means = state.duo_sums / max(state.prompt_tokens, 1)
        positions = torch.arange(DUO_SCORE_TOKENS, device=means.device)
        cos, sin = self._rope(positions, torch.float32)
        query = apply_rope(
            means[:, : self.heads], cos[-1], sin[-1]
        )  # [L, H, d] at the last position
        keys = apply_rope(
            means[:, None, self.heads :], cos[:, None], sin[:, None]
        )  # [L, T, H_kv, d]
        keys = keys.repeat_interleave(self.group, dim=2).permute(0, 2, 3, 1)  # [L, H, d, T]
        weights = torch.softmax(
            (query.unsqueeze(2) @ keys).squeeze(2) / math.sqrt(self.head_dim), dim=-1
        )
        scores = (
            weights.cumsum(dim=-1)
            .mean(dim=-1)
            .view(self.num_layers, self.kv_heads, self.group)
            .mean(-1)
        )
        streaming = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
        count = round(scores.numel() * sel.streaming_head_fraction)
        if count:
            streaming[torch.argsort(scores.flatten(), stable=True)[:count]] = True
        return streaming.view(self.num_layers, self.kv_heads)
