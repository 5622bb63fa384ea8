"""``kvsim probe``: microbenchmark the local device and write a hardware profile TOML."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hardware.errors import KvsimError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="measure the local device (GEMM, memory, attention, host link, disk)",
        description="Microbenchmark the local device and write a hardware profile TOML.",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument(
        "--base",
        metavar="ID",
        help="catalog id of this chip: keep its datasheet peaks, fit efficiencies",
    )
    parser.add_argument("--id", dest="profile_id", metavar="ID", help="id of the written profile")
    parser.add_argument("--out", type=Path, help="profile TOML to write (default: ./<id>.toml)")
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke test")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hardware.catalog import get_accelerator
    from hardware.probe import probe, profile_toml

    base = get_accelerator(args.base) if args.base else None
    profile_id = args.profile_id or (f"{base.id}-probed" if base else f"local-{args.device}")
    out = args.out or Path(f"{profile_id}.toml")
    catalog_dir = Path(__file__).resolve().parents[2] / "hardware" / "catalog"
    if catalog_dir in out.resolve().parents:
        raise KvsimError(
            "refusing to write into the built-in catalog; choose another path", field="--out"
        )
    if out.exists() and not args.force:
        raise KvsimError(f"{out} exists; pass --force to overwrite it", field="--out")
    if args.repeats < 1:
        raise KvsimError(f"must be >= 1, got {args.repeats}", field="--repeats")
    print(f"probing {args.device} ({args.dtype})...", file=sys.stderr)
    result = probe(args.device, dtype=args.dtype, quick=args.quick, repeats=args.repeats)
    text = profile_toml(result, profile_id, base)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(f"wrote {out}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(text, end="")
    return 0
