"""Trace readers: real-trace acceptance figures and every format on small hand-made files.

Expected numbers come from ``shared/reference/traces.md`` (§1.1 row counts, §1.2 table and the
Mooncake prefix-reuse paragraph) and from hand calculation on the fixtures written here.
"""

from __future__ import annotations

import gzip
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from hardware.errors import KvsimError
from workloads.stats import trace_stats
from workloads.traces import FORMATS, TraceWarning, detect_format, read_trace
from workloads.workload import NO_SESSION, Workload


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---- real traces ---------------------------------------------------------------------------
def test_azure_conv_acceptance(traces_dir: Path) -> None:
    path = traces_dir / "azure2023" / "AzureLLMInferenceTrace_conv.csv"
    assert detect_format(path) == "azure"
    workload = read_trace(path)
    stats = trace_stats(workload)
    assert len(workload) == 19_366
    assert workload.arrival_s[0] == 0.0
    assert round(stats["rate_per_s"], 2) == 5.53
    assert stats["input_tokens"]["p50"] == 1020
    assert stats["output_tokens"]["p50"] == 129
    assert round(stats["interarrival_cv"], 2) == 1.09
    assert workload.meta["first_timestamp"] == "2023-11-16T18:15:46.680590+00:00"


def test_azure_code_burstiness(traces_dir: Path) -> None:
    stats = trace_stats(read_trace(traces_dir / "azure2023" / "AzureLLMInferenceTrace_code.csv"))
    assert stats["requests"] == 8_819
    assert round(stats["interarrival_cv"]) == 13


@pytest.mark.parametrize(
    ("name", "requests", "hit", "hit_tokens"),
    [("conversation", 12_031, 0.366, 0.374), ("synthetic", 3_993, 0.640, 0.651)],
)
def test_mooncake_prefix_reuse(
    traces_dir: Path, name: str, requests: int, hit: float, hit_tokens: float
) -> None:
    path = traces_dir / "mooncake" / f"{name}_trace.jsonl"
    assert detect_format(path) == "mooncake"
    workload = read_trace(path)
    assert len(workload) == requests
    assert workload.prefix_block_tokens == 512
    blocks = np.diff(workload.prefix_offsets)
    assert np.array_equal(blocks, np.ceil(workload.prompt_tokens / 512).astype(np.int64))
    stats = trace_stats(workload)
    assert round(stats["ideal_prefix_hit"], 3) == hit
    assert round(stats["ideal_prefix_hit_tokens"], 3) == hit_tokens


def test_mooncake_timestamps_are_ms(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.jsonl",
        '{"timestamp": 1000, "input_length": 600, "output_length": 5, "hash_ids": [7, 8]}\n'
        '{"timestamp": 4000, "input_length": 100, "output_length": 2, "hash_ids": [7]}\n',
    )
    workload = read_trace(path)
    assert workload.arrival_s.tolist() == [0.0, 3.0]
    assert workload.prefix_of(0).tolist() == [7, 8]
    assert workload.prefix_of(1).tolist() == [7]


# ---- Azure variants ------------------------------------------------------------------------
def test_azure_2023_seven_fractional_digits(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:15:50.9951691,10,1\n",
    )
    workload = read_trace(path)
    # 50.9951690 - 46.6805900 = 4.3145790 s; the 7th digit is 100 ns.
    assert workload.arrival_s[1] == pytest.approx(4.314579, abs=1e-9)
    assert workload.arrival_s[2] - workload.arrival_s[1] == pytest.approx(1e-7, abs=1e-10)
    assert workload.prompt_tokens.tolist() == [374, 396, 10]
    assert workload.output_tokens.tolist() == [44, 109, 1]


def test_azure_2024_offsets_and_mixed_fractions(tmp_path: Path) -> None:
    path = write(
        tmp_path / "AzureLLMInferenceTrace_conv_1week.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-10 00:00:00.009930+00:00,100,10\n"
        "2024-05-10 00:00:01+00:00,200,20\n"
        "2024-05-10 02:00:02.5+02:00,300,30\n"
        "2024-05-10 00:00:03.25,400,40\n",
    )
    workload = read_trace(path)
    # +02:00 is converted to UTC; a naive time is taken as UTC.
    assert workload.arrival_s == pytest.approx([0.0, 0.99007, 2.49007, 3.24007], abs=1e-9)


