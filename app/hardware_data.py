"""Tables behind the Hardware & models page: catalog frames, roofline intensities, KV sizes.

Pure functions over the public catalog and cost-model APIs; each returns a DataFrame whose
column names carry their unit, ready for :mod:`app.figures` or ``st.dataframe``.

Roofline (Williams, Waterman and Patterson, CACM 2009): a kernel of arithmetic intensity
``I = FLOPs / bytes moved`` attains at most ``min(peak FLOP/s, I × memory bytes/s)``; the
*ridge point* ``peak / bandwidth`` (FLOP/byte) separates memory-bound (``I`` below it) from
compute-bound work. A step's FLOPs and bytes come from :class:`sim.cost.CostModel`'s
per-component breakdown (kernel components only), which does not depend on the device.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from hardware.specs import Accelerator, Link, MemoryTier
from sim.cost import BatchShape, CostModel
from workloads.model import ModelSpec

#: Kernel bounds in a :class:`~sim.cost.StepCost`; communication, transfers and the fixed
#: overhead move no HBM bytes through a kernel and are left out of the intensity.
KERNEL_BOUNDS = ("compute", "memory")
GB = 1e9
TFLOPS = 1e12


def _optional(value: float | None, scale: float) -> float:
    return np.nan if value is None else value / scale


def accelerator_frame(accelerators: Iterable[Accelerator]) -> pd.DataFrame:
    """One row per device: peaks, memory, links, power, price and BF16 ridge point."""
    rows = [
        {
            "id": a.id,
            "name": a.name,
            "vendor": a.vendor,
            "BF16 TFLOP/s": a.bf16_flops_per_s / TFLOPS,
            "FP8 TFLOP/s": _optional(a.fp8_flops_per_s, TFLOPS),
            "FP4 TFLOP/s": _optional(a.fp4_flops_per_s, TFLOPS),
            "HBM GB": a.memory_bytes / GB,
            "HBM TB/s": a.memory_bytes_per_s / 1e12,
            "BF16 ridge FLOP/byte": a.bf16_flops_per_s / a.memory_bytes_per_s,
            "scale-up GB/s": a.scale_up_bytes_per_s / GB,
            "host link GB/s": a.host_link_bytes_per_s / GB,
            "TDP W": _optional(a.tdp_w, 1.0),
            "price USD/h": _optional(a.price_usd_per_hour, 1.0),
            "price date": a.price_date or "",
        }
        for a in accelerators
    ]
    return pd.DataFrame(rows)


def tier_frame(tiers: Iterable[MemoryTier]) -> pd.DataFrame:
    """One row per memory tier: capacity, read/write bandwidth, latency."""
    return pd.DataFrame(
        [
            {
                "id": t.id,
                "name": t.name,
                "kind": t.kind,
                "capacity GB": t.capacity_bytes / GB,
                "read GB/s": t.read_bytes_per_s / GB,
                "write GB/s": t.write_bytes_per_s / GB,
                "latency µs": t.latency_s * 1e6,
            }
            for t in tiers
        ]
    )


def link_frame(links: Iterable[Link]) -> pd.DataFrame:
    """One row per link: peak and achieved bandwidth per direction, latency."""
    return pd.DataFrame(
        [
            {
                "id": link.id,
                "name": link.name,
                "peak GB/s": link.bytes_per_s / GB,
                "efficiency": link.efficiency,
                "achieved GB/s": link.achieved_bytes_per_s / GB,
                "latency µs": link.latency_s * 1e6,
            }
            for link in links
        ]
    )


def model_frame(models: Iterable[ModelSpec], kv_dtype: str = "fp16") -> pd.DataFrame:
    """One row per model: size, attention layout, context and KV bytes per token."""
    return pd.DataFrame(
        [
            {
                "id": m.id,
                "name": m.name,
                "params B": m.param_count() / 1e9,
                "active params B": m.active_param_count() / 1e9,
                "layers": m.num_layers,
                "attention": m.attention.upper(),
                "heads": m.num_heads,
                "KV heads": m.num_kv_heads,
                "context tokens": m.max_context_tokens,
                f"KV KiB/token ({kv_dtype})": m.kv_bytes_per_token(kv_dtype) / 1024,
                "MoE": m.moe is not None,
            }
            for m in models
        ]
    )


def step_intensity(cost: CostModel, batch: BatchShape) -> tuple[float, float]:
    """FLOPs and bytes of one step's kernels (per GPU; the whole replica at tp = pp = 1)."""
    step = cost.step(batch)
    kernels = [c for c in step.components if c.bound in KERNEL_BOUNDS]
    return sum(c.flops for c in kernels), sum(c.bytes for c in kernels)


