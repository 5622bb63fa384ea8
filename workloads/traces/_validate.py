"""Turn parsed trace columns into a validated, sorted, rebased :class:`Workload`.

Every reader parses its file into pandas columns plus the 1-based physical file line of each
row, then hands them here. Problems are collected per row (:class:`RowChecks`) and resolved at
once: with ``on_bad_row="error"`` the earliest offending row raises one :class:`KvsimError`
naming file, line and field; with ``on_bad_row="skip"`` the bad rows are dropped, counted by
reason in ``Workload.meta["skipped_rows"]`` and reported with a :class:`TraceWarning`.

Requests with 0 output tokens are *failures* (BurstGPT logs failed calls that way), not
malformed rows: ``failures="drop"`` (default) removes them and reports the count,
``failures="keep"`` keeps them with 1 output token (the engine's minimum) and lists their
``request_id`` in ``meta["failed_request_ids"]`` (ids survive ``Workload.take``),
``failures="error"`` raises at the first one.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from hardware.errors import KvsimError
from workloads.workload import NO_SESSION, Workload

ON_BAD_ROW = ("error", "skip")
FAILURES = ("drop", "keep", "error")
#: Largest count accepted: integers above 2**53 are not exact in float64.
MAX_COUNT = 2**53
#: Largest |timestamp| accepted (about 31,700 years), so differences never overflow.
MAX_SECONDS = 1e12


class TraceWarning(UserWarning):
    """A trace was read with a change the user should know about: rows skipped, failed
    requests dropped, or input re-sorted by time."""


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class RowChecks:
    """Per-row problems of one file, resolved together (see module docstring)."""

    def __init__(self, source: str, lines: np.ndarray, on_bad_row: str) -> None:
        self.source = source
        self.lines = lines
        self.on_bad_row = on_bad_row
        self._problems: list[tuple[np.ndarray, str, str, object]] = []

    def flag(self, mask: np.ndarray, field: str, reason: str, raw: object = None) -> None:
        """Mark rows where ``mask`` holds as bad in ``field``; ``raw`` (indexable by row
        position) supplies the offending value for the message."""
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            self._problems.append((mask, field, reason, raw))

    def resolve(self) -> tuple[np.ndarray, dict[str, int]]:
        """The mask of good rows and the count of skipped rows per ``"field: reason"``."""
        bad = np.zeros(len(self.lines), dtype=bool)
        skipped: dict[str, int] = {}
        if not self._problems:
            return ~bad, skipped
        if self.on_bad_row == "error":
            first = min(
                range(len(self._problems)), key=lambda k: int(np.argmax(self._problems[k][0]))
            )
            mask, field, reason, raw = self._problems[first]
            row = int(np.argmax(mask))
            got = ""
            if raw is not None:
                got = f" (got {_show(raw.iloc[row] if isinstance(raw, pd.Series) else raw[row])})"
            raise KvsimError(
                f"{reason}{got}; on_bad_row='skip' (CLI: --on-bad-row skip) skips such rows",
                source=self.source,
                line=int(self.lines[row]),
                field=field,
            )
        for mask, field, reason, _ in self._problems:
            new = mask & ~bad
            if new.any():
                key = f"{field}: {reason}"
                skipped[key] = skipped.get(key, 0) + int(new.sum())
            bad |= mask
        return ~bad, skipped


# ---- column conversions -------------------------------------------------------------------
def _scalar_or_nan(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, np.number)):
        return np.nan
    return value


def numeric(raw: pd.Series) -> np.ndarray:
    """``raw`` as float64; NaN where a value is missing or not a number (strings such as
    ``"12"`` are numbers, booleans, lists and objects are not)."""
    if raw.dtype == bool:
        return np.full(len(raw), np.nan)
    if raw.dtype == object:
        raw = raw.map(_scalar_or_nan)
    try:
        values = pd.to_numeric(raw, errors="coerce")
    except (TypeError, ValueError, OverflowError):
        values = pd.to_numeric(raw.astype(str), errors="coerce")
    return np.asarray(values, dtype=np.float64)


def counts(raw: pd.Series, field: str, checks: RowChecks, *, minimum: int) -> np.ndarray:
    """A token-count column as float64 (exact below 2**53); flags missing, non-numeric,
    fractional, negative, huge and below-``minimum`` values."""
    values = numeric(raw)
    missing = raw.isna().to_numpy()
    checks.flag(missing, field, "missing value")
    finite = np.isfinite(values)
    checks.flag(~missing & ~finite, field, "expected a whole number of tokens", raw)
    with np.errstate(invalid="ignore"):
        checks.flag(finite & (values != np.floor(values)), field, "expected a whole number", raw)
        checks.flag(finite & (values < 0), field, "negative token count", raw)
        checks.flag(finite & (values > MAX_COUNT), field, f"count above {MAX_COUNT}", raw)
        if minimum > 0:
            checks.flag(
                finite & (values >= 0) & (values < minimum),
                field,
                f"expected at least {minimum} token(s)",
                raw,
            )
    return values


def seconds(raw: pd.Series, field: str, checks: RowChecks, *, scale: float) -> np.ndarray:
    """A numeric time column times ``scale`` (1e-3 for ms) as float64 seconds."""
    values = numeric(raw)
    missing = raw.isna().to_numpy()
    checks.flag(missing, field, "missing timestamp")
    checks.flag(~missing & ~np.isfinite(values), field, "expected a finite number", raw)
    with np.errstate(invalid="ignore", over="ignore"):
        seconds_ = values * scale
        checks.flag(np.abs(seconds_) > MAX_SECONDS, field, f"beyond ±{MAX_SECONDS:.0e} s", raw)
    return seconds_


def datetimes(raw: pd.Series, field: str, checks: RowChecks) -> tuple[np.ndarray, str | None]:
    """ISO-8601 wall-clock strings (any fractional digits up to ns, optional UTC offset or
    ``Z``; naive times are taken as UTC) as float64 seconds since the earliest valid one,
    and that earliest time in ISO form."""
    text = raw.astype("string")
    missing = text.isna().to_numpy()
    parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    bad = parsed.isna().to_numpy()
    checks.flag(missing, field, "missing timestamp")
    checks.flag(bad & ~missing, field, "expected a timestamp like 2023-11-16 18:15:46.6805900", raw)
    ns = parsed.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    if bad.all():
        return np.full(len(raw), np.nan), None
    start = int(ns[~bad].min())
    result = (ns - start).astype(np.float64) / 1e9
    result[bad] = np.nan
    return result, pd.Timestamp(start, tz="UTC").isoformat()


def ids(raw: pd.Series) -> np.ndarray:
    """An id column (session, application): integers as given, other values numbered in
    order of first appearance; missing values become ``NO_SESSION``."""
    values = numeric(raw)
    missing = raw.isna().to_numpy()
    whole = np.isfinite(values) & (values == np.floor(values)) & (np.abs(values) <= MAX_COUNT)
    if np.all(whole | missing):
        return np.where(missing, NO_SESSION, np.nan_to_num(values)).astype(np.int64)
    codes, _ = pd.factorize(raw.astype("string"))
    return np.where(codes < 0, NO_SESSION, codes).astype(np.int64)


def integers(raw: pd.Series, field: str, checks: RowChecks) -> np.ndarray:
    """A signed integer column (priority, request id); flags anything else."""
    values = numeric(raw)
    missing = raw.isna().to_numpy()
    checks.flag(missing, field, "missing value")
    finite = np.isfinite(values)
    checks.flag(~missing & ~finite, field, "expected an integer", raw)
    usable = np.zeros(len(values), dtype=bool)
    usable[finite] = (values[finite] == np.floor(values[finite])) & (
        np.abs(values[finite]) <= MAX_COUNT
    )
    checks.flag(finite & ~usable, field, "expected an integer", raw)
    return np.where(usable, values, 0).astype(np.int64)


def _block_ids(value: object) -> np.ndarray | None:
    """One row's prefix block ids as int64, or None when it is not a list of integers."""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__"):
        return None
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        return None
    if array.ndim != 1:
        return None
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.dtype.kind == "i":
        return array.astype(np.int64)
    if array.dtype.kind == "u" and array.max() <= np.iinfo(np.int64).max:
        return array.astype(np.int64)
    if (
        array.dtype.kind == "f"
        and np.all(np.isfinite(array))
        and np.all(array == np.floor(array))
        and np.abs(array).max() <= MAX_COUNT
    ):
        return array.astype(np.int64)
    if array.dtype == object and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in array
    ):
        try:
            return array.astype(np.int64)
        except OverflowError:
            return None
    return None


