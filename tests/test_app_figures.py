"""Dashboard data and figure functions, without Streamlit: numbers against hand
calculations from the reference tables and roofline theory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from app import figures, hardware_data, run_data, trace_data
from hardware.catalog import get_accelerator
from sim import figures as run_figures
from workloads.model_catalog import get_model
from workloads.workload import Workload

KIB = 1024


@pytest.fixture(scope="module")
def llama8b():
    return get_model("llama-3.1-8b")


def test_ridge_point_is_peak_over_bandwidth():
    # H100 SXM: 989 TFLOP/s dense BF16 over 3.35 TB/s HBM3 (reference/hardware.md §2.1).
    ridges = hardware_data.ridge_frame([get_accelerator("h100-sxm")], "bf16")
    assert ridges.loc[0, "ridge FLOP/byte"] == pytest.approx(989e12 / 3.35e12)
    assert ridges.loc[0, "ridge FLOP/byte"] == pytest.approx(295.2, abs=0.1)


def test_ridge_frame_leaves_out_devices_without_the_dtype():
    h100, b200 = get_accelerator("h100-sxm"), get_accelerator("b200")
    assert h100.fp4_flops_per_s is None and b200.fp4_flops_per_s is not None
    assert list(hardware_data.ridge_frame([h100, b200], "fp4")["id"]) == ["b200"]


def test_decode_intensity_is_about_one_flop_per_byte_at_batch_one(llama8b):
    # Batch-1 decode reads every bf16 weight (2 bytes) once for one multiply-add (2 FLOPs):
    # intensity ~1 FLOP/byte; a batch of 32 at a 1-token context reuses each weight 32 times.
    h100 = get_accelerator("h100-sxm")
    one = hardware_data.phase_intensity_frame(
        llama8b, h100, prompt_tokens=2048, decode_batch=1, context_tokens=1
    )
    many = hardware_data.phase_intensity_frame(
        llama8b, h100, prompt_tokens=2048, decode_batch=32, context_tokens=1
    )
    decode_one = one.loc[1, "intensity FLOP/byte"]
    assert 0.9 < decode_one < 1.05
    assert many.loc[1, "intensity FLOP/byte"] == pytest.approx(32 * decode_one, rel=0.1)
    # FLOPs of batch-1 decode: the 2N rule over the model's matrices (ModelSpec count).
    assert one.loc[1, "FLOP"] == pytest.approx(
        llama8b.linear_flops_per_token() + llama8b.attention_flops_per_token(1), rel=0.01
    )


def test_intensity_does_not_depend_on_the_device(llama8b):
    frames = [
        hardware_data.phase_intensity_frame(
            llama8b, get_accelerator(d), prompt_tokens=512, decode_batch=8, context_tokens=4096
        )
        for d in ("h100-sxm", "l4", "mi300x")
    ]
    for frame in frames[1:]:
        pd.testing.assert_frame_equal(frame, frames[0])


def test_bound_table_puts_prefill_above_and_decode_below_the_h100_ridge(llama8b):
    h100 = get_accelerator("h100-sxm")
    phases = hardware_data.phase_intensity_frame(
        llama8b, h100, prompt_tokens=2048, decode_batch=1, context_tokens=2048
    )
    table = hardware_data.bound_table(phases, hardware_data.ridge_frame([h100]))
    assert list(table["bound"]) == ["compute", "memory"]
    # Memory-bound attainable rate = intensity × bandwidth; compute-bound = peak.
    decode_i = phases.loc[1, "intensity FLOP/byte"]
    assert table.loc[1, "attainable TFLOP/s"] == pytest.approx(decode_i * 3.35)
    assert table.loc[0, "attainable TFLOP/s"] == pytest.approx(989.0)


def test_kv_curve_matches_the_per_token_formula(llama8b):
    # Llama-3.1-8B: 2 × 32 layers × 8 KV heads × 128 dims × 2 bytes = 128 KiB per token.
    curve = hardware_data.kv_curve_frame([llama8b], ["fp16", "fp8"], points=5)
    fp16 = curve[curve["kv dtype"] == "fp16"].set_index("context tokens")["KV GB"]
    assert fp16.loc[llama8b.max_context_tokens] == pytest.approx(
        llama8b.max_context_tokens * 128 * KIB / 1e9
    )
    fp8 = curve[curve["kv dtype"] == "fp8"].set_index("context tokens")["KV GB"]
    assert np.allclose(fp8.to_numpy() * 2, fp16.to_numpy())


def test_catalog_frames_convert_units():
    frame = hardware_data.accelerator_frame([get_accelerator("h100-sxm")])
    row = frame.iloc[0]
    assert row["HBM GB"] == pytest.approx(80.0)
    assert row["HBM TB/s"] == pytest.approx(3.35)
    assert row["BF16 TFLOP/s"] == pytest.approx(989.0)
    assert np.isnan(row["FP4 TFLOP/s"])


def test_roofline_figure_follows_min_of_peak_and_bandwidth():
    ridges = pd.DataFrame(
        [{"id": "toy", "peak FLOP/s": 100e12, "memory bytes/s": 1e12, "ridge FLOP/byte": 100.0}]
    )
    phases = pd.DataFrame([{"phase": "decode", "intensity FLOP/byte": 2.0}])
    fig = figures.roofline_figure(ridges, phases)
    line = fig.data[0]
    x, y = np.asarray(line.x), np.asarray(line.y)
    assert np.allclose(y[x < 100], x[x < 100] * 1.0)  # 1 TB/s × I, in TFLOP/s
    assert np.allclose(y[x > 100], 100.0)
    assert fig.data[1].x == (100.0,) and fig.data[1].y == (100.0,)
    assert [s.x0 for s in fig.layout.shapes] == [2.0]
    assert "FLOP/byte" in fig.layout.xaxis.title.text
    assert "TFLOP/s" in fig.layout.yaxis.title.text


def test_kv_bytes_figure_one_line_per_model_and_dtype(llama8b):
    curve = hardware_data.kv_curve_frame([llama8b, get_model("llama-3.1-70b")], ["fp16", "fp8"], 4)
    fig = figures.kv_bytes_figure(curve, capacity_gb=80.0)
    assert len(fig.data) == 4
    assert fig.layout.shapes[0].y0 == 80.0
    assert fig.layout.yaxis.title.text == "KV cache (GB)"


def test_arrivals_figure_counts_requests_per_window():
    arrivals = pd.Series([10.0, 10.5, 11.2, 13.9])
    fig = figures.arrivals_figure(arrivals, window_s=1.0)
    assert list(fig.data[0].x) == [0.0, 1.0, 2.0, 3.0]
    assert list(fig.data[0].y) == [2.0, 1.0, 0.0, 1.0]
    half = figures.arrivals_figure(arrivals, window_s=2.0)
    assert list(half.data[0].y) == [1.5, 0.5]  # 3 then 1 request per 2 s


def test_length_histograms_count_every_request():
    requests = pd.DataFrame({"prompt_tokens": [1, 10, 100, 1000], "output_tokens": [5, 5, 7, 9]})
    fig = figures.length_histogram_figure(requests)
    assert [sum(trace.y) for trace in fig.data] == [4, 4]
    assert figures.length_scatter_figure(requests, max_points=2).data[0].x.tolist() == [1, 100]


def _requests(ttft: list[float]) -> pd.DataFrame:
    n = len(ttft)
    return pd.DataFrame(
        {
            "status": ["finished"] * n,
            "ttft_s": ttft,
            "tpot_s": [0.01] * n,
            "e2e_s": [1.0] * n,
        }
    )


def test_slo_lines_land_on_their_panels():
    cdfs = run_figures.latency_cdfs(_requests([0.1, 0.2, 0.3]))
    fig = figures.with_slo_lines(cdfs, {"ttft": 0.25, "e2e": 2.0})
    vlines = [s for s in fig.layout.shapes if s.x0 == s.x1]
    assert sorted((s.xref, s.x0) for s in vlines) == [("x", 0.25), ("x3", 2.0)]
    assert sum(1 for s in fig.layout.shapes if s.y0 == s.y1 == 0.9) == 3
    assert len(cdfs.layout.shapes) == 0  # the input figure is not modified


def test_overlay_baseline_adds_dashed_traces_on_the_same_axes():
    current = run_figures.latency_cdfs(_requests([0.1, 0.2]))
    baseline = run_figures.latency_cdfs(_requests([0.3, 0.4]))
    fig = figures.overlay_baseline(current, baseline)
    assert len(fig.data) == 6
    assert [t.name for t in fig.data] == ["current"] * 3 + ["baseline"] * 3
    assert [t.xaxis for t in fig.data[3:]] == [t.xaxis for t in fig.data[:3]]
    assert all(t.line.dash == "dash" for t in fig.data[3:])


def test_host_tier_line_in_gib():
    kv = go.Figure(go.Scatter(x=[0, 1], y=[0, 1]))
    host = pd.DataFrame({"time_s": [0.0, 1.0], "kv_blocks": [0, 4], "kv_bytes": [0.0, 2.0**31]})
    fig = figures.with_host_tier(kv, host)
    assert list(fig.data[1].y) == [0.0, 2.0]
    assert fig.data[0].name == "device (HBM)"


def test_host_kv_frame_none_without_host_blocks():
    steps = pd.DataFrame(
        {"replica": [0, 0], "end_s": [1.0, 2.0], "kv_blocks_used": [3, 5], "kv_blocks_host": [0, 0]}
    )
    assert run_data.host_kv_frame(steps, 10.0) is None
    steps["kv_blocks_host"] = [2, 1]
    host = run_data.host_kv_frame(steps, 10.0)
    assert list(host["kv_bytes"]) == [20.0, 10.0]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.04333, "43.33 ms"), (2.6461, "2.646 s"), (2.5e-4, "250 µs"), (None, "—")],
)
def test_format_seconds(seconds, text):
    assert run_data.format_seconds(seconds) == text


def test_percentile_table_in_ms_against_slo():
    summary = {
        f"{m}_p{q}_s": v
        for m in ("ttft", "tpot", "e2e")
        for q, v in ((50, 0.1), (90, 0.2), (99, 0.4))
    }
    table = run_data.percentile_table(summary, {"ttft_p90_s": 0.15, "e2e_p90_s": 0.5})
    assert table.loc[0, "p90 (ms)"] == pytest.approx(200.0)
    assert list(table["p90 meets SLO"]) == [False, None, True]


def test_comparison_table_relative_change_and_direction():
    base = {"ttft_p90_s": 0.2, "throughput_tok_per_s": 1000.0}
    new = {"ttft_p90_s": 0.1, "throughput_tok_per_s": 900.0}
    table = run_data.comparison_table(new, base).set_index("metric")
    assert table.loc["TTFT p90 (s)", "change"] == pytest.approx(-0.5)
    assert table.loc["TTFT p90 (s)", "better"]  # lower latency is better
    assert table.loc["output throughput (tokens/s)", "change"] == pytest.approx(-0.1)
    assert not table.loc["output throughput (tokens/s)", "better"]


def test_trace_tables_from_stats():
    from workloads.stats import trace_stats

    workload = Workload(
        arrival_s=np.array([0.0, 1.0, 2.0, 4.0]),
        prompt_tokens=np.array([10, 20, 30, 40]),
        output_tokens=np.array([1, 2, 3, 4]),
    )
    stats = trace_stats(workload)
    head = trace_data.headline(stats)
    assert head["requests"] == "4"
    assert head["mean rate"] == "1 req/s"  # 4 requests over 4 s
    tokens = trace_data.token_table(stats).set_index("length (tokens)")
    assert tokens.loc["prompt", "p50"] == 25.0
    assert list(trace_data.burstiness_table(stats)["window"]) == ["1s", "10s", "60s"]
    assert trace_data.arrival_window_s(3600.0) == 10.0
    assert trace_data.arrival_window_s(100.0) == 1.0


def _plans() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "accelerator": ["h100-sxm", "l40s", "a100-80gb-sxm"],
            "TP": [1, 1, 2],
            "replicas": [1, 4, 1],
            "KV strategy": ["fp8", "fp16", "fp16"],
            "USD/h": [4.9, 7.8, 5.0],
            "ttft_p90_s": [0.3, 0.2, 0.5],
            "Pareto": [True, True, False],
        }
    )


def test_plan_pareto_figure_stars_the_planners_set_in_cost_order():
    fig = figures.plan_pareto_figure(_plans(), "ttft_p90_s", "ttft_p90_s (s)")
    assert [t.name for t in fig.data] == ["fp8", "fp16", "Pareto set"]
    front = fig.data[-1]
    assert list(front.x) == [4.9, 7.8] and list(front.y) == [0.3, 0.2]
    assert list(front.text) == ["h100-sxm tp=1 × 1", "l40s tp=1 × 4"]
    assert fig.layout.xaxis.title.text == "fleet cost (USD/h)"
    assert fig.layout.yaxis.title.text == "ttft_p90_s (s)"


def _strategies() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "strategy": ["fp16", "fp8", "h2o"],
            "KV per request (MB)": [176.0, 88.0, 40.0],
            "output tokens/s": [1300.0, 1310.0, 1320.0],
            "TTFT p90 (s)": [0.035, 0.034, 0.033],
            "TPOT p90 (s)": [0.0076, 0.0071, 0.0070],
            "quality retained": [1.0, 0.98, None],
            "Pareto": [True, True, False],
        }
    )


def test_policy_bars_in_four_panels_with_latency_in_ms():
    fig = figures.policy_bars_figure(_strategies())
    assert [a.text for a in fig.layout.annotations] == [p[1] for p in figures.POLICY_PANELS]
    assert list(fig.data[0].y) == [176.0, 88.0, 40.0]
    assert list(fig.data[3].y) == pytest.approx([7.6, 7.1, 7.0])  # TPOT p90 in ms
    assert [t.xaxis for t in fig.data] == ["x", "x2", "x3", "x4"]


def test_policy_pareto_figure_places_only_known_quality():
    fig = figures.policy_pareto_figure(_strategies(), "KV per request (MB)", "KV per request (MB)")
    assert list(fig.data[0].text) == ["fp16", "fp8"]  # h2o's quality is unknown
    assert list(fig.data[1].x) == [88.0, 176.0]  # Pareto set in order of x
    assert "h2o" in fig.layout.annotations[0].text
    assert fig.layout.yaxis.title.text == "quality retained (fraction of full KV)"
