"""Tables behind the Calibration page: measured step latencies against the cost model.

The measurements are a published-measurement CSV (columns of
:data:`sim.calibration.REQUIRED_COLUMNS`, read by :func:`sim.calibration.read_published`),
e.g. the committed ``calibration/h200-sxm/steps.csv``; :func:`sim.calibration.published_errors`
prices each step on its catalog hardware or on a hardware profile (a probed or calibrated
TOML). The error of a step is ``predicted / measured − 1`` and the figure of merit the mean
absolute percentage error (MAPE) per step kind (``docs/calibration.md``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from sim.calibration import REQUIRED_COLUMNS, mape_by_kind

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
