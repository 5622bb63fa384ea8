"""``kvsim kv-size``: KV-cache bytes of one sequence of a model, for any KV storage format.

Per token: ``2 × kv_layers × kv_heads × head_dim × bytes`` (MLA: ``kv_layers × (kv_lora_rank +
qk_rope_head_dim) × bytes``), reference ``shared/reference/models.md`` §3. Per sequence,
sliding-window layers hold at most their window (see :meth:`ModelSpec.kv_bytes_for_sequence`).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from hardware.errors import KvsimError
from workloads.kv_format import KV_FORMATS, kv_format
from workloads.model_catalog import get_model

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(value: float) -> str:
    """``value`` bytes in binary units, e.g. ``512.00 KiB``."""
    unit = 0
    while abs(value) >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{value:.0f} B" if unit == 0 else f"{value:.2f} {_UNITS[unit]}"


def json_number(value: float) -> int | float:
    """Integral byte counts print as JSON integers."""
    return int(value) if float(value).is_integer() else float(value)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "kv-size",
        help="KV-cache bytes per token and per sequence of a model",
        description="KV-cache bytes per token and for one sequence of --tokens tokens "
        "(sliding-window layers capped at their window).",
    )
    parser.add_argument(
        "--model", required=True, help="catalog id, catalog .toml, or Hugging Face config.json"
    )
    parser.add_argument("--tokens", required=True, type=int, help="sequence length in tokens")
    parser.add_argument(
        "--kv-dtype",
        default="fp16",
        help=f"KV storage format: {', '.join(KV_FORMATS)} (default fp16)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def kv_size(model_id: str, tokens: int, kv_dtype: str) -> dict[str, Any]:
    """The figures ``kv-size`` prints, byte counts as ints where integral."""
    if tokens < 0:
        raise KvsimError(f"must be a non-negative integer, got {tokens}", field="--tokens")
    model = get_model(model_id)
    fmt = kv_format(kv_dtype)
    per_token = model.kv_bytes_per_token(fmt)
    return {
        "model": model.id,
        "tokens": tokens,
        "kv_dtype": fmt.name,
        "bits_per_element": json_number(fmt.bits_per_element),
        "kv_layers": model.kv_layers,
        "kv_elements_per_token_per_layer": model.kv_elements_per_token_per_layer,
        "sliding_window_tokens": model.sliding_window_tokens,
        "sliding_window_pattern": model.sliding_window_pattern,
        "kv_bytes_per_token": json_number(per_token),
        "naive_total_bytes": json_number(per_token * tokens),
        "total_bytes": json_number(model.kv_bytes_for_sequence(tokens, fmt)),
    }


def run(args: argparse.Namespace) -> int:
    result = kv_size(args.model, args.tokens, args.kv_dtype)
    if args.json:
        print(json.dumps(result))
        return 0
    window = ""
    if result["sliding_window_pattern"] != "none":
        window = (
            f" (sliding window {result['sliding_window_tokens']} on "
            f"{result['sliding_window_pattern']} layers; naive "
            f"{human_bytes(result['naive_total_bytes'])})"
        )
    print(
        f"{result['model']}  {result['kv_dtype']} KV  "
        f"{result['kv_bytes_per_token']:,} B/token ({human_bytes(result['kv_bytes_per_token'])})\n"
        f"{result['tokens']:,} tokens: {result['total_bytes']:,} B "
        f"({human_bytes(result['total_bytes'])}){window}"
    )
    return 0
