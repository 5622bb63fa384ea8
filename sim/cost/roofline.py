"""Analytical roofline cost of one engine step on one model replica.

Every kernel of a layer is timed by the roofline (Williams, Waterman and Patterson, CACM 2009):
``time = max(FLOPs / achieved FLOP/s, bytes / achieved HBM bytes/s)``, with achieved rates the
peak times the device's :class:`~hardware.specs.Efficiency` fractions. Kernels within a layer
run one after another on the same stream, so component times add; no two components overlap.
A step is the sum over layers (pipeline stages run the batch one after another: no
micro-batch overlap), plus tensor-parallel all-reduces, pipeline sends, non-overlapped KV
transfers to lower tiers, and a fixed per-step overhead. All equations, with sources and two
worked examples, are in ``docs/cost_model.md``.

Per-layer quantities are aggregated analytically over a few *layer classes* (full vs sliding
window, KV-holding vs CLA-sharing, dense vs MoE), so a step costs a handful of numpy reductions
over the batch, and :meth:`CostModel.decode_stretch` prices many decode steps at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hardware.errors import KvsimError
from hardware.specs import Accelerator
from sim.cost.batch import BatchShape
from sim.cost.memory import kv_elements_per_token_per_layer_per_gpu
from workloads.kv_format import KvFormat, kv_format, weight_bytes_per_param
from workloads.model import ModelSpec

#: Bytes per activation element (bf16/fp16 hidden states, all-reduce and pipeline payloads).
ACTIVATION_BYTES = 2
#: Bytes per logit (vLLM upcasts logits to fp32 before sampling).
LOGIT_BYTES = 4
#: Fixed latency of one all-reduce or pipeline send inside an NVLink node, in seconds: the
#: order of NCCL's small-message all-reduce time (nccl-tests ``all_reduce_perf`` at a few KiB,
#: 8 GPUs, NVLink) — an assumed default, to be replaced by calibration.
COLLECTIVE_LATENCY_S = 1.0e-5

COMPONENTS = (
    "attn_proj",
    "ffn",
    "attention_prefill",
    "attention_decode",
    "lm_head",
    "tp_allreduce",
    "pp_sendrecv",
    "kv_transfer",
    "overhead",
)


@dataclass(frozen=True)
class ComponentCost:
    """One component summed over all layers: seconds, FLOPs and bytes *per GPU*, and what
    bounds it (``compute`` or ``memory`` for kernels; ``communication``, ``transfer`` or
    ``overhead`` otherwise). A component whose layer classes disagree takes the bound that
    accounts for most of its time."""

    name: str
    time_s: float
    flops: float
    bytes: float
    bound: str


@dataclass(frozen=True)
class StepCost:
    """Duration of one step and where it went.

    ``compute_s`` sums the compute-bound kernel times, ``memory_s`` the memory-bound ones (each
    layer class of each component counted under the term of its roofline max), so
    ``duration_s = compute_s + memory_s + communication_s + transfer_s + overhead_s``.
    """

    duration_s: float
    compute_s: float
    memory_s: float
    communication_s: float
    transfer_s: float
    overhead_s: float
    components: tuple[ComponentCost, ...]

    def component(self, name: str) -> ComponentCost:
        for item in self.components:
            if item.name == name:
                return item
        raise KvsimError(f"no component {name!r}; expected one of {COMPONENTS}", field="name")

    def as_dict(self) -> dict[str, object]:
        """Plain floats and strings, ready for JSON."""
        return {
            "duration_s": self.duration_s,
            "compute_s": self.compute_s,
            "memory_s": self.memory_s,
            "communication_s": self.communication_s,
            "transfer_s": self.transfer_s,
            "overhead_s": self.overhead_s,
            "components": {
                c.name: {"time_s": c.time_s, "flops": c.flops, "bytes": c.bytes, "bound": c.bound}
                for c in self.components
            },
        }


# ---- extension points ----------------------------------------------------------------------
def decode_read_tokens(batch: BatchShape) -> np.ndarray:
    """Tokens each decode sequence reads from its KV before the window cap: the selection
    policy's count when it reads fewer than it stores (Quest, Tang et al. 2024), else the
    whole context."""
    return batch.decode_context if batch.decode_read_tokens is None else batch.decode_read_tokens


def kv_dequant_flops(elements_read: float | np.ndarray, flops_per_element: float) -> float:
    """Extra attention FLOPs to dequantise KV read from a quantised cache (KIVI-style grouped
    integer formats: a multiply and an add per element, i.e. 2). 0 for fp16/bf16/fp8 KV read
    by kernels that consume the format natively."""
    return elements_read * flops_per_element


def transfer_time_s(transfer_bytes: float, accelerator: Accelerator) -> float:
    """Seconds to move KV between HBM and host memory over the host link (PCIe, C2C) at its
    achieved rate, when the move is not overlapped with compute."""
    if transfer_bytes == 0:
        return 0.0
    rate = accelerator.host_link_bytes_per_s * accelerator.efficiency.host_link_fraction
    return transfer_bytes / rate


def overlapped_exposed_s(
    overlapped_s: float | np.ndarray, layers_s: float | np.ndarray
) -> float | np.ndarray:
    """The part of overlapped KV work (``BatchShape.overlapped_transfer_s``) the layers do not
    hide. Per layer the step takes max(layer compute, layer transfer) (FlexGen's cost model,
    ``reference/policies.md`` §3.3); with the work spread evenly over the layers the sum over
    layers is max(layers_s, overlapped_s), i.e. layers_s plus this excess."""
    excess = np.maximum(np.asarray(overlapped_s, dtype=np.float64) - layers_s, 0.0)
    return excess if excess.ndim else float(excess)


# ---- helpers -------------------------------------------------------------------------------
def _roofline(flops_time: float, bytes_time: float) -> tuple[float, float]:
    """(compute-bound seconds, memory-bound seconds) of one kernel: exactly one is non-zero."""
    if flops_time >= bytes_time:
        return flops_time, 0.0
    return 0.0, bytes_time


def _roofline_array(flops_time: np.ndarray, bytes_time: np.ndarray) -> tuple[np.ndarray, ...]:
    compute = flops_time >= bytes_time
    return np.where(compute, flops_time, 0.0), np.where(compute, 0.0, bytes_time)


def _windowed_key_sum(first: np.ndarray, last: np.ndarray, window: int | None) -> np.ndarray:
    """Σ_{n=first+1}^{last} min(n, window) per entry: keys attended by queries at positions
    first+1..last (1-based) under a causal mask limited to the last ``window`` tokens."""

    def prefix(m: np.ndarray) -> np.ndarray:  # Σ_{n=1}^{m} min(n, window)
        if window is None:
            return m * (m + 1) // 2
        capped = np.minimum(m, window)
        return capped * (capped + 1) // 2 + (m - capped) * window

    return prefix(last) - prefix(first)


def _capped_sum_over_steps(context: np.ndarray, window: int | None, steps: int) -> np.ndarray:
    """Σ_j min(context_j + k, window) for k = 0..steps-1, exact in int64 (sorted suffix sums)."""
    ks = np.arange(steps, dtype=np.int64)
    n = context.size
    total = int(context.sum()) + n * ks
    if window is None or n == 0:
        return total
    ordered = np.sort(context)
    suffix = np.concatenate((np.cumsum(ordered[::-1])[::-1], np.zeros(1, dtype=np.int64)))
    first_over = np.searchsorted(ordered, window - ks, side="right")
    excess = suffix[first_over] + (n - first_over) * (ks - window)
    return total - excess


@dataclass(frozen=True)
class _AttentionClass:
    """Layers sharing a window and whether they store KV (CLA layers only read it)."""

    layers: int
    window: int | None
    holds_kv: bool


@dataclass(frozen=True)
class _Constants:
    """Per-GPU figures of one (model, device, parallelism, dtypes), computed once."""

    gemm_flops_per_s: float
    attention_flops_per_s: float
    decode_attention_flops_per_s: float
    hbm_bytes_per_s: float
    attn_proj_layers: int
    attn_proj_weight_bytes: float
    attn_proj_flops_per_token: float
    attn_proj_io_bytes_per_token: float
    dense_layers: int
    dense_weight_bytes: float
    dense_flops_per_token: float
    dense_io_bytes_per_token: float
    moe_layers: int
    moe_experts: int
    moe_active: int
    moe_expert_weight_bytes: float
    moe_always_weight_bytes: float
    moe_flops_per_token: float
    moe_io_bytes_per_token: float
    attention_classes: tuple[_AttentionClass, ...]
    kv_bytes_per_token_layer: float
    kv_elements_per_token_layer: float
    prefill_flops_per_key: float
    decode_flops_per_key: float
    lm_head_weight_bytes: float
    lm_head_flops_per_row: float
    lm_head_io_bytes_per_row: float
    allreduces: int
    allreduce_s_per_byte: float
    pp_sends: int
    pp_s_per_byte: float
    collective_latency_s: float
    overhead_s: float
    hidden_size: int


def _attention_io_elements(model: ModelSpec, tp: int) -> float:
    """Activation elements one token reads and writes through the attention projections, per
    GPU: the hidden state in and out (replicated) plus the sharded intermediate widths."""
    h = model.hidden_size
    if model.attention == "mla":
        q_path = 2 * model.q_lora_rank + model.q_dim if model.q_lora_rank else model.q_dim
        kv_path = (
            model.kv_lora_rank
            + model.qk_rope_head_dim
            + model.kv_lora_rank
            + model.num_heads * (model.qk_nope_head_dim + model.v_head_dim)
        )
        return 2 * h + (q_path + kv_path + model.num_heads * model.v_head_dim) / tp
    kv = 2 * model.num_kv_heads * model.head_dim
    return 2 * h + (2 * model.q_dim + kv) / tp


def _ffn_io_elements(model: ModelSpec, width: int, tp: int) -> float:
    """Activation elements per token through one FFN of intermediate ``width``: hidden in and
    out, plus gate/up outputs and the down input (gated) or up output and down input."""
    matrices = 3 if model.gated_ffn else 2
    return 2 * model.hidden_size + matrices * width / tp


def _build_constants(
    model: ModelSpec,
    accelerator: Accelerator,
    tp: int,
    pp: int,
    weight_dtype: str,
    fmt: KvFormat,
    compute_dtype: str,
    collective_latency_s: float,
) -> _Constants:
    eff = accelerator.efficiency
    peak = accelerator.peak_flops_per_s(compute_dtype)
    wb = weight_bytes_per_param(weight_dtype)
    h = model.hidden_size
    layers = model.num_layers

    moe_layer_ids = [i for i in range(layers) if model.is_moe_layer(i)]
    dense_layer_ids = [i for i in range(layers) if not model.is_moe_layer(i)]
    dense_params = model.ffn_params(dense_layer_ids[0]) if dense_layer_ids else 0
    moe_flops = moe_io = expert_bytes = always_bytes = 0.0
    experts = active = 0
    if moe_layer_ids:
        moe = model.moe
        assert moe is not None
        matrices = 3 if model.gated_ffn else 2
        per_expert = matrices * h * moe.expert_ffn_size
        experts, active = moe.num_experts, moe.active_experts
        expert_bytes = per_expert / tp * wb
        always_bytes = (moe.shared_experts * per_expert + h * moe.num_experts) / tp * wb
        moe_flops = 2.0 * model.active_ffn_params(moe_layer_ids[0]) / tp
        routed_width = (moe.active_experts + moe.shared_experts) * moe.expert_ffn_size
        moe_io = (_ffn_io_elements(model, routed_width, tp) + moe.num_experts) * ACTIVATION_BYTES

    counts: dict[tuple[int | None, bool], int] = {}
    for layer in range(layers):
        key = (model.layer_window_tokens(layer), model.holds_kv(layer))
        counts[key] = counts.get(key, 0) + 1
    classes = tuple(_AttentionClass(n, w, holds) for (w, holds), n in counts.items())

    kv_elements = float(kv_elements_per_token_per_layer_per_gpu(model, tp))
    if model.attention == "mla":
        # Prefill runs the decompressed form, decode the weight-absorbed form in latent space
        # (DeepSeek-V2 §2.1.2; FlashMLA): per key, scores over kv_lora + rope dims, values
        # over kv_lora dims.
        qk_dim = model.qk_nope_head_dim + model.qk_rope_head_dim
        prefill_per_key = 2.0 * model.num_heads * (qk_dim + model.v_head_dim) / tp
        decode_per_key = (
            2.0 * model.num_heads * (2 * model.kv_lora_rank + model.qk_rope_head_dim) / tp
        )
    else:
        prefill_per_key = decode_per_key = 4.0 * model.num_heads * model.head_dim / tp

    if accelerator.scale_up_bytes_per_s > 0:
        link = accelerator.scale_up_bytes_per_s * eff.allreduce_bus_fraction
    else:
        link = accelerator.host_link_bytes_per_s * eff.host_link_fraction

    return _Constants(
        gemm_flops_per_s=peak * eff.gemm_fraction,
        attention_flops_per_s=peak * eff.attention_fraction,
        decode_attention_flops_per_s=peak
        * (
            eff.attention_fraction
            if eff.decode_attention_fraction is None
            else eff.decode_attention_fraction
        ),
        hbm_bytes_per_s=accelerator.memory_bytes_per_s * eff.hbm_fraction,
        attn_proj_layers=layers,
        attn_proj_weight_bytes=model.attention_params_per_layer / tp * wb,
        attn_proj_flops_per_token=2.0 * model.attention_params_per_layer / tp,
        attn_proj_io_bytes_per_token=_attention_io_elements(model, tp) * ACTIVATION_BYTES,
        dense_layers=len(dense_layer_ids),
        dense_weight_bytes=dense_params / tp * wb,
        dense_flops_per_token=2.0 * dense_params / tp,
        dense_io_bytes_per_token=_ffn_io_elements(model, model.ffn_size, tp) * ACTIVATION_BYTES,
        moe_layers=len(moe_layer_ids),
        moe_experts=experts,
        moe_active=active,
        moe_expert_weight_bytes=expert_bytes,
        moe_always_weight_bytes=always_bytes,
        moe_flops_per_token=moe_flops,
        moe_io_bytes_per_token=moe_io,
        attention_classes=classes,
        kv_bytes_per_token_layer=kv_elements * fmt.bytes_per_element,
        kv_elements_per_token_layer=kv_elements,
        prefill_flops_per_key=prefill_per_key,
        decode_flops_per_key=decode_per_key,
        lm_head_weight_bytes=model.lm_head_params / tp * wb,
        lm_head_flops_per_row=2.0 * model.lm_head_params / tp,
        lm_head_io_bytes_per_row=h * ACTIVATION_BYTES + model.vocab_size / tp * LOGIT_BYTES,
        allreduces=2 * layers if tp > 1 else 0,
        allreduce_s_per_byte=2.0 * (tp - 1) / tp / link,
        pp_sends=pp - 1,
        pp_s_per_byte=1.0 / link,
        collective_latency_s=collective_latency_s,
        overhead_s=eff.step_overhead_s + layers * eff.layer_overhead_s,
        hidden_size=h,
    )


class _Ledger:
    """Accumulates component costs and the compute/memory split of one step."""

    def __init__(self) -> None:
        self.components: list[ComponentCost] = []
        self.compute_s = 0.0
        self.memory_s = 0.0

    def kernel(self, name: str, parts: list[tuple[int, float, float, float, float]]) -> None:
        """``parts``: (layers, flops, bytes, flops/s, bytes/s) per layer class, per layer."""
        compute = memory = flops = nbytes = 0.0
        for layers, f, b, flops_per_s, bytes_per_s in parts:
            c, m = _roofline(f / flops_per_s, b / bytes_per_s)
            compute += layers * c
            memory += layers * m
            flops += layers * f
            nbytes += layers * b
        self.compute_s += compute
        self.memory_s += memory
        bound = "compute" if compute >= memory else "memory"
        self.components.append(ComponentCost(name, compute + memory, flops, nbytes, bound))

    def other(self, name: str, time_s: float, nbytes: float, bound: str) -> None:
        self.components.append(ComponentCost(name, time_s, 0.0, float(nbytes), bound))


@dataclass(frozen=True)
class CostModel:
    """Roofline step cost of ``model`` on one replica of ``tp × pp`` ``accelerator`` s.

    ``weight_dtype`` sets bytes per weight, ``kv_dtype`` the KV storage format (a name or a
    :class:`KvFormat`), ``compute_dtype`` the tensor-core peak used.
    ``kv_dequant_flops_per_element`` is the dequantisation work per KV element read (0 unless
    a quantisation policy says otherwise); ``collective_latency_s`` the fixed cost of each
    all-reduce and pipeline send.
    """

    model: ModelSpec
    accelerator: Accelerator
    tp: int = 1
    pp: int = 1
    weight_dtype: str = "bf16"
    kv_dtype: str | KvFormat = "fp16"
    compute_dtype: str = "bf16"
    kv_dequant_flops_per_element: float = 0.0
    collective_latency_s: float = COLLECTIVE_LATENCY_S
    _k: _Constants = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.tp, int) or self.tp < 1:
            raise KvsimError(f"must be a positive integer, got {self.tp!r}", field="tp")
        if not isinstance(self.pp, int) or self.pp < 1:
            raise KvsimError(f"must be a positive integer, got {self.pp!r}", field="pp")
        if self.model.num_heads % self.tp:
            raise KvsimError(
                f"{self.model.num_heads} attention heads do not split over tp={self.tp}",
                source=self.model.id,
                field="tp",
            )
        if self.pp > self.model.num_layers:
            raise KvsimError(
                f"pp={self.pp} exceeds the model's {self.model.num_layers} layers",
                source=self.model.id,
                field="pp",
            )
        if self.kv_dequant_flops_per_element < 0 or self.collective_latency_s < 0:
            raise KvsimError("must be >= 0", field="kv_dequant_flops_per_element")
        fmt = kv_format(self.kv_dtype) if isinstance(self.kv_dtype, str) else self.kv_dtype
        constants = _build_constants(
            self.model,
            self.accelerator,
            self.tp,
            self.pp,
            self.weight_dtype,
            fmt,
            self.compute_dtype,
            self.collective_latency_s,
        )
        object.__setattr__(self, "_k", constants)

    # ---- one step ------------------------------------------------------------------------
    def step(self, batch: BatchShape) -> StepCost:
        """Cost of one engine step running ``batch``."""
        k = self._k
        c, p, d = batch.prefill_tokens, batch.prefill_context, batch.decode_context
        n_dec = d.size
        prefill_tokens = int(c.sum()) if c.size else 0
        tokens = prefill_tokens + n_dec
        ledger = _Ledger()
        gemm, hbm = k.gemm_flops_per_s, k.hbm_bytes_per_s

        ledger.kernel(
            "attn_proj",
            [
                (
                    k.attn_proj_layers,
                    tokens * k.attn_proj_flops_per_token,
                    self._gemm_bytes(
                        tokens, k.attn_proj_weight_bytes, k.attn_proj_io_bytes_per_token
                    ),
                    gemm,
                    hbm,
                )
            ],
        )
        ffn = []
        if k.dense_layers:
            ffn.append(
                (
                    k.dense_layers,
                    tokens * k.dense_flops_per_token,
                    self._gemm_bytes(tokens, k.dense_weight_bytes, k.dense_io_bytes_per_token),
                    gemm,
                    hbm,
                )
            )
        if k.moe_layers:
            ffn.append(
                (
                    k.moe_layers,
                    tokens * k.moe_flops_per_token,
                    self._moe_bytes(tokens),
                    gemm,
                    hbm,
                )
            )
        ledger.kernel("ffn", ffn)
        ledger.kernel("attention_prefill", self._prefill_attention(c, p))
        ledger.kernel("attention_decode", self._decode_attention(batch))
        if batch.policy_flops:
            ledger.kernel("kv_policy", [self._policy_part(batch.policy_flops)])
        layers_s = ledger.compute_s + ledger.memory_s

        rows = batch.num_emitting
        head_bytes = k.lm_head_weight_bytes + rows * k.lm_head_io_bytes_per_row if rows else 0.0
        ledger.kernel("lm_head", [(1, rows * k.lm_head_flops_per_row, head_bytes, gemm, hbm)])

        message = tokens * k.hidden_size * ACTIVATION_BYTES
        allreduce_s = (
            k.allreduces * (message * k.allreduce_s_per_byte + k.collective_latency_s)
            if tokens
            else 0.0
        )
        ledger.other("tp_allreduce", allreduce_s, k.allreduces * message, "communication")
        pp_s = k.pp_sends * (message * k.pp_s_per_byte + k.collective_latency_s) if tokens else 0.0
        ledger.other("pp_sendrecv", pp_s, k.pp_sends * message, "communication")
        transfer_s = transfer_time_s(batch.transfer_bytes, self.accelerator)
        transfer_s += overlapped_exposed_s(batch.overlapped_transfer_s, layers_s)
        ledger.other("kv_transfer", transfer_s, batch.transfer_bytes, "transfer")
        overhead_s = k.overhead_s if tokens else 0.0
        ledger.other("overhead", overhead_s, 0.0, "overhead")

        communication_s = allreduce_s + pp_s
        return StepCost(
            duration_s=ledger.compute_s
            + ledger.memory_s
            + communication_s
            + transfer_s
            + overhead_s,
            compute_s=ledger.compute_s,
            memory_s=ledger.memory_s,
            communication_s=communication_s,
            transfer_s=transfer_s,
            overhead_s=overhead_s,
            components=tuple(ledger.components),
        )

    @staticmethod
    def _gemm_bytes(tokens: int, weight_bytes: float, io_bytes_per_token: float) -> float:
        """Weights read once per step (when any token runs) plus activations in and out."""
        return weight_bytes + tokens * io_bytes_per_token if tokens else 0.0

    def _moe_bytes(self, tokens: int) -> float:
        """Weights of the experts the step's tokens touch: with ``E`` experts, ``k`` active
        and uniform routing, ``T`` tokens touch ``E·(1 − (1 − k/E)^T)`` distinct experts in
        expectation (each expert is missed by a token with probability ``1 − k/E``)."""
        k = self._k
        if not tokens:
            return 0.0
        touched = k.moe_experts * (1.0 - (1.0 - k.moe_active / k.moe_experts) ** tokens)
        return (
            k.moe_always_weight_bytes
            + touched * k.moe_expert_weight_bytes
            + tokens * k.moe_io_bytes_per_token
        )

    def _prefill_attention(
        self, chunk: np.ndarray, cached: np.ndarray
    ) -> list[tuple[int, float, float, float, float]]:
        """Causal attention of each chunk of ``c`` new tokens on ``p`` cached ones: query at
        position ``n`` attends ``min(n, window)`` keys, so keys = Σ_{n=p+1}^{p+c} min(n, w)
        (= c·p + c(c+1)/2 without a window); KV read = min(p, w) cached tokens, KV written = c
        new tokens on layers that store KV (FlashAttention reads each K/V tile once)."""
        k = self._k
        if not chunk.size:
            return []
        written = int(chunk.sum())
        end = cached + chunk
        by_window: dict[int | None, tuple[int, int]] = {}
        parts = []
        for cls in k.attention_classes:
            if cls.window not in by_window:
                keys = int(_windowed_key_sum(cached, end, cls.window).sum())
                read = int(
                    cached.sum() if cls.window is None else np.minimum(cached, cls.window).sum()
                )
                by_window[cls.window] = (keys, read)
            keys, read = by_window[cls.window]
            stored = read + (written if cls.holds_kv else 0)
            flops = keys * k.prefill_flops_per_key + kv_dequant_flops(
                read * k.kv_elements_per_token_layer, self.kv_dequant_flops_per_element
            )
            parts.append(
                (
                    cls.layers,
                    flops,
                    stored * k.kv_bytes_per_token_layer,
                    k.attention_flops_per_s,
                    k.hbm_bytes_per_s,
                )
            )
        return parts

    def _decode_attention(self, batch: BatchShape) -> list[tuple[int, float, float, float, float]]:
        """Each decode query attends ``min(read, window)`` keys and reads their KV, and writes
        its own token's KV on layers that store KV."""
        read_tokens = decode_read_tokens(batch)
        if not read_tokens.size:
            return []
        sums: dict[int | None, float] = {}
        for cls in self._k.attention_classes:
            if cls.window not in sums:
                capped = read_tokens if cls.window is None else np.minimum(read_tokens, cls.window)
                sums[cls.window] = capped.sum().item()
        return self._decode_parts(sums, read_tokens.size)

    def _decode_parts(
        self, keys_by_window: dict[int | None, int | np.ndarray], n_dec: int
    ) -> list[tuple[int, float, float, float, float]]:
        k = self._k
        parts = []
        for cls in k.attention_classes:
            keys = keys_by_window[cls.window]
            flops = keys * k.decode_flops_per_key + kv_dequant_flops(
                keys * k.kv_elements_per_token_layer, self.kv_dequant_flops_per_element
            )
            stored = keys + (n_dec if cls.holds_kv else 0)
            parts.append(
                (
                    cls.layers,
                    flops,
                    stored * k.kv_bytes_per_token_layer,
                    k.decode_attention_flops_per_s,
                    k.hbm_bytes_per_s,
                )
            )
        return parts

    def _policy_part(self, flops: float | np.ndarray) -> tuple[int, Any, float, float, float]:
        """KV-policy work of the whole replica, split over the tensor-parallel ranks and run
        at the attention kernels' rate (elementwise and small reductions, no weights read)."""
        k = self._k
        return (1, flops / self.tp, 0.0, k.attention_flops_per_s, k.hbm_bytes_per_s)

    # ---- many decode steps ---------------------------------------------------------------
    def decode_stretch(
        self,
        context_tokens: np.ndarray,
        steps: int,
        *,
        read_tokens: np.ndarray | None = None,
        policy_flops: np.ndarray | None = None,
        overlapped_transfer_s: np.ndarray | None = None,
    ) -> np.ndarray:
        """Durations of ``steps`` consecutive pure-decode steps of the same sequences, step
        ``k`` attending ``context_tokens + k``. Only decode attention (and KV-policy work)
        changes from step to step (batch size, hence GEMMs, LM head, communication and
        overhead, is fixed); attention depends on Σ_j min(context_j + k, window) per layer
        class, summed exactly for all k at once. ``read_tokens[k, j]`` replaces the context
        where a selection policy reads fewer tokens than it holds; ``policy_flops[k]`` adds
        the policies' work in step ``k`` and ``overlapped_transfer_s[k]`` its off-GPU KV work
        overlapped with the layers (all as :meth:`step` takes them in a :class:`BatchShape`)."""
        context = np.asarray(context_tokens, dtype=np.int64).reshape(-1)
        if steps < 0:
            raise KvsimError(f"must be >= 0, got {steps}", field="steps")
        if steps == 0:
            return np.zeros(0)
        first = self.step(BatchShape.decode(context.size, context))
        if not context.size:
            return np.full(steps, first.duration_s)
        fixed_s = first.duration_s - first.component("attention_decode").time_s
        if read_tokens is None:
            sums = {
                cls.window: _capped_sum_over_steps(context, cls.window, steps)
                for cls in self._k.attention_classes
            }
        else:
            read = np.asarray(read_tokens).reshape(steps, context.size)
            sums = {
                cls.window: (read if cls.window is None else np.minimum(read, cls.window)).sum(
                    axis=1
                )
                for cls in self._k.attention_classes
            }
        attention_s = np.zeros(steps)
        parts = self._decode_parts(sums, context.size)
        if policy_flops is not None:
            parts.append(self._policy_part(np.asarray(policy_flops, dtype=np.float64)))
        for layers, flops, nbytes, flops_per_s, bytes_per_s in parts:
            compute, memory = _roofline_array(flops / flops_per_s, nbytes / bytes_per_s)
            attention_s += layers * (compute + memory)
        if overlapped_transfer_s is None:
            return fixed_s + attention_s
        layers_s = first.compute_s + first.memory_s - first.component("lm_head").time_s
        layers_s = layers_s - first.component("attention_decode").time_s + attention_s
        return fixed_s + attention_s + overlapped_exposed_s(overlapped_transfer_s, layers_s)

    # ---- conveniences --------------------------------------------------------------------
    def prefill_s(self, batch: int, prompt_tokens: int) -> float:
        """Seconds to prefill ``batch`` prompts of ``prompt_tokens`` in one step."""
        return self.step(BatchShape.prefill(batch, prompt_tokens)).duration_s

    def decode_step_s(self, batch: int, context_tokens: int) -> float:
        """Seconds of one decode step of ``batch`` sequences at ``context_tokens`` each."""
        return self.step(BatchShape.decode(batch, context_tokens)).duration_s
