"""A small real calibration on this CPU: the fitted parameters are physically sane.

No timing assertions (the machine is shared): only that a real run of ``kvsim calibrate``
times every designed step, writes a profile the catalog parser loads, and fits fractions in
(0, 1] and overheads >= 0 — the physical bounds, which hold whatever the load.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from hardware.catalog import load_accelerator_file
from hardware.errors import KvsimError
from sim.calibration import QUICK_LIMITS, design_steps, read_steps_csv
from sim.cli import calibrate_cmd

torch = pytest.importorskip("torch")


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    calibrate_cmd.register(parser.add_subparsers())
    return parser.parse_args(["calibrate", *argv])


def test_thread_clock_needs_one_cpu_thread() -> None:
    from sim.calibration import clock_function

    with pytest.raises(KvsimError, match="one torch thread"):
        clock_function("thread", "cuda")
    with pytest.raises(KvsimError, match="unknown clock"):
        clock_function("sundial", "cpu")


def test_calibrate_refuses_the_catalog_before_timing_anything(tmp_path: Path) -> None:
    from hardware.catalog import BUILTIN_CATALOG_DIR

    target = BUILTIN_CATALOG_DIR / "accelerators" / "cpu-cal.toml"
    args = _parse("--hardware", "l4", "--quick", "--out", str(target))
    with pytest.raises(KvsimError, match="built-in hardware catalog"):
        args.func(args)
    assert not target.exists()


@pytest.mark.slow
def test_quick_cpu_calibration_fits_sane_parameters(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cpu-cal.toml"
    threads = torch.get_num_threads()
    try:
        args = _parse("--quick", "--repeats", "2", "--out", str(out), "--json")
        assert args.func(args) == 0
    finally:
        torch.set_num_threads(threads)
    summary = json.loads(capsys.readouterr().out)
    profile = load_accelerator_file(out)
    eff = profile.efficiency
    for name in ("gemm_fraction", "attention_fraction", "hbm_fraction"):
        assert 0.0 < getattr(eff, name) <= 1.0, name
    assert eff.decode_attention_fraction is None or 0 < eff.decode_attention_fraction <= 1
    assert eff.step_overhead_s >= 0.0 and eff.layer_overhead_s >= 0.0
    base = load_accelerator_file(summary["base"])  # the probed peaks, kept for reuse
    assert base.id == "local-cpu" and profile.bf16_flops_per_s == base.bf16_flops_per_s
    steps = read_steps_csv(summary["steps"])
    assert [t.point for t in steps] == list(design_steps(QUICK_LIMITS))
    assert all(t.repeats == 2 and t.median_s > 0 for t in steps)
    assert summary["info"]["clock"] == "thread" and summary["info"]["threads"] == 1
    assert {"prefill", "decode"} <= set(summary["held_out_mape"])
    # the torch model packs steps as the cost model prices them, so mixed steps are fitted too
    assert {"prefill", "decode", "mixed"} <= set(summary["fit_mape"])
