"""``kvsim validate``: a calibrated profile's per-step and end-to-end errors on held-out steps
and workloads, or the catalog cost model's error on published measurements
(docs/calibration.md)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import pandas as pd

from hardware.errors import KvsimError

#: KV pool of a replayed --trace: room for a few requests of a few thousand tokens.
TRACE_POOL_TOKENS = 16384


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="per-step and end-to-end errors of a calibrated profile, or of the catalog model "
        "on published latencies",
        description=(
            "With --profile: time the design's held-out steps on the real model and price them "
            "with the profile (per-step MAPE, prefill and decode separately), then replay "
            "held-out workloads with the torch executor and the cost model and compare TTFT, "
            "TPOT, E2E and throughput. With --published: the catalog cost model's (or the "
            "profile's) error on a CSV of measured latencies. An HTML report has the scatter "
            "plots and tables."
        ),
    )
    parser.add_argument("--profile", type=Path, help="calibrated profile TOML (kvsim calibrate)")
    parser.add_argument(
        "--published", type=Path, metavar="CSV", help="measured latencies (docs/calibration.md)"
    )
    parser.add_argument("--model", default="smollm2-135m", help="model the profile was fitted on")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default 1 on cpu)")
    parser.add_argument(
        "--clock",
        choices=("wall", "thread"),
        help="step timer: wall time, or the thread's CPU time (default on cpu with one "
        "thread: immune to other processes' load; docs/calibration.md)",
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per held-out step")
    parser.add_argument("--quick", action="store_true", help="the small design (smoke tests)")
    parser.add_argument(
        "--steps",
        type=Path,
        metavar="CSV",
        help="timed steps from kvsim calibrate (its held-out rows are used, nothing is timed)",
    )
    workload = parser.add_mutually_exclusive_group()
    workload.add_argument("--scenario", type=Path, help="replay this scenario instead")
    workload.add_argument("--trace", type=Path, help="replay this trace instead")
    workload.add_argument(
        "--no-e2e", action="store_true", help="skip the end-to-end replays (no torch executor)"
    )
    parser.add_argument("--format", help="trace format (see kvsim trace formats)")
    parser.add_argument("--requests", type=int, default=24, help="requests of --trace to replay")
    parser.add_argument("--checkpoint", type=Path, help="weights of the torch executor")
    parser.add_argument("--text", type=Path, help="prompt corpus of the torch executor")
    parser.add_argument(
        "--report", type=Path, help="HTML report (default: <profile>.validation.html)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hardware.catalog import load_accelerator_file
    from sim.calibration import mape_by_kind, published_errors, read_published, report

    if args.profile is None and args.published is None:
        raise KvsimError("give --profile, --published or both", field="--profile")
    profile = load_accelerator_file(args.profile) if args.profile else None
    result: dict = {"profile": str(args.profile) if args.profile else None}
    sections: list[tuple[str, str]] = []
    figures = []
    mapes: dict[str, pd.DataFrame] = {}

    if args.published is not None:
        rows = read_published(args.published)
        frame = published_errors(rows, accelerator=profile, source=str(args.published))
        frame["label"] = [
            f"{m} {k} batch {b} x {t}"
            for m, k, b, t in zip(
                frame["model"], frame["kind"], frame["batch"], frame["tokens"], strict=True
            )
        ]
        frame["group"] = frame["model"] + " on " + frame["hardware"]
        result["published"] = {
            "file": str(args.published),
            "mape": mape_by_kind(frame),
            "rows": frame.drop(columns=["label", "group"]).to_dict(orient="records"),
        }
        mapes[f"published: {args.published.name}"] = frame
        sections.append((f"Published measurements: {args.published}", report.table(frame)))
        figures.append(report.scatter(frame, f"published: {args.published.name}", "group"))

    if profile is not None and args.published is None:
        _validate_profile(args, profile, result, sections, figures, mapes)

    sections.insert(0, ("Mean absolute percentage error", report.mape_table(mapes)))
    default_name = (
        args.profile.with_name(f"{args.profile.stem}.validation.html")
        if args.profile and args.published is None
        else Path(f"{(args.published or args.profile).stem}.validation.html")
    )
    out = args.report or default_name
    title = f"kvsim validate: {args.profile or args.published}"
    report.write_html(report.render(title, sections, figures), out)
    result["report"] = str(out)
    print(f"wrote {out}", file=sys.stderr)
    if args.json:
        print(json.dumps(_plain(result), allow_nan=False))
        return 0
    for name, frame in mapes.items():
        kinds = ", ".join(f"{k} {v:.1%}" for k, v in mape_by_kind(frame).items())
        print(f"{name}: MAPE {kinds}")
    for replayed in result.get("end_to_end", []):
        print(f"{replayed['name']} (real run {replayed['real_wall_s']:.1f} s of steps):")
        print(f"  {'metric':<22}{'real':>10}{'sim':>10}{'error':>9}")
        for row in replayed["metrics"]:
            print(
                f"  {row['metric']:<22}{row['real']:>10.4g}{row['simulated']:>10.4g}"
                f"{_percent(row['error']):>9}"
            )
    return 0


def _validate_profile(args, profile, result, sections, figures, mapes) -> None:
    """Held-out steps (timed now, or read from --steps) and the end-to-end replays."""
    from sim.calibration import (
        HELD_OUT,
        Precision,
        build_model,
        check_device,
        default_clock,
        design_steps,
        mape_by_kind,
        measure_steps,
        profile_on_path,
        read_steps_csv,
        replay,
        report,
        split_points,
        step_errors,
    )
    from sim.calibration.design import CPU_LIMITS, GPU_LIMITS, QUICK_LIMITS
    from workloads.model_catalog import get_model

    spec = get_model(args.model)
    precision = Precision.of(args.dtype)
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else None)
    clock = args.clock or default_clock(args.device, threads)
    if args.steps is not None:
        timings = [t for t in read_steps_csv(args.steps) if t.point.split == HELD_OUT]
        if not timings:
            raise KvsimError("no held-out steps in the file", source=str(args.steps))
        origin = f"held-out rows of {args.steps}"
    else:
        import torch

        check_device(args.device)
        if threads is not None:
            if threads < 1:
                raise KvsimError(f"must be >= 1, got {threads}", field="--threads")
            torch.set_num_threads(threads)
        limits = (
            QUICK_LIMITS if args.quick else (GPU_LIMITS if args.device == "cuda" else CPU_LIMITS)
        )
        points = split_points(design_steps(limits), HELD_OUT)
        print(f"timing {len(points)} held-out steps ({args.repeats} repeats)...", file=sys.stderr)
        model = build_model(spec, device=args.device, dtype=args.dtype)
        timings = list(measure_steps(model, points, repeats=args.repeats, clock=clock))
        del model
        origin = (
            f"timed now with the {clock} clock, {args.repeats} repeats, load average "
            f"{os.getloadavg()[0]:.2f}"
        )
    steps = step_errors(timings, spec, profile, precision)
    result["held_out_steps"] = {
        "origin": origin,
        "mape": mape_by_kind(steps),
        "median_spread": float(
            ((steps["p90_ms"] - steps["p10_ms"]) / steps["measured_ms"]).median()
        ),
        "rows": steps.to_dict(orient="records"),
    }
    mapes["held-out designed steps"] = steps
    sections.append((f"Held-out designed steps ({origin})", report.table(steps)))
    figures.append(report.scatter(steps, "held-out designed steps", "kind"))
    if args.no_e2e:
        return
    replays = []
    with profile_on_path(args.profile):
        scenarios, workload = _scenarios(args, spec, profile)
        for scenario in scenarios:
            print(f"replaying {scenario.name} on the real model...", file=sys.stderr)
            replays.append(
                replay(
                    scenario,
                    profile,
                    device=args.device,
                    threads=threads,
                    checkpoint=args.checkpoint,
                    text=args.text,
                    workload=workload,
                    clock=clock,
                )
            )
    result["end_to_end"] = []
    for item in replays:
        metrics = item.metric_errors()
        result["end_to_end"].append(
            {
                "name": item.name,
                "real_wall_s": item.wall_s,
                "steps_count": item.steps["kind"].value_counts().to_dict(),
                "steps_mape": mape_by_kind(item.steps),
                "metrics": metrics.to_dict(orient="records"),
                "preemptions": [
                    item.real.summary.get("preemptions"),
                    item.simulated.summary.get("preemptions"),
                ],
            }
        )
        mapes[f"replayed steps: {item.name}"] = item.steps
        sections.append((f"End to end: {item.name}", report.table(metrics)))
        labelled = item.steps.assign(
            label=[
                f"{k}: {p} prefill tokens, {d} decodes"
                for k, p, d in zip(
                    item.steps["kind"],
                    item.steps["prefill_tokens"],
                    item.steps["num_decode"],
                    strict=True,
                )
            ]
        )
        figures.append(report.scatter(labelled, f"replayed steps: {item.name}", "kind"))


def _scenarios(args, spec, profile):
    """The held-out scenarios: built in, the --scenario file, or the first --requests requests
    of --trace under workload A's scheduler with 512-token chunks, the model's whole context
    and a KV pool of :data:`TRACE_POOL_TOKENS` tokens."""
    import numpy as np

    from sim.calibration import held_out_scenarios, pool_fraction
    from sim.run import load_workload
    from sim.scenario import Scenario, load_scenario

    if args.scenario is not None:
        return (load_scenario(args.scenario),), None
    scenarios = held_out_scenarios(spec, profile)
    if args.trace is None:
        return scenarios, None
    if args.requests < 1:
        raise KvsimError(f"must be >= 1, got {args.requests}", field="--requests")
    data = scenarios[0].to_dict()
    data["name"] = f"trace {args.trace.name}, first {args.requests} requests"
    data["workload"] = {"trace": str(args.trace.resolve())}
    if args.format:
        data["workload"]["format"] = args.format
    data["scheduler"] = {
        **data["scheduler"],
        "max_batched_tokens": 512,
        "max_model_len": spec.max_context_tokens,
    }
    data["hardware"]["gpu_memory_fraction"] = pool_fraction(spec, profile, data, TRACE_POOL_TOKENS)
    scenario = Scenario.from_dict(data, source=str(args.trace))
    workload = load_workload(scenario, spec.max_context_tokens)
    if len(workload) > args.requests:
        workload = workload.take(np.arange(args.requests))
    return (scenario,), workload


def _percent(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:+.1%}"


def _plain(value):
    """``value`` with numpy scalars made Python numbers and NaN/inf made ``None`` (JSON)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
