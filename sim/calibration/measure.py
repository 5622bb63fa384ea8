"""Time real steps of kvsim's paged torch model (:class:`sim.real.model.LlamaModel`).

One timed step is what the real executor does per engine step: build the
:class:`~sim.real.model.StepBatch` tensors from the sequences' token lists and block tables,
run the forward pass over the paged KV cache (logits of each sequence's last new token only)
and sample greedily; on CUDA the clock stops after ``torch.cuda.synchronize()``.

The machines this runs on are shared and noisy, so every point is timed ``repeats`` times and
summarised by its median with the 10th/90th percentiles as the spread, after ``warmup``
untimed rounds (allocator, oneDNN/cuBLAS autotuning and caches warm up there). Rounds are
interleaved — round ``r`` times every point once — so a burst of background load spreads over
all points instead of biasing a few. One KV cache sized for the largest point serves all of
them (each point's sequences own disjoint blocks of it).

Weights are random by default (seeded): a step's time depends on shapes and dtypes, not on
the values (bf16 and fp32 random normal weights hit no denormals), so any Llama-family catalog
model can be timed without its checkpoint; ``checkpoint`` loads real weights instead. torch is
imported lazily (the ``real`` extra).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hardware.errors import KvsimError
from sim.calibration.design import StepPoint
from workloads.model import ModelSpec

if TYPE_CHECKING:
    import torch

    from sim.real.model import LlamaModel
    from sim.real.weights import LlamaConfig

BLOCK_TOKENS = 16
#: Compute dtypes calibration can run the torch model in.
DTYPES = ("bf16", "fp16", "fp32")
#: Clocks a step can be timed with (:func:`clock_function`).
CLOCKS = ("wall", "thread")


def clock_function(clock: str, device: str) -> Callable[[], float]:
    """The clock steps are timed with. ``wall``: ``time.perf_counter``. ``thread``: the CPU
    time of the calling thread (``time.thread_time``), which on a CPU run with one torch
    thread is the step's compute time without the time the OS gave other processes — the
    machines this runs on are shared, and a busy neighbour stretches wall time several-fold
    while thread time moves by tens of percent (memory and cache contention remain). Only
    valid on CPU with ``torch.get_num_threads() == 1`` (work on other threads is not counted)
    and for steps that do not wait on I/O."""
    import torch

    if clock not in CLOCKS:
        raise KvsimError(f"unknown clock {clock!r}; expected one of {CLOCKS}", field="clock")
    if clock == "wall":
        return time.perf_counter
    if device != "cpu" or torch.get_num_threads() != 1:
        raise KvsimError(
            "the thread clock needs a CPU run with one torch thread (--threads 1)", field="clock"
        )
    return time.thread_time


def default_clock(device: str, threads: int | None) -> str:
    """``thread`` for a one-thread CPU run, ``wall`` otherwise."""
    return "thread" if device == "cpu" and threads == 1 else "wall"


@dataclass(frozen=True)
class StepTiming:
    """Seconds (by the clock it was timed with) of one designed step over ``repeats`` timed
    runs: median, 10th and 90th percentiles, minimum and maximum."""

    point: StepPoint
    median_s: float
    p10_s: float
    p90_s: float
    min_s: float
    max_s: float
    repeats: int

    @property
    def spread(self) -> float:
        """(p90 − p10) / median: the relative spread of the repeats."""
        return (self.p90_s - self.p10_s) / self.median_s

    @classmethod
    def from_times(cls, point: StepPoint, times_s: Sequence[float]) -> StepTiming:
        values = np.asarray(times_s, dtype=float)
        p10, median, p90 = np.percentile(values, [10, 50, 90])
        low, high = float(values.min()), float(values.max())
        return cls(point, float(median), float(p10), float(p90), low, high, len(values))


def llama_config(spec: ModelSpec) -> LlamaConfig:
    """The torch model's config for a catalog :class:`ModelSpec` of the Llama family (RMSNorm,
    RoPE, multi/grouped/multi-query attention, gated FFN); other architectures are refused."""
    from sim.real.weights import LlamaConfig

    unsupported = []
    if spec.attention not in ("mha", "gqa", "mqa"):
        unsupported.append(f"{spec.attention} attention")
    if spec.moe is not None:
        unsupported.append("mixture of experts")
    if not spec.gated_ffn:
        unsupported.append("an ungated FFN")
    if any(spec.layer_window_tokens(i) is not None for i in range(spec.num_layers)):
        unsupported.append("sliding-window layers")
    if any(not spec.holds_kv(i) for i in range(spec.num_layers)):
        unsupported.append("cross-layer KV sharing")
    if unsupported:
        raise KvsimError(
            f"the torch model runs Llama-family decoders; this model has {', '.join(unsupported)}",
            source=spec.id,
            field="model",
        )
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


def torch_dtype(dtype: str) -> torch.dtype:
    import torch

    if dtype not in DTYPES:
        raise KvsimError(f"unknown dtype {dtype!r}; expected one of {DTYPES}", field="dtype")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]


def check_device(device: str) -> None:
    """``cpu``, or ``cuda`` with a visible GPU."""
    import torch

    if device not in ("cpu", "cuda"):
        raise KvsimError(f"unknown device {device!r}; expected cpu or cuda", field="device")
    if device == "cuda" and not torch.cuda.is_available():
        raise KvsimError("no CUDA device is visible to torch", field="device")


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model name from ``/proc/cpuinfo`` (``platform`` else)."""
    import platform

    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def build_model(
    spec: ModelSpec,
    *,
    device: str = "cpu",
    dtype: str = "bf16",
    checkpoint: str | Path | None = None,
    seed: int = 0,
) -> LlamaModel:
    """The torch model of ``spec`` on ``device`` in ``dtype``: random weights drawn from a
    generator seeded with ``seed``, or the weights of ``checkpoint`` (a GGUF file or Hugging
    Face directory, checked against ``spec``'s shape)."""
    import torch

    from sim.real.model import LlamaModel, rope_inv_freq
    from sim.real.weights import load_checkpoint

    check_device(device)
    config = llama_config(spec)
    if checkpoint is not None:
        loaded = load_checkpoint(checkpoint)
        if loaded.config != config:
            raise KvsimError(
                f"checkpoint shape {loaded.config} differs from catalog model {spec.id}",
                source=str(checkpoint),
                field="checkpoint",
            )
        return LlamaModel.from_checkpoint(loaded, torch_dtype(dtype), device)
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        model = LlamaModel(config)
    # Matrices ~ N(0, 0.02²) (GPT-2's initialisation), norm weights 1: typical magnitudes.
    state = {
        name: (
            torch.ones(p.shape)
            if name.endswith("norm.weight")
            else torch.randn(p.shape, generator=generator) * 0.02
        ).to(torch_dtype(dtype))
        for name, p in model.named_parameters()
    }
    model.load_state_dict(state, strict=True, assign=True)
    model.inv_freq = rope_inv_freq(config, None)
    return model.to(device).eval()


