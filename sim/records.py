"""Columnar per-request and per-step records of a run, built in bulk.

Requests: one row per workload request, in workload order, written into preallocated numpy
columns as requests finish or are rejected (no per-row objects survive the request), so
memory is a few dozen bytes per request whatever the run length.

Steps: one row per engine event that ran model steps on a replica. A plain step is one row
with ``steps = 1``. A fast-forwarded decode stretch (:mod:`sim.engine`) of ``steps`` identical
-batch decode steps is one row: ``start_s`` of its first step, ``duration_s`` the exact sum of
the step durations, ``decode_tokens = num_decode × steps``, and the time breakdown
(``compute_s`` …) of its first step scaled to the stretch's duration. Rows are buffered as
tuples and packed every few thousand rows into compact per-column arrays (times in float64,
the breakdown in float32, counts in int32: 96 bytes a row).

Both become pandas DataFrames (:meth:`RequestRecords.to_frame`, :meth:`StepRecords.to_frame`)
once the run ends; nothing in the event loop touches pandas.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workloads.workload import Workload

#: ``status`` values of a request row.
PENDING, FINISHED, REJECTED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", FINISHED: "finished", REJECTED: "rejected"}

STEP_COLUMNS: tuple[tuple[str, str], ...] = (
    ("replica", "i4"),
    ("start_s", "f8"),
    ("duration_s", "f8"),
    ("steps", "i4"),
    ("num_prefill", "i4"),
    ("prefill_tokens", "i4"),
    ("num_decode", "i4"),
    ("decode_tokens", "i4"),
    ("compute_s", "f4"),
    ("memory_s", "f4"),
    ("communication_s", "f4"),
    ("transfer_s", "f4"),
    ("overhead_s", "f4"),
    ("kv_blocks_used", "i4"),
    ("kv_blocks_host", "i4"),
    ("preempted", "i4"),
    ("swap_out_tokens", "i4"),
    ("swap_in_tokens", "i4"),
    ("finished", "i4"),
)
_STEP_DTYPE = np.dtype(list(STEP_COLUMNS))
_CHUNK_ROWS = 8192


class StepRecords:
    """Per-step rows, appended as tuples in :data:`STEP_COLUMNS` order."""

    def __init__(self) -> None:
        self._rows: list[tuple] = []
        self._columns: dict[str, list[np.ndarray]] = {name: [] for name, _ in STEP_COLUMNS}
        self.append = self._rows.append

    def __len__(self) -> int:
        return len(self._rows) + sum(len(c) for c in self._columns["replica"])

    def flush(self) -> None:
        """Pack buffered rows into compact column chunks."""
        if self._rows:
            packed = np.array(self._rows, dtype=_STEP_DTYPE)
            for name, chunks in self._columns.items():
                chunks.append(np.ascontiguousarray(packed[name]))
            self._rows.clear()

    def maybe_flush(self) -> None:
        if len(self._rows) >= _CHUNK_ROWS:
            self.flush()

    def to_frame(self) -> pd.DataFrame:
        """Rows sorted by (start time, replica); ``end_s = start_s + duration_s`` is the
        engine's exact end time of the row's last step. Consumes the buffered chunks."""
        self.flush()
        data = {}
        for name, dtype in STEP_COLUMNS:
            chunks = self._columns[name]
            data[name] = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
            chunks.clear()
        order = np.lexsort((data["replica"], data["start_s"]))
        for name in data:  # one column at a time, so only one extra column is alive
            data[name] = data[name][order]
        frame = pd.DataFrame(data, copy=False)
        frame.insert(2, "end_s", frame["start_s"] + frame["duration_s"])
        return frame


class RequestRecords:
    """Per-request columns, preallocated for every request of ``workload``."""

    def __init__(self, workload: Workload) -> None:
        n = len(workload)
        self.workload = workload
        self.replica = np.full(n, -1, dtype=np.int32)
        self.decode_replica = np.full(n, -1, dtype=np.int32)
        self.scheduled_s = np.full(n, np.nan)
        self.first_token_s = np.full(n, np.nan)
        self.finish_s = np.full(n, np.nan)
        self.prefix_hit_tokens = np.zeros(n, dtype=np.int64)
        self.preemptions = np.zeros(n, dtype=np.int32)
        self.transfer_start_s = np.full(n, np.nan)
        self.transfer_end_s = np.full(n, np.nan)
        self.status = np.zeros(n, dtype=np.int8)
        self.reason_code = np.zeros(n, dtype=np.int16)
        self._reasons: dict[str, int] = {"": 0}

    def reject(self, index: int, reason: str, replica: int = -1) -> None:
        code = self._reasons.setdefault(reason, len(self._reasons))
        self.status[index] = REJECTED
        self.reason_code[index] = code
        self.replica[index] = replica

    @property
    def completed(self) -> int:
        return int(np.count_nonzero(self.status == FINISHED))

    def to_frame(self) -> pd.DataFrame:
        """One row per request, in workload order, with the derived latencies:
        ``queue_wait_s = scheduled_s − arrival_s``, ``ttft_s = first_token_s − arrival_s``,
        ``e2e_s = finish_s − arrival_s``, ``tpot_s = (finish_s − first_token_s) /
        (output_tokens − 1)`` (NaN for one-token outputs). ``status`` and ``reject_reason``
        are categorical (one byte a row)."""
        w = self.workload
        reasons = [""] * len(self._reasons)
        for text, code in self._reasons.items():
            reasons[code] = text
        output = w.output_tokens
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = np.where(output > 1, (self.finish_s - self.first_token_s) / (output - 1), np.nan)
        status = pd.Categorical.from_codes(
            self.status, categories=[STATUS_NAMES[c] for c in range(3)]
        )
        return pd.DataFrame(
            {
                "request_id": w.request_id,
                "arrival_s": w.arrival_s,
                "prompt_tokens": w.prompt_tokens,
                "output_tokens": output,
                "replica": self.replica,
                "decode_replica": self.decode_replica,
                "scheduled_s": self.scheduled_s,
                "first_token_s": self.first_token_s,
                "finish_s": self.finish_s,
                "queue_wait_s": self.scheduled_s - w.arrival_s,
                "ttft_s": self.first_token_s - w.arrival_s,
                "tpot_s": tpot,
                "e2e_s": self.finish_s - w.arrival_s,
                "prefix_hit_tokens": self.prefix_hit_tokens,
                "preemptions": self.preemptions,
                "transfer_start_s": self.transfer_start_s,
                "transfer_end_s": self.transfer_end_s,
                "status": status,
                "reject_reason": pd.Categorical.from_codes(self.reason_code, categories=reasons),
            }
        )
