"""``kvsim sweep``: run a grid or list of scenario overrides in parallel, resumably.

``kvsim sweep SWEEP.toml [--out DIR] [--workers N | --scheduler tcp://host:port | --serial]
[--retry-errors] [--json]`` runs every point of the sweep file (format in
``docs/planning.md`` §Sweeps) whose result is not yet in the output folder, on a local Dask
cluster by default, writing ``<hash>.parquet`` per point as it finishes (:mod:`sim.sweep`).
It prints a table of the points' headline metrics (with ``--json``: one object with the
counts and the output folder); a progress bar goes to stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from sim.sweep import load_sweep, read_results, run_sweep

#: Result columns of the printed table, with their headers.
COLUMNS = (
    ("ttft_p90_s", "TTFT p90 s"),
    ("tpot_p90_s", "TPOT p90 s"),
    ("throughput_tok_per_s", "tok/s"),
    ("goodput_req_per_s", "goodput req/s"),
    ("usd_per_m_output_tokens", "USD/M out tok"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="run a grid of scenario overrides in parallel (Dask), resumably",
        description="Run every point of a sweep file whose result is not yet in the output "
        "folder; results land as one parquet file per point as they finish.",
    )
    parser.add_argument("sweep", type=Path, help="sweep TOML file")
    parser.add_argument("--out", type=Path, help="output folder (default: [output] dir)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="local Dask workers (default: one per CPU)")
    where.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://host:port)")
    where.add_argument("--serial", action="store_true", help="run the points here, without Dask")
    parser.add_argument(
        "--retry-errors", action="store_true", help="rerun points recorded as errors"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = load_sweep(args.sweep, output_dir=args.out)
    if args.workers is not None and args.workers < 1:
        from hardware.errors import KvsimError

        raise KvsimError(f"must be >= 1, got {args.workers}", field="--workers")
    bar = None
    if not args.json and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(spec.points), unit="point", desc="sweep", file=sys.stderr)
    try:
        outcome = run_sweep(
            spec,
            scheduler=args.scheduler,
            workers=args.workers,
            serial=args.serial,
            retry_errors=args.retry_errors,
            progress=bar.update if bar else None,
        )
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(
            json.dumps(
                {
                    "output_dir": outcome.output_dir,
                    "points": outcome.points,
                    "skipped": len(outcome.skipped),
                    "computed": len(outcome.computed),
                    "failed": len(outcome.failed),
                }
            )
        )
        return 0
    print(format_results(read_results(outcome.output_dir)))
    print(
        f"{outcome.points} points: {len(outcome.skipped)} already done, "
        f"{len(outcome.computed)} computed ({len(outcome.failed)} failed); "
        f"results in {outcome.output_dir}",
        file=sys.stderr,
    )
    return 0


def format_results(frame: pd.DataFrame) -> str:
    """One line per point: index, status, overrides and the headline metrics (or the error)."""
    header = ["#", "status", "overrides"] + [label for _, label in COLUMNS]
    rows: list[tuple[list[str], str]] = []
    for _, row in frame.iterrows():
        cells = [str(row["index"]), str(row["status"]), " ".join(json.loads(row["overrides"]))]
        if row["status"] == "ok":
            rows.append((cells + [_cell(row.get(key)) for key, _ in COLUMNS], ""))
        else:
            rows.append((cells, str(row["error"])))
    table = [(header, ""), *rows]
    widths = [max(len(c[i]) for c, _ in table if i < len(c)) for i in range(len(header))]
    lines = []
    for cells, error in table:
        text = "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False))
        lines.append(f"{text}  {error}".rstrip())
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
