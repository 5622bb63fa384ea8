"""Any CSV, JSONL or parquet trace, given which column holds what.

``columns`` maps kvsim's field names to the file's column names; fields left out default to
their own name, so a file written by :meth:`Workload.to_parquet` (or ``to_frame().to_csv``)
reads back with no mapping. Fields: ``arrival_s`` (required; unit ``time_unit``: ``s``,
``ms``, ``us``, ``ns`` or ``datetime`` for ISO-8601 strings), ``prompt_tokens`` and
``output_tokens`` (required), ``session_id``, ``priority``, ``request_id`` and
``prefix_hashes`` (a list of block ids per row; JSONL and parquet only) when the file has them.
The container is parquet when the file starts with parquet's ``PAR1`` magic, JSONL when its
first non-blank character is ``{``, CSV otherwise. For parquet, "line" in messages is the
1-based row number.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hardware.errors import KvsimError
from workloads.workload import Workload

from . import _io, _validate

FIELDS = (
    "arrival_s",
    "prompt_tokens",
    "output_tokens",
    "session_id",
    "priority",
    "request_id",
    "prefix_hashes",
)
REQUIRED = FIELDS[:3]
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "datetime": None}


def container(path: Path) -> str:
    """``parquet``, ``jsonl`` or ``csv``, from the file's first bytes."""
    data = _io.head(path, 1 << 16)
    if data.startswith(b"PAR1"):
        return "parquet"
    _, line = _io.first_line(data)
    return "jsonl" if line.startswith("{") else "csv"


def read_generic(
    path: Path,
    *,
    on_bad_row: str = "error",
    time_scale: float = 1.0,
    failures: str = "drop",
    columns: Mapping[str, str] | None = None,
    time_unit: str = "s",
    prefix_block_tokens: int | None = None,
) -> Workload:
    """Read a CSV/JSONL/parquet trace through a column mapping (see module docstring)."""
    source = str(path)
    columns = dict(columns or {})
    for key in columns:
        if key not in FIELDS:
            raise KvsimError(
                f"unknown field {key!r}; known: {', '.join(FIELDS)}", source=source, field="columns"
            )
    if time_unit not in TIME_UNITS:
        raise KvsimError(
            f"expected one of {tuple(TIME_UNITS)}, got {time_unit!r}",
            source=source,
            field="time_unit",
        )
    mapping = {name: str(columns.get(name, name)) for name in FIELDS}
    required = [mapping[name] for name in REQUIRED]
    expected = "columns " + ", ".join(mapping[name] for name in REQUIRED)
    kind = container(path)
    block_tokens = 512
    name = path.name.split(".")[0] or path.name
    if kind == "parquet":
        frame, schema_meta = _io.read_parquet(path)
        _validate.require_columns(list(frame.columns), required, source=source, fmt="generic")
        if len(frame) == 0:
            raise KvsimError(f"no rows; expected {expected}", source=source, line=1, field="rows")
        table = _io.RawTable(
            frame, np.arange(1, len(frame) + 1), np.zeros(len(frame), bool), "", None, 1
        )
        block_tokens = int(schema_meta.get(b"kvsim.prefix_block_tokens", b"512"))
        name = schema_meta.get(b"kvsim.name", name.encode()).decode(errors="replace")
        first_data_line, malformed_field = 1, "row"
    elif kind == "jsonl":
        table = _io.read_jsonl(
            path,
            required=required,
            fmt="generic",
            expected=f"one JSON object per line with {expected}",
        )
        first_data_line, malformed_field = 1, "json"
    else:
        table = _io.read_csv(
            path,
            required=required,
            fmt="generic",
            text_columns=(mapping["arrival_s"],) * (time_unit == "datetime"),
            expected=f"a CSV header with {expected}",
        )
        first_data_line, malformed_field = table.header_line + 1, "row"
    if prefix_block_tokens is not None:
        if not (isinstance(prefix_block_tokens, int) and prefix_block_tokens >= 1):
            raise KvsimError(
                f"expected an integer >= 1, got {prefix_block_tokens!r}",
                source=source,
                field="prefix_block_tokens",
            )
        block_tokens = prefix_block_tokens
    frame = table.frame
    checks = _validate.RowChecks(source, table.lines, on_bad_row)
    table.flag_malformed(checks, malformed_field)
    meta: dict = {"columns": mapping}
    time_column = mapping["arrival_s"]
    if time_unit == "datetime":
        arrival_s, meta["first_timestamp"] = _validate.datetimes(
            frame[time_column], time_column, checks
        )
    else:
        arrival_s = _validate.seconds(
            frame[time_column], time_column, checks, scale=TIME_UNITS[time_unit]
        )
    prompt = _validate.counts(
        frame[mapping["prompt_tokens"]], mapping["prompt_tokens"], checks, minimum=1
    )
    output = _validate.counts(
        frame[mapping["output_tokens"]], mapping["output_tokens"], checks, minimum=0
    )
    present = {name: mapping[name] for name in FIELDS[3:] if mapping[name] in frame.columns}
    session = _validate.ids(frame[present["session_id"]]) if "session_id" in present else None
    priority = request_id = prefix = None
    if "priority" in present:
        priority = _validate.integers(frame[present["priority"]], present["priority"], checks)
    if "request_id" in present:
        request_id = _validate.integers(frame[present["request_id"]], present["request_id"], checks)
    if "prefix_hashes" in present:
        prefix = _validate.prefix_lists(
            frame[present["prefix_hashes"]], present["prefix_hashes"], checks
        )
    return _validate.assemble(
        source=source,
        fmt="generic",
        name=name,
        checks=checks,
        first_data_line=first_data_line,
        arrival_s=arrival_s,
        prompt_tokens=prompt,
        output_tokens=output,
        output_field=mapping["output_tokens"],
        failures=failures,
        time_scale=time_scale,
        session_id=session,
        priority=priority,
        request_id=request_id,
        prefix=prefix,
        prefix_field=mapping["prefix_hashes"],
        prefix_block_tokens=block_tokens,
        meta=meta,
    )
