"""Time real prefill and decode steps of kvsim's torch model on the local device.

The measurements become a *published-measurement* CSV (columns model, hardware, tp, batch,
prompt, context, prefill_ms, decode_ms; see docs/calibration.md) that the cost model can be
checked against. Weights are random: a step's time depends on shapes and dtypes, not on
values, so the architecture of any catalog model can be timed without its checkpoint. KV
contents are likewise left as allocated; the decode step attends ``context`` cached tokens.

Usage: python calibration/gpu_steps.py --device cuda --hardware h200-sxm --out steps.csv
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.real.model import LlamaModel, StepBatch  # noqa: E402
from sim.real.weights import LlamaConfig  # noqa: E402
from workloads.model_catalog import get_model  # noqa: E402

BLOCK_TOKENS = 16


def llama_config(model_id: str) -> LlamaConfig:
    spec = get_model(model_id)
    return LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.ffn_size,
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
        num_kv_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        rope_theta=spec.rope_theta,
        rms_norm_eps=1e-5,
        max_position_embeddings=spec.max_context_tokens,
        tie_word_embeddings=spec.tied_embeddings,
    )


def timed(run, device: str, repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        run()
    if device == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def step_batch(batch: int, new: int, start: int, device: str) -> StepBatch:
    blocks = -(-(start + new) // BLOCK_TOKENS)
    tables = [list(range(b * blocks, (b + 1) * blocks)) for b in range(batch)]
    tokens = [[(7 * b + t) % 1000 + 10 for t in range(new)] for b in range(batch)]
    return StepBatch.from_lists(tokens, [start] * batch, tables, BLOCK_TOKENS, device=device)


def time_step(model, batch: StepBatch, blocks: int, device: str, repeats: int) -> list[float]:
    cache = model.new_cache(blocks, BLOCK_TOKENS)
    return timed(lambda: model(batch, cache, last_only=True), device, repeats)


@torch.inference_mode()
def measure(model_id: str, device: str, dtype: torch.dtype, prompts, decodes, repeats: int):
    config = llama_config(model_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaModel(config).to(dtype).eval()
    rows = []
    for prompt in prompts:
        batch = step_batch(1, prompt, 0, device)
        times = time_step(model, batch, -(-prompt // BLOCK_TOKENS), device, repeats)
        rows.append(("prefill", 1, prompt, prompt, times))
        print(f"{model_id} prefill 1x{prompt}: {statistics.median(times) * 1e3:.2f} ms", flush=True)
    for batch_size, context in decodes:
        batch = step_batch(batch_size, 1, context - 1, device)
        blocks = batch_size * -(-context // BLOCK_TOKENS)
        times = time_step(model, batch, blocks, device, repeats)
        rows.append(("decode", batch_size, context, context, times))
        print(f"{model_id} decode {batch_size}x{context}: {statistics.median(times) * 1e3:.2f} ms")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--hardware", required=True, help="catalog id recorded in the CSV")
    parser.add_argument("--models", default="smollm2-135m,llama-3.1-8b")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--prompts", default="128,512,2048,8192")
    parser.add_argument("--decodes", default="1x512,1x2048,8x512,8x2048,32x2048,128x2048")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    prompts = [int(p) for p in args.prompts.split(",") if p]
    decodes = [tuple(int(x) for x in d.split("x")) for d in args.decodes.split(",") if d]
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    with args.out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "model",
                "hardware",
                "tp",
                "batch",
                "prompt",
                "context",
                "prefill_ms",
                "decode_ms",
                "p10_ms",
                "p90_ms",
                "repeats",
                "dtype",
                "device_name",
                "torch",
            ]
        )
        for model_id in args.models.split(","):
            rows = measure(model_id, args.device, dtype, prompts, decodes, args.repeats)
            if args.device == "cuda":
                torch.cuda.empty_cache()
            for kind, batch, prompt, context, times in rows:
                ms = sorted(t * 1e3 for t in times)
                median = statistics.median(ms)
                writer.writerow(
                    [
                        model_id,
                        args.hardware,
                        1,
                        batch,
                        prompt if kind == "prefill" else 0,
                        context,
                        f"{median:.4f}" if kind == "prefill" else "",
                        f"{median:.4f}" if kind == "decode" else "",
                        f"{ms[len(ms) // 10]:.4f}",
                        f"{ms[(9 * len(ms)) // 10]:.4f}",
                        len(ms),
                        args.dtype,
                        name,
                        torch.__version__,
                    ]
                )
                handle.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