def test_azure_2025_iso_z_and_gzip(tmp_path: Path) -> None:
    text = (
        "TIMESTAMP,NumImages,ContextTokens,GeneratedTokens\n"
        "2024-10-15T12:00:00.269Z,1,500,20\n"
        "2024-10-15T12:00:01.000Z,0,50,5\n"
    )
    path = tmp_path / "mm.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    workload = read_trace(path)
    assert workload.arrival_s == pytest.approx([0.0, 0.731])
    assert workload.name == "mm"


# ---- BurstGPT ------------------------------------------------------------------------------
BURST = (
    "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
    "5,ChatGPT,472,18,490,Conversation log\n"
    "45,ChatGPT,1087,0,1087,Conversation log\n"
    "118,GPT-4,417,217,634,API log\n"
    "130,ChatGPT,1360,126,1486,API log\n"
)


def test_burstgpt_drops_failures_by_default(tmp_path: Path) -> None:
    path = write(tmp_path / "BurstGPT_1.csv", BURST)
    assert detect_format(path) == "burstgpt"
    with pytest.warns(TraceWarning, match="dropped 1 failed"):
        workload = read_trace(path)
    assert workload.arrival_s.tolist() == [0.0, 113.0, 125.0]
    assert workload.prompt_tokens.tolist() == [472, 417, 1360]
    assert workload.request_id.tolist() == [0, 2, 3]
    assert workload.meta["failed_dropped"] == 1


def test_burstgpt_keeps_failures_on_request(tmp_path: Path) -> None:
    path = write(tmp_path / "b.csv", BURST)
    workload = read_trace(path, failures="keep")
    assert len(workload) == 4
    assert workload.output_tokens.tolist() == [18, 1, 217, 126]
    assert workload.meta["failed_request_ids"] == [1]


def test_burstgpt_model_and_log_type_filters(tmp_path: Path) -> None:
    path = write(tmp_path / "b.csv", BURST)
    gpt4 = read_trace(path, models=["gpt-4"])
    assert gpt4.prompt_tokens.tolist() == [417]
    assert gpt4.meta["filtered_rows"] == 3
    api = read_trace(path, log_types=["API log"])
    assert api.prompt_tokens.tolist() == [417, 1360]
    with pytest.raises(KvsimError, match="no rows match"):
        read_trace(path, models=["Claude"])


def test_burstgpt_v12_session_ids(tmp_path: Path) -> None:
    path = write(
        tmp_path / "b.csv",
        "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        "0,abc,1.5,ChatGPT,10,5,15,Conversation log\n"
        "3,def,1.0,ChatGPT,20,5,25,Conversation log\n"
        "7,abc,2.0,ChatGPT,40,5,45,Conversation log\n"
        "9,,2.0,ChatGPT,40,5,45,API log\n",
    )
    workload = read_trace(path)
    assert workload.session_id.tolist() == [0, 1, 0, NO_SESSION]


# ---- splitwise, vidur, generic -------------------------------------------------------------
def test_splitwise(tmp_path: Path) -> None:
    path = write(
        tmp_path / "test_trace.csv",
        "request_id,request_type,application_id,arrival_timestamp,batch_size,prompt_size,token_size\n"
        "10,2,0,0.5,1,1024,12\n"
        "11,2,0,0.75,1,2048,7\n",
    )
    assert detect_format(path) == "splitwise"
    workload = read_trace(path)
    assert workload.arrival_s.tolist() == [0.0, 0.25]
    assert workload.request_id.tolist() == [10, 11]
    assert workload.output_tokens.tolist() == [12, 7]


def test_vidur(tmp_path: Path) -> None:
    path = write(
        tmp_path / "splitwise_conv.csv",
        ",arrived_at,num_prefill_tokens,num_decode_tokens\n0,0.0,374,44\n1,4.3145790,396,109\n",
    )
    assert detect_format(path) == "vidur"
    workload = read_trace(path)
    assert workload.arrival_s.tolist() == [0.0, 4.314579]
    assert workload.prompt_tokens.tolist() == [374, 396]


