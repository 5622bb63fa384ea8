"""``kvsim run``: simulate a scenario and print its summary.

``kvsim run [SCENARIO.toml] [--set a.b=c ...] [--out DIR] [--json]`` loads the scenario (the
built-in default, ``sim/scenarios/default.toml``, when no file is given), runs it, and
prints a summary table (with ``--json``: exactly one JSON object on stdout). ``--out DIR``
writes ``requests.parquet``, ``steps.parquet``, ``summary.json`` and ``report.html``. A
progress bar goes to stderr when stderr is a terminal and ``--json`` is off.

``--executor torch`` runs every step on the real model (``sim.real.executor``, the ``real``
extra) instead of pricing it: ``--device``, ``--checkpoint``, ``--text`` and ``--threads``
choose where, which weights, which prompt text and how many CPU threads. The scenario's
accelerator still plans memory (the KV pool's block count, which the real cache mirrors);
``docs/real_mode.md`` shows how to point it at a probed profile of the local machine. The
summary then gains a ``torch`` object (measured wall time, peak memory, KV moved to the second
tier), and ``--out`` also writes ``outputs.jsonl`` (each request's generated ids and text).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from hardware.errors import KvsimError
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
    ("kv_strategy", "KV strategy", ""),
    ("kv_physical_savings", "KV memory saved", ""),
    ("kv_logical_savings", "KV tokens dropped", ""),
    ("kv_quality", "KV quality", ""),
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
    parser.add_argument(
        "--executor",
        choices=("cost", "torch"),
        default="cost",
        help="price steps with the cost model (default) or run them on the real model",
    )
    torch_args = parser.add_argument_group("torch executor (--executor torch only)")
    torch_args.add_argument("--device", choices=("cpu", "cuda"), help="where to run (default cpu)")
    torch_args.add_argument(
        "--checkpoint",
        type=Path,
        help="a .gguf file or Hugging Face checkpoint directory (default SmolLM2-135M-Instruct)",
    )
    torch_args.add_argument(
        "--text",
        type=Path,
        help="prompt text: a file or a directory of *.txt (default shared/data/text)",
    )
    torch_args.add_argument("--threads", type=int, help="CPU threads for torch")
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


TORCH_OPTIONS = ("device", "checkpoint", "text", "threads")


def _torch_executor(args: argparse.Namespace, scenario, resolved):
    """The warmed-up torch executor the options ask for (the ``real`` extra is imported
    only here)."""
    from sim.real.executor import build_torch_executor

    print("loading the model and warming it up...", file=sys.stderr)
    return build_torch_executor(
        scenario,
        resolved,
        device=args.device or "cpu",
        checkpoint=args.checkpoint,
        text=args.text,
        threads=args.threads,
    )


def _torch_summary(executor) -> dict:
    return {
        "device": str(executor.device),
        "steps": len(executor.measurements),
        "wall_s": executor.wall_s,
        "peak_memory_bytes": executor.peak_memory_bytes,
        "peak_kv_bytes": executor.peak_kv_bytes,
        "swap_bytes": executor.transfer_bytes,
        "output_tokens": sum(len(ids) for ids in executor.outputs().values()),
    }


def _write_outputs(executor, path: Path) -> None:
    lines = [
        json.dumps(
            {
                "request": index,
                "prompt_ids": executor.prompt_ids(index).tolist(),
                "output_ids": ids,
                "output_text": executor.output_text(index),
            }
        )
        for index, ids in sorted(executor.outputs().items())
    ]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    tmp.replace(path)


def run(args: argparse.Namespace) -> int:
    given = [name for name in TORCH_OPTIONS if getattr(args, name, None) is not None]
    if args.executor != "torch" and given:
        raise KvsimError(f"--{given[0]} applies to --executor torch only", field=f"--{given[0]}")
    path = Path(args.scenario) if args.scenario else builtin_path()
    scenario = load_scenario(path, args.overrides)
    resolved = resolve(scenario)
    workload = load_workload(scenario, resolved.max_model_len)
    executor = _torch_executor(args, scenario, resolved) if args.executor == "torch" else None
    bar = None
    if not args.json and sys.stderr.isatty():
        from tqdm import tqdm

        desc = "running" if executor is not None else "simulating"
        bar = tqdm(total=len(workload), unit="req", desc=desc, file=sys.stderr)
    try:
        result = run_scenario(
            scenario,
            workload=workload,
            executor=executor,
            progress=bar.update if bar else None,
        )
    finally:
        if bar is not None:
            bar.close()
        if executor is not None:
            executor.close()
    summary = _json_ready(result.summary)
    if executor is not None:
        summary["torch"] = _torch_summary(executor)
    if args.out is not None:
        from sim.report import write_report

        out = Path(args.out)
        result.write_parquet(out)
        tmp = out / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        tmp.replace(out / "summary.json")
        write_report(result, out / "report.html")
        if executor is not None:
            _write_outputs(executor, out / "outputs.jsonl")
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"scenario: {scenario.name} ({scenario.source})")
        print(format_table(summary))
        if executor is not None:
            measured = summary["torch"]
            print(
                f"torch executor on {measured['device']}: {measured['steps']} steps measured, "
                f"{measured['wall_s']:.2f} s (warm-up excluded); peak memory "
                f"{measured['peak_memory_bytes'] / 2**20:.0f} MiB, KV peak "
                f"{measured['peak_kv_bytes'] / 2**20:.1f} MiB, "
                f"{measured['swap_bytes'] / 2**20:.1f} MiB of KV swapped out and in"
            )
        if args.out is not None:
            print(f"records and report written to {args.out}", file=sys.stderr)
    return 0
