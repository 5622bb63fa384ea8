"""Readers for public LLM serving traces, with format auto-detection.

:func:`read_trace` turns a trace file into a :class:`~workloads.workload.Workload`: arrivals
in seconds rebased to the first request (sorted, with a :class:`TraceWarning`, when the file
is not in time order), prompt/output token counts, and prefix block ids where the format has
them. Formats (one module each, units and columns documented there and in
``docs/workloads.md``): ``azure`` (Azure LLM inference 2023/2024/2025), ``burstgpt``,
``mooncake``, ``splitwise`` (SplitwiseSim), ``vidur`` and ``generic`` (CSV/JSONL/parquet with a
column mapping).
"""

from __future__ import annotations

import csv
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hardware.errors import KvsimError
from workloads.workload import Workload

from . import _io, _validate
from ._validate import TraceWarning
from .azure import read_azure
from .burstgpt import read_burstgpt
from .generic import container, read_generic
from .mooncake import read_mooncake
from .splitwise import read_splitwise
from .vidur import read_vidur


@dataclass(frozen=True)
class TraceFormat:
    """A trace format: its reader and the header columns (JSON keys) that identify it."""

    name: str
    description: str
    reader: Callable[..., Workload]
    signature: frozenset[str]


FORMATS: dict[str, TraceFormat] = {
    f.name: f
    for f in (
        TraceFormat(
            "azure",
            "Azure LLM inference 2023/2024/2025 CSV",
            read_azure,
            frozenset({"TIMESTAMP", "ContextTokens", "GeneratedTokens"}),
        ),
        TraceFormat(
            "burstgpt",
            "BurstGPT CSV",
            read_burstgpt,
            frozenset({"Timestamp", "Request tokens", "Response tokens"}),
        ),
        TraceFormat(
            "mooncake",
            "Mooncake FAST'25 JSONL",
            read_mooncake,
            frozenset({"timestamp", "input_length", "output_length"}),
        ),
        TraceFormat(
            "splitwise",
            "SplitwiseSim trace CSV",
            read_splitwise,
            frozenset({"arrival_timestamp", "prompt_size", "token_size"}),
        ),
        TraceFormat(
            "vidur",
            "vidur processed trace CSV",
            read_vidur,
            frozenset({"arrived_at", "num_prefill_tokens", "num_decode_tokens"}),
        ),
        TraceFormat(
            "generic",
            "CSV/JSONL/parquet with a column mapping",
            read_generic,
            frozenset({"arrival_s", "prompt_tokens", "output_tokens"}),
        ),
    )
}


def _header_names(path: Path) -> tuple[int, set[str], str]:
    """The first non-blank line's number, its column names (or JSON keys) and its text."""
    number, line = _io.first_line(_io.head(path))
    if not line:
        raise KvsimError(
            "file is empty; cannot detect the trace format",
            source=str(path),
            line=1,
            field="header",
        )
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if not isinstance(record, dict):
            raise KvsimError(
                "first line is not a JSON object; cannot detect the trace format",
                source=str(path),
                line=number,
                field="json",
            )
        return number, {str(k) for k in record}, line
    try:
        names = next(csv.reader([line]))
    except csv.Error as err:
        raise KvsimError(
            f"unreadable header: {err}", source=str(path), line=number, field="header"
        ) from err
    return number, {name.strip() for name in names}, line


def detect_format(path: str | Path) -> str:
    """The name in :data:`FORMATS` whose signature columns the file's header (first
    non-blank line; JSON keys for JSONL) contains; parquet files are ``generic``."""
    path = Path(path)
    if container(path) == "parquet":
        return "generic"
    number, names, line = _header_names(path)
    for fmt in FORMATS.values():
        if fmt.signature <= names:
            return fmt.name
    known = "; ".join(f"{f.name}: {', '.join(sorted(f.signature))}" for f in FORMATS.values())
    raise KvsimError(
        f"cannot detect the trace format from {line[:80]!r}; known signatures: {known}. "
        "Pass format= (CLI: --format) or use format 'generic' with a column mapping",
        source=str(path),
        line=number,
        field="header",
    )


def read_trace(
    path: str | Path,
    format: str | None = None,
    *,
    time_scale: float = 1.0,
    on_bad_row: str = "error",
    **options: object,
) -> Workload:
    """Read a trace file into a :class:`Workload`.

    ``format`` is a name in :data:`FORMATS` (auto-detected from the header when None).
    ``time_scale`` multiplies every inter-arrival time (0.5 = twice the load).
    ``on_bad_row``: ``"error"`` raises at the first bad row naming file, line and field;
    ``"skip"`` drops bad rows with a :class:`TraceWarning` and counts them in
    ``meta["skipped_rows"]``. ``options`` go to the format's reader, e.g.
    ``failures="drop"|"keep"|"error"`` (all formats), ``models``/``log_types`` (burstgpt),
    ``columns``/``time_unit``/``prefix_block_tokens`` (generic).
    """
    path = Path(path)
    source = str(path)
    _io.existing_file(path)
    failures = str(options.get("failures", "drop"))
    _validate.check_options(on_bad_row, failures, time_scale, source)
    if format is None:
        name = detect_format(path)
    elif format in FORMATS:
        name = format
    else:
        raise KvsimError(
            f"unknown format {format!r}; known: {', '.join(FORMATS)}", source=source, field="format"
        )
    reader = FORMATS[name].reader
    accepted = [
        p
        for p in inspect.signature(reader).parameters
        if p not in ("path", "on_bad_row", "time_scale")
    ]
    for option in options:
        if option not in accepted:
            raise KvsimError(
                f"unknown option for format {name!r}; accepted: {', '.join(accepted)}",
                source=source,
                field=option,
            )
    try:
        return reader(path, on_bad_row=on_bad_row, time_scale=time_scale, **options)
    except KvsimError as err:
        header_problem = err.message.startswith(("missing column", "missing field"))
        if format is None or not (header_problem or err.field in ("json", "header")):
            raise
        try:
            detected = detect_format(path)
        except KvsimError:
            raise err from None
        if detected == name:
            raise
        raise KvsimError(
            f"{err.message} (the file looks like format {detected!r}; drop --format or pass --format {detected})",
            source=err.source,
            line=err.line,
            field=err.field,
        ) from err


__all__ = ["FORMATS", "TraceFormat", "TraceWarning", "detect_format", "read_trace"]
