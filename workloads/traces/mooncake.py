"""Mooncake FAST'25 traces (kvcache-ai/Mooncake ``FAST25-release/traces/*.jsonl``).

One JSON object per line: ``timestamp`` (integer ms from trace start), ``input_length``,
``output_length`` and ``hash_ids``, the remapped ids of the prompt's 512-token prefix blocks
(the last block may be partial; ``len(hash_ids) == ceil(input_length / 512)``). Equal ids at
equal positions are the same prefix, so the ids are kept as the workload's CSR prefix blocks
for the engine's prefix cache (Qin et al., "Mooncake", FAST'25).
"""

from __future__ import annotations

from pathlib import Path

from workloads.workload import Workload

from . import _io, _validate

FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")
EXPECTED = 'one JSON object per line with "timestamp", "input_length", "output_length", "hash_ids"'
BLOCK_TOKENS = 512


def read_mooncake(
    path: Path, *, on_bad_row: str = "error", time_scale: float = 1.0, failures: str = "drop"
) -> Workload:
    """Read a Mooncake JSONL trace, keeping ``hash_ids`` as 512-token prefix blocks."""
    source = str(path)
    table = _io.read_jsonl(path, required=FIELDS, fmt="mooncake", expected=EXPECTED)
    frame = table.frame
    checks = _validate.RowChecks(source, table.lines, on_bad_row)
    table.flag_malformed(checks, "json")
    arrival_s = _validate.seconds(frame["timestamp"], "timestamp", checks, scale=1e-3)
    prompt = _validate.counts(frame["input_length"], "input_length", checks, minimum=1)
    output = _validate.counts(frame["output_length"], "output_length", checks, minimum=0)
    prefix = _validate.prefix_lists(frame["hash_ids"], "hash_ids", checks)
    return _validate.assemble(
        source=source,
        fmt="mooncake",
        name=path.name.removesuffix(".gz").removesuffix(".jsonl"),
        checks=checks,
        first_data_line=1,
        arrival_s=arrival_s,
        prompt_tokens=prompt,
        output_tokens=output,
        output_field="output_length",
        failures=failures,
        time_scale=time_scale,
        prefix=prefix,
        prefix_field="hash_ids",
        prefix_block_tokens=BLOCK_TOKENS,
    )