def phase_intensity_frame(
    model: ModelSpec,
    accelerator: Accelerator,
    *,
    prompt_tokens: int,
    decode_batch: int,
    context_tokens: int,
    weight_dtype: str = "bf16",
    kv_dtype: str = "fp16",
) -> pd.DataFrame:
    """Arithmetic intensity of a prefill of one ``prompt_tokens`` prompt and of one decode
    step of ``decode_batch`` sequences at ``context_tokens`` each."""
    cost = CostModel(model, accelerator, weight_dtype=weight_dtype, kv_dtype=kv_dtype)
    phases = {
        f"prefill ({prompt_tokens:,} tokens)": BatchShape.prefill(1, prompt_tokens),
        f"decode (batch {decode_batch}, context {context_tokens:,})": BatchShape.decode(
            decode_batch, context_tokens
        ),
    }
    rows = []
    for phase, batch in phases.items():
        flops, nbytes = step_intensity(cost, batch)
        rows.append(
            {
                "phase": phase,
                "FLOP": flops,
                "bytes": nbytes,
                "intensity FLOP/byte": flops / nbytes,
            }
        )
    return pd.DataFrame(rows)


def ridge_frame(accelerators: Iterable[Accelerator], dtype: str = "bf16") -> pd.DataFrame:
    """Each device's peak for ``dtype``, HBM bandwidth and ridge point; devices without a
    ``dtype`` unit are left out."""
    rows = []
    for a in accelerators:
        peak = getattr(a, f"{dtype}_flops_per_s", None)
        if peak is None and dtype == "fp16":
            peak = a.bf16_flops_per_s
        if peak is None:
            continue
        rows.append(
            {
                "id": a.id,
                "peak FLOP/s": peak,
                "memory bytes/s": a.memory_bytes_per_s,
                "ridge FLOP/byte": peak / a.memory_bytes_per_s,
            }
        )
    return pd.DataFrame(rows)


def bound_table(phases: pd.DataFrame, ridges: pd.DataFrame) -> pd.DataFrame:
    """For each device and phase, whether the phase's intensity is below the ridge
    (memory-bound) or above it (compute-bound), and the attainable roofline rate."""
    rows = []
    for _, device in ridges.iterrows():
        for _, phase in phases.iterrows():
            intensity = phase["intensity FLOP/byte"]
            attainable = min(device["peak FLOP/s"], intensity * device["memory bytes/s"])
            rows.append(
                {
                    "device": device["id"],
                    "phase": phase["phase"],
                    "bound": "compute" if intensity >= device["ridge FLOP/byte"] else "memory",
                    "attainable TFLOP/s": attainable / TFLOPS,
                }
            )
    return pd.DataFrame(rows)


def kv_curve_frame(
    models: Iterable[ModelSpec], kv_dtypes: Sequence[str], points: int = 64
) -> pd.DataFrame:
    """KV bytes of one sequence against its length, from 1 token to each model's context,
    sliding windows and cross-layer sharing applied (:meth:`ModelSpec.kv_bytes_for_sequence`)."""
    rows = []
    for model in models:
        contexts = np.unique(np.linspace(1, model.max_context_tokens, points).astype(np.int64))
        for dtype in kv_dtypes:
            for tokens in contexts:
                rows.append(
                    {
                        "model": model.id,
                        "kv dtype": dtype,
                        "context tokens": int(tokens),
                        "KV GB": model.kv_bytes_for_sequence(int(tokens), dtype) / GB,
                    }
                )
    return pd.DataFrame(rows)
