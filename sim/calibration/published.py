"""Externally measured step latencies (a "published" CSV) and the cost model's error on them.

Columns (header row required, in any order; extra columns are ignored):

========== ==================================================================================
model      catalog model id (``kvsim models list``)
hardware   catalog accelerator id (``kvsim hardware list``)
tp         tensor-parallel degree (integer >= 1)
batch      sequences in the step (integer >= 1)
prompt     prompt tokens of each sequence for ``prefill_ms`` (integer >= 0; 0 if no prefill)
context    KV tokens each decode sequence attends for ``decode_ms`` (integer >= 0)
prefill_ms milliseconds to prefill ``batch`` prompts of ``prompt`` tokens in one step (empty
           if not measured)
decode_ms  milliseconds of one decode step of ``batch`` sequences at ``context`` (empty if not
           measured)
dtype      optional: weight, KV and compute dtype (``bf16`` when absent or empty)
========== ==================================================================================

A row gives ``prefill_ms``, ``decode_ms`` or both. ``calibration/h200-sxm/steps.csv`` is one
such file (kvsim's torch model timed on an H200). Every bad cell is a :class:`KvsimError`
naming the file, the line and the column.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hardware.catalog import get_accelerator
from hardware.errors import KvsimError
from hardware.specs import Accelerator
from sim.calibration.fit import Precision, cost_model
from workloads.model_catalog import get_model

REQUIRED_COLUMNS = (
    "model",
    "hardware",
    "tp",
    "batch",
    "prompt",
    "context",
    "prefill_ms",
    "decode_ms",
)


@dataclass(frozen=True)
class PublishedRow:
    """One measured row; ``line`` is its line in the file."""

    line: int
    model: str
    hardware: str
    tp: int
    batch: int
    prompt: int
    context: int
    prefill_ms: float | None
    decode_ms: float | None
    dtype: str = "bf16"


def read_published(path: str | Path) -> tuple[PublishedRow, ...]:
    """Parse and check a published CSV (module doc)."""
    path = Path(path)
    source = str(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as err:
        raise KvsimError(f"cannot read file: {err.strerror}", source=source) from None
    rows = []
    with handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        for column in REQUIRED_COLUMNS:
            if column not in header:
                raise KvsimError(
                    f"missing column; expected columns {', '.join(REQUIRED_COLUMNS)}",
                    source=source,
                    line=1,
                    field=column,
                )
        reader.fieldnames = header
        for raw in reader:
            rows.append(_parse_row(raw, source, reader.line_num))
    if not rows:
        raise KvsimError("no data rows", source=source, line=1)
    return tuple(rows)


def _parse_row(raw: dict[str, str | None], source: str, line: int) -> PublishedRow:
    def fail(column: str, message: str) -> KvsimError:
        return KvsimError(message, source=source, line=line, field=column)

    def text(column: str) -> str:
        value = raw.get(column)
        return "" if value is None else value.strip()

    def integer(column: str, low: int) -> int:
        value = text(column)
        try:
            number = int(value)
        except ValueError:
            raise fail(column, f"expected a whole number, got {value!r}") from None
        if number < low:
            raise fail(column, f"must be >= {low}, got {number}")
        return number

    def millis(column: str) -> float | None:
        value = text(column)
        if not value:
            return None
        try:
            number = float(value)
        except ValueError:
            raise fail(column, f"expected a number of milliseconds, got {value!r}") from None
        if not (math.isfinite(number) and number > 0):
            raise fail(column, f"must be a positive number of milliseconds, got {value!r}")
        return number

    for column in ("model", "hardware"):
        if not text(column):
            raise fail(column, "empty; expected a catalog id")
    row = PublishedRow(
        line=line,
        model=text("model"),
        hardware=text("hardware"),
        tp=integer("tp", 1),
        batch=integer("batch", 1),
        prompt=integer("prompt", 0),
        context=integer("context", 0),
        prefill_ms=millis("prefill_ms"),
        decode_ms=millis("decode_ms"),
        dtype=text("dtype") or "bf16",
    )
    if row.prefill_ms is None and row.decode_ms is None:
        raise fail("prefill_ms", "a row needs prefill_ms, decode_ms or both")
    if row.prefill_ms is not None and row.prompt < 1:
        raise fail("prompt", "prefill_ms is given, so prompt must be >= 1")
    if row.decode_ms is not None and row.context < 1:
        raise fail("context", "decode_ms is given, so context must be >= 1")
    return row


def published_errors(
    rows: tuple[PublishedRow, ...] | list[PublishedRow],
    *,
    accelerator: Accelerator | None = None,
    source: str | None = None,
) -> pd.DataFrame:
    """One line per measurement (a row with both latencies gives two): ``line``, ``model``,
    ``hardware``, ``kind`` (prefill/decode), ``batch``, ``tokens`` (prompt or context),
    ``measured_ms``, ``predicted_ms`` and ``error`` (predicted/measured − 1). Each row is
    priced on its catalog hardware, or on ``accelerator`` (a calibrated profile) if given."""
    out = []
    for row in rows:
        try:
            model = get_model(row.model)
            device = accelerator or get_accelerator(row.hardware)
            costs = cost_model(model, device, Precision.of(row.dtype), tp=row.tp)
        except KvsimError as err:
            field = err.field if err.field in ("tp", "weight_dtype", "dtype") else None
            if field is None:
                field = "model" if "model" in err.message else "hardware"
            raise KvsimError(err.message, source=source, line=row.line, field=field) from None
        for kind, measured, tokens in (
            ("prefill", row.prefill_ms, row.prompt),
            ("decode", row.decode_ms, row.context),
        ):
            if measured is None:
                continue
            seconds = (
                costs.prefill_s(row.batch, tokens)
                if kind == "prefill"
                else costs.decode_step_s(row.batch, tokens)
            )
            out.append(
                {
                    "line": row.line,
                    "model": row.model,
                    "hardware": device.id,
                    "kind": kind,
                    "batch": row.batch,
                    "tokens": tokens,
                    "measured_ms": measured,
                    "predicted_ms": seconds * 1e3,
                }
            )
    frame = pd.DataFrame(out)
    frame["error"] = frame["predicted_ms"] / frame["measured_ms"] - 1.0
    return frame


def mape_by_kind(frame: pd.DataFrame) -> dict[str, float]:
    """Mean absolute ``error`` per ``kind`` and over all rows (fractions; NaN when empty)."""
    out = {"all": float(np.mean(np.abs(frame["error"]))) if len(frame) else math.nan}
    for kind in ("prefill", "decode", "mixed"):
        part = frame.loc[frame["kind"] == kind, "error"]
        if len(part):
            out[kind] = float(np.mean(np.abs(part)))
    return out
