"""``kvsim trace gen``: write a synthetic trace.

From a spec file (``--spec SPEC.toml``: its ``[workload.synthetic]`` table, or the whole file
when it has none) or from flags for the common case (a renewal arrival process and lognormal
or fixed lengths). The output format follows the suffix of ``--out``:

- ``.parquet``: every column and the prefix block ids (:meth:`Workload.to_parquet`).
- ``.csv``: kvsim's columns (``request_id, arrival_s, prompt_tokens, output_tokens,
  session_id, priority``), read back by the ``generic`` reader; no prefix ids.
- ``.jsonl``: Mooncake's format (``timestamp`` in ms, ``input_length``, ``output_length``,
  ``hash_ids`` of 512-token blocks), read back by the ``mooncake`` reader.

Files are written to a temporary name and renamed, so nothing half-written is left.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from hardware.errors import KvsimError
from workloads.model_catalog import get_model
from workloads.synthetic import SyntheticSpec, generate
from workloads.workload import Workload

OUTPUT_SUFFIXES = (".parquet", ".csv", ".jsonl")
MOONCAKE_BLOCK_TOKENS = 512


def register(trace_subparsers: argparse._SubParsersAction) -> None:
    gen = trace_subparsers.add_parser(
        "gen",
        help="write a synthetic trace (from a spec file or flags)",
        description="Generate a synthetic trace. Flags build a [workload.synthetic] table "
        "(key names in brackets); mmpp, diurnal, rate_table arrivals and prefix structure "
        "need --spec. See docs/workloads_synthetic.md.",
    )
    gen.add_argument("--spec", type=Path, help="TOML file with a [workload.synthetic] table")
    gen.add_argument("--arrival", choices=("poisson", "gamma", "weibull"), help="[arrival]")
    gen.add_argument("--rate", type=float, help="requests per second [rate_per_s]")
    gen.add_argument("--cv", type=float, help="inter-arrival CV for gamma/weibull [cv]")
    gen.add_argument("--shape", type=float, help="Weibull shape [shape]")
    gen.add_argument("--requests", type=int, help="number of requests [requests]")
    gen.add_argument("--duration", type=float, help="seconds to generate [duration_s]")
    for column in ("prompt", "output"):
        gen.add_argument(
            f"--{column}-median",
            type=float,
            help=f"lognormal median of {column} tokens [{column}_tokens.median]",
        )
        gen.add_argument(
            f"--{column}-sigma",
            type=float,
            default=0.8,
            help=f"lognormal sigma of {column} tokens (default 0.8) [{column}_tokens.sigma]",
        )
        gen.add_argument(
            f"--{column}-tokens", type=int, help=f"fixed {column} tokens [{column}_tokens]"
        )
    gen.add_argument("--max-context", type=int, help="prompt + output limit [max_context_tokens]")
    gen.add_argument("--model", help="clip to this model's context (catalog id or config path)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument(
        "--out", type=Path, required=True, help="output file: .parquet, .csv or .jsonl"
    )
    gen.add_argument("--json", action="store_true", help="print one JSON object")
    gen.set_defaults(func=run_gen)


_FLAG_KEYS = {
    "arrival": "arrival",
    "rate": "rate_per_s",
    "cv": "cv",
    "shape": "shape",
    "requests": "requests",
    "duration": "duration_s",
    "max_context": "max_context_tokens",
}


def _length_flags(args: argparse.Namespace, column: str) -> Any:
    median = getattr(args, f"{column}_median")
    fixed = getattr(args, f"{column}_tokens")
    if median is not None and fixed is not None:
        raise KvsimError(
            f"give --{column}-median or --{column}-tokens, not both", field=f"--{column}-tokens"
        )
    if fixed is not None:
        return fixed
    if median is not None:
        return {"dist": "lognormal", "median": median, "sigma": getattr(args, f"{column}_sigma")}
    raise KvsimError(f"give --{column}-median or --{column}-tokens", field=f"{column}_tokens")


def spec_from_args(args: argparse.Namespace) -> SyntheticSpec:
    """The spec named by ``--spec``, or the one the flags describe."""
    flags = {key: getattr(args, flag) for flag, key in _FLAG_KEYS.items()}
    if args.spec is not None:
        given = [
            f"--{flag.replace('_', '-')}" for flag in _FLAG_KEYS if getattr(args, flag) is not None
        ]
        given += [
            f"--{c}-{k}"
            for c in ("prompt", "output")
            for k in ("median", "tokens")
            if getattr(args, f"{c}_{k}") is not None
        ]
        if given:
            raise KvsimError(f"{', '.join(given)} cannot be combined with --spec", field="--spec")
        return load_spec(args.spec)
    table = {key: value for key, value in flags.items() if value is not None}
    table["prompt_tokens"] = _length_flags(args, "prompt")
    table["output_tokens"] = _length_flags(args, "output")
    return SyntheticSpec.from_dict(table, source="")


def load_spec(path: Path) -> SyntheticSpec:
    """The synthetic spec in a TOML file, errors naming the file."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise KvsimError("no such file", source=str(path), field="--spec") from err
    except tomllib.TOMLDecodeError as err:
        raise KvsimError(f"not valid TOML: {err}", source=str(path)) from err
    table, prefix = document, ""
    if "workload" in document:
        table = (
            document["workload"].get("synthetic")
            if isinstance(document["workload"], dict)
            else None
        )
        prefix = "workload.synthetic"
        if table is None:
            raise KvsimError(
                "has no [workload.synthetic] table", source=str(path), field="workload"
            )
    try:
        return SyntheticSpec.from_dict(table, source=prefix, base_dir=path.parent)
    except KvsimError as err:
        raise KvsimError(err.message, source=err.source or str(path), field=err.field) from err


