"""Where a replica's HBM goes: weights, activation workspace, a reserve, and the KV pool.

Follows vLLM's accounting (``gpu_memory_utilization``, default 0.9): the engine may use that
fraction of each GPU; weights and the peak activation memory of a profiling forward pass of
``max_num_batched_tokens`` tokens are subtracted, and what is left becomes fixed-size KV blocks
(PagedAttention, Kwon et al., SOSP 2023). The formulas and their sources are in
``docs/cost_model.md`` §Memory plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hardware.errors import KvsimError
from hardware.specs import Accelerator
from workloads.kv_format import KvFormat, kv_format
from workloads.model import ModelSpec

#: Bytes per activation element in the profiling pass (bf16/fp16).
_ACTIVATION_BYTES = 2
#: Bytes per logit (fp32) in the sampler's profiling pass.
_LOGIT_BYTES = 4


def kv_elements_per_token_per_layer_per_gpu(model: ModelSpec, tp: int) -> int:
    """KV elements one token stores in one layer on one GPU. GQA/MHA shard KV heads over TP
    ranks; when there are fewer KV heads than ranks each rank keeps one replicated head
    (vLLM: ``max(1, num_kv_heads // tp)``). MLA's latent is not split by head, so every rank
    holds all of it (vLLM and SGLang replicate the MLA cache under TP)."""
    if model.attention == "mla":
        return model.kv_elements_per_token_per_layer
    return 2 * -(-model.num_kv_heads // tp) * model.head_dim


def activation_bytes_per_gpu(
    model: ModelSpec, tp: int, max_batched_tokens: int, max_num_seqs: int
) -> float:
    """Peak activation memory of the profiling pass: per token the residual stream and the
    normalised input (2·hidden) plus the widest layer intermediate, the FFN's gate and up
    outputs and their product (3·width/tp; 2·width/tp ungated), in bf16; plus fp32 logits for
    ``max_num_seqs`` sampled rows over the vocabulary shard."""
    matrices = 3 if model.gated_ffn else 2
    width = model.ffn_size
    if model.moe is not None:
        routed = (model.moe.active_experts + model.moe.shared_experts) * model.moe.expert_ffn_size
        width = max(width if model.moe.dense_layers else 0, routed)
    per_token = 2 * model.hidden_size + matrices * width / tp
    logits = max_num_seqs * model.vocab_size / tp * _LOGIT_BYTES
    return max_batched_tokens * per_token * _ACTIVATION_BYTES + logits


@dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU HBM budget of one replica and the KV capacity it leaves.

    ``kv_bytes_per_token`` is what one token's KV costs across the whole replica (all tp·pp
    GPUs, replicated heads included); ``kv_bytes_per_token_per_gpu`` its share on one GPU;
    ``max_kv_tokens = num_blocks × block_tokens`` tokens of KV the replica can hold.
    """

    weights_bytes_per_gpu: float
    activation_bytes_per_gpu: float
    reserved_bytes_per_gpu: float
    kv_pool_bytes_per_gpu: float
    kv_bytes_per_token: float
    kv_bytes_per_token_per_gpu: float
    max_kv_tokens: int
    block_tokens: int
    num_blocks: int

    def as_dict(self) -> dict[str, float | int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def plan_memory(
    model: ModelSpec,
    accelerator: Accelerator,
    tp: int = 1,
    pp: int = 1,
    weight_dtype: str = "bf16",
    kv_dtype: str | KvFormat = "fp16",
    gpu_memory_fraction: float = 0.9,
    max_batched_tokens: int = 8192,
    block_tokens: int = 16,
    max_num_seqs: int = 256,
) -> MemoryPlan:
    """Split each GPU's memory into weights, activations, reserve and KV pool.

    usable = memory × ``gpu_memory_fraction``; weights per GPU = parameter bytes / (tp·pp)
    (an even split: embedding and LM head sit on the end stages); KV per token per GPU =
    kv-holding layers × per-GPU KV elements × bytes / pp. Raises :class:`KvsimError` naming
    the model, device and the shortfall in bytes when weights and activations leave no room
    for one KV block.
    """
    for name, value in (
        ("tp", tp),
        ("pp", pp),
        ("max_batched_tokens", max_batched_tokens),
        ("block_tokens", block_tokens),
        ("max_num_seqs", max_num_seqs),
    ):
        if not isinstance(value, int) or value < 1:
            raise KvsimError(f"must be a positive integer, got {value!r}", field=name)
    if not 0.0 < gpu_memory_fraction <= 1.0:
        raise KvsimError(
            f"must be in (0, 1], got {gpu_memory_fraction}", field="gpu_memory_fraction"
        )
    fmt = kv_format(kv_dtype) if isinstance(kv_dtype, str) else kv_dtype
    gpus = tp * pp
    usable = accelerator.memory_bytes * gpu_memory_fraction
    weights = model.param_bytes(weight_dtype) / gpus
    activations = activation_bytes_per_gpu(model, tp, max_batched_tokens, max_num_seqs)
    kv_per_gpu = (
        model.kv_layers
        * kv_elements_per_token_per_layer_per_gpu(model, tp)
        * fmt.bytes_per_element
        / pp
    )
    block_bytes = block_tokens * kv_per_gpu
    pool = usable - weights - activations
    if pool < block_bytes:
        short = math.ceil(block_bytes - pool)
        raise KvsimError(
            f"{model.id} ({weight_dtype}) does not fit on {gpus}× {accelerator.id}: weights "
            f"need {weights / 1e9:.1f} GB and activations {activations / 1e9:.1f} GB per GPU, "
            f"{usable / 1e9:.1f} GB available ({gpu_memory_fraction:g} of "
            f"{accelerator.memory_bytes / 1e9:.1f} GB) with room for one "
            f"{block_tokens}-token KV block; short by {short} bytes — raise tp/pp or use "
            f"smaller weights",
            source=model.id,
            field="tp",
        )
    num_blocks = int(pool // block_bytes)
    return MemoryPlan(
        weights_bytes_per_gpu=weights,
        activation_bytes_per_gpu=activations,
        reserved_bytes_per_gpu=accelerator.memory_bytes - usable,
        kv_pool_bytes_per_gpu=pool,
        kv_bytes_per_token=kv_per_gpu * gpus,
        kv_bytes_per_token_per_gpu=kv_per_gpu,
        max_kv_tokens=num_blocks * block_tokens,
        block_tokens=block_tokens,
        num_blocks=num_blocks,
    )