def test_generic_csv_with_mapping_and_ms(tmp_path: Path) -> None:
    path = write(
        tmp_path / "mine.csv", "t_ms,in,out,user\n2000,10,3,u1\n2500,20,4,u2\n3000,30,5,u1\n"
    )
    with pytest.raises(KvsimError, match="cannot detect"):
        detect_format(path)
    workload = read_trace(
        path,
        "generic",
        columns={
            "arrival_s": "t_ms",
            "prompt_tokens": "in",
            "output_tokens": "out",
            "session_id": "user",
        },
        time_unit="ms",
    )
    assert workload.arrival_s.tolist() == [0.0, 0.5, 1.0]
    assert workload.session_id.tolist() == [0, 1, 0]


def test_generic_jsonl_with_prefixes(tmp_path: Path) -> None:
    path = write(
        tmp_path / "w.jsonl",
        '{"arrival_s": 1.5, "prompt_tokens": 20, "output_tokens": 2, "prefix_hashes": [4, 5]}\n'
        '{"arrival_s": 2.0, "prompt_tokens": 9, "output_tokens": 1, "prefix_hashes": [4]}\n',
    )
    assert detect_format(path) == "generic"
    workload = read_trace(path, prefix_block_tokens=16)
    assert workload.prefix_block_tokens == 16
    assert workload.prefix_hashes.tolist() == [4, 5, 4]


def test_parquet_round_trip(tmp_path: Path) -> None:
    original = Workload(
        arrival_s=[0.0, 0.5, 2.0],
        prompt_tokens=[600, 100, 1100],
        output_tokens=[3, 4, 5],
        session_id=[7, NO_SESSION, 7],
        priority=[0, 2, 1],
        prefix_offsets=[0, 2, 3, 6],
        prefix_hashes=[1, 2, 1, 1, 2, 9],
        prefix_block_tokens=256,
        name="mine",
        request_id=[5, 6, 7],
    )
    path = original.to_parquet(tmp_path / "mine.parquet")
    assert detect_format(path) == "generic"
    back = read_trace(path)
    for column in (
        "arrival_s",
        "prompt_tokens",
        "output_tokens",
        "session_id",
        "priority",
        "request_id",
        "prefix_offsets",
        "prefix_hashes",
    ):
        assert np.array_equal(getattr(back, column), getattr(original, column)), column
    assert back.prefix_block_tokens == 256
    assert back.name == "mine"


# ---- common behaviour ----------------------------------------------------------------------
def test_unsorted_input_is_sorted_with_warning(tmp_path: Path) -> None:
    path = write(
        tmp_path / "u.csv",
        "arrival_s,prompt_tokens,output_tokens\n5,50,5\n1,10,1\n3,30,3\n",
    )
    with pytest.warns(TraceWarning, match="not in time order"):
        workload = read_trace(path)
    assert workload.arrival_s.tolist() == [0.0, 2.0, 4.0]
    assert workload.prompt_tokens.tolist() == [10, 30, 50]
    assert workload.request_id.tolist() == [1, 2, 0]  # the rows' positions in the file
    assert workload.meta["sorted_input"] is True


def test_time_scale_multiplies_interarrivals(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t.csv", "arrival_s,prompt_tokens,output_tokens\n10,1,1\n11,1,1\n14,1,1\n"
    )
    assert read_trace(path, time_scale=0.5).arrival_s.tolist() == [0.0, 0.5, 2.0]
    assert read_trace(path, time_scale=2).arrival_s.tolist() == [0.0, 2.0, 8.0]
    with pytest.raises(KvsimError, match="time_scale"):
        read_trace(path, time_scale=0)


def test_every_format_is_detected_from_its_own_header(tmp_path: Path) -> None:
    for fmt in FORMATS.values():
        header = ",".join(sorted(fmt.signature))
        path = write(tmp_path / f"{fmt.name}.csv", header + "\n")
        assert detect_format(path) == fmt.name


def test_unknown_option_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "arrival_s,prompt_tokens,output_tokens\n0,1,1\n")
    with pytest.raises(KvsimError, match="models"):
        read_trace(path, models=["GPT-4"])


def test_clean_file_gives_no_warning(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "arrival_s,prompt_tokens,output_tokens\n0,1,1\n1,2,2\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        workload = read_trace(path)
    assert workload.meta["skipped_rows"] == {}
    assert math.isclose(workload.duration_s, 1.0)