def _write_atomically(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_jsonl(workload: Workload, tmp: Path) -> None:
    timestamps_ms = np.rint(workload.arrival_s * 1000).astype(np.int64)
    hashes = np.split(workload.prefix_hashes, workload.prefix_offsets[1:-1])
    with tmp.open("w", encoding="utf-8") as out:
        for i in range(len(workload)):
            record = {
                "timestamp": int(timestamps_ms[i]),
                "input_length": int(workload.prompt_tokens[i]),
                "output_length": int(workload.output_tokens[i]),
                "hash_ids": hashes[i].tolist(),
            }
            out.write(json.dumps(record) + "\n")


def write_workload(workload: Workload, path: Path) -> Path:
    """Write ``workload`` to ``path`` in the format its suffix names, atomically."""
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise KvsimError(
            f"unknown output format {suffix or '(none)'}; use {', '.join(OUTPUT_SUFFIXES)}",
            source=str(path),
            field="--out",
        )
    if not path.parent.is_dir():
        raise KvsimError("directory does not exist", source=str(path.parent), field="--out")
    if suffix == ".parquet":
        return workload.to_parquet(path)
    if suffix == ".csv":
        frame = workload.to_frame().drop(columns="prefix_hashes", errors="ignore")
        _write_atomically(path, lambda tmp: frame.to_csv(tmp, index=False))
        return path
    if workload.prefix_block_tokens != MOONCAKE_BLOCK_TOKENS:
        raise KvsimError(
            f"Mooncake JSONL has {MOONCAKE_BLOCK_TOKENS}-token blocks but the spec's "
            f"block_tokens is {workload.prefix_block_tokens}; write .parquet instead",
            source=str(path),
            field="--out",
        )
    _write_atomically(path, lambda tmp: _write_jsonl(workload, tmp))
    return path


def run_gen(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    context = get_model(args.model).max_context_tokens if args.model else None
    workload = generate(spec, np.random.default_rng(args.seed), max_context_tokens=context)
    write_workload(workload, args.out)
    duration = workload.duration_s
    summary = {
        "out": str(args.out),
        "requests": len(workload),
        "duration_s": duration,
        "rate_per_s": len(workload) / duration if duration > 0 else None,
        "sessions": int(np.unique(workload.session_id[workload.session_id >= 0]).size),
        "prefix_blocks": len(workload.prefix_hashes),
        "seed": args.seed,
    }
    if args.json:
        print(json.dumps(summary, allow_nan=False))
    else:
        rate = summary["rate_per_s"]
        rate_text = "n/a" if rate is None else f"{rate:.2f}"
        print(
            f"wrote {len(workload):,} requests over {duration:,.1f} s "
            f"({rate_text} req/s) to {args.out}"
        )
    return 0
