"""``kvsim calibrate``: time designed real steps, fit the cost model's efficiencies, write a
calibrated hardware profile (docs/calibration.md)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import sys
from pathlib import Path

from hardware.errors import KvsimError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="fit the cost model's efficiencies to real steps and write a hardware profile",
        description=(
            "Time a designed set of real prefill, decode and mixed steps of kvsim's torch model, "
            "fit the cost model's efficiency fractions and overheads to them (robust least "
            "squares) and write a new hardware profile TOML. Catalog files are never overwritten."
        ),
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", default="smollm2-135m", help="catalog model id (Llama family)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    base = parser.add_mutually_exclusive_group()
    base.add_argument("--hardware", metavar="ID", help="catalog id of this device (its peaks)")
    base.add_argument(
        "--hardware-file", type=Path, metavar="PATH", help="profile TOML of this device"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default 1 on cpu: the most stable on a shared machine)",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "thread"),
        help="step timer: wall time, or the thread's CPU time (default on cpu with one "
        "thread: immune to other processes' load; docs/calibration.md)",
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per step")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    parser.add_argument("--quick", action="store_true", help="a small design, for smoke tests")
    parser.add_argument("--checkpoint", type=Path, help="real weights (default: random)")
    parser.add_argument("--id", dest="profile_id", metavar="ID", help="id of the written profile")
    parser.add_argument("--out", type=Path, help="profile TOML to write (default ./<id>.toml)")
    parser.add_argument(
        "--steps-out", type=Path, help="timed steps CSV (default: <out>.steps.csv beside --out)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.set_defaults(func=run)


def _given_base(args: argparse.Namespace):
    """(Accelerator, description) of ``--hardware`` or ``--hardware-file``, else ``None``."""
    from hardware.catalog import get_accelerator, load_accelerator_file

    if args.hardware:
        return get_accelerator(args.hardware), f"catalog {args.hardware}"
    if args.hardware_file:
        return load_accelerator_file(args.hardware_file), str(args.hardware_file)
    return None


def _probed_base(args: argparse.Namespace, clock: str):
    """(Accelerator, description, TOML text) of a quick probe of this device timed with
    ``clock``: the measured rates are the peaks (``hardware.probe.profile_toml``)."""
    from hardware.catalog import parse_text
    from hardware.probe import probe, profile_toml
    from sim.calibration import clock_function

    print(f"probing {args.device} for the base profile's peaks...", file=sys.stderr)
    timer = clock_function(clock, args.device)
    result = probe(args.device, dtype=args.dtype, quick=True, repeats=5, timer=timer)
    text = profile_toml(result, f"local-{args.device}")
    entry = parse_text(text, "accelerator", source=f"kvsim probe --device {args.device}")
    description = f"quick probe of this {args.device} ({result.date}, {clock} clock)"
    return entry.spec, description, text


def run(args: argparse.Namespace) -> int:
    from sim.calibration import (
        CPU_LIMITS,
        FIT,
        GPU_LIMITS,
        HELD_OUT,
        QUICK_LIMITS,
        CalibrationInfo,
        Precision,
        build_model,
        check_device,
        check_output,
        default_clock,
        design_steps,
        device_name,
        fit_efficiency,
        mape_by_kind,
        measure_steps,
        profile_text,
        step_errors,
        write_profile,
        write_steps_csv,
    )
    from workloads.model_catalog import get_model

    if args.repeats < 1 or args.warmup < 0:
        raise KvsimError("--repeats must be >= 1 and --warmup >= 0", field="--repeats")
    import torch

    check_device(args.device)
    spec = get_model(args.model)
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else None)
    if threads is not None and threads < 1:
        raise KvsimError(f"must be >= 1, got {threads}", field="--threads")
    given = _given_base(args)  # checked before anything is timed
    profile_id = args.profile_id or f"{given[0].id if given else 'local-' + args.device}-calibrated"
    out = args.out or Path(f"{profile_id}.toml")
    check_output(out, profile_id, force=args.force)
    base_out = out.with_name(f"{out.stem}.base.toml")
    if given is None:
        check_output(base_out, f"local-{args.device}", force=args.force)
    if threads is not None:
        torch.set_num_threads(threads)
    clock = args.clock or default_clock(args.device, threads)
    if given is not None:
        base, base_text = given
        base_toml = None
    else:
        base, base_text, base_toml = _probed_base(args, clock)
        base_text += f", written to {base_out}"
    steps_out = args.steps_out or out.with_name(f"{out.stem}.steps.csv")
    precision = Precision.of(args.dtype)

    limits = QUICK_LIMITS if args.quick else (GPU_LIMITS if args.device == "cuda" else CPU_LIMITS)
    points = design_steps(limits)
    load = os.getloadavg()
    print(
        f"timing {len(points)} steps of {spec.id} ({args.dtype}, {args.device}, "
        f"{torch.get_num_threads()} thread(s)), {args.repeats} repeats; load {load[0]:.2f}",
        file=sys.stderr,
    )
    model = build_model(spec, device=args.device, dtype=args.dtype, checkpoint=args.checkpoint)
    timings = measure_steps(
        model,
        points,
        repeats=args.repeats,
        warmup=args.warmup,
        clock=clock,
        progress=_progress_bar(),
    )
    del model
    fitted = [t for t in timings if t.point.split == FIT]
    result = fit_efficiency(
        spec,
        base,
        [t.point.batch_shape() for t in fitted],
        [t.median_s for t in fitted],
        precision=precision,
    )
    info = CalibrationInfo(
        date=dt.date.today().isoformat(),
        device=args.device,
        device_name=device_name(args.device),
        model_id=spec.id,
        dtype=args.dtype,
        threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        repeats=args.repeats,
        warmup=args.warmup,
        weights=str(args.checkpoint) if args.checkpoint else "random (seed 0)",
        base=base_text,
        load_average=load,
        clock=clock,
        command=_command(args, threads),
    )
    text = profile_text(
        base, result, [t.point.label for t in fitted], profile_id=profile_id, info=info
    )
    write_steps_csv(timings, steps_out)
    if base_toml is not None:
        write_profile(base_toml, base_out, force=args.force)
    write_profile(text, out, force=args.force)
    errors = step_errors(timings, spec, base.with_efficiency(result.efficiency), precision)
    held = errors[errors["split"] == HELD_OUT]
    summary = {
        "profile": str(out),
        "steps": str(steps_out),
        "base": str(base_out) if base_toml is not None else base_text,
        "info": {**info.__dict__, "load_average": list(info.load_average)},
        "load_average_end": list(os.getloadavg()),
        "parameters": [p.__dict__ for p in result.parameters],
        "fit_mape": mape_by_kind(errors[errors["split"] == FIT]),
        "held_out_mape": mape_by_kind(held),
        "spread_median": statistics.median(t.spread for t in timings),
        "starts": result.starts,
    }
    print(f"wrote {out} and {steps_out}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"calibrated profile {profile_id} written to {out} (steps in {steps_out})")
    print(f"{'parameter':<27}{'value':>12}{'prior':>12}{'stderr':>12}  status")
    for p in result.parameters:
        status = "prior" if not p.free else ("not identified" if not p.identified else "fitted")
        if p.free and p.at_bound:
            status += ", at bound"
        stderr = "-" if p.stderr is None else f"{p.stderr:.4g}"
        print(f"{p.name:<27}{p.value:>12.4g}{p.prior:>12.4g}{stderr:>12}  {status}")
    for name, part in (("fitted", summary["fit_mape"]), ("held-out", summary["held_out_mape"])):
        kinds = ", ".join(f"{k} {v:.1%}" for k, v in part.items() if k != "all")
        print(f"{name} steps MAPE: {kinds}")
    print(
        f"median spread (p90-p10)/median of the steps: {summary['spread_median']:.1%}; "
        f"load average {load[0]:.2f} at start, {summary['load_average_end'][0]:.2f} at end"
    )
    return 0


def _command(args: argparse.Namespace, threads: int | None) -> str:
    """The command line that reproduces this calibration (output paths left out)."""
    parts = ["kvsim", "calibrate", "--device", args.device, "--model", args.model]
    parts += ["--dtype", args.dtype, "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    if threads is not None:
        parts += ["--threads", str(threads)]
    if args.clock:
        parts += ["--clock", args.clock]
    if args.hardware:
        parts += ["--hardware", args.hardware]
    if args.hardware_file:
        parts += ["--hardware-file", str(args.hardware_file)]
    if args.checkpoint:
        parts += ["--checkpoint", str(args.checkpoint)]
    if args.quick:
        parts.append("--quick")
    return shlex.join(parts)


def _progress_bar():
    """A tqdm bar on stderr, advanced by ``measure_steps``' progress callback."""
    from tqdm import tqdm

    bar = tqdm(total=0, unit="step", file=sys.stderr, disable=None)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)
        if done == total:
            bar.close()

    return update
