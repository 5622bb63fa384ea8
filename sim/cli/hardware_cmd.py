"""``kvsim hardware``: browse the hardware catalog.

``list`` prints one row per accelerator (id, name, dense BF16 TFLOP/s, memory GB, memory TB/s,
USD per device-hour), ``show ID`` every field of one entry with the source of each number, and
``tiers`` the memory tiers and links used for KV offload. All three take ``--json`` (one JSON
object on stdout, SI units); ``list`` and ``show`` take ``--hardware-file PATH`` (repeatable) to
add user accelerator files on top of the built-in catalog and ``KVSIM_HARDWARE_PATH``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from hardware.catalog import CatalogEntry, get_entry, list_entries

_NONE = "-"


def register(subparsers: argparse._SubParsersAction) -> None:
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print one JSON object (SI units)")
    common = argparse.ArgumentParser(add_help=False, parents=[as_json])
    common.add_argument(
        "--hardware-file",
        action="append",
        default=[],
        metavar="PATH",
        help="add an accelerator TOML file (repeatable; overrides a catalog id)",
    )
    parser = subparsers.add_parser(
        "hardware", help="list and show accelerators, memory tiers and links"
    )
    parser.set_defaults(func=lambda args: _usage(parser))
    actions = parser.add_subparsers(dest="hardware_command", metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="table of accelerators")
    listing.set_defaults(func=_list)
    show = actions.add_parser(
        "show", parents=[common], help="every field of one accelerator, tier or link, with sources"
    )
    show.add_argument("id", help="catalog id, e.g. h100-sxm (case-insensitive)")
    show.set_defaults(func=_show)
    tiers = actions.add_parser("tiers", parents=[as_json], help="memory tiers and links")
    tiers.set_defaults(func=_tiers)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _list(args: argparse.Namespace) -> int:
    entries = list_entries("accelerator", extra_files=args.hardware_file)
    if args.json:
        rows = [
            {
                "id": a.id,
                "name": a.name,
                "vendor": a.vendor,
                "bf16_flops_per_s": a.bf16_flops_per_s,
                "memory_bytes": a.memory_bytes,
                "memory_bytes_per_s": a.memory_bytes_per_s,
                "price_usd_per_hour": a.price_usd_per_hour,
                "price_date": a.price_date,
                "path": str(e.path),
            }
            for e in entries
            for a in [e.spec]
        ]
        _print_json({"accelerators": rows})
        return 0
    header = ("id", "name", "bf16 TFLOP/s", "memory GB", "mem TB/s", "USD/h", "price date")
    rows_text = [
        (
            a.id,
            a.name,
            f"{a.bf16_flops_per_s / 1e12:,.1f}",
            f"{a.memory_bytes / 1e9:,.1f}",
            f"{a.memory_bytes_per_s / 1e12:.3f}",
            _NONE if a.price_usd_per_hour is None else f"{a.price_usd_per_hour:.2f}",
            a.price_date or _NONE,
        )
        for e in entries
        for a in [e.spec]
    ]
    _print_table(header, rows_text, right=(2, 3, 4, 5))
    return 0


def _show(args: argparse.Namespace) -> int:
    entry = get_entry(args.id, extra_files=args.hardware_file)
    fields = _fields(entry)
    if args.json:
        _print_json(
            {
                "kind": entry.kind,
                "id": entry.spec.id,
                "path": str(entry.path),
                "fields": {name: {"value": v, "source": s} for name, v, s in fields},
            }
        )
        return 0
    print(f"{entry.kind} {entry.spec.id}  ({entry.path})")
    _print_table(
        ("field", "value", "source"),
        [(name, _format_value(value), source or _NONE) for name, value, source in fields],
        right=(),
    )
    return 0


def _tiers(args: argparse.Namespace) -> int:
    tiers = [e.spec for e in list_entries("tier")]
    links = [e.spec for e in list_entries("link")]
    if args.json:
        _print_json(
            {
                "tiers": [dataclasses.asdict(t) for t in tiers],
                "links": [
                    {**dataclasses.asdict(link), "achieved_bytes_per_s": link.achieved_bytes_per_s}
                    for link in links
                ],
            }
        )
        return 0
    print("memory tiers")
    _print_table(
        ("id", "kind", "capacity GB", "read GB/s", "write GB/s", "latency us", "name"),
        [
            (
                t.id,
                t.kind,
                f"{t.capacity_bytes / 1e9:,.0f}",
                f"{t.read_bytes_per_s / 1e9:,.1f}",
                f"{t.write_bytes_per_s / 1e9:,.1f}",
                f"{t.latency_s * 1e6:g}",
                t.name,
            )
            for t in tiers
        ],
        right=(2, 3, 4, 5),
    )
    print()
    print("links (per direction)")
    _print_table(
        ("id", "peak GB/s", "efficiency", "achieved GB/s", "latency us", "name"),
        [
            (
                link.id,
                f"{link.bytes_per_s / 1e9:,.1f}",
                f"{link.efficiency:.3g}",
                f"{link.achieved_bytes_per_s / 1e9:,.1f}",
                f"{link.latency_s * 1e6:g}",
                link.name,
            )
            for link in links
        ],
        right=(1, 2, 3, 4),
    )
    return 0


def _fields(entry: CatalogEntry) -> list[tuple[str, Any, str]]:
    """``(name, value, source)`` for every field, the efficiency table flattened."""
    out: list[tuple[str, Any, str]] = []
    for f in dataclasses.fields(entry.spec):
        value = getattr(entry.spec, f.name)
        if dataclasses.is_dataclass(value):
            for inner in dataclasses.fields(value):
                name = f"{f.name}.{inner.name}"
                out.append((name, getattr(value, inner.name), entry.sources.get(name, "")))
        else:
            out.append((f.name, value, entry.sources.get(f.name, "")))
    return out


def _format_value(value: Any) -> str:
    if value is None:
        return _NONE
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _print_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int]
) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        cells = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


def _print_json(obj: dict[str, Any]) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")