@dataclass(frozen=True)
class _Layout:
    """A point's sequences: new token ids, start positions and block tables."""

    tokens: list[list[int]]
    starts: list[int]
    tables: list[list[int]]


def _layout(point: StepPoint, vocab_size: int, block_tokens: int) -> _Layout:
    news = list(point.prefill_tokens) + [1] * len(point.decode_context)
    starts = list(point.prefill_context) + [c - 1 for c in point.decode_context]
    tokens, tables, offset = [], [], 0
    for b, (new, start) in enumerate(zip(news, starts, strict=True)):
        tokens.append(((np.arange(new) * 7 + 131 * b) % (vocab_size - 10) + 10).tolist())
        blocks = -(-(start + new) // block_tokens)
        tables.append(list(range(offset, offset + blocks)))
        offset += blocks
    return _Layout(tokens, starts, tables)


def blocks_needed(points: Sequence[StepPoint], block_tokens: int = BLOCK_TOKENS) -> int:
    """KV blocks of the largest point: all points share one cache."""
    return max(sum(-(-(s + n) // block_tokens) for n, s in _news_starts(point)) for point in points)


def _news_starts(point: StepPoint) -> list[tuple[int, int]]:
    return list(zip(point.prefill_tokens, point.prefill_context, strict=True)) + [
        (1, c - 1) for c in point.decode_context
    ]


def measure_steps(
    model: LlamaModel,
    points: Sequence[StepPoint],
    *,
    repeats: int = 7,
    warmup: int = 1,
    block_tokens: int = BLOCK_TOKENS,
    clock: str = "wall",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[StepTiming, ...]:
    """Time every point ``repeats`` times in interleaved rounds after ``warmup`` untimed rounds
    (module doc) with ``clock`` (:func:`clock_function`). ``progress(done, total)`` is called
    after each timed or warm-up step."""
    import torch

    from sim.real.model import StepBatch

    if repeats < 1 or warmup < 0:
        raise KvsimError("repeats must be >= 1 and warmup >= 0", field="repeats")
    if not points:
        raise KvsimError("no steps to time", field="points")
    device = model.device
    cuda = device.type == "cuda"
    longest = max(p.max_context for p in points)
    if longest > model.config.max_position_embeddings:
        raise KvsimError(
            f"a designed step holds {longest} tokens but the model's context is "
            f"{model.config.max_position_embeddings}",
            field="design",
        )
    num_blocks = blocks_needed(points, block_tokens)
    if cuda:
        c = model.config
        element = model.embed_tokens.weight.element_size()
        need = 2 * num_blocks * block_tokens * c.num_layers * c.num_kv_heads * c.head_dim * element
        free, _total = torch.cuda.mem_get_info()
        if need > 0.8 * free:
            raise KvsimError(
                f"the design's KV cache needs {need / 1e9:.1f} GB, the GPU has "
                f"{free / 1e9:.1f} GB free; use a smaller design",
                field="design",
            )
    cache = model.new_cache(num_blocks, block_tokens)
    layouts = [_layout(p, model.config.vocab_size, block_tokens) for p in points]
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    now = clock_function(clock, device.type)

    def run(layout: _Layout) -> float:
        sync()
        start = now()
        batch = StepBatch.from_lists(
            layout.tokens, layout.starts, layout.tables, block_tokens, device
        )
        model(batch, cache, last_only=True).argmax(-1).tolist()
        sync()
        return now() - start

    times: list[list[float]] = [[] for _ in points]
    total, done = (warmup + repeats) * len(points), 0
    with torch.inference_mode():
        for round_ in range(warmup + repeats):
            for i, layout in enumerate(layouts):
                elapsed = run(layout)
                if round_ >= warmup:
                    times[i].append(elapsed)
                done += 1
                if progress is not None:
                    progress(done, total)
    return tuple(StepTiming.from_times(p, t) for p, t in zip(points, times, strict=True))


# ---- the steps CSV ---------------------------------------------------------------------------
STEP_CSV_COLUMNS = (
    "split",
    "kind",
    "label",
    "prefill",
    "decode",
    "median_ms",
    "p10_ms",
    "p90_ms",
    "min_ms",
    "max_ms",
    "repeats",
)


def _format_prefill(point: StepPoint) -> str:
    return " ".join(
        f"{c}@{p}" for c, p in zip(point.prefill_tokens, point.prefill_context, strict=True)
    )


def _format_decode(point: StepPoint) -> str:
    contexts, counts = np.unique(np.asarray(point.decode_context), return_counts=True)
    return " ".join(f"{int(n)}x{int(c)}" for c, n in zip(contexts, counts, strict=True))


def timings_frame(timings: Sequence[StepTiming]) -> pd.DataFrame:
    """One row per timed step: split, kind, label, shape and milliseconds."""
    rows = [
        {
            "split": t.point.split,
            "kind": t.point.kind,
            "label": t.point.label,
            "prefill": _format_prefill(t.point),
            "decode": _format_decode(t.point),
            "median_ms": t.median_s * 1e3,
            "p10_ms": t.p10_s * 1e3,
            "p90_ms": t.p90_s * 1e3,
            "min_ms": t.min_s * 1e3,
            "max_ms": t.max_s * 1e3,
            "repeats": t.repeats,
        }
        for t in timings
    ]
    return pd.DataFrame(rows, columns=list(STEP_CSV_COLUMNS))


def write_steps_csv(timings: Sequence[StepTiming], path: str | Path) -> Path:
    """Write :func:`timings_frame` as CSV atomically (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    timings_frame(timings).to_csv(tmp, index=False, float_format="%.4f")
    tmp.replace(path)
    return path


def read_steps_csv(path: str | Path) -> tuple[StepTiming, ...]:
    """Read a steps CSV written by :func:`write_steps_csv`; errors name the line and column."""
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as err:
        raise KvsimError(f"cannot read steps file: {err.strerror}", source=str(path)) from None
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in STEP_CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise KvsimError("missing column", source=str(path), line=1, field=missing[0])
        timings = []
        for row in reader:
            timings.append(_parse_step_row(row, str(path), reader.line_num))
    if not timings:
        raise KvsimError("no steps in file", source=str(path))
    return tuple(timings)


def _parse_step_row(row: dict[str, Any], source: str, line: int) -> StepTiming:
    def fail(field: str, message: str) -> KvsimError:
        return KvsimError(message, source=source, line=line, field=field)

    def number(field: str) -> float:
        try:
            value = float(row[field])
        except (TypeError, ValueError):
            raise fail(field, f"expected a number, got {row[field]!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise fail(field, f"expected a positive number, got {row[field]!r}")
        return value

    def pairs(field: str, sep: str) -> list[tuple[int, int]]:
        out = []
        for item in (row[field] or "").split():
            left, mark, right = item.partition(sep)
            if not mark or not left.isdigit() or not right.isdigit():
                raise fail(field, f"expected items like 256{sep}768, got {item!r}")
            out.append((int(left), int(right)))
        return out

    prefill = pairs("prefill", "@")
    decode = [context for count, context in pairs("decode", "x") for _ in range(count)]
    try:
        point = StepPoint(
            tuple(c for c, _ in prefill), tuple(p for _, p in prefill), tuple(decode), row["split"]
        )
    except KvsimError as err:
        raise fail(err.field or "prefill", err.message) from None
    repeats = number("repeats")
    if repeats != int(repeats):
        raise fail("repeats", f"expected a whole number, got {row['repeats']!r}")
    ms = {name: number(f"{name}_ms") / 1e3 for name in ("median", "p10", "p90", "min", "max")}
    return StepTiming(point, ms["median"], ms["p10"], ms["p90"], ms["min"], ms["max"], int(repeats))
