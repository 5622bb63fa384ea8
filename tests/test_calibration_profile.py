"""Calibrated profiles, the steps CSV, the design and the validation plumbing.

Independent truths: the catalog's own parser (a written profile loads back with the fitted
values), the catalog's files and ids (never overwritten or shadowed), ``plan_memory`` (held-out
pools have exactly the requested blocks), and an invariant of the replay: with the cost model
standing in for the real executor, every step and every end-to-end metric has zero error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hardware.catalog import BUILTIN_CATALOG_DIR, get_accelerator, load_accelerator_file
from hardware.errors import KvsimError
from hardware.specs import Efficiency
from sim.calibration import (
    CPU_LIMITS,
    DECODE,
    FIT,
    GPU_LIMITS,
    HELD_OUT,
    MIXED,
    PREFILL,
    QUICK_LIMITS,
    CalibrationInfo,
    StepPoint,
    StepTiming,
    design_steps,
    fit_efficiency,
    held_out_scenarios,
    pool_fraction,
    predict_s,
    profile_on_path,
    profile_text,
    read_steps_csv,
    replay,
    step_errors,
    write_profile,
    write_steps_csv,
)
from sim.executor import CostModelExecutor
from sim.run import build_executor, resolve
from workloads.model_catalog import get_model

SMOL = get_model("smollm2-135m")
INFO = CalibrationInfo(
    date="2026-11-29",
    device="cpu",
    device_name="test cpu",
    model_id="smollm2-135m",
    dtype="bf16",
    threads=1,
    torch_version="test",
    repeats=5,
    warmup=1,
    weights="random (seed 0)",
    base="catalog l4",
    load_average=(0.5, 0.4, 0.3),
    clock="thread",
)


def _fit():
    device = get_accelerator("l4")
    points = [p for p in design_steps(QUICK_LIMITS) if p.split == FIT]
    batches = [p.batch_shape() for p in points]
    planted = Efficiency(gemm_fraction=0.4, attention_fraction=0.3, hbm_fraction=0.6)
    measured = predict_s(SMOL, device.with_efficiency(planted), batches)
    free = ("gemm_fraction", "hbm_fraction", "step_overhead_s")
    return device, points, fit_efficiency(SMOL, device, batches, measured, free=free)


# ---- profiles ---------------------------------------------------------------------------------
def test_written_profile_loads_back_with_the_fitted_values(tmp_path: Path) -> None:
    device, points, result = _fit()
    text = profile_text(
        device, result, [p.label for p in points], profile_id="l4-test-cal", info=INFO
    )
    path = write_profile(text, tmp_path / "sub" / "l4-test-cal.toml")
    loaded = load_accelerator_file(path)
    assert loaded.id == "l4-test-cal"
    assert loaded.bf16_flops_per_s == device.bf16_flops_per_s
    assert loaded.memory_bytes_per_s == device.memory_bytes_per_s
    for name in ("gemm_fraction", "hbm_fraction", "step_overhead_s"):
        assert getattr(loaded.efficiency, name) == pytest.approx(
            getattr(result.efficiency, name), rel=1e-3
        )
    assert "kvsim calibrate 2026-11-29" in loaded.efficiency.source
    # the header records the residual of every fitted step and the load
    for point in points:
        assert point.label in text
    assert "load average at start 0.50" in text and "thread clock" in text
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["l4-test-cal.toml"]


def test_calibration_never_overwrites_the_catalog(tmp_path: Path) -> None:
    device, points, result = _fit()
    labels = [p.label for p in points]
    inside = BUILTIN_CATALOG_DIR / "accelerators" / "l4-cal.toml"
    text = profile_text(device, result, labels, profile_id="l4-cal", info=INFO)
    with pytest.raises(KvsimError, match="built-in hardware catalog"):
        write_profile(text, inside)
    assert not inside.exists()
    shadow = profile_text(device, result, labels, profile_id="l4", info=INFO)
    with pytest.raises(KvsimError, match="already has an accelerator 'l4'"):
        write_profile(shadow, tmp_path / "l4.toml")
    existing = tmp_path / "mine.toml"
    existing.write_text("keep me")
    with pytest.raises(KvsimError, match="--force"):
        write_profile(text, existing)
    assert existing.read_text() == "keep me"
    write_profile(text, existing, force=True)
    assert load_accelerator_file(existing).id == "l4-cal"


def test_a_profile_the_parser_rejects_is_never_written(tmp_path: Path) -> None:
    device, points, result = _fit()
    text = profile_text(device, result, [p.label for p in points], profile_id="Bad Id", info=INFO)
    with pytest.raises(KvsimError):
        write_profile(text, tmp_path / "bad.toml")
    assert not list(tmp_path.iterdir())


# ---- steps CSV --------------------------------------------------------------------------------
def _timings() -> list[StepTiming]:
    points = design_steps(QUICK_LIMITS)
    return [
        StepTiming.from_times(p, [0.01 * (i + 1), 0.012 * (i + 1)]) for i, p in enumerate(points)
    ]


def test_steps_csv_round_trips(tmp_path: Path) -> None:
    timings = _timings()
    path = write_steps_csv(timings, tmp_path / "steps.csv")
    back = read_steps_csv(path)
    assert [t.point for t in back] == [t.point for t in timings]
    np.testing.assert_allclose([t.median_s for t in back], [t.median_s for t in timings], 1e-6)
    assert all(t.repeats == 2 for t in back)


@pytest.mark.parametrize(
    ("column", "value", "words"),
    [
        ("median_ms", "fast", "expected a number"),
        ("decode", "4y512", "expected items like"),
        ("split", "train", "expected 'fit'"),
        ("repeats", "2.5", "whole number"),
    ],
)
def test_bad_steps_csv_cells_name_line_and_column(
    tmp_path: Path, column: str, value: str, words: str
) -> None:
    import pandas as pd

    path = write_steps_csv(_timings(), tmp_path / "steps.csv")
    frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    row = int(np.flatnonzero(frame["decode"] != "")[0])
    frame.loc[row, column] = value
    frame.to_csv(path, index=False)
    with pytest.raises(KvsimError) as err:
        read_steps_csv(path)
    assert (err.value.source, err.value.line, err.value.field) == (str(path), row + 2, column)
    assert words in err.value.message


# ---- design -----------------------------------------------------------------------------------
@pytest.mark.parametrize("limits", [QUICK_LIMITS, CPU_LIMITS, GPU_LIMITS])
def test_design_spans_every_regime_and_holds_out_unseen_shapes(limits) -> None:
    points = design_steps(limits)
    fit = [p for p in points if p.split == FIT]
    held = [p for p in points if p.split == HELD_OUT]

    def shape(p: StepPoint) -> tuple:
        return p.prefill_tokens, p.prefill_context, p.decode_context

    assert not {shape(p) for p in held} & {shape(p) for p in fit}
    assert len({p.label for p in points}) == len(points)
    for split in (fit, held):
        assert {p.kind for p in split} == {PREFILL, DECODE, MIXED}
    assert max(p.max_context for p in points) <= limits.max_context
    biggest = max(points, key=lambda p: p.batch_shape().num_tokens)
    assert biggest.split == FIT  # held-out steps interpolate
    assert design_steps(limits) == points  # deterministic


def test_step_points_reject_impossible_shapes() -> None:
    with pytest.raises(KvsimError):
        StepPoint((8,), ())
    with pytest.raises(KvsimError):
        StepPoint()
    with pytest.raises(KvsimError):
        StepPoint(decode_context=(0,))
    assert StepPoint((64,), (32,), (128, 128)).label == "prefill 64@32 + decode 2x128"


# ---- validation plumbing ----------------------------------------------------------------------
@pytest.mark.parametrize(("device", "tokens"), [("l4", 4096), ("h100-sxm", 2048), ("a10g", 512)])
def test_pool_fraction_leaves_exactly_the_requested_pool(device: str, tokens: int) -> None:
    accelerator = get_accelerator(device)
    data = {"model": {"name": "smollm2-135m"}, "scheduler": {"max_batched_tokens": 512}}
    fraction = pool_fraction(SMOL, accelerator, data, tokens)
    from sim.cost import plan_memory

    plan = plan_memory(SMOL, accelerator, gpu_memory_fraction=fraction, max_batched_tokens=512)
    assert plan.max_kv_tokens == tokens


def test_step_errors_are_predicted_over_measured_minus_one() -> None:
    device = get_accelerator("l4")
    timings = _timings()
    frame = step_errors(timings, SMOL, device)
    expected = predict_s(SMOL, device, [t.point.batch_shape() for t in timings]) * 1e3
    np.testing.assert_allclose(frame["predicted_ms"], expected)
    np.testing.assert_allclose(frame["error"], expected / frame["measured_ms"] - 1)


def test_replay_with_the_cost_model_as_real_executor_has_zero_error(tmp_path: Path) -> None:
    device = get_accelerator("l4")
    profile = tmp_path / "l4-replay.toml"
    text = (BUILTIN_CATALOG_DIR / "accelerators" / "l4.toml").read_text()
    profile.write_text(text.replace('id = "l4"', 'id = "l4-replay"'))
    calibrated = load_accelerator_file(profile)
    with profile_on_path(profile):
        scenarios = held_out_scenarios(SMOL, calibrated)
        for scenario in scenarios:
            twin = build_executor(scenario, resolve(scenario))
            assert isinstance(twin, CostModelExecutor)
            result = replay(scenario, calibrated, real_executor=twin)
            assert len(result.steps) > 0
            assert result.steps["error"].abs().max() < 1e-12
            errors = result.metric_errors()
            assert np.nanmax(np.abs(errors["error"])) < 1e-9, scenario.name
            assert result.real.summary["requests_completed"] == len(result.real.requests)
    assert device.id == "l4"
    # outside the block the temporary profile is gone from the search path
    with pytest.raises(KvsimError):
        get_accelerator("l4-replay")


def test_validate_cli_reads_held_out_steps_from_a_steps_file(tmp_path: Path, capsys) -> None:
    import argparse
    import json

    from sim.calibration import mape_by_kind
    from sim.cli import validate_cmd

    profile = tmp_path / "l4-steps.toml"
    text = (BUILTIN_CATALOG_DIR / "accelerators" / "l4.toml").read_text()
    profile.write_text(text.replace('id = "l4"', 'id = "l4-steps"'))
    timings = _timings()
    steps = write_steps_csv(timings, tmp_path / "steps.csv")
    parser = argparse.ArgumentParser()
    validate_cmd.register(parser.add_subparsers())
    args = parser.parse_args(
        ["validate", "--profile", str(profile), "--steps", str(steps), "--no-e2e", "--json"]
    )
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    held = [t for t in timings if t.point.split == HELD_OUT]
    expected = mape_by_kind(step_errors(held, SMOL, load_accelerator_file(profile)))
    assert out["held_out_steps"]["mape"] == pytest.approx(expected)
    assert len(out["held_out_steps"]["rows"]) == len(held)
    assert Path(out["report"]) == tmp_path / "l4-steps.validation.html"
    assert "end_to_end" not in out
