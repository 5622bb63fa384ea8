"""Property tests: random bytes and random rows never crash a reader with anything but
KvsimError, whether the format is forced or detected; whatever does load is a valid,
rebased, sorted Workload."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardware.errors import KvsimError
from workloads.traces import FORMATS, TraceWarning, read_trace
from workloads.workload import Workload

FORMAT_CHOICES = [None, *FORMATS]
SUFFIXES = [".csv", ".jsonl", ".parquet", ".csv.gz", ".txt"]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Header columns of every format, so random rows often get past header checks.
HEADERS = {
    "azure": ["TIMESTAMP", "ContextTokens", "GeneratedTokens"],
    "burstgpt": [
        "Timestamp",
        "Model",
        "Request tokens",
        "Response tokens",
        "Total tokens",
        "Log Type",
    ],
    "splitwise": [
        "request_id",
        "request_type",
        "application_id",
        "arrival_timestamp",
        "batch_size",
        "prompt_size",
        "token_size",
    ],
    "vidur": ["arrived_at", "num_prefill_tokens", "num_decode_tokens"],
    "generic": [
        "arrival_s",
        "prompt_tokens",
        "output_tokens",
        "session_id",
        "priority",
        "request_id",
    ],
}
MOONCAKE_KEYS = ["timestamp", "input_length", "output_length", "hash_ids"]

cells = st.one_of(
    st.integers(-5, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(
        [
            "",
            "nan",
            "abc",
            "2023-11-16 18:15:46.6805900",
            "2024-05-10 00:00:01+00:00",
            "ChatGPT",
            "GPT-4",
            "API log",
            '"q,uote"',
            "1e400",
        ]
    ),
    st.text(max_size=8),
)
json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=5)
    ),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


def check_read(data: bytes, suffix: str, fmt: str | None, on_bad_row: str) -> None:
    """Write ``data`` to a temporary ``trace<suffix>`` and read it."""
    with tempfile.TemporaryDirectory(prefix="kvsim-fuzz-") as folder:
        path = Path(folder) / f"trace{suffix}"
        path.write_bytes(data)
        check_workload(path, fmt, on_bad_row)


def check_workload(path: Path, fmt: str | None, on_bad_row: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any stray numpy/pandas warning fails the test
        warnings.simplefilter("ignore", TraceWarning)
        try:
            workload = read_trace(path, fmt, on_bad_row=on_bad_row)
        except KvsimError:
            return
    assert isinstance(workload, Workload)
    assert len(workload) >= 1
    assert workload.arrival_s[0] == 0.0
    assert np.all(np.diff(workload.arrival_s) >= 0)
    assert workload.prompt_tokens.min() >= 1 and workload.output_tokens.min() >= 1


@SETTINGS
@given(
    data=st.binary(max_size=600),
    suffix=st.sampled_from(SUFFIXES),
    fmt=st.sampled_from(FORMAT_CHOICES),
    skip=st.booleans(),
)
def test_random_bytes(data: bytes, suffix: str, fmt: str | None, skip: bool) -> None:
    check_read(data, suffix, fmt, "skip" if skip else "error")


@SETTINGS
@given(
    layout=st.sampled_from(sorted(HEADERS)),
    rows=st.lists(st.lists(cells, min_size=0, max_size=8), max_size=6),
    fmt=st.sampled_from(FORMAT_CHOICES),
    skip=st.booleans(),
)
def test_random_csv_rows(layout: str, rows: list[list[str]], fmt: str | None, skip: bool) -> None:
    text = ",".join(HEADERS[layout]) + "\n" + "".join(",".join(row) + "\n" for row in rows)
    check_read(text.encode(), ".csv", fmt, "skip" if skip else "error")


@SETTINGS
@given(
    records=st.lists(
        st.dictionaries(
            st.sampled_from(MOONCAKE_KEYS + ["arrival_s", "prompt_tokens"]), json_values, max_size=5
        ),
        max_size=6,
    ),
    truncate=st.integers(0, 30),
    fmt=st.sampled_from(FORMAT_CHOICES),
    skip=st.booleans(),
)
def test_random_jsonl_rows(records: list[dict], truncate: int, fmt: str | None, skip: bool) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    data = text.encode()[: max(0, len(text) - truncate)]
    check_read(data, ".jsonl", fmt, "skip" if skip else "error")


@SETTINGS
@given(
    records=st.lists(
        st.fixed_dictionaries(
            {
                "timestamp": st.integers(0, 10**7),
                "input_length": st.integers(-2, 5000),
                "output_length": st.integers(-2, 500),
                "hash_ids": st.lists(st.integers(0, 50), max_size=12),
            }
        ),
        min_size=1,
        max_size=8,
    )
)
def test_plausible_mooncake_rows(records: list[dict]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    check_read(text.encode(), ".jsonl", None, "skip")
