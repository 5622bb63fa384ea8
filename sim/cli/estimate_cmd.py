"""``kvsim estimate``: memory plan, prefill time and decode-step time of one configuration.

Runs the analytical cost model (:mod:`sim.cost`) once for a prefill step of ``--batch`` prompts
of ``--prompt`` tokens and once for a decode step of ``--batch`` sequences at ``--context``
tokens, and the memory plan of the replica. Equations: ``docs/cost_model.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hardware.catalog import get_accelerator
from hardware.errors import KvsimError
from sim.cost import BatchShape, CostModel, StepCost, plan_memory
from workloads.kv_format import KV_FORMATS, WEIGHT_BYTES
from workloads.model_catalog import get_model


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "estimate",
        help="roofline prefill/decode time and memory plan of a model on a device",
        description="Memory plan, prefill time (--batch prompts of --prompt tokens) and "
        "decode-step time (--batch sequences at --context tokens) from the analytical "
        "roofline cost model (docs/cost_model.md).",
    )
    parser.add_argument(
        "--model", required=True, help="catalog id, catalog .toml, or Hugging Face config.json"
    )
    parser.add_argument("--hardware", required=True, help="accelerator catalog id")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (default 1)")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel degree (default 1)")
    parser.add_argument("--batch", type=int, default=1, help="sequences per step (default 1)")
    parser.add_argument("--prompt", type=int, required=True, help="prompt tokens per sequence")
    parser.add_argument(
        "--context",
        type=int,
        default=None,
        help="KV tokens each decode sequence attends (default: --prompt)",
    )
    parser.add_argument(
        "--weight-dtype", default="bf16", help=f"one of {', '.join(WEIGHT_BYTES)} (default bf16)"
    )
    parser.add_argument(
        "--kv-dtype", default="fp16", help=f"one of {', '.join(KV_FORMATS)} (default fp16)"
    )
    parser.add_argument(
        "--compute-dtype", default="bf16", help="tensor-core dtype for FLOP/s (default bf16)"
    )
    parser.add_argument(
        "--gpu-memory-fraction",
        type=float,
        default=0.9,
        help="share of HBM the engine may use (vLLM gpu_memory_utilization; default 0.9)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=run)


def _positive(value: int, flag: str) -> int:
    if value < 1:
        raise KvsimError(f"must be a positive integer, got {value}", field=flag)
    return value


def dominant_bound(step: StepCost) -> str:
    """The term of the breakdown with the most time."""
    terms = {
        "compute": step.compute_s,
        "memory": step.memory_s,
        "communication": step.communication_s,
        "transfer": step.transfer_s,
        "overhead": step.overhead_s,
    }
    return max(terms, key=terms.__getitem__)


def estimate(
    model_id: str,
    hardware_id: str,
    *,
    tp: int = 1,
    pp: int = 1,
    batch: int = 1,
    prompt: int,
    context: int | None = None,
    weight_dtype: str = "bf16",
    kv_dtype: str = "fp16",
    compute_dtype: str = "bf16",
    gpu_memory_fraction: float = 0.9,
) -> dict[str, Any]:
    """Every figure ``kvsim estimate`` prints, as plain JSON-ready values."""
    _positive(tp, "--tp")
    _positive(pp, "--pp")
    _positive(batch, "--batch")
    _positive(prompt, "--prompt")
    context = prompt if context is None else _positive(context, "--context")
    model = get_model(model_id)
    accelerator = get_accelerator(hardware_id)
    cost = CostModel(
        model,
        accelerator,
        tp=tp,
        pp=pp,
        weight_dtype=weight_dtype,
        kv_dtype=kv_dtype,
        compute_dtype=compute_dtype,
    )
    plan = plan_memory(
        model,
        accelerator,
        tp=tp,
        pp=pp,
        weight_dtype=weight_dtype,
        kv_dtype=kv_dtype,
        gpu_memory_fraction=gpu_memory_fraction,
    )
    prefill = cost.step(BatchShape.prefill(batch, prompt))
    decode = cost.step(BatchShape.decode(batch, context))
    return {
        "model": model.id,
        "hardware": accelerator.id,
        "tp": tp,
        "pp": pp,
        "gpus": tp * pp,
        "batch": batch,
        "prompt_tokens": prompt,
        "context_tokens": context,
        "weight_dtype": weight_dtype,
        "kv_dtype": kv_dtype if isinstance(kv_dtype, str) else kv_dtype.name,
        "compute_dtype": compute_dtype,
        **plan.as_dict(),
        "kv_tokens_needed": batch * context,
        "kv_fits": batch * context <= plan.max_kv_tokens,
        "prefill_s": prefill.duration_s,
        "decode_step_s": decode.duration_s,
        "prefill_tokens_per_s": batch * prompt / prefill.duration_s,
        "decode_tokens_per_s": batch / decode.duration_s,
        "bound": {"prefill": dominant_bound(prefill), "decode": dominant_bound(decode)},
        "breakdown": {"prefill": prefill.as_dict(), "decode": decode.as_dict()},
    }


def _gb(value: float) -> str:
    return f"{value / 1e9:,.2f} GB"


def _ms(value: float) -> str:
    return f"{value * 1e3:,.3f} ms"


def format_table(result: dict[str, Any]) -> str:
    """The human-readable report: memory plan, then the two steps and their components."""
    lines = [
        f"{result['model']} on {result['gpus']}× {result['hardware']} "
        f"(tp {result['tp']}, pp {result['pp']}; weights {result['weight_dtype']}, "
        f"KV {result['kv_dtype']}, compute {result['compute_dtype']})",
        "",
        "memory per GPU",
        f"  weights          {_gb(result['weights_bytes_per_gpu']):>14}",
        f"  activations      {_gb(result['activation_bytes_per_gpu']):>14}",
        f"  reserved         {_gb(result['reserved_bytes_per_gpu']):>14}",
        f"  KV pool          {_gb(result['kv_pool_bytes_per_gpu']):>14}",
        f"  KV per token     {result['kv_bytes_per_token']:>14,.0f} B (replica)",
        f"  max KV tokens    {result['max_kv_tokens']:>14,} "
        f"({result['num_blocks']:,} blocks of {result['block_tokens']})",
        "",
    ]
    steps = (
        ("prefill", f"{result['batch']} × {result['prompt_tokens']:,} prompt tokens"),
        ("decode", f"{result['batch']} sequences at {result['context_tokens']:,} tokens"),
    )
    for key, label in steps:
        step = result["breakdown"][key]
        lines.append(
            f"{key} step: {label}: {_ms(step['duration_s'])} ({result['bound'][key]}-bound)"
        )
        lines.append(f"  {'component':<18} {'time':>12} {'bound':>14}")
        for name, item in step["components"].items():
            if item["time_s"] > 0:
                lines.append(f"  {name:<18} {_ms(item['time_s']):>12} {item['bound']:>14}")
        lines.append("")
    lines.append(f"prefill throughput {result['prefill_tokens_per_s']:,.0f} tokens/s")
    lines.append(f"decode throughput  {result['decode_tokens_per_s']:,.1f} tokens/s")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    result = estimate(
        args.model,
        args.hardware,
        tp=args.tp,
        pp=args.pp,
        batch=args.batch,
        prompt=args.prompt,
        context=args.context,
        weight_dtype=args.weight_dtype,
        kv_dtype=args.kv_dtype,
        compute_dtype=args.compute_dtype,
        gpu_memory_fraction=args.gpu_memory_fraction,
    )
    if not result["kv_fits"]:
        print(
            f"kvsim: warning: {result['batch']} sequences × {result['context_tokens']:,} "
            f"tokens need {result['kv_tokens_needed']:,} KV tokens; the pool holds "
            f"{result['max_kv_tokens']:,}",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    return 0
