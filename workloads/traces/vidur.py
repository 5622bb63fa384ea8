"""vidur processed request traces (microsoft/vidur ``data/processed_traces/*.csv``).

Columns ``arrived_at`` (seconds from the first request), ``num_prefill_tokens`` (prompt) and
``num_decode_tokens`` (output), as read by vidur's ``TraceReplayRequestGenerator``; other
columns are ignored. vidur's ``splitwise_{code,conv}.csv`` are the Azure 2023 traces in this
form. Length-only files (no ``arrived_at``) are not arrival traces and are rejected; fit
them with the synthetic generators instead.
"""

from __future__ import annotations

from pathlib import Path

from workloads.workload import Workload

from . import _io, _validate

COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")
EXPECTED = "a CSV header with arrived_at,num_prefill_tokens,num_decode_tokens"


def read_vidur(
    path: Path, *, on_bad_row: str = "error", time_scale: float = 1.0, failures: str = "drop"
) -> Workload:
    """Read a vidur processed trace CSV."""
    source = str(path)
    table = _io.read_csv(path, required=COLUMNS, fmt="vidur", expected=EXPECTED)
    frame = table.frame
    checks = _validate.RowChecks(source, table.lines, on_bad_row)
    table.flag_malformed(checks, "row")
    arrival_s = _validate.seconds(frame["arrived_at"], "arrived_at", checks, scale=1.0)
    prompt = _validate.counts(frame["num_prefill_tokens"], "num_prefill_tokens", checks, minimum=1)
    output = _validate.counts(frame["num_decode_tokens"], "num_decode_tokens", checks, minimum=0)
    return _validate.assemble(
        source=source,
        fmt="vidur",
        name=path.name.removesuffix(".gz").removesuffix(".csv"),
        checks=checks,
        first_data_line=table.header_line + 1,
        arrival_s=arrival_s,
        prompt_tokens=prompt,
        output_tokens=output,
        output_field="num_decode_tokens",
        failures=failures,
        time_scale=time_scale,
    )
