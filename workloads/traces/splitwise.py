"""SplitwiseSim request traces (Mutinifni/splitwise-sim, ``traces/*.csv``).

Header ``request_id,request_type,application_id,arrival_timestamp,batch_size,prompt_size,
token_size``: ``arrival_timestamp`` in seconds, ``prompt_size`` prompt tokens, ``token_size``
output tokens. ``request_id`` is kept when present. ``request_type`` (2 = LLM),
``application_id`` (the serving application, not a conversation) and ``batch_size`` are not used
by kvsim.
"""

from __future__ import annotations

from pathlib import Path

from workloads.workload import Workload

from . import _io, _validate

COLUMNS = ("arrival_timestamp", "prompt_size", "token_size")
EXPECTED = (
    "a CSV header request_id,request_type,application_id,arrival_timestamp,batch_size,"
    "prompt_size,token_size"
)


def read_splitwise(
    path: Path, *, on_bad_row: str = "error", time_scale: float = 1.0, failures: str = "drop"
) -> Workload:
    """Read a SplitwiseSim trace CSV."""
    source = str(path)
    table = _io.read_csv(path, required=COLUMNS, fmt="splitwise", expected=EXPECTED)
    frame = table.frame
    checks = _validate.RowChecks(source, table.lines, on_bad_row)
    table.flag_malformed(checks, "row")
    arrival_s = _validate.seconds(
        frame["arrival_timestamp"], "arrival_timestamp", checks, scale=1.0
    )
    prompt = _validate.counts(frame["prompt_size"], "prompt_size", checks, minimum=1)
    output = _validate.counts(frame["token_size"], "token_size", checks, minimum=0)
    request_id = None
    if "request_id" in frame.columns:
        request_id = _validate.integers(frame["request_id"], "request_id", checks)
    return _validate.assemble(
        source=source,
        fmt="splitwise",
        name=path.name.removesuffix(".gz").removesuffix(".csv"),
        checks=checks,
        first_data_line=table.header_line + 1,
        arrival_s=arrival_s,
        prompt_tokens=prompt,
        output_tokens=output,
        output_field="token_size",
        failures=failures,
        time_scale=time_scale,
        request_id=request_id,
    )
