"""Trace statistics: hand-computed cases, Poisson theory, a brute-force prefix-hit reference,
the real traces against ``shared/reference/traces.md`` §1.2 (within the table's rounding), and
the CLI's ``--json`` shape."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.cli import main as kvsim
from workloads.stats import prefix_hit_blocks, trace_stats
from workloads.traces import read_trace
from workloads.workload import Workload


def workload(arrival_s, prompt=None, output=None, prefixes=None, block=512) -> Workload:
    n = len(arrival_s)
    offsets = hashes = None
    if prefixes is not None:
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in prefixes])])
        hashes = [h for p in prefixes for h in p]
    return Workload(
        arrival_s=arrival_s,
        prompt_tokens=prompt if prompt is not None else np.ones(n),
        output_tokens=output if output is not None else np.ones(n),
        prefix_offsets=offsets,
        prefix_hashes=hashes,
        prefix_block_tokens=block,
    )


# ---- hand-computed -----------------------------------------------------------------------
def test_rate_and_cv_by_hand() -> None:
    stats = trace_stats(workload([0.0, 1.0, 4.0]))
    assert stats["duration_s"] == 4.0
    assert stats["rate_per_s"] == 3 / 4
    assert stats["interarrival_cv"] == pytest.approx(0.5)  # gaps 1, 3: std 1 / mean 2


def test_even_arrivals_have_no_dispersion() -> None:
    stats = trace_stats(workload(np.arange(20) * 0.5))
    assert stats["interarrival_cv"] == 0.0
    assert stats["dispersion_index"]["1s"] == 0.0  # ten 1-s windows of 2 requests each


def test_two_bursts_by_hand() -> None:
    # 10 requests at 0 s, 10 at 59.5 s.
    stats = trace_stats(workload(np.repeat([0.0, 59.5], 10)))
    # 1 s: 60 windows, counts [10, 0 x 58, 10]: mean 1/3, var 200/60 - 1/9 = 29/9.
    assert stats["dispersion_index"]["1s"] == pytest.approx(29 / 3)
    # 10 s: 6 windows [10, 0, 0, 0, 0, 10]: mean 10/3, var 200/6 - 100/9 = 200/9.
    assert stats["dispersion_index"]["10s"] == pytest.approx(20 / 3)
    assert stats["dispersion_index"]["60s"] == 0.0  # one window
    assert stats["peak_to_mean"]["1s"] == pytest.approx(30.0)


def test_token_percentiles_by_hand() -> None:
    stats = trace_stats(workload(np.zeros(100), prompt=np.arange(1, 101)))
    # Linear interpolation on 1..100: the q-th percentile is 1 + 0.99 q.
    assert stats["input_tokens"] == pytest.approx(
        {"mean": 50.5, "p50": 50.5, "p90": 90.1, "p99": 99.01, "max": 100}
    )
    assert stats["rate_per_s"] is None and stats["interarrival_cv"] is None


def test_poisson_arrivals_match_theory() -> None:
    rng = np.random.default_rng(7)
    arrivals = np.cumsum(rng.exponential(1 / 5.0, 20_000))
    stats = trace_stats(workload(arrivals - arrivals[0]))
    # Exponential gaps: CV 1. Poisson counts: var/mean 1; std error ~ sqrt(2 / windows).
    assert stats["interarrival_cv"] == pytest.approx(1.0, abs=0.03)
    assert stats["dispersion_index"]["1s"] == pytest.approx(1.0, abs=0.1)
    assert stats["dispersion_index"]["10s"] == pytest.approx(1.0, abs=0.3)
    assert stats["rate_per_s"] == pytest.approx(5.0, rel=0.03)


def test_prefix_hit_by_hand() -> None:
    # Hits: 0, 2 ([1, 2] seen), 1 ([1] seen), 0 (6 is new): 3 of 10 blocks.
    prefixes = [[1, 2, 3], [1, 2, 4], [1, 5], [6, 2]]
    stats = trace_stats(workload([0, 1, 2, 3], prompt=[12, 10, 8, 7], prefixes=prefixes, block=4))
    assert stats["ideal_prefix_hit"] == pytest.approx(0.3)
    # Hit tokens min(hits * 4, prompt): 0 + 8 + 4 + 0 of 37 prompt tokens.
    assert stats["ideal_prefix_hit_tokens"] == pytest.approx(12 / 37)
    assert stats["prefix_blocks"] == {"references": 10, "unique": 6, "block_tokens": 4}


def test_prefix_hit_needs_the_same_chain() -> None:
    # Block id 2 was seen under prefix [1], not under [3]: request 3 hits only [3].
    hits = prefix_hit_blocks(np.array([0, 2, 3, 5]), np.array([1, 2, 3, 3, 2]))
    assert hits.tolist() == [0, 0, 1]


def test_no_prefixes_gives_null() -> None:
    stats = trace_stats(workload([0.0, 1.0]))
    assert stats["ideal_prefix_hit"] is None and stats["ideal_prefix_hit_tokens"] is None


def brute_force_hits(prefixes: list[list[int]]) -> list[int]:
    seen: set[tuple[int, ...]] = set()
    hits = []
    for blocks in prefixes:
        k = 0
        while k < len(blocks) and tuple(blocks[: k + 1]) in seen:
            k += 1
        hits.append(k)
        seen.update(tuple(blocks[: j + 1]) for j in range(len(blocks)))
    return hits


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 4), max_size=6), max_size=12))
def test_prefix_hits_match_brute_force(prefixes: list[list[int]]) -> None:
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in prefixes])]).astype(np.int64)
    hashes = np.array([h for p in prefixes for h in p], dtype=np.int64)
    assert prefix_hit_blocks(offsets, hashes).tolist() == brute_force_hits(prefixes)


# ---- real traces vs the reference table ----------------------------------------------------
# shared/reference/traces.md §1.2, as printed there: N, duration (min), rate, input
# mean/p50/p90/p99/max, output mean/p50/p90/p99/max, CV, dispersion 1/10/60 s, peak/mean 1/60 s.
REFERENCE = {
    "azure2023/AzureLLMInferenceTrace_code.csv": "8819 57.3 2.57 2048 1469 5188 7436 7437 28 13 55 251 1899 13.15 13.2 71.3 160.5 26.1 4.16",
    "azure2023/AzureLLMInferenceTrace_conv.csv": "19366 58.4 5.53 1155 1020 2734 4142 14050 211 129 424 601 1000 1.09 1.4 4.0 20.6 2.9 1.54",
    "mooncake/conversation_trace.jsonl": "12031 58.9 3.40 12035 6909 27367 85400 126195 343 350 597 1119 2000 3.03 7.9 2.1 2.8 8.2 1.21",
    "mooncake/synthetic_trace.jsonl": "3993 17.0 3.91 15325 11587 38611 66456 191378 149 69 389 768 893 1.01 1.1 1.4 13.0 3.3 1.23",
}


def flatten(stats: dict) -> list[float]:
    tokens = [
        stats[k][q]
        for k in ("input_tokens", "output_tokens")
        for q in ("mean", "p50", "p90", "p99", "max")
    ]
    return [
        stats["requests"],
        stats["duration_s"] / 60,
        stats["rate_per_s"],
        *tokens,
        stats["interarrival_cv"],
        *stats["dispersion_index"].values(),
        *stats["peak_to_mean"].values(),
    ]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_real_trace_stats_match_reference(traces_dir: Path, name: str) -> None:
    stats = trace_stats(read_trace(traces_dir / name))
    for ours, printed in zip(flatten(stats), REFERENCE[name].split(), strict=True):
        half_unit = float(Decimal(5).scaleb(Decimal(printed).as_tuple().exponent - 1))
        assert abs(ours - float(printed)) <= half_unit + 1e-9, (printed, ours)


# ---- CLI -----------------------------------------------------------------------------------
def test_cli_json(traces_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = traces_dir / "mooncake" / "synthetic_trace.jsonl"
    assert kvsim(["trace", "stats", str(path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    for key in ("requests", "duration_s", "rate_per_s", "interarrival_cv", "ideal_prefix_hit"):
        assert key in stats
    for key in ("input_tokens", "output_tokens"):
        assert set(stats[key]) >= {"mean", "p50", "p90", "p99", "max"}
    assert set(stats["dispersion_index"]) == {"1s", "10s", "60s"}
    assert stats["requests"] == 3993
    assert round(stats["ideal_prefix_hit"], 3) == 0.640


def test_cli_table_and_null_prefix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens\n0,10,1\n1,30,2\n4,20,3\n")
    assert kvsim(["trace", "stats", str(path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["ideal_prefix_hit"] is None
    assert stats["input_tokens"]["p50"] == 20
    assert kvsim(["trace", "stats", str(path)]) == 0
    table = capsys.readouterr().out
    assert "requests             3" in table
    assert "n/a (no prefix blocks)" in table
