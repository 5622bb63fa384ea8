"""Parse trace files into pandas columns that remember each row's physical file line.

CSV goes through pandas' C parser (vectorised); only when that parser rejects the file (a
row with too many fields, stray quotes) does it fall back to Python's :mod:`csv` module, which
keeps going and marks the malformed rows. JSONL goes through pyarrow's JSON reader; only when
that fails (a truncated or non-JSON line, clashing types) does it fall back to one
:func:`json.loads` per line, marking the lines that do not parse. Either way the reader gets
the same :class:`RawTable`, and marked rows become ordinary row problems (error or skip).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hardware.errors import KvsimError

from ._validate import RowChecks, require_columns


@dataclass(frozen=True)
class RawTable:
    """Rows of one file: ``frame`` columns as parsed, ``lines`` the 1-based physical line of
    each row, ``malformed`` rows the parser could not read whole (with ``reason``)."""

    frame: pd.DataFrame
    lines: np.ndarray
    malformed: np.ndarray
    reason: str
    raw_lines: list[str] | None = None
    header_line: int = 1

    def flag_malformed(self, checks: RowChecks, field: str) -> None:
        """Report malformed rows first, so they win over the missing values they imply."""
        checks.flag(self.malformed, field, self.reason, self.raw_lines)


def existing_file(path: Path) -> Path:
    if not path.exists():
        raise KvsimError("no such file", source=str(path))
    if not path.is_file():
        raise KvsimError("not a regular file", source=str(path))
    return path


def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when the name ends in ``.gz``."""
    existing_file(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError) as err:
        raise KvsimError(f"cannot read file: {err}", source=str(path)) from err


def head(path: Path, limit: int = 1 << 20) -> bytes:
    """Up to ``limit`` leading bytes (decompressed for ``.gz``)."""
    existing_file(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            return handle.read(limit)
    except (OSError, EOFError) as err:
        raise KvsimError(f"cannot read file: {err}", source=str(path)) from err


def first_line(data: bytes) -> tuple[int, str]:
    """The 1-based number and text of the first non-blank line (``(0, "")`` if none)."""
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            return number, line.decode("utf-8", errors="replace").lstrip("\ufeff").strip()
    return 0, ""


def _empty(path: Path, expected: str) -> KvsimError:
    return KvsimError(
        f"file is empty; expected {expected}", source=str(path), line=1, field="header"
    )


def read_csv(
    path: Path,
    *,
    required: Sequence[str],
    fmt: str,
    expected: str,
    text_columns: tuple[str, ...] = (),
) -> RawTable:
    """A CSV with a header line holding the ``required`` columns. Blank lines are dropped
    (line numbers stay physical); column names are stripped of surrounding spaces."""
    data = read_bytes(path)
    header_line, header = first_line(data)
    if not header:
        raise _empty(path, expected)
    try:
        frame = pd.read_csv(
            io.BytesIO(data),
            skip_blank_lines=False,
            encoding="utf-8-sig",
            encoding_errors="replace",
            dtype={column: "string" for column in text_columns},
            low_memory=False,
            skiprows=header_line - 1,
        )
        lines = np.arange(len(frame), dtype=np.int64) + header_line + 1
        malformed = np.zeros(len(frame), dtype=bool)
        table = RawTable(frame, lines, malformed, "", header_line=header_line)
    except (pd.errors.ParserError, ValueError, UnicodeError, OverflowError):
        table = _read_csv_slowly(path, data, header_line)
    frame = table.frame
    frame.columns = [str(c).strip() for c in frame.columns]
    require_columns(list(frame.columns), required, source=str(path), fmt=fmt, line=header_line)
    blank = frame.isna().all(axis=1).to_numpy() & ~table.malformed
    if blank.any():
        keep = ~blank
        table = RawTable(
            frame[keep].reset_index(drop=True),
            table.lines[keep],
            table.malformed[keep],
            table.reason,
            None
            if table.raw_lines is None
            else [t for t, k in zip(table.raw_lines, keep, strict=True) if k],
            header_line,
        )
    if len(table.frame) == 0:
        raise KvsimError(
            f"no data rows after the header; expected {expected}",
            source=str(path),
            line=header_line + 1,
            field="rows",
        )
    return table


def _read_csv_slowly(path: Path, data: bytes, header_line: int) -> RawTable:
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff").replace("\x00", "\ufffd")
    lines_of_text = text.split("\n")
    reader = csv.reader(io.StringIO("\n".join(lines_of_text[header_line - 1 :])))
    try:
        header = next(reader)
        rows: list[list[str]] = []
        ends: list[int] = []
        for row in reader:
            rows.append(row)
            ends.append(reader.line_num + header_line - 1)
    except csv.Error as err:
        raise KvsimError(
            f"not a readable CSV file: {err}",
            source=str(path),
            line=reader.line_num + header_line - 1,
            field="row",
        ) from err
    width = len(header)
    malformed = np.array([len(row) > width for row in rows], dtype=bool)
    cells = [(row + [None] * width)[:width] if row else [None] * width for row in rows]
    frame = pd.DataFrame(cells, columns=[str(c) for c in header], dtype=object)
    frame = frame.replace("", None)
    return RawTable(
        frame,
        np.asarray(ends, dtype=np.int64),
        malformed,
        f"expected {width} comma-separated fields",
        [lines_of_text[e - 1] for e in ends],
        header_line,
    )


def read_jsonl(path: Path, *, required: Sequence[str], fmt: str, expected: str) -> RawTable:
    """One JSON object per line with the ``required`` keys (in at least one line); blank
    lines are ignored, line numbers stay physical."""
    import pyarrow as pa
    import pyarrow.json as pa_json

    data = read_bytes(path)
    physical = data.split(b"\n")
    numbers = [i for i, line in enumerate(physical, start=1) if line.strip()]
    if not numbers:
        raise _empty(path, expected)
    lines = np.asarray(numbers, dtype=np.int64)
    try:
        table = pa_json.read_json(io.BytesIO(data))
        if table.num_rows == len(numbers):
            frame = table.to_pandas()
            require_columns(
                list(frame.columns),
                required,
                source=str(path),
                fmt=fmt,
                line=numbers[0],
                what="field",
            )
            return RawTable(frame, lines, np.zeros(len(frame), dtype=bool), "", None, numbers[0])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OverflowError):
        pass
    records: list[dict] = []
    malformed = np.zeros(len(numbers), dtype=bool)
    texts = [physical[n - 1].decode("utf-8", errors="replace").lstrip("\ufeff") for n in numbers]
    for k, text in enumerate(texts):
        try:
            record = json.loads(text)
        except (ValueError, RecursionError):
            record = None
        if not isinstance(record, dict):
            malformed[k] = True
            record = {}
        records.append(record)
    reason = "expected one JSON object per line (truncated line?)"
    if malformed.all():
        raise KvsimError(
            f"{reason} (got {texts[0][:40]!r})", source=str(path), line=numbers[0], field="json"
        )
    frame = pd.DataFrame.from_records(records)
    require_columns(
        list(frame.columns), required, source=str(path), fmt=fmt, line=numbers[0], what="field"
    )
    return RawTable(frame, lines, malformed, reason, texts, numbers[0])


def read_parquet(path: Path) -> tuple[pd.DataFrame, dict[bytes, bytes]]:
    """A parquet table as pandas (list columns become arrays) and its schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    existing_file(path)
    try:
        table = pq.read_table(path)
        return table.to_pandas(), dict(table.schema.metadata or {})
    except (pa.ArrowException, OSError, ValueError) as err:
        raise KvsimError(f"not a readable parquet file: {err}", source=str(path)) from err
