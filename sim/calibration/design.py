"""The designed set of real steps that calibration times, and its held-out half.

The cost model's parameters each show in a different kind of step (``docs/calibration.md``):
large prefill chunks are bound by GEMM FLOPs (``gemm_fraction``), long prefills add attention
FLOPs quadratic in the prompt (``attention_fraction``), small decode batches read every weight
once (``hbm_fraction``), and large decode batches at long contexts read the KV
(``hbm_fraction`` or the attention rate, whichever binds), while every step pays the fixed
``step_overhead_s``. The design spans these regimes on geometric grids: fresh prefills of 16
tokens to ``max_prompt``; prefill chunks on top of cached context (chunked prefill and prefix
hits); several prompts in one step; decode batches of 1 to ``max_batch`` sequences at contexts
of 128 tokens to ``max_context``; and mixed steps (a prefill chunk with running decodes, as a
chunked-prefill scheduler builds them).

Every grid alternates between a *fit* point and a *held-out* point (a checkerboard on the
two-dimensional decode grid), so the held-out steps interpolate between fitted ones and no
held-out shape is ever used to fit (cross-validation in the sense of Stone 1974).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hardware.errors import KvsimError
from sim.cost.batch import BatchShape

FIT, HELD_OUT = "fit", "held_out"
PREFILL, DECODE, MIXED = "prefill", "decode", "mixed"


@dataclass(frozen=True)
class StepPoint:
    """One step shape: prefill chunks of ``prefill_tokens[i]`` new tokens on
    ``prefill_context[i]`` cached ones, and decode sequences attending ``decode_context[j]``
    tokens (the new one included); ``split`` says whether it is fitted or held out."""

    prefill_tokens: tuple[int, ...] = ()
    prefill_context: tuple[int, ...] = ()
    decode_context: tuple[int, ...] = ()
    split: str = FIT

    def __post_init__(self) -> None:
        if len(self.prefill_tokens) != len(self.prefill_context):
            raise KvsimError(
                "one cached-context count per prefill chunk is needed", field="prefill_context"
            )
        if not self.prefill_tokens and not self.decode_context:
            raise KvsimError("a step needs a prefill chunk or a decode sequence", field="step")
        if min(self.prefill_tokens, default=1) < 1 or min(self.decode_context, default=1) < 1:
            raise KvsimError("token counts must be >= 1", field="step")
        if min(self.prefill_context, default=0) < 0:
            raise KvsimError("cached context must be >= 0", field="prefill_context")
        if self.split not in (FIT, HELD_OUT):
            raise KvsimError(f"expected {FIT!r} or {HELD_OUT!r}", field="split")

    @property
    def kind(self) -> str:
        """``prefill`` (chunks only), ``decode`` (decode sequences only) or ``mixed``."""
        if self.prefill_tokens and self.decode_context:
            return MIXED
        return PREFILL if self.prefill_tokens else DECODE

    @property
    def num_sequences(self) -> int:
        return len(self.prefill_tokens) + len(self.decode_context)

    @property
    def max_context(self) -> int:
        """Most tokens any sequence of the step holds in KV after it."""
        ends = [c + p for c, p in zip(self.prefill_tokens, self.prefill_context, strict=True)]
        return max(ends + list(self.decode_context))

    @property
    def label(self) -> str:
        """Short text like ``prefill 256@768 + decode 4x512``."""
        parts = []
        if self.prefill_tokens:
            chunks = sorted(set(zip(self.prefill_tokens, self.prefill_context, strict=True)))
            text = " ".join(f"{c}@{p}" if p else str(c) for c, p in chunks)
            n = len(self.prefill_tokens)
            parts.append(f"prefill {n}x{text}" if n > 1 and len(chunks) == 1 else f"prefill {text}")
        if self.decode_context:
            contexts = sorted(set(self.decode_context))
            text = "/".join(str(c) for c in contexts)
            parts.append(f"decode {len(self.decode_context)}x{text}")
        return " + ".join(parts)

    def batch_shape(self) -> BatchShape:
        """The step as the cost model sees it (every prefill chunk samples a token)."""
        return BatchShape(
            prefill_tokens=np.asarray(self.prefill_tokens, dtype=np.int64),
            prefill_context=np.asarray(self.prefill_context, dtype=np.int64),
            decode_context=np.asarray(self.decode_context, dtype=np.int64),
        )


@dataclass(frozen=True)
class DesignLimits:
    """Largest prompt, decode batch and context the design uses. The defaults keep one round of
    the whole design near ten seconds on one CPU core with SmolLM2-135M in bf16; a GPU takes
    :data:`GPU_LIMITS`."""

    max_prompt: int = 1024
    max_batch: int = 16
    max_context: int = 2048

    def __post_init__(self) -> None:
        if self.max_prompt < 32 or self.max_batch < 2 or self.max_context < 256:
            raise KvsimError(
                "the design needs max_prompt >= 32, max_batch >= 2 and max_context >= 256",
                field="design",
            )


CPU_LIMITS = DesignLimits()
QUICK_LIMITS = DesignLimits(max_prompt=128, max_batch=4, max_context=512)
GPU_LIMITS = DesignLimits(max_prompt=8192, max_batch=128, max_context=8192)


def _geometric(low: int, high: int) -> list[int]:
    """Powers of two from ``low`` up to ``high`` (both included when they are powers)."""
    values = []
    value = low
    while value <= high:
        values.append(value)
        value *= 2
    return values


def _alternate(index: int) -> str:
    return FIT if index % 2 == 0 else HELD_OUT


def design_steps(limits: DesignLimits = CPU_LIMITS) -> tuple[StepPoint, ...]:
    """The designed steps, fitted and held-out, in a fixed order (module doc)."""
    points: list[StepPoint] = []
    prompts = _geometric(16, limits.max_prompt)
    # Fresh prefills: 16, 64, 256, ... fitted; 32, 128, 512, ... held out. The largest is
    # always fitted so that held-out prefills interpolate.
    for i, prompt in enumerate(reversed(prompts)):
        points.append(StepPoint((prompt,), (0,), split=_alternate(i)))
    # Chunks on cached context (chunked prefill, prefix-cache hits).
    chunk, cached = max(prompts[-1] // 4, 16), max(prompts[-1] // 2, 16)
    points += [
        StepPoint((chunk,), (3 * cached // 2,), split=FIT),
        StepPoint((chunk // 4,), (limits.max_context - chunk // 4,), split=FIT),
        StepPoint((chunk // 2,), (cached,), split=HELD_OUT),
        StepPoint((chunk,), (limits.max_context // 2,), split=HELD_OUT),
    ]
    # Several prompts in one step.
    points += [
        StepPoint((chunk // 4,) * 4, (0,) * 4, split=FIT),
        StepPoint((chunk // 2,) * 2, (0,) * 2, split=HELD_OUT),
    ]
    # Decode: a checkerboard over batch x context, the largest corner fitted.
    batches = _geometric(1, limits.max_batch)
    contexts = _geometric(128, limits.max_context)
    for i, batch in enumerate(reversed(batches)):
        for j, context in enumerate(reversed(contexts)):
            points.append(StepPoint(decode_context=(context,) * batch, split=_alternate(i + j)))
    # Mixed: one prefill chunk with running decodes.
    small = max(limits.max_batch // 4, 1)
    points += [
        StepPoint((chunk // 2,), (0,), (contexts[len(contexts) // 2],) * small, split=FIT),
        StepPoint((chunk // 4,), (0,), (contexts[0],) * (2 * small), split=HELD_OUT),
    ]
    return tuple(points)


def split_points(
    points: tuple[StepPoint, ...] | list[StepPoint], split: str
) -> tuple[StepPoint, ...]:
    """The points of one split (``fit`` or ``held_out``)."""
    return tuple(p for p in points if p.split == split)