def prefix_lists(raw: pd.Series, field: str, checks: RowChecks) -> tuple[np.ndarray, np.ndarray]:
    """A column of per-row block-id lists as CSR (lengths, concatenated ids).

    Fast path: every row already an integer numpy array (pyarrow's ``list<int64>``)."""
    values = raw.to_numpy(dtype=object)
    if all(isinstance(v, np.ndarray) and v.dtype.kind == "i" and v.ndim == 1 for v in values):
        lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
        hashes = np.concatenate(values).astype(np.int64) if len(values) else np.zeros(0, np.int64)
        return lengths, hashes
    arrays = [_block_ids(v) for v in values]
    missing = np.array([v is None or (np.isscalar(v) and pd.isna(v)) for v in values], bool)
    invalid = np.array([a is None for a in arrays], bool) & ~missing
    checks.flag(missing, field, "missing list of prefix block ids")
    checks.flag(invalid, field, "expected a list of integer block ids", raw)
    arrays = [np.zeros(0, np.int64) if a is None else a for a in arrays]
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    hashes = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
    return lengths, hashes.astype(np.int64)


# ---- assembly ---------------------------------------------------------------------------
def check_options(on_bad_row: str, failures: str, time_scale: float, source: str) -> None:
    if on_bad_row not in ON_BAD_ROW:
        raise KvsimError(
            f"expected one of {ON_BAD_ROW}, got {on_bad_row!r}", field="on_bad_row", source=source
        )
    if failures not in FAILURES:
        raise KvsimError(
            f"expected one of {FAILURES}, got {failures!r}", field="failures", source=source
        )
    if not (isinstance(time_scale, (int, float)) and np.isfinite(time_scale) and time_scale > 0):
        raise KvsimError(
            f"expected a finite number > 0, got {time_scale!r}", field="time_scale", source=source
        )


