"""BurstGPT traces (HPMLL/BurstGPT, KDD'25): ChatGPT and GPT-4 calls on Azure OpenAI.

Header (v1.1) ``Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type``; v1.2
adds ``Session ID`` and ``Elapsed time``. ``Timestamp`` is seconds from 00:00 of the first day;
``Model`` is ``ChatGPT`` or ``GPT-4``; ``Log Type`` is ``Conversation log`` or ``API log``.
Failed calls are logged with ``Response tokens = 0`` (README): they are dropped and counted by
default, or kept as failures with ``failures="keep"`` (see :mod:`._validate`). ``models`` and
``log_types`` keep only the rows whose value matches one of the given names (case-insensitive);
the filtered-out count is in ``meta["filtered_rows"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hardware.errors import KvsimError
from workloads.workload import Workload

from . import _io, _validate

COLUMNS = ("Timestamp", "Request tokens", "Response tokens")
EXPECTED = "a CSV header Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"


def _keep(frame, column: str, wanted: Sequence[str] | None, source: str, line: int) -> np.ndarray:
    if wanted is None:
        return np.ones(len(frame), dtype=bool)
    if isinstance(wanted, str):
        wanted = [wanted]
    if column not in frame.columns:
        raise KvsimError(
            f"filtering needs a {column!r} column", source=source, line=line, field=column
        )
    values = frame[column].astype("string").str.strip().str.lower()
    return values.isin([w.strip().lower() for w in wanted]).fillna(False).to_numpy(dtype=bool)


def read_burstgpt(
    path: Path,
    *,
    on_bad_row: str = "error",
    time_scale: float = 1.0,
    failures: str = "drop",
    models: Sequence[str] | None = None,
    log_types: Sequence[str] | None = None,
) -> Workload:
    """Read a BurstGPT CSV (with or without failures, v1.1 or v1.2 columns)."""
    source = str(path)
    table = _io.read_csv(
        path,
        required=COLUMNS,
        fmt="burstgpt",
        text_columns=("Model", "Log Type", "Session ID"),
        expected=EXPECTED,
    )
    frame = table.frame
    keep = _keep(frame, "Model", models, source, table.header_line)
    keep = keep & _keep(frame, "Log Type", log_types, source, table.header_line)
    filtered = int((~keep).sum())
    if not keep.any():
        present = {
            column: sorted(frame[column].dropna().astype(str).unique())[:10]
            for column in ("Model", "Log Type")
            if column in frame.columns
        }
        raise KvsimError(
            f"no rows match models={models} log_types={log_types}; values present: {present}",
            source=source,
            field="Model" if models is not None else "Log Type",
        )
    frame = frame[keep].reset_index(drop=True)
    lines = table.lines[keep]
    checks = _validate.RowChecks(source, lines, on_bad_row)
    checks.flag(table.malformed[keep], "row", table.reason)
    arrival_s = _validate.seconds(frame["Timestamp"], "Timestamp", checks, scale=1.0)
    prompt = _validate.counts(frame["Request tokens"], "Request tokens", checks, minimum=1)
    output = _validate.counts(frame["Response tokens"], "Response tokens", checks, minimum=0)
    session = _validate.ids(frame["Session ID"]) if "Session ID" in frame.columns else None
    return _validate.assemble(
        source=source,
        fmt="burstgpt",
        name=path.name.removesuffix(".gz").removesuffix(".csv"),
        checks=checks,
        first_data_line=table.header_line + 1,
        arrival_s=arrival_s,
        prompt_tokens=prompt,
        output_tokens=output,
        output_field="Response tokens",
        failures=failures,
        time_scale=time_scale,
        session_id=session,
        meta={"filtered_rows": filtered, "models": models, "log_types": log_types},
    )
