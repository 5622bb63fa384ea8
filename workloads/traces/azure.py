"""Azure LLM inference traces (2023 Splitwise, 2024 DynamoLLM, 2025 multimodal).

Header ``TIMESTAMP,ContextTokens,GeneratedTokens`` (2025 adds ``NumImages``, ignored).
``TIMESTAMP`` is absolute wall-clock time: 2023 has 7 fractional digits and no zone
(``2023-11-16 18:15:46.6805900``), 2024 has microseconds and a UTC offset, sometimes without
the fraction (``2024-05-10 00:00:00.009930+00:00``), 2025 is ISO ``…T…Z``. All are parsed by
pandas' vectorised ISO-8601 parser to nanoseconds (naive times as UTC) and rebased to the
first request. ``ContextTokens`` = prompt tokens, ``GeneratedTokens`` = output tokens
(Azure/AzurePublicDataset, ``AzureLLMInferenceDataset2023.md`` / ``…2024.md``).
"""

from __future__ import annotations

from pathlib import Path

from workloads.workload import Workload

from . import _io, _validate

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
EXPECTED = "a CSV header TIMESTAMP,ContextTokens,GeneratedTokens"


def read_azure(
    path: Path, *, on_bad_row: str = "error", time_scale: float = 1.0, failures: str = "drop"
) -> Workload:
    """Read an Azure LLM inference trace CSV (any of the 2023/2024/2025 variants)."""
    source = str(path)
    table = _io.read_csv(
        path, required=COLUMNS, fmt="azure", text_columns=("TIMESTAMP",), expected=EXPECTED
    )
    frame = table.frame
    checks = _validate.RowChecks(source, table.lines, on_bad_row)
    table.flag_malformed(checks, "row")
    arrival_s, start = _validate.datetimes(frame["TIMESTAMP"], "TIMESTAMP", checks)
    prompt = _validate.counts(frame["ContextTokens"], "ContextTokens", checks, minimum=1)
    output = _validate.counts(frame["GeneratedTokens"], "GeneratedTokens", checks, minimum=0)
    return _validate.assemble(
        source=source,
        fmt="azure",
        name=path.name.removesuffix(".gz").removesuffix(".csv"),
        checks=checks,
        first_data_line=table.header_line + 1,
        arrival_s=arrival_s,
        prompt_tokens=prompt,
        output_tokens=output,
        output_field="GeneratedTokens",
        failures=failures,
        time_scale=time_scale,
        meta={"first_timestamp": start},
    )