def assemble(
    *,
    source: str,
    fmt: str,
    name: str,
    checks: RowChecks,
    first_data_line: int,
    arrival_s: np.ndarray,
    prompt_tokens: np.ndarray,
    output_tokens: np.ndarray,
    output_field: str,
    failures: str,
    time_scale: float,
    session_id: np.ndarray | None = None,
    priority: np.ndarray | None = None,
    request_id: np.ndarray | None = None,
    prefix: tuple[np.ndarray, np.ndarray] | None = None,
    prefix_field: str = "hash_ids",
    prefix_block_tokens: int = 512,
    meta: dict | None = None,
) -> Workload:
    """Resolve row problems, handle failures, sort, rebase to 0, scale and build.

    ``request_id`` defaults to the row's 0-based position in the file
    (``line - first_data_line``), so a request can always be traced back to its line."""
    lines = checks.lines
    if prefix is not None:
        lengths, _ = prefix
        with np.errstate(invalid="ignore"):
            limit = np.ceil(prompt_tokens / prefix_block_tokens)
            checks.flag(
                np.isfinite(limit) & (lengths > limit),
                prefix_field,
                f"more {prefix_block_tokens}-token blocks than the prompt has tokens for",
            )
    good, skipped = checks.resolve()
    rows_read = len(lines)
    if request_id is None:
        request_id = lines.astype(np.int64) - first_data_line
    failed = good & (output_tokens == 0)
    meta = {"source": source, "format": fmt, "rows_read": rows_read, **(meta or {})}
    meta["skipped_rows"] = skipped
    if skipped:
        detail = ", ".join(f"{count} {reason}" for reason, count in skipped.items())
        warnings.warn(
            f"{source}: skipped {sum(skipped.values())} bad row(s): {detail}",
            TraceWarning,
            stacklevel=3,
        )
    n_failed = int(failed.sum())
    meta["failed_dropped"] = 0
    meta["failed_request_ids"] = []
    if n_failed and failures == "error":
        row = int(np.argmax(failed))
        raise KvsimError(
            "0 output tokens (a failed request); failures='drop' or 'keep' accepts it",
            source=source,
            line=int(lines[row]),
            field=output_field,
        )
    if n_failed and failures == "drop":
        good &= ~failed
        meta["failed_dropped"] = n_failed
        warnings.warn(
            f"{source}: dropped {n_failed} failed request(s) with 0 {output_field}",
            TraceWarning,
            stacklevel=3,
        )
    output_tokens = np.where(failed, 1, output_tokens)
    if n_failed and failures == "keep":
        meta["failed_request_ids"] = [int(i) for i in request_id[failed]]
    index = np.flatnonzero(good)
    if index.size == 0:
        raise KvsimError(
            f"no requests left out of {rows_read} row(s) "
            f"(skipped: {skipped or 0}; failed dropped: {meta['failed_dropped']})",
            source=source,
        )
    arrival = arrival_s[index]
    order = np.argsort(arrival, kind="stable")
    meta["sorted_input"] = bool(np.any(np.diff(arrival) < 0))
    if meta["sorted_input"]:
        warnings.warn(
            f"{source}: rows are not in time order; sorted {index.size} requests by arrival",
            TraceWarning,
            stacklevel=3,
        )
    index = index[order]
    arrival = (arrival[order] - arrival[order[0]]) * float(time_scale)
    meta["time_scale"] = float(time_scale)
    offsets = hashes = None
    if prefix is not None:
        lengths, all_hashes = prefix
        starts = np.concatenate([[0], np.cumsum(lengths)])[index]
        kept = lengths[index]
        offsets = np.concatenate([[0], np.cumsum(kept)])
        gather = np.repeat(starts - offsets[:-1], kept) + np.arange(offsets[-1])
        hashes = all_hashes[gather]
    return Workload(
        arrival_s=arrival,
        prompt_tokens=prompt_tokens[index].astype(np.int64),
        output_tokens=output_tokens[index].astype(np.int64),
        session_id=None if session_id is None else session_id[index],
        priority=None if priority is None else priority[index],
        prefix_offsets=offsets,
        prefix_hashes=hashes,
        prefix_block_tokens=prefix_block_tokens,
        name=name,
        request_id=request_id[index],
        meta=meta,
    )


def require_columns(
    columns: Sequence[str],
    required: Sequence[str],
    *,
    source: str,
    fmt: str,
    line: int = 1,
    what: str = "column",
) -> None:
    """Raise naming the first missing required column, the header found and the format."""
    for column in required:
        if column not in columns:
            raise KvsimError(
                f"missing {what} {column!r} required by format {fmt!r} "
                f"(expected {', '.join(required)}; found {', '.join(map(str, columns)) or 'nothing'})",
                source=source,
                line=line,
                field=column,
            )
