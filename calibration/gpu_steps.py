"""Time real prefill and decode steps of kvsim's torch model and write them as a published CSV.

The columns are the published-measurement layout that ``kvsim validate --published`` reads
(model, hardware, tp, batch, prompt, context, prefill_ms, decode_ms; docs/calibration.md),
plus p10_ms, p90_ms, repeats, dtype, device_name and torch. Steps are timed by
:func:`sim.calibration.measure_steps` (the one step timer of the project: medians of
interleaved repeats after a warm-up round, on random weights, CUDA-synchronised).

Usage: python calibration/gpu_steps.py --device cuda --hardware h200-sxm --out steps.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.calibration import StepPoint, build_model, device_name, measure_steps  # noqa: E402
from sim.calibration.published import REQUIRED_COLUMNS  # noqa: E402
from workloads.model_catalog import get_model  # noqa: E402

COLUMNS = (*REQUIRED_COLUMNS, "p10_ms", "p90_ms", "repeats", "dtype", "device_name", "torch")


def points(prompts: list[int], decodes: list[tuple[int, int]]) -> list[StepPoint]:
    """One-prompt prefills of each length, then decode steps of (batch, context)."""
    out = [StepPoint((prompt,), (0,)) for prompt in prompts]
    out += [StepPoint(decode_context=(context,) * batch) for batch, context in decodes]
    return out


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--hardware", required=True, help="catalog id recorded in the CSV")
    parser.add_argument("--models", default="smollm2-135m,llama-3.1-8b")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--prompts", default="128,512,2048,8192")
    parser.add_argument("--decodes", default="1x512,1x2048,8x512,8x2048,32x2048,128x2048")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    prompts = [int(p) for p in args.prompts.split(",") if p]
    decodes = [(int(b), int(c)) for b, c in (d.split("x") for d in args.decodes.split(",") if d)]
    name = device_name(args.device)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for model_id in args.models.split(","):
            model = build_model(get_model(model_id), device=args.device, dtype=args.dtype)
            for timing in measure_steps(model, points(prompts, decodes), repeats=args.repeats):
                point = timing.point
                prefill = point.kind == "prefill"
                batch = len(point.prefill_tokens) if prefill else len(point.decode_context)
                prompt = point.prefill_tokens[0] if prefill else 0
                context = prompt if prefill else point.decode_context[0]
                ms = f"{timing.median_s * 1e3:.4f}"
                writer.writerow(
                    [
                        model_id, args.hardware, 1, batch, prompt, context,
                        ms if prefill else "", "" if prefill else ms,
                        f"{timing.p10_s * 1e3:.4f}", f"{timing.p90_s * 1e3:.4f}",
                        timing.repeats, args.dtype, name, torch.__version__,
                    ]
                )  # fmt: skip
                print(f"{model_id} {point.label}: {ms} ms", flush=True)
            del model
            if args.device == "cuda":
                torch.cuda.empty_cache()
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
