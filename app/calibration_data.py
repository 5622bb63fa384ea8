"""Tables behind the Calibration page: measured step latencies against the cost model, and
the validation report ``kvsim validate --json`` writes.

**Measurements.** The measurements are a published-measurement CSV (columns of
:data:`sim.calibration.REQUIRED_COLUMNS`, read by :func:`sim.calibration.read_published`),
e.g. the committed ``calibration/h200-sxm/steps.csv``; :func:`sim.calibration.published_errors`
prices each step on its catalog hardware or on a hardware profile (a probed or calibrated
TOML). The error of a step is ``predicted / measured − 1`` and the figure of merit the mean
absolute percentage error (MAPE) per step kind (``docs/calibration.md``).

**Validation report.** ``kvsim validate --json`` (``sim/cli/validate_cmd.py``) prints one
object with any of: ``held_out_steps`` (``origin``, ``rows``: one row of
:func:`sim.calibration.step_errors` per held-out designed step), ``published`` (``file``,
``rows``: :func:`sim.calibration.published_errors`) and ``end_to_end`` (per replayed workload:
``name``, ``real_wall_s``, ``steps_mape``, ``metrics``: the rows of
:meth:`sim.calibration.Replay.metric_errors`, error = simulated / real − 1). NaN is written as
``null``. :func:`read_validation` reads it, checking the keys and types the page uses.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hardware.errors import KvsimError
from sim.calibration import E2E_METRICS, REQUIRED_COLUMNS, mape_by_kind

#: Kinds of steps, in display order (:mod:`sim.calibration.design`).
KINDS = ("prefill", "decode", "mixed")
#: Top-level sections of a validation report, at least one of which must be present.
REPORT_SECTIONS = ("held_out_steps", "published", "end_to_end")
#: Keys each per-step row must have (numbers, or null for NaN) besides ``kind``.
STEP_NUMBERS = ("measured_ms", "predicted_ms", "error")
#: Keys each end-to-end metric row must have besides ``metric``.
METRIC_NUMBERS = ("real", "simulated", "error")

#: Display names of :func:`sim.calibration.published_errors`' columns, with units.
COLUMNS = {
    "line": "line",
    "model": "model",
    "hardware": "hardware",
    "kind": "kind",
    "batch": "batch",
    "tokens": "tokens (prompt or context)",
    "measured_ms": "measured (ms)",
    "predicted_ms": "predicted (ms)",
    "error": "error (predicted / measured − 1)",
}


def committed_files(root: Path) -> list[Path]:
    """Published-measurement CSVs (every required column in the header) under
    ``root/calibration``, sorted; none where the folder is absent (an installed package)."""
    folder = root / "calibration"
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.rglob("*.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
        if set(REQUIRED_COLUMNS) <= {name.strip() for name in header}:
            found.append(path)
    return found


def committed_profiles(root: Path) -> list[Path]:
    """Hardware profile TOMLs under ``root/calibration`` (probed or calibrated), sorted."""
    folder = root / "calibration"
    return sorted(folder.rglob("*.toml")) if folder.is_dir() else []


def error_table(errors: pd.DataFrame) -> pd.DataFrame:
    """One row per measurement with unit-named columns (:data:`COLUMNS`)."""
    return errors[list(COLUMNS)].rename(columns=COLUMNS)


def mape_table(errors: pd.DataFrame) -> pd.DataFrame:
    """MAPE and number of measurements per step kind, then over all of them."""
    mape = mape_by_kind(errors)
    counts = errors["kind"].value_counts()
    kinds = [k for k in ("prefill", "decode", "mixed") if k in mape] + ["all"]
    return pd.DataFrame(
        {
            "kind": kinds,
            "measurements": [int(counts.get(k, 0)) if k != "all" else len(errors) for k in kinds],
            "MAPE": [mape[k] for k in kinds],
        }
    )


# ---- validation report ---------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Replayed:
    """One held-out workload replayed on the real model and on the cost model."""

    name: str
    metrics: pd.DataFrame
    steps_mape: dict[str, float] = field(default_factory=dict)
    steps_count: dict[str, int] = field(default_factory=dict)
    real_wall_s: float | None = None


@dataclass(frozen=True, eq=False)
class ValidationReport:
    """A ``kvsim validate --json`` report: per-step frames (``None`` when the section is
    absent) and the end-to-end replays."""

    source: str
    profile: str | None
    held_out: pd.DataFrame | None
    held_out_origin: str
    published: pd.DataFrame | None
    end_to_end: tuple[Replayed, ...]


def _number(value: Any, source: str, where: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise KvsimError(f"expected a number or null, got {value!r}", source=source, field=where)
    return float(value)


def _table(value: Any, source: str, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise KvsimError(f"expected an object, got {value!r}", source=source, field=where)
    return value


def _list(value: Any, source: str, where: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise KvsimError(f"expected a list, got {value!r}", source=source, field=where)
    return value


def _rows(value: Any, label: str, numbers: Sequence[str], source: str, where: str) -> pd.DataFrame:
    """A list of row objects as a frame; ``label`` must be a string and each of ``numbers``
    a number or null in every row (other keys are kept as they are)."""
    rows = []
    for index, row in enumerate(_list(value, source, where)):
        at = f"{where}[{index}]"
        row = dict(_table(row, source, at))
        if not isinstance(row.get(label), str):
            raise KvsimError(
                f"expected a string, got {row.get(label)!r}", source=source, field=f"{at}.{label}"
            )
        for key in numbers:
            if key not in row:
                raise KvsimError("missing key", source=source, field=f"{at}.{key}")
            row[key] = _number(row[key], source, f"{at}.{key}")
        rows.append(row)
    if not rows:
        raise KvsimError("expected at least one row", source=source, field=where)
    return pd.DataFrame(rows)


def _mapes(value: Any, source: str, where: str) -> dict[str, float]:
    return {
        str(k): _number(v, source, f"{where}.{k}") for k, v in _table(value, source, where).items()
    }


def read_validation(data: bytes | str, source: str) -> ValidationReport:
    """Parse a ``kvsim validate --json`` report (module docstring); anything else raises
    :class:`KvsimError` naming ``source``, the line (malformed JSON) or the key."""
    try:
        parsed = json.loads(data)
    except UnicodeDecodeError as err:
        raise KvsimError(f"not UTF-8 text: {err.reason}", source=source) from None
    except json.JSONDecodeError as err:
        raise KvsimError(f"malformed JSON: {err.msg}", source=source, line=err.lineno) from None
    top = _table(parsed, source, "")
    if not any(key in top for key in REPORT_SECTIONS):
        raise KvsimError(
            f"not a kvsim validate --json report: expected one of {', '.join(REPORT_SECTIONS)}",
            source=source,
        )
    held_out, origin, published = None, "", None
    if "held_out_steps" in top:
        section = _table(top["held_out_steps"], source, "held_out_steps")
        held_out = _rows(section.get("rows"), "kind", STEP_NUMBERS, source, "held_out_steps.rows")
        origin = str(section.get("origin", ""))
    if "published" in top:
        section = _table(top["published"], source, "published")
        published = _rows(section.get("rows"), "kind", STEP_NUMBERS, source, "published.rows")
    replays = []
    for index, item in enumerate(_list(top.get("end_to_end", []), source, "end_to_end")):
        where = f"end_to_end[{index}]"
        item = _table(item, source, where)
        metrics = _rows(item.get("metrics"), "metric", METRIC_NUMBERS, source, f"{where}.metrics")
        counts = _table(item.get("steps_count", {}), source, f"{where}.steps_count")
        wall = item.get("real_wall_s")
        replays.append(
            Replayed(
                name=str(item.get("name", f"workload {index + 1}")),
                metrics=metrics,
                steps_mape=_mapes(item.get("steps_mape", {}), source, f"{where}.steps_mape"),
                steps_count={
                    str(k): int(_number(v, source, f"{where}.steps_count.{k}"))
                    for k, v in counts.items()
                },
                real_wall_s=None if wall is None else _number(wall, source, f"{where}.real_wall_s"),
            )
        )
    profile = top.get("profile")
    return ValidationReport(
        source=source,
        profile=None if profile is None else str(profile),
        held_out=held_out,
        held_out_origin=origin,
        published=published,
        end_to_end=tuple(replays),
    )


def committed_reports(root: Path) -> list[Path]:
    """JSON files under ``root/calibration`` that are validation reports (a top-level object
    with one of :data:`REPORT_SECTIONS`), sorted."""
    folder = root / "calibration"
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.rglob("*.json")):
        try:
            parsed = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(parsed, dict) and any(key in parsed for key in REPORT_SECTIONS):
            found.append(path)
    return found


def metric_label(metric: str) -> str:
    """``ttft_p50_s`` → ``TTFT p50``; ``throughput_tok_per_s`` → ``throughput (tokens/s)``."""
    units = {"tok": "tokens/s", "req": "requests/s"}
    if metric.startswith("throughput_"):
        return f"throughput ({units.get(metric.split('_')[1], metric)})"
    name, quantile, _ = metric.split("_")
    return f"{name.upper()} {quantile}"


def e2e_error_table(report: ValidationReport) -> pd.DataFrame:
    """Workloads (rows) × :data:`sim.calibration.E2E_METRICS` (columns, :func:`metric_label`):
    simulated / real − 1 as the report gives it (NaN where the real value is 0 or missing)."""
    columns = [metric_label(m) for m in E2E_METRICS]
    rows = []
    for replayed in report.end_to_end:
        errors = dict(zip(replayed.metrics["metric"], replayed.metrics["error"], strict=True))
        rows.append([replayed.name, *(errors.get(m, math.nan) for m in E2E_METRICS)])
    return pd.DataFrame(rows, columns=["workload", *columns])


def e2e_detail(replayed: Replayed) -> pd.DataFrame:
    """One replay's metrics: ``metric`` labelled, then every column the report gives."""
    return replayed.metrics.assign(metric=[metric_label(m) for m in replayed.metrics["metric"]])


