"""``kvsim run``: simulate a scenario and print its summary.

``kvsim run [SCENARIO.toml] [--set a.b=c ...] [--out DIR] [--json]`` loads the scenario (the
built-in default, ``sim/scenarios/default.toml``, when no file is given), runs it, and
prints a summary table (with ``--json``: exactly one JSON object on stdout). ``--out DIR``
writes ``requests.parquet``, ``steps.parquet``, ``summary.json`` and ``report.html``. A
progress bar goes to stderr when stderr is a terminal and ``--json`` is off.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from sim.run import load_workload, resolve, run_scenario
from sim.scenario import load_scenario
from sim.scenarios import builtin_path

#: Summary keys of the human-readable table, with their labels and units.
TABLE = (
    ("requests_completed", "requests completed", ""),
    ("requests_rejected", "requests rejected", ""),
    ("makespan_s", "makespan", "s"),
    ("ttft_p50_s", "TTFT p50", "s"),
    ("ttft_p90_s", "TTFT p90", "s"),
    ("ttft_p99_s", "TTFT p99", "s"),
    ("tpot_p50_s", "TPOT p50", "s"),
    ("tpot_p90_s", "TPOT p90", "s"),
    ("itl_p90_s", "ITL p90", "s"),
    ("e2e_p90_s", "E2E p90", "s"),
    ("throughput_req_per_s", "throughput", "req/s"),
    ("throughput_tok_per_s", "output throughput", "tok/s"),
    ("goodput_req_per_s", "goodput", "req/s"),
    ("slo_attainment", "SLO attainment", ""),
    ("utilisation", "utilisation", ""),
    ("preemptions", "preemptions", ""),
    ("prefix_hit_rate", "prefix hit rate", ""),
    ("kv_peak_bytes", "KV peak", "GiB"),
    ("usd_per_hour", "cost", "USD/h"),
    ("usd_per_m_output_tokens", "cost per 1M output tokens", "USD"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="simulate a scenario and print its summary",
        description="Simulate a scenario (default: the built-in chat scenario) and print "
        "latency, throughput, memory and cost figures.",
    )
    parser.add_argument(
        "scenario", nargs="?", help="scenario TOML file (default: the built-in default)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario key, e.g. --set hardware.tp=2 (repeatable)",
    )
    parser.add_argument("--out", type=Path, help="write parquet records and report.html here")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def _format(key: str, value: object, unit: str) -> str:
    if value is None:
        return "–"
    if key == "kv_peak_bytes":
        return f"{float(value) / 2**30:.2f} {unit}"
    if isinstance(value, float):
        text = f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
        return f"{text} {unit}".rstrip()
    return f"{value} {unit}".rstrip()


def format_table(summary: dict) -> str:
    width = max(len(label) for _, label, _ in TABLE)
    return "\n".join(
        f"{label:<{width}}  {_format(key, summary.get(key), unit)}" for key, label, unit in TABLE
    )


def _json_ready(summary: dict) -> dict:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in summary.items()
    }


def run(args: argparse.Namespace) -> int:
    path = Path(args.scenario) if args.scenario else builtin_path()
    scenario = load_scenario(path, args.overrides)
    workload = load_workload(scenario, resolve(scenario).max_model_len)
    bar = None
    if not args.json and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(workload), unit="req", desc="simulating", file=sys.stderr)
    try:
        result = run_scenario(scenario, workload=workload, progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    summary = _json_ready(result.summary)
    if args.out is not None:
        from sim.report import write_report

        out = Path(args.out)
        result.write_parquet(out)
        tmp = out / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        tmp.replace(out / "summary.json")
        write_report(result, out / "report.html")
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"scenario: {scenario.name} ({scenario.source})")
        print(format_table(summary))
        if args.out is not None:
            print(f"records and report written to {args.out}", file=sys.stderr)
    return 0
