"""Bad trace input: each case gives one KvsimError naming file, line and field, or, with
``on_bad_row="skip"``, a count of skipped rows by reason. Lines are 1-based physical file
lines including the header, counted by hand on the fixtures below."""

from __future__ import annotations

from pathlib import Path

import pytest

from hardware.errors import KvsimError
from sim.cli import main as kvsim
from workloads.traces import TraceWarning, read_trace

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
GOOD_AZURE_ROW = "2023-11-16 18:15:46.6805900,374,44\n"


def mooncake_row(ts: object, inp: object = 600, out: object = 5, hashes: str = "[1, 2]") -> str:
    return f'{{"timestamp": {ts}, "input_length": {inp}, "output_length": {out}, "hash_ids": {hashes}}}\n'


# (file name, content, forced format, expected line, expected field, message fragment)
CASES = {
    "empty": ("t.csv", "", None, 1, "header", "empty"),
    "empty_forced": ("t.csv", "", "azure", 1, "header", "empty"),
    "empty_jsonl": ("t.jsonl", "\n\n", "mooncake", 1, "header", "empty"),
    "header_only": ("t.csv", AZURE_HEADER, None, 2, "rows", "no data rows"),
    "missing_column": (
        "t.csv",
        "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46,5\n",
        "azure",
        1,
        "GeneratedTokens",
        "missing column",
    ),
    "undetectable": ("t.csv", "a,b,c\n1,2,3\n", None, 1, "header", "cannot detect"),
    "non_numeric_tokens": (
        "t.csv",
        AZURE_HEADER + GOOD_AZURE_ROW + "2023-11-16 18:15:47,abc,3\n",
        None,
        3,
        "ContextTokens",
        "'abc'",
    ),
    "fractional_tokens": (
        "t.csv",
        AZURE_HEADER + GOOD_AZURE_ROW + "2023-11-16 18:15:47,12,3.5\n",
        None,
        3,
        "GeneratedTokens",
        "whole number",
    ),
    "negative_tokens": (
        "t.csv",
        AZURE_HEADER + GOOD_AZURE_ROW + GOOD_AZURE_ROW + "2023-11-16 18:15:47,12,-3\n",
        None,
        4,
        "GeneratedTokens",
        "negative",
    ),
    "zero_prompt": (
        "t.csv",
        AZURE_HEADER + "2023-11-16 18:15:47,0,3\n",
        None,
        2,
        "ContextTokens",
        "at least 1",
    ),
    "nan_timestamp_azure": (
        "t.csv",
        AZURE_HEADER + GOOD_AZURE_ROW + ",12,3\n",
        None,
        3,
        "TIMESTAMP",
        "missing timestamp",
    ),
    "bad_timestamp_azure": (
        "t.csv",
        AZURE_HEADER + "yesterday,12,3\n",
        None,
        2,
        "TIMESTAMP",
        "'yesterday'",
    ),
    "nan_timestamp_mooncake": (
        "t.jsonl",
        mooncake_row(0) + mooncake_row("null"),
        None,
        2,
        "timestamp",
        "missing timestamp",
    ),
    "nan_timestamp_generic": (
        "t.csv",
        "arrival_s,prompt_tokens,output_tokens\n0,1,1\nNaN,1,1\n",
        None,
        3,
        "arrival_s",
        "missing timestamp",
    ),
    "truncated_json": (
        "t.jsonl",
        mooncake_row(0) + mooncake_row(5) + '{"timestamp": 9, "input_le',
        None,
        3,
        "json",
        "truncated",
    ),
    "hash_ids_not_list": (
        "t.jsonl",
        mooncake_row(0) + mooncake_row(5, hashes='"abc"'),
        None,
        2,
        "hash_ids",
        "list of integer",
    ),
    "too_many_hash_ids": ("t.jsonl", mooncake_row(0, inp=10), None, 1, "hash_ids", "blocks"),
    "extra_field": (
        "t.csv",
        AZURE_HEADER + GOOD_AZURE_ROW + "2023-11-16 18:15:47,1,2,3\n",
        None,
        3,
        "row",
        "3 comma-separated",
    ),
    "blank_lines_keep_numbering": (
        "t.csv",
        AZURE_HEADER + "\n" + GOOD_AZURE_ROW + "\n\n" + "2023-11-16 18:15:47,x,3\n",
        None,
        6,
        "ContextTokens",
        "'x'",
    ),
    "mooncake_forced_on_azure": (
        "t.csv",
        AZURE_HEADER + GOOD_AZURE_ROW,
        "mooncake",
        1,
        "json",
        "looks like format 'azure'",
    ),
    "azure_forced_on_mooncake": (
        "t.jsonl",
        mooncake_row(0),
        "azure",
        1,
        "TIMESTAMP",
        "looks like format 'mooncake'",
    ),
    "burstgpt_forced_on_azure": (
        "t.csv",
        AZURE_HEADER + GOOD_AZURE_ROW,
        "burstgpt",
        1,
        "Timestamp",
        "looks like format 'azure'",
    ),
    "failure_as_error": (
        "t.csv",
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n3,ChatGPT,10,0,10,API log\n",
        None,
        2,
        "Response tokens",
        "failed request",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_names_file_line_and_field(tmp_path: Path, case: str) -> None:
    name, content, fmt, line, field, fragment = CASES[case]
    path = tmp_path / f"{case}_{name}"
    path.write_text(content)
    options = {"failures": "error"} if case == "failure_as_error" else {}
    with pytest.raises(KvsimError) as info:
        read_trace(path, fmt, **options)
    err = info.value
    assert (err.source, err.line, err.field) == (str(path), line, field)
    message = str(err)
    assert message.startswith(f"{path}:{line}: {field}: ")
    assert fragment in message


def test_skip_counts_rows_by_reason(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text(
        AZURE_HEADER
        + GOOD_AZURE_ROW
        + "2023-11-16 18:15:47,abc,3\n"
        + "2023-11-16 18:15:48,12,-3\n"
        + ",12,3\n"
        + "2023-11-16 18:15:49,1,2,3\n"
        + "2023-11-16 18:15:50,7,8\n"
    )
    with pytest.warns(TraceWarning, match="skipped 4 bad row"):
        workload = read_trace(path, on_bad_row="skip")
    assert workload.prompt_tokens.tolist() == [374, 7]
    assert workload.request_id.tolist() == [0, 5]
    assert workload.meta["skipped_rows"] == {
        "row: expected 3 comma-separated fields": 1,
        "TIMESTAMP: missing timestamp": 1,
        "ContextTokens: expected a whole number of tokens": 1,
        "GeneratedTokens: negative token count": 1,
    }


def test_skip_truncated_last_json_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(mooncake_row(0) + mooncake_row(3000) + '{"timestamp": 9, "input_le')
    with pytest.warns(TraceWarning, match="skipped 1"):
        workload = read_trace(path, on_bad_row="skip")
    assert len(workload) == 2
    assert list(workload.meta["skipped_rows"].values()) == [1]


def test_all_rows_skipped_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(AZURE_HEADER + "x,y,z\n")
    with pytest.raises(KvsimError, match="no requests left"), pytest.warns(TraceWarning):
        read_trace(path, on_bad_row="skip")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"format": "nope"}, "format"),
        ({"on_bad_row": "ignore"}, "on_bad_row"),
        ({"failures": "x"}, "failures"),
    ],
)
def test_bad_arguments_are_named(tmp_path: Path, kwargs: dict, field: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(AZURE_HEADER + GOOD_AZURE_ROW)
    with pytest.raises(KvsimError) as info:
        read_trace(path, **kwargs)
    assert info.value.field == field


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KvsimError, match="no such file"):
        read_trace(tmp_path / "absent.csv")


def test_cli_prints_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t.csv"
    path.write_text(AZURE_HEADER + GOOD_AZURE_ROW + "2023-11-16 18:15:47,abc,3\n")
    assert kvsim(["trace", "stats", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert f"{path}:3: ContextTokens:" in captured.err


def test_absurd_timestamp_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens\n0,1,1\n1e300,1,1\n")
    with pytest.raises(KvsimError) as info:
        read_trace(path)
    assert (info.value.line, info.value.field) == (3, "arrival_s")
