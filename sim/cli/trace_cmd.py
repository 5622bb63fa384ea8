"""``kvsim trace stats|fetch|list`` (and ``trace gen`` from :mod:`sim.cli.trace_gen_cmd`):
summarise a trace file, download a public trace by name, list the downloadable traces.
Statistics are defined in :mod:`workloads.stats`, formats in ``docs/workloads.md``."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from typing import Any

from sim.cli import trace_gen_cmd
from workloads.fetch import TRACES, cache_dir, fetch_trace
from workloads.stats import trace_stats
from workloads.traces import FORMATS, read_trace


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("trace", help="summarise, fetch or generate request traces")
    actions = parser.add_subparsers(dest="trace_action", metavar="ACTION", required=True)

    stats = actions.add_parser(
        "stats", help="count, rate, token percentiles, burstiness, prefix reuse"
    )
    stats.add_argument("file", help="trace file (CSV, JSONL or parquet)")
    stats.add_argument(
        "--format", choices=list(FORMATS), help="trace format (default: detect from the header)"
    )
    stats.add_argument(
        "--on-bad-row",
        choices=("error", "skip"),
        default="error",
        help="stop at the first bad row (default) or skip bad rows and report how many",
    )
    stats.add_argument(
        "--failures",
        choices=("drop", "keep", "error"),
        default="drop",
        help="requests with 0 output tokens: drop and report (default), keep as failures, or stop",
    )
    stats.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiply inter-arrival times (0.5 = twice the load; default 1)",
    )
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=run_stats)

    fetch = actions.add_parser("fetch", help="download a public trace by name (see `trace list`)")
    fetch.add_argument("name", help=f"one of: {', '.join(TRACES)}")
    fetch.add_argument(
        "--dest", help="directory (default: $KVSIM_CACHE_DIR or ~/.cache/kvsim/traces)"
    )
    fetch.add_argument("--force", action="store_true", help="download again even if cached")
    fetch.set_defaults(func=run_fetch)

    listing = actions.add_parser("list", help="the traces `trace fetch` knows")
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    listing.set_defaults(func=run_list)

    trace_gen_cmd.register(actions)


def _with_warnings_on_stderr(call: Callable[[], Any]) -> Any:
    """Run ``call``, printing each :mod:`warnings` warning as one ``kvsim: warning:`` line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    for warning in caught:
        print(f"kvsim: warning: {warning.message}", file=sys.stderr)
    return result


def run_stats(args: argparse.Namespace) -> int:
    workload = _with_warnings_on_stderr(
        lambda: read_trace(
            args.file,
            args.format,
            time_scale=args.time_scale,
            on_bad_row=args.on_bad_row,
            failures=args.failures,
        )
    )
    stats = {"file": args.file, "format": workload.meta["format"], **trace_stats(workload)}
    if args.json:
        print(json.dumps(stats, allow_nan=False))
    else:
        print(render_stats(stats))
    return 0


def _number(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def render_stats(stats: dict) -> str:
    """The readable table ``kvsim trace stats`` prints without ``--json``."""
    duration = stats["duration_s"]
    rows = [
        ("file", f"{stats['file']} ({stats['format']})"),
        ("requests", f"{stats['requests']:,}"),
        ("duration", f"{duration:,.1f} s ({duration / 60:,.1f} min)"),
        ("mean rate", f"{_number(stats['rate_per_s'], 2)} req/s"),
        ("inter-arrival CV", _number(stats["interarrival_cv"], 2)),
        (
            "index of dispersion",
            "  ".join(f"{k} {_number(v, 2)}" for k, v in stats["dispersion_index"].items()),
        ),
        (
            "peak/mean",
            "  ".join(f"{k} {_number(v, 2)}" for k, v in stats["peak_to_mean"].items()),
        ),
    ]
    hit = stats["ideal_prefix_hit"]
    if hit is None:
        rows.append(("ideal prefix hit", "n/a (no prefix blocks)"))
    else:
        blocks = stats["prefix_blocks"]
        rows.append(
            (
                "ideal prefix hit",
                f"{hit:.1%} of {blocks['references']:,} {blocks['block_tokens']}-token blocks "
                f"({blocks['unique']:,} unique); {stats['ideal_prefix_hit_tokens']:.1%} of "
                "prompt tokens",
            )
        )
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    keys = ("mean", "p50", "p90", "p99", "max")
    lines.append("")
    lines.append(f"{'tokens':<8}" + "".join(f"{k:>10}" for k in keys))
    for label, key in (("input", "input_tokens"), ("output", "output_tokens")):
        summary = stats[key] or {}
        lines.append(f"{label:<8}" + "".join(f"{_number(summary.get(k)):>10}" for k in keys))
    return "\n".join(lines)


def run_fetch(args: argparse.Namespace) -> int:
    path = fetch_trace(args.name, args.dest, force=args.force)
    source = TRACES[args.name]
    note = "SHA-256 verified" if source.sha256 else "not verified (no recorded SHA-256)"
    print(f"kvsim: {args.name}: {note}", file=sys.stderr)
    print(path)
    return 0


def run_list(args: argparse.Namespace) -> int:
    if args.json:
        listing = {
            "cache_dir": str(cache_dir()),
            "traces": [
                {
                    "name": s.name,
                    "format": s.format,
                    "url": s.url,
                    "sha256": s.sha256,
                    "license": s.license,
                    "description": s.description,
                }
                for s in TRACES.values()
            ],
        }
        print(json.dumps(listing))
        return 0
    width = max(len(name) for name in TRACES)
    for source in TRACES.values():
        checked = "verified" if source.sha256 else "not verified"
        print(f"{source.name:<{width}}  {source.format:<8}  {checked:<12}  {source.description}")
    print(f"cache: {cache_dir()}", file=sys.stderr)
    return 0
