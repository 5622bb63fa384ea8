"""A compact Llama-family decoder over a paged KV cache (in the spirit of gpt-fast).

Architecture (Touvron et al. 2023, "LLaMA"): pre-norm blocks with RMSNorm (Zhang & Sennrich
2019), rotary position embeddings in Hugging Face's rotate-half layout (Su et al. 2021),
grouped-query attention (Ainslie et al. 2023), a SwiGLU feed-forward (Shazeer 2020) and, where
the checkpoint says so, an LM head tied to the token embedding.

One forward call runs one engine step: a batch of sequences, each bringing ``num_new`` new
tokens (a prefill chunk, or one decode token) on top of ``start_position`` tokens already in
the cache. New keys and values are written through the block tables first, then every query
attends to its sequence's cached prefix and to the new tokens up to itself. Attention is
PyTorch's fused ``scaled_dot_product_attention`` unless an observer asks for the attention
probabilities (H2O, SnapKV, TOVA and PyramidKV score tokens with them); then an explicit
softmax path computes the same result and hands ``[batch, heads, new, context]`` probabilities
to the observer layer by layer.
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
(float32; masked entries are zero)."""


@dataclass(frozen=True)
class StepBatch:
    """The sequences of one step, right-padded to the longest ``num_new``.

    ``tokens[b, :num_new[b]]`` are sequence ``b``'s new tokens at positions
    ``start_positions[b] + t``; ``block_tables[b]`` lists its physical KV blocks in order.
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
class _StepIndex:
    """Index tensors shared by every layer of one step."""

    positions: torch.Tensor  # [B, T] absolute position of each new token
    valid: torch.Tensor  # [B, T] True for real (unpadded) new tokens
    write_slots: torch.Tensor  # [n_valid] cache slot of each real new token
    read_slots: torch.Tensor  # [B, L] cache slot of context positions 0..L-1
    mask: torch.Tensor  # [B, 1, T, L] True where the query may attend to the key


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
    """Rotate-half RoPE on ``[B, T, heads, D]`` with ``cos``/``sin`` of ``[B, T, 1, D]``."""
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
        batch, new, _ = x.shape
        q = apply_rope(self.q_proj(x).view(batch, new, self.heads, self.head_dim), *rope)
        k = apply_rope(self.k_proj(x).view(batch, new, self.kv_heads, self.head_dim), *rope)
        v = self.v_proj(x).view(batch, new, self.kv_heads, self.head_dim)
        cache.write(self.layer, index.write_slots, k[index.valid], v[index.valid])
        keys, values = cache.read(self.layer, index.read_slots)
        keys, values = keys.to(q.dtype), values.to(q.dtype)
        out, probs = attend(
            q.transpose(1, 2), keys, values, index.mask, with_probs=observer is not None
        )
        if observer is not None:
            observer(self.layer, probs)
        return self.o_proj(out.transpose(1, 2).reshape(batch, new, self.heads * self.head_dim))


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
        """Logits ``[B, T, vocab]`` for every new token (float32), or ``[B, vocab]`` for each
        sequence's last new token when ``last_only``. Writes the new keys and values."""
        index = self._step_index(batch, cache)
        x = self.embed_tokens(batch.tokens)
        angles = index.positions.unsqueeze(-1).float() * self.inv_freq
        angles = torch.cat((angles, angles), dim=-1).unsqueeze(2)
        rope = (angles.cos().to(x.dtype), angles.sin().to(x.dtype))
        for layer in self.layers:
            x = layer(x, rope, cache, index, observer)
        if last_only:
            x = x[torch.arange(x.shape[0], device=x.device), batch.num_new - 1]
        head = self.embed_tokens if self.lm_head is None else self.lm_head
        return F.linear(self.norm(x), head.weight).float()

    def _step_index(self, batch: StepBatch, cache: PagedKVCache) -> _StepIndex:
        new = batch.tokens.shape[1]
        offsets = torch.arange(new, device=batch.tokens.device)
        positions = batch.start_positions.unsqueeze(1) + offsets
        valid = offsets < batch.num_new.unsqueeze(1)
        total = batch.start_positions + batch.num_new
        capacity = batch.block_tables.shape[1] * cache.block_tokens
        context = int(total.max())
        if context > capacity:
            raise KvsimError(
                f"a sequence needs {context} cached tokens but its block table holds {capacity}",
                field="block_tables",
            )
        keys = torch.arange(context, device=positions.device)
        # Padded queries look at their sequence's last real position, so no row is empty.
        last = torch.minimum(positions, (total - 1).unsqueeze(1))
        return _StepIndex(
            positions=positions,
            valid=valid,
            write_slots=cache.slots(batch.block_tables, positions)[valid],
            read_slots=cache.slots(batch.block_tables, keys.expand(len(total), context)),
            mask=(keys <= last.unsqueeze(-1)).unsqueeze(1),
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
