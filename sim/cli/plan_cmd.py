"""``kvsim plan``: the cheapest fleet per accelerator, TP and KV strategy under SLOs.

``kvsim plan --model ID --hardware ID[,ID...] [--tp 1,2,4,8] [--pp 1] --rate REQ_PER_S
(--trace FILE | --synthetic-requests N) --slo ttft_p90_s=X [--slo tpot_p90_s=Y ...]
[--goodput FRACTION] [--kv-strategies NAME,...] [--price ID=USD ...] [--scenario FILE]
[--set KEY=VALUE ...] [--seeds N] [--probe-requests N] [--tolerance F] [--workers N]
[--json]`` runs :func:`sim.plan.plan` and prints a ranked table with the Pareto set marked,
and the infeasible candidates with their reasons (with ``--json``: one object,
``{"plans": [...], ...}``). The base scenario (scheduler limits, router, the synthetic chat
workload) is the built-in default unless ``--scenario`` names one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from hardware.errors import KvsimError
from sim.plan import Plan, PlanInputs, PlanResult, plan
from sim.planning.slo import parse_slo
from sim.planning.strategies import KV_STRATEGIES
from sim.scenario import Scenario, load_scenario
from sim.scenarios import builtin_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="find the cheapest fleet that meets latency SLOs at a target rate",
        description="For each accelerator, TP/PP and KV strategy: the maximum request rate "
        "one replica sustains within the SLOs, the replicas needed for the target rate "
        "(verified by simulating the fleet), and its cost. See docs/planning.md.",
    )
    parser.add_argument("--model", help="model catalog id or config.json path")
    parser.add_argument(
        "--hardware", required=True, help="accelerator ids, comma-separated (kvsim hardware)"
    )
    parser.add_argument("--tp", default="1,2,4,8", help="tensor-parallel sizes (default 1,2,4,8)")
    parser.add_argument("--pp", default="1", help="pipeline-parallel sizes (default 1)")
    parser.add_argument(
        "--rate", type=float, required=True, metavar="REQ_PER_S", help="target request rate"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--trace", type=Path, help="trace file, compressed to each probed rate")
    source.add_argument(
        "--synthetic-requests",
        type=int,
        metavar="N",
        help="N requests of the base scenario's synthetic workload (default: its own count)",
    )
    parser.add_argument("--trace-format", help="trace format (default: detected)")
    parser.add_argument(
        "--slo",
        action="append",
        default=[],
        metavar="METRIC=SECONDS",
        help="latency bound, e.g. ttft_p90_s=1.0 (repeatable)",
    )
    parser.add_argument(
        "--goodput",
        type=float,
        metavar="FRACTION",
        help="also require this fraction of requests to meet every per-request bound",
    )
    parser.add_argument(
        "--kv-strategies",
        default="fp16",
        help=f"comma-separated presets: {', '.join(KV_STRATEGIES)} (default fp16)",
    )
    parser.add_argument(
        "--price",
        action="append",
        default=[],
        metavar="ID=USD",
        help="price per GPU-hour for an accelerator (repeatable)",
    )
    parser.add_argument("--scenario", type=Path, help="base scenario TOML (default: built-in)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base-scenario key (repeatable)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="probe windows per candidate")
    parser.add_argument(
        "--probe-requests", type=int, default=1000, help="requests per probe window"
    )
    parser.add_argument(
        "--tolerance", type=float, default=0.05, help="relative step of the rate grid"
    )
    parser.add_argument(
        "--router",
        default="least_outstanding",
        help="router of the verified fleet (default least_outstanding)",
    )
    parser.add_argument("--workers", type=int, default=1, help="candidate processes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise KvsimError(f"expected comma-separated integers, got {text!r}", field=name) from None
    return values


def _prices(items: list[str]) -> tuple[tuple[str, float], ...]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out.append((key.strip(), float(value)))
        except ValueError:
            sep = ""
        if not sep:
            raise KvsimError(f"expected ID=USD_PER_GPU_HOUR, got {item!r}", field="--price")
    return tuple(out)


def base_scenario(args: argparse.Namespace) -> Scenario:
    """The base: ``--scenario`` or the built-in default, with ``--set``, ``--model`` and the
    workload flags applied."""
    path = args.scenario or builtin_path()
    base = load_scenario(path, args.overrides)
    data = base.to_dict()
    if args.model:
        model = dict(data["model"])
        model.pop("name", None)
        model.pop("config", None)
        looks_like_file = Path(args.model).suffix == ".json" or "/" in args.model
        model["config" if looks_like_file else "name"] = (
            str(Path(args.model).resolve()) if looks_like_file else args.model
        )
        data["model"] = model
    if args.trace is not None:
        data["workload"] = {"trace": str(args.trace.resolve())}
        if args.trace_format:
            data["workload"]["format"] = args.trace_format
    elif args.synthetic_requests is not None:
        if base.workload.synthetic is None:
            raise KvsimError(
                "--synthetic-requests needs a base scenario with [workload.synthetic]",
                source=base.source,
                field="workload",
            )
        data["workload"]["synthetic"]["requests"] = args.synthetic_requests
    return Scenario.from_dict(data, base_dir=base.base_dir, source=base.source)


def inputs_from_args(args: argparse.Namespace) -> PlanInputs:
    return PlanInputs(
        base=base_scenario(args),
        target_rate_per_s=args.rate,
        slos=tuple(parse_slo(s) for s in args.slo),
        accelerators=tuple(a.strip() for a in args.hardware.split(",") if a.strip()),
        tp=_ints(args.tp, "--tp"),
        pp=_ints(args.pp, "--pp"),
        kv_strategies=tuple(k.strip() for k in args.kv_strategies.split(",") if k.strip()),
        min_attainment=args.goodput,
        prices_usd_per_hour=_prices(args.price),
        seeds=args.seeds,
        probe_requests=args.probe_requests,
        rel_tol=args.tolerance,
        router=args.router,
    )


def run(args: argparse.Namespace) -> int:
    inputs = inputs_from_args(args)
    bar = None
    if not args.json and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(
            total=len(inputs.candidates()), unit="candidate", desc="planning", file=sys.stderr
        )
    try:
        result = plan(
            inputs, workers=args.workers, progress=(lambda _: bar.update(1)) if bar else None
        )
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(_json_ready(result.as_dict())))
    else:
        print(format_plans(result))
    return 0


def _json_ready(value: object) -> object:
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _num(value: float | None, spec: str = ".3g") -> str:
    return "–" if value is None else format(value, spec)


def format_plans(result: PlanResult) -> str:
    """The ranked table of feasible plans (``*`` marks the Pareto set), then the
    infeasible candidates with their reasons."""
    inputs = result.inputs
    metric = inputs.slos[0].metric if inputs.slos else "e2e_p90_s"
    slos = ", ".join(f"{s.metric} <= {s.limit_s:g}" for s in inputs.slos)
    if inputs.min_attainment is not None:
        slos += f", attainment >= {inputs.min_attainment:g}"
    lines = [
        f"model {inputs.base.model.ref}, target {inputs.target_rate_per_s:g} req/s, SLO {slos}",
        "",
    ]
    header = (
        "",
        "#",
        "accelerator",
        "tp",
        "pp",
        "kv",
        "replicas",
        "GPUs",
        "max req/s/replica",
        "USD/h",
        "USD/M out tok",
        "util",
        metric,
        "quality",
    )
    rows = []
    for rank, p in enumerate(result.feasible, start=1):
        rows.append(
            (
                "*" if p.pareto else "",
                str(rank),
                p.accelerator,
                str(p.tp),
                str(p.pp),
                p.kv_strategy,
                str(p.replicas),
                str(p.gpus),
                _num(p.max_rate_per_replica),
                _num(p.usd_per_hour, ".2f"),
                _num(p.usd_per_m_tokens, ".3f"),
                _num(p.utilisation, ".2f"),
                _num(p.latency_s, ".3g"),
                p.quality,
            )
        )
    lines += _table(header, rows) if rows else ["no feasible plan"]
    infeasible: list[Plan] = [p for p in result.plans if not p.feasible]
    if infeasible:
        lines += ["", "infeasible:"]
        lines += [
            f"  {p.accelerator} tp={p.tp} pp={p.pp} {p.kv_strategy}: {p.reason}" for p in infeasible
        ]
    if rows:
        lines += ["", "* Pareto set over (USD/h, " + metric + ", quality)"]
    return "\n".join(lines)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
