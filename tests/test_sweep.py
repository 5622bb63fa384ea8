"""Parameter sweeps (:mod:`sim.sweep`): point expansion, content hashes, the parquet
dataset, failure isolation, resume after a kill, and Dask against a serial run.

Truths: the grid is a cartesian product (sizes multiply); equal resolved scenarios hash
equal and any change or another kvsim version changes the hash; a simulation is
deterministic for a seed, so a 2-worker Dask sweep and a serial sweep write equal results;
a sweep killed midway and rerun computes exactly the points without a result file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.scenario import apply_overrides
from sim.sweep import (
    content_hash,
    expand,
    load_sweep,
    read_results,
    resolve_points,
    run_sweep,
    toml_literal,
)

BASE = """
[base.scenario]
seed = 0
[base.scenario.model]
name = "llama-3.1-8b"
[base.scenario.hardware]
accelerator = "h100-sxm"
[base.scenario.workload.synthetic]
arrival = "poisson"
rate_per_s = 4.0
requests = {requests}
prompt_tokens = {{ dist = "lognormal", median = 256, sigma = 0.5 }}
output_tokens = {{ dist = "lognormal", median = 32, sigma = 0.5 }}
"""
#: Columns that differ between two runs of the same point (wall time).
TIMING = ["elapsed_s"]


def _write(tmp_path: Path, body: str, requests: int = 40) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(BASE.format(requests=requests) + textwrap.dedent(body), encoding="utf-8")
    return path


def _frame(out: Path) -> pd.DataFrame:
    return read_results(out).drop(columns=TIMING)


# ---- points and hashes -------------------------------------------------------------------------
def test_grid_is_a_cartesian_product_crossed_with_the_point_list() -> None:
    grid = {"hardware": {"tp": [1, 2]}, "workload.synthetic.rate_per_s": [1.0, 2.0, 4.0]}
    points = [{"policies.quantization.name": "fp8"}, {"seed": 3}]
    combos = expand(grid, points)
    assert len(combos) == 2 * 3 * 2
    assert combos[0] == (
        "hardware.tp=1",
        "workload.synthetic.rate_per_s=1.0",
        'policies.quantization.name="fp8"',
    )
    assert expand({}, []) == [()]
    assert expand({}, [{"a": {"b": 1}}]) == [("a.b=1",)]
    # A quoted dotted key keeps its table whole (replaces, does not merge).
    assert expand({}, [{"x.y": {"dist": "fixed", "value": 8}}]) == [
        ('x.y={ "dist" = "fixed", "value" = 8 }',)
    ]


values = st.recursive(
    st.none().filter(lambda _: False)
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(min_size=1, max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None)
@given(value=values)
def test_toml_literal_round_trips_through_apply_overrides(value) -> None:
    assert apply_overrides({}, [f"a.b={toml_literal(value)}"]) == {"a": {"b": value}}


def test_content_hash_is_of_the_resolved_scenario_and_the_version(tmp_path: Path) -> None:
    spec = load_sweep(
        _write(
            tmp_path,
            """
            [[points]]
            "hardware.tp" = 1
            [[points]]
            hardware.tp = 1
            scheduler.max_num_seqs = 256
            [[points]]
            "hardware.tp" = 2
            [output]
            dir = "out"
            """,
        )
    )
    first, same, other = resolve_points(spec)
    assert first.hash == same.hash  # tp=1 and the default max_num_seqs spelled out
    assert first.hash != other.hash
    assert len(first.hash) == 64
    assert content_hash(first.scenario, "0.1.0") != content_hash(first.scenario, "0.2.0")


# ---- running -----------------------------------------------------------------------------------
def test_failing_point_is_recorded_and_the_others_finish(tmp_path: Path) -> None:
    spec = load_sweep(
        _write(
            tmp_path,
            """
            [grid]
            "policies.quantization.name" = ["fp16", "int3", "fp8"]
            [output]
            dir = "out"
            """,
        )
    )
    outcome = run_sweep(spec, serial=True)
    assert outcome.points == 3 and len(outcome.computed) == 3 and len(outcome.failed) == 1
    frame = read_results(spec.output_dir)
    assert list(frame["status"]) == ["ok", "error", "ok"]
    assert "policies.quantization.name" in frame.loc[1, "error"]
    assert frame.loc[0, "requests_completed"] == 40
    assert not [p for p in Path(spec.output_dir).iterdir() if p.name.startswith(".")]
    again = run_sweep(spec, serial=True)
    assert again.computed == () and len(again.skipped) == 3
    assert run_sweep(spec, serial=True, retry_errors=True).computed == outcome.failed


SWEEP_GRID = """
[grid]
"hardware.tp" = [1, 2]
"workload.synthetic.rate_per_s" = [2.0, 8.0]
"seed" = [0, 1]
[output]
dir = "{out}"
"""


def test_dask_sweep_on_two_workers_equals_a_serial_run(tmp_path: Path) -> None:
    spec = load_sweep(_write(tmp_path, SWEEP_GRID.format(out="dask")))
    serial = load_sweep(_write(tmp_path, SWEEP_GRID.format(out="serial")))
    dask = run_sweep(spec, workers=2)
    assert len(dask.computed) == 8 and not dask.failed
    run_sweep(serial, serial=True)
    pd.testing.assert_frame_equal(_frame(Path(spec.output_dir)), _frame(Path(serial.output_dir)))


def test_killed_sweep_resumes_with_only_the_missing_points(tmp_path: Path) -> None:
    body = SWEEP_GRID.format(out="out").replace('"seed" = [0, 1]', '"seed" = [0, 1, 2]')
    path = _write(tmp_path, body, requests=400)
    spec = load_sweep(path)
    out = Path(spec.output_dir)
    code = (
        "import argparse, sys\n"
        "from sim.cli import sweep_cmd\n"
        "p = argparse.ArgumentParser(); sweep_cmd.register(p.add_subparsers())\n"
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, "sweep", str(path), "--workers", "2", "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("*.parquet"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the sweep, its cluster and its workers
        child.wait()
    landed = {p.stem: p.read_bytes() for p in out.glob("*.parquet")}
    assert 3 <= len(landed) < 12, "the sweep should be killed midway"
    outcome = run_sweep(spec, serial=True)
    everything = {p.hash for p in resolve_points(spec)}
    assert set(outcome.computed) == everything - set(landed)
    assert set(outcome.skipped) == set(landed)
    for name, data in landed.items():  # nothing finished was lost or rewritten
        assert (out / f"{name}.parquet").read_bytes() == data
    reference = load_sweep(path, output_dir=tmp_path / "reference")
    run_sweep(reference, serial=True)
    pd.testing.assert_frame_equal(_frame(out), _frame(Path(reference.output_dir)))