def steps_mape_table(report: ValidationReport) -> pd.DataFrame:
    """MAPE per step kind (columns prefill, decode, mixed, all) of each set of steps in the
    report (rows): the held-out designed steps and the published rows, recomputed from their
    rows with :func:`sim.calibration.mape_by_kind`, and each replay's real steps as the report
    gives them (their rows are not in the JSON)."""
    sets: list[tuple[str, dict[str, float], dict[str, int]]] = []
    for name, frame in (
        ("held-out designed steps", report.held_out),
        ("published", report.published),
    ):
        if frame is not None:
            counts = frame["kind"].value_counts().to_dict()
            sets.append((name, mape_by_kind(frame), {**counts, "all": len(frame)}))
    for replayed in report.end_to_end:
        counts = dict(replayed.steps_count)
        if counts:
            counts["all"] = sum(counts.values())
        sets.append((f"replayed steps: {replayed.name}", replayed.steps_mape, counts))
    kinds = (*KINDS, "all")
    rows = [
        {
            "steps": name,
            **{k: mape.get(k, math.nan) for k in kinds},
            "steps counted": counts.get("all"),
        }
        for name, mape, counts in sets
    ]
    frame = pd.DataFrame(rows, columns=["steps", *kinds, "steps counted"])
    return frame.astype({"steps counted": "Int64"})
