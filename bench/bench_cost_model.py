"""Speed of the roofline cost model: µs per ``step()`` and per ``decode_stretch()`` call.

The engine calls ``step()`` once per simulated step (hundreds of thousands of times per run)
and ``decode_stretch()`` for long pure-decode stretches; the target is ≲ 50 µs per step for a
mixed batch of 256 sequences. Prints figures only; no pass/fail.
"""

from __future__ import annotations

import time

import numpy as np

from hardware.catalog import get_accelerator
from sim.cost import BatchShape, CostModel
from workloads.model_catalog import get_model

CASES = (
    ("llama-3.1-8b", "h100-sxm", 1),
    ("llama-3.1-70b", "h100-sxm", 4),
    ("gemma-2-9b", "a100-80gb-sxm", 1),
    ("mixtral-8x7b", "h100-sxm", 2),
    ("deepseek-v3", "h200-sxm", 8),
)


def _per_call_us(fn, calls: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    rng = np.random.default_rng(0)
    decode_context = rng.integers(100, 8000, size=255)
    mixed = BatchShape(
        prefill_tokens=np.array([512]),
        prefill_context=np.array([1024]),
        decode_context=decode_context,
    )
    pure = BatchShape.decode(256, rng.integers(100, 8000, size=256))
    build_us = _per_call_us(
        lambda: BatchShape(
            prefill_tokens=mixed.prefill_tokens,
            prefill_context=mixed.prefill_context,
            decode_context=decode_context,
        ),
        3000,
    )
    print(f"BatchShape construction (1 chunk + 255 decodes): {build_us:.1f} µs")
    print(
        f"{'model':<16} {'device':<15} {'tp':>3} {'mixed step µs':>14} {'decode step µs':>15} "
        f"{'stretch 1000 µs':>16} {'µs/step in stretch':>19}"
    )
    for model_id, device, tp in CASES:
        model = CostModel(get_model(model_id), get_accelerator(device), tp=tp)
        mixed_us = _per_call_us(lambda m=model: m.step(mixed), 3000)
        pure_us = _per_call_us(lambda m=model: m.step(pure), 3000)
        stretch_us = _per_call_us(lambda m=model: m.decode_stretch(pure.decode_context, 1000), 200)
        print(
            f"{model_id:<16} {device:<15} {tp:>3} {mixed_us:>14.1f} {pure_us:>15.1f} "
            f"{stretch_us:>16.1f} {stretch_us / 1000:>19.3f}"
        )


if __name__ == "__main__":
    main()
