"""``kvsim models list|show``: the model catalog and each model's KV, parameter and FLOP
figures (formulas in ``docs/models.md``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from sim.cli.kv_size_cmd import human_bytes, json_number
from workloads.kv_format import KV_FORMATS, WEIGHT_BYTES
from workloads.model import ModelSpec
from workloads.model_catalog import get_model, list_models


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list the model catalog or show one model")
    actions = parser.add_subparsers(dest="models_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every catalog model, one line each")
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    listing.set_defaults(func=run_list)
    show = actions.add_parser("show", help="one model's fields and derived figures")
    show.add_argument("model", help="catalog id, catalog .toml, or Hugging Face config.json")
    show.add_argument(
        "--kv-dtype", default="fp16", help=f"KV format: {', '.join(KV_FORMATS)} (default fp16)"
    )
    show.add_argument(
        "--weight-dtype",
        default="bf16",
        help=f"weight format: {', '.join(WEIGHT_BYTES)} (default bf16)",
    )
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(func=run_show)


def summary(model: ModelSpec) -> dict[str, Any]:
    """One catalog row: identity, shape and the fp16 KV rate."""
    return {
        "id": model.id,
        "name": model.name,
        "attention": model.attention,
        "num_layers": model.num_layers,
        "num_kv_heads": model.num_kv_heads,
        "head_dim": model.head_dim,
        "max_context_tokens": model.max_context_tokens,
        "kv_bytes_per_token": json_number(model.kv_bytes_per_token("fp16")),
        "param_count": model.param_count(),
        "active_param_count": model.active_param_count(),
    }


def details(model: ModelSpec, kv_dtype: str, weight_dtype: str) -> dict[str, Any]:
    """Every field of the spec plus its derived KV, parameter and FLOP figures."""
    return {
        **dataclasses.asdict(model),
        "kv_dtype": kv_dtype,
        "kv_bytes_per_token": json_number(model.kv_bytes_per_token(kv_dtype)),
        "kv_bytes_at_max_context": json_number(
            model.kv_bytes_for_sequence(model.max_context_tokens, kv_dtype)
        ),
        "param_count": model.param_count(),
        "active_param_count": model.active_param_count(),
        "weight_dtype": weight_dtype,
        "param_bytes": json_number(model.param_bytes(weight_dtype)),
        "linear_flops_per_token": json_number(model.linear_flops_per_token()),
    }


def run_list(args: argparse.Namespace) -> int:
    rows = [summary(model) for model in list_models()]
    if args.json:
        print(json.dumps({"models": rows}))
        return 0
    header = f"{'id':<16} {'attn':<4} {'layers':>6} {'kv_heads':>8} {'head_dim':>8} "
    header += f"{'KV/token fp16':>14} {'params':>9} {'active':>9} {'context':>8}"
    print(header)
    for row in rows:
        print(
            f"{row['id']:<16} {row['attention']:<4} {row['num_layers']:>6} "
            f"{row['num_kv_heads']:>8} {row['head_dim']:>8} "
            f"{human_bytes(row['kv_bytes_per_token']):>14} "
            f"{row['param_count'] / 1e9:>8.2f}B {row['active_param_count'] / 1e9:>8.2f}B "
            f"{row['max_context_tokens']:>8}"
        )
    return 0


def run_show(args: argparse.Namespace) -> int:
    model = get_model(args.model)
    info = details(model, args.kv_dtype.lower(), args.weight_dtype.lower())
    if args.json:
        print(json.dumps(info))
        return 0
    width = max(len(key) for key in info)
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 1024:
            value = f"{value:,}"
        print(f"{key:<{width}}  {value}")
    return 0
