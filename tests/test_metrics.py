"""Metrics on hand-built records, every expected number worked out by hand below."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.metrics import (
    MetricsContext,
    kv_over_time,
    littles_law,
    percentiles,
    summarize,
    weighted_percentiles,
)
from sim.records import FINISHED, RequestRecords, StepRecords
from workloads.workload import Workload


def _requests():
    """Three finished requests and one rejected one.

    arrival 0, 1, 2, 3; first token 0.5, 1.2, 2.9; finish 2.5, 1.2, 4.9; outputs 5, 1, 11, 7.
    TTFT 0.5, 0.2, 0.9; TPOT (2.5-0.5)/4 = 0.5, none, (4.9-2.9)/10 = 0.2; E2E 2.5, 0.2, 2.9.
    """
    workload = Workload(
        arrival_s=[0.0, 1.0, 2.0, 3.0],
        prompt_tokens=[100, 200, 300, 400],
        output_tokens=[5, 1, 11, 7],
    )
    records = RequestRecords(workload)
    for i, (scheduled, first, finish, hit, preempted) in enumerate(
        [(0.1, 0.5, 2.5, 50, 1), (1.0, 1.2, 1.2, 0, 0), (2.5, 2.9, 4.9, 150, 2)]
    ):
        records.scheduled_s[i] = scheduled
        records.first_token_s[i] = first
        records.finish_s[i] = finish
        records.prefix_hit_tokens[i] = hit
        records.preemptions[i] = preempted
        records.status[i] = FINISHED
        records.replica[i] = i % 2
    records.reject(3, "exceeds_kv_pool", replica=1)
    return records.to_frame()


def _steps():
    """Replica 0: [0, 1) one step with 10 KV blocks after it; [1, 3) four decode steps of 2
    sequences, 14 blocks. Replica 1: [0.5, 1.5) one step, 5 blocks; [2, 3) one step, 0."""
    steps = StepRecords()
    rows = [
        (0, 0.0, 1.0, 1, 1, 100, 0, 0, 10),
        (0, 1.0, 2.0, 4, 0, 0, 2, 8, 14),
        (1, 0.5, 1.0, 1, 1, 200, 1, 1, 5),
        (1, 2.0, 1.0, 1, 0, 0, 2, 2, 0),
    ]
    for replica, start, duration, count, npre, ptok, ndec, dtok, kv in rows:
        steps.append(
            (replica, start, duration, count, npre, ptok, ndec, dtok)
            + (duration / 2, duration / 4, 0.0, 0.0, duration / 4)
            + (kv, 0, 0, 0, 0, 0)
        )
    return steps.to_frame()


CTX = MetricsContext(
    replicas=2,
    num_gpus=4,
    usd_per_gpu_hour=2.0,
    kv_bytes_per_block=1000.0,
    kv_blocks_per_replica=50,
    ttft_slo_s=0.6,
    tpot_slo_s=0.3,
)


def test_request_frame_derived_latencies() -> None:
    frame = _requests()
    np.testing.assert_allclose(frame["ttft_s"][:3], [0.5, 0.2, 0.9])
    np.testing.assert_allclose(frame["tpot_s"][[0, 2]], [0.5, 0.2])
    assert math.isnan(frame["tpot_s"][1])
    np.testing.assert_allclose(frame["e2e_s"][:3], [2.5, 0.2, 2.9])
    np.testing.assert_allclose(frame["queue_wait_s"][:3], [0.1, 0.0, 0.5])
    assert list(frame["status"]) == ["finished"] * 3 + ["rejected"]
    assert list(frame["reject_reason"]) == ["", "", "", "exceeds_kv_pool"]


def test_percentiles_linear_and_weighted() -> None:
    # Linear interpolation: p90 of [0.2, 0.5, 0.9] sits 0.8 of the way from 0.5 to 0.9.
    assert percentiles(np.array([0.9, 0.2, 0.5, np.nan])) == pytest.approx(
        {50: 0.5, 90: 0.82, 99: 0.5 + 0.98 * 0.4}
    )
    # Values 1, 2, 3 with weights 1, 1, 2: cumulative 1, 2, 4 of 4.
    assert weighted_percentiles(np.array([3.0, 1.0, 2.0]), np.array([2, 1, 1])) == {
        50: 2.0,
        90: 3.0,
        99: 3.0,
    }


def test_kv_over_time_sums_replicas_at_equal_times() -> None:
    kv = kv_over_time(_steps(), kv_bytes_per_block=1000.0)
    # t=1.0: 10 + 0; t=1.5: 10 + 5; t=3.0: both change at once to 14 + 0 (never 19).
    assert kv["time_s"].tolist() == [1.0, 1.5, 3.0]
    assert kv["kv_blocks"].tolist() == [10, 15, 14]
    assert kv["kv_bytes"].tolist() == [10_000.0, 15_000.0, 14_000.0]


def test_littles_law_terms_by_hand() -> None:
    # In system: 1 on [0,1), 2 on [1,1.2), 1 on [1.2,2), 2 on [2,2.5), 1 on [2.5,4.9):
    # area 1 + 0.4 + 0.8 + 1 + 2.4 = 5.6 over 4.9 s; three requests with E2E 2.5+0.2+2.9.
    terms = littles_law(_requests())
    assert terms["L"] == pytest.approx(5.6 / 4.9)
    assert terms["lambda"] == pytest.approx(3 / 4.9)
    assert terms["W"] == pytest.approx(5.6 / 3)


def test_summary_by_hand() -> None:
    s = summarize(_requests(), _steps(), CTX)
    span = 4.9
    assert s["requests_completed"] == 3 and s["requests_rejected"] == 1
    assert s["makespan_s"] == pytest.approx(span)
    assert s["ttft_p50_s"] == pytest.approx(0.5)
    assert s["ttft_p90_s"] == pytest.approx(0.82)
    assert s["tpot_p50_s"] == pytest.approx(0.35)  # two defined values, 0.2 and 0.5
    assert s["e2e_mean_s"] == pytest.approx(5.6 / 3)
    assert s["throughput_req_per_s"] == pytest.approx(3 / span)
    assert s["throughput_tok_per_s"] == pytest.approx(17 / span)
    assert s["throughput_total_tok_per_s"] == pytest.approx((17 + 600) / span)
    # SLO TTFT <= 0.6 and TPOT <= 0.3: request 0 misses TPOT, request 2 misses TTFT,
    # request 1 (one token, no TPOT) meets both; the rejected request meets nothing.
    assert s["goodput_req_per_s"] == pytest.approx(1 / span)
    assert s["slo_attainment"] == pytest.approx(1 / 4)
    assert s["slo_met"] is False  # TTFT p90 0.82 > 0.6
    # ITL: replica 0's stretch gives 8 tokens at 0.5 s, replica 1 one at 1.0 and two at 1.0.
    assert s["itl_p50_s"] == 0.5 and s["itl_p90_s"] == 1.0
    assert s["utilisation"] == pytest.approx(5.0 / (span * 2))
    assert s["preemptions"] == 3 and s["preemption_rate"] == pytest.approx(1.0)
    assert s["prefix_hit_rate"] == pytest.approx(200 / 600)
    assert s["kv_peak_bytes"] == 15_000.0
    assert s["kv_capacity_bytes"] == 1000.0 * 50 * 2
    assert s["steps"] == 7 and s["step_rows"] == 4
    assert s["usd_per_hour"] == 8.0
    assert s["usd_per_m_output_tokens"] == pytest.approx(8.0 * span / 3600 / 17 * 1e6)


def test_summary_without_price_or_slo() -> None:
    s = summarize(_requests(), _steps(), MetricsContext(replicas=2))
    assert s["usd_per_hour"] is None and s["usd_per_m_output_tokens"] is None
    assert s["slo_met"] is None
    assert s["goodput_req_per_s"] == pytest.approx(3 / 4.9)  # no SLO: every finished one
