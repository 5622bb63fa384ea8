"""A compact Llama-family decoder over a paged KV cache (in the spirit of gpt-fast).

Architecture (Touvron et al. 2023, "LLaMA"): pre-norm blocks with RMSNorm (Zhang & Sennrich
2019), rotary position embeddings in Hugging Face's rotate-half layout (Su et al. 2021),
grouped-query attention (Ainslie et al. 2023), a SwiGLU feed-forward (Shazeer 2020) and, where
the checkpoint says so, an LM head tied to the token embedding.

One forward call runs one engine step: a batch of sequences, each bringing ``num_new`` new
tokens (a prefill chunk, or one decode token) on top of ``start_position`` tokens already in
the cache. The step is *packed*, as a serving engine runs it (vLLM's flattened batch with
variable-length attention, Kwon et al. SOSP 2023): the new tokens of all sequences are
concatenated, so embeddings, projections, the feed-forward and the LM head compute one row per
real token and none for padding. New keys and values are written through the block tables
first; then each query attends to its own sequence's cached prefix and to the new tokens up to
itself, and to nothing else: sequences with the same new-token count at the same start
position (a decode batch at one context, equal prompts) share one batched attention call,
every other sequence gets its own, so no query and no key is padded. (On one CPU thread a
batched call is no faster than one call per sequence; on a GPU, decode batches of many
different contexts pay one kernel launch per sequence and layer.) Attention is PyTorch's
fused ``scaled_dot_product_attention`` unless an observer asks for the attention
probabilities (H2O, SnapKV, TOVA and PyramidKV score tokens with them); then an explicit
softmax path computes the same result and hands ``[batch, heads, new, context]``
probabilities to the observer layer by layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hardware.errors import KvsimError
from sim.real.kv_cache import PagedKVCache, block_table_tensor
from sim.real.weights import Checkpoint, LlamaConfig

AttentionObserver = Callable[[int, torch.Tensor], None]
"""Called as ``observer(layer, probs)`` with probabilities ``[batch, heads, new, context]``
(float32; masked entries, and the rows of padded queries ``t >= num_new[b]``, are zero)."""


@dataclass(frozen=True)
class StepBatch:
    """The sequences of one step, right-padded to the longest ``num_new``.

    ``tokens[b, :num_new[b]]`` are sequence ``b``'s new tokens at positions
    ``start_positions[b] + t``; ``block_tables[b]`` lists its physical KV blocks in order. The
    padding is only this container's layout: the forward drops it (module docstring).
    """

    tokens: torch.Tensor
    start_positions: torch.Tensor
    num_new: torch.Tensor
    block_tables: torch.Tensor

    @classmethod
    def from_lists(
        cls,
        new_tokens: Sequence[Sequence[int]],
        start_positions: Sequence[int],
        block_tables: Sequence[Sequence[int]],
        block_tokens: int,
        device: str | torch.device = "cpu",
    ) -> StepBatch:
        """Build a batch from per-sequence lists, checking that each sequence's own block
        table (before padding) holds its context."""
        if not new_tokens or not len(new_tokens) == len(start_positions) == len(block_tables):
            raise KvsimError(
                "new_tokens, start_positions and block_tables need one entry per sequence",
                field="batch",
            )
        for b, (tokens, start, table) in enumerate(
            zip(new_tokens, start_positions, block_tables, strict=True)
        ):
            if len(tokens) == 0:
                raise KvsimError(f"sequence {b} has no new tokens", field="new_tokens")
            if start + len(tokens) > len(table) * block_tokens:
                raise KvsimError(
                    f"sequence {b} needs {start + len(tokens)} cached tokens but its "
                    f"{len(table)} blocks of {block_tokens} hold {len(table) * block_tokens}",
                    field="block_tables",
                )
        width = max(len(t) for t in new_tokens)
        padded = [list(t) + [0] * (width - len(t)) for t in new_tokens]
        return cls(
            tokens=torch.tensor(padded, dtype=torch.int64, device=device),
            start_positions=torch.tensor(start_positions, dtype=torch.int64, device=device),
            num_new=torch.tensor([len(t) for t in new_tokens], dtype=torch.int64, device=device),
            block_tables=block_table_tensor(block_tables, device),
        )


@dataclass(frozen=True)
class _AttentionGroup:
    """Sequences whose attention runs as one batched call: each brings ``new`` tokens on top
    of the same cached prefix length, so queries and keys line up without padding. Its queries
    are packed rows ``row .. row + size·new − 1`` and its keys the step's gathered keys
    ``key .. key + size·length − 1``, sequence by sequence."""

    sequences: torch.Tensor  # [size] batch index of each sequence (for the observer)
    new: int
    length: int  # keys per sequence: its context after the step
    row: int
    key: int
    mask: torch.Tensor  # [1, 1, new, length] True where the query may attend (causal)

    @property
    def size(self) -> int:
        return len(self.sequences)


@dataclass(frozen=True)
class _StepIndex:
    """Index tensors shared by every layer of one step. The ``N`` real new tokens are packed
    group by group (:class:`_AttentionGroup`), so every group's queries and keys are slices."""

    flat: torch.Tensor  # [N] index of each packed token in the flattened [B, T] batch
    positions: torch.Tensor  # [N] absolute position of each packed token
    write_slots: torch.Tensor  # [N] cache slot of each packed token
    read_slots: torch.Tensor  # [Σ size·length] cache slots of every group's keys, in order
    last: torch.Tensor  # [B] packed row of each sequence's last new token
    groups: tuple[_AttentionGroup, ...]
    shape: tuple[int, int, int]  # batch B, width T, longest context (the observer's probs)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight``, computed in float32 (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_inv_freq(config: LlamaConfig, freq_divisors: torch.Tensor | None) -> torch.Tensor:
    """RoPE frequencies ``theta^(-2i/d)``, divided by Llama 3 scaling divisors if given."""
    exponents = torch.arange(0, config.head_dim, 2, dtype=torch.float32) / config.head_dim
    inv_freq = 1.0 / config.rope_theta**exponents
    return inv_freq if freq_divisors is None else inv_freq / freq_divisors.float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on ``[..., heads, D]`` (e.g. ``[B, T, heads, D]``, or ``[N, heads, D]``
    packed) with ``cos``/``sin`` of the same leading shape and a 1 for the heads."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def attend(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    with_probs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Grouped-query attention ``softmax(q·kᵀ/√d + mask)·v`` of queries ``[B, H, T, d]`` over
    keys and values ``[B, H_kv, L, d]`` (query head ``h`` reads KV head ``h // (H/H_kv)``)
    under a boolean ``mask`` broadcastable to ``[B, H, T, L]`` (True: may attend; every row
    needs one True). PyTorch's fused kernel unless ``with_probs``; then an explicit float32
    softmax whose probabilities ``[B, H, T, L]`` (masked entries zero) are returned too."""
    if not with_probs:
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
        return out, None
    group = q.shape[1] // keys.shape[1]
    keys = keys.repeat_interleave(group, dim=1)
    values = values.repeat_interleave(group, dim=1)
    scores = (q.float() @ keys.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return probs.to(values.dtype) @ values, probs


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.heads, self.kv_heads, self.head_dim = (
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
        )
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: PagedKVCache,
        index: _StepIndex,
        observer: AttentionObserver | None,
    ) -> torch.Tensor:
        """Attention of the packed new tokens ``x`` ``[N, hidden]`` (module docstring)."""
        tokens = x.shape[0]
        q = apply_rope(self.q_proj(x).view(tokens, self.heads, self.head_dim), *rope)
        k = apply_rope(self.k_proj(x).view(tokens, self.kv_heads, self.head_dim), *rope)
        v = self.v_proj(x).view(tokens, self.kv_heads, self.head_dim)
        cache.write(self.layer, index.write_slots, k, v)
        keys, values = (t.to(q.dtype) for t in cache.fetch(self.layer, index.read_slots))
        probs = None
        if observer is not None:
            batch, width, context = index.shape
            probs = q.new_zeros((batch, self.heads, width, context), dtype=torch.float32)
        parts = []
        for g in index.groups:
            rows = slice(g.row, g.row + g.size * g.new)
            span = slice(g.key, g.key + g.size * g.length)
            shape = (g.size, g.length, self.kv_heads, self.head_dim)
            attended, p = attend(
                q[rows].view(g.size, g.new, self.heads, self.head_dim).transpose(1, 2),
                keys[span].view(shape).transpose(1, 2),
                values[span].view(shape).transpose(1, 2),
                g.mask,
                with_probs=probs is not None,
            )
            parts.append(attended.transpose(1, 2).reshape(-1, self.heads * self.head_dim))
            if probs is not None:
                probs[g.sequences, :, : g.new, : g.length] = p
        if observer is not None:
            observer(self.layer, probs)
        return self.o_proj(torch.cat(parts) if len(parts) > 1 else parts[0])


class FeedForward(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))`` (Shazeer 2020)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: LlamaConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = FeedForward(config)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: PagedKVCache,
        index: _StepIndex,
        observer: AttentionObserver | None,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, cache, index, observer)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """The decoder; parameter names match Hugging Face's ``LlamaForCausalLM`` without the
    ``model.`` prefix, so checkpoints load by name."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )
        self.register_buffer("inv_freq", rope_inv_freq(config, None), persistent=False)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Checkpoint,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> LlamaModel:
        tensors = dict(checkpoint.tensors)
        freq_divisors = tensors.pop("rope_freqs", None)
        if checkpoint.config.tie_word_embeddings:
            tensors.pop("lm_head.weight", None)
        state = {name.removeprefix("model."): t.to(dtype) for name, t in tensors.items()}
        with torch.device("meta"):
            model = cls(checkpoint.config)
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise KvsimError(
                f"weights do not fit the config: {exc}", source=checkpoint.source
            ) from exc
        model.inv_freq = rope_inv_freq(checkpoint.config, freq_divisors)
        return model.to(device).eval()

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def new_cache(self, num_blocks: int, block_tokens: int = 16) -> PagedKVCache:
        """An empty paged cache shaped for this model, in its dtype and on its device."""
        c = self.config
        return PagedKVCache(
            num_blocks,
            block_tokens,
            c.num_layers,
            c.num_kv_heads,
            c.head_dim,
            self.embed_tokens.weight.dtype,
            self.device,
        )

    def forward(
        self,
        batch: StepBatch,
        cache: PagedKVCache,
        *,
        observer: AttentionObserver | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits ``[B, T, vocab]`` for every new token (float32; zero at padded positions
        ``t >= num_new[b]``), or ``[B, vocab]`` for each sequence's last new token when
        ``last_only``. Writes the new keys and values."""
        index = self._step_index(batch, cache)
        x = self.embed_tokens(batch.tokens.flatten()[index.flat])
        angles = index.positions.unsqueeze(-1).float() * self.inv_freq
        angles = torch.cat((angles, angles), dim=-1).unsqueeze(1)
        rope = (angles.cos().to(x.dtype), angles.sin().to(x.dtype))
        for layer in self.layers:
            x = layer(x, rope, cache, index, observer)
        if last_only:
            x = x[index.last]
        head = self.embed_tokens if self.lm_head is None else self.lm_head
        logits = F.linear(self.norm(x), head.weight).float()
        if last_only:
            return logits
        batch_size, width, _ = index.shape
        padded = logits.new_zeros((batch_size * width, logits.shape[-1]))
        padded[index.flat] = logits
        return padded.view(batch_size, width, -1)

    def _step_index(self, batch: StepBatch, cache: PagedKVCache) -> _StepIndex:
        device = batch.tokens.device
        size, width = batch.tokens.shape
        starts, news = batch.start_positions.tolist(), batch.num_new.tolist()
        totals = [s + n for s, n in zip(starts, news, strict=True)]
        capacity = batch.block_tables.shape[1] * cache.block_tokens
        if max(totals) > capacity:
            raise KvsimError(
                f"a sequence needs {max(totals)} cached tokens but its block table holds "
                f"{capacity}",
                field="block_tables",
            )
        by_shape: dict[tuple[int, int], list[int]] = {}
        for b, shape in enumerate(zip(news, starts, strict=True)):
            by_shape.setdefault(shape, []).append(b)
        groups, row, key = [], 0, 0
        for (new, start), members in by_shape.items():
            keys = torch.arange(start + new, device=device)
            queries = torch.arange(start, start + new, device=device)
            group = _AttentionGroup(
                sequences=torch.tensor(members, device=device),
                new=new,
                length=start + new,
                row=row,
                key=key,
                mask=(keys <= queries.unsqueeze(1)).view(1, 1, new, start + new),
            )
            groups.append(group)
            row += group.size * new
            key += group.size * group.length
        order = torch.cat([g.sequences for g in groups])  # batch rows, group by group
        offsets = torch.arange(width, device=device)
        positions = batch.start_positions.unsqueeze(1) + offsets
        valid = (offsets < batch.num_new.unsqueeze(1))[order]
        flat = (order.unsqueeze(1) * width + offsets)[valid]
        last = torch.empty_like(order)
        last[order] = torch.cumsum(batch.num_new[order], 0) - 1
        read_slots = torch.cat(
            [
                cache.slots(
                    batch.block_tables[g.sequences],
                    torch.arange(g.length, device=device).expand(g.size, g.length),
                ).flatten()
                for g in groups
            ]
        )
        return _StepIndex(
            flat=flat,
            positions=positions.flatten()[flat],
            write_slots=cache.slots(batch.block_tables, positions).flatten()[flat],
            read_slots=read_slots,
            last=last,
            groups=tuple(groups),
            shape=(size, width, max(totals)),
        )


@torch.inference_mode()
def greedy_generate(
    model: LlamaModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    block_tokens: int = 16,
    stop_id: int | None = None,
) -> list[list[int]]:
    """Greedy (argmax) continuation of each prompt, batched: one prefill step for all prompts,
    then one decode step per new token until every sequence has produced ``stop_id`` (each
    output ends just before it) or ``max_new_tokens`` are out."""
    if max_new_tokens <= 0:
        raise KvsimError(f"must be positive, got {max_new_tokens}", field="max_new_tokens")
    lengths = [len(p) for p in prompts]
    blocks_each = -(-(max(lengths) + max_new_tokens) // block_tokens)
    cache = model.new_cache(len(prompts) * blocks_each, block_tokens)
    tables = torch.arange(len(prompts) * blocks_each, device=model.device).view(-1, blocks_each)
    batch = StepBatch.from_lists(
        prompts, [0] * len(prompts), tables.tolist(), block_tokens, model.device
    )
    stop = -1 if stop_id is None else stop_id  # token ids are never negative
    steps = [model(batch, cache, last_only=True).argmax(-1)]
    stopped = steps[-1] == stop
    start = batch.num_new
    while len(steps) < max_new_tokens and not bool(stopped.all()):
        step = StepBatch(steps[-1].unsqueeze(1), start, torch.ones_like(start), tables)
        steps.append(model(step, cache, last_only=True).argmax(-1))
        stopped |= steps[-1] == stop
        start = start + 1
    outputs = torch.stack(steps, dim=1).tolist()
    return [out[: out.index(stop_id)] if stop_id in out else out for out in outputs]
