"""``kvsim run``: the JSON summary, the files written by ``--out``, and user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sim.cli import main
from sim.scenario import load_scenario
from sim.scenarios import builtin_path

SMALL = ["--set", "workload.synthetic.requests=60"]

JSON_KEYS = {
    "requests_completed",
    "ttft_p50_s",
    "ttft_p90_s",
    "ttft_p99_s",
    "tpot_p50_s",
    "tpot_p90_s",
    "e2e_p90_s",
    "throughput_tok_per_s",
    "goodput_req_per_s",
    "prefix_hit_rate",
    "preemptions",
    "kv_peak_bytes",
    "usd_per_m_output_tokens",
}


def test_default_scenario_is_a_real_model_on_a_real_gpu() -> None:
    scenario = load_scenario(builtin_path())
    assert scenario.model.name == "llama-3.1-8b"
    assert scenario.hardware.accelerator == "h100-sxm"
    assert scenario.prefix_caching == "hash"


def test_json_prints_one_object_with_the_documented_keys(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--json", *SMALL]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert set(summary) >= JSON_KEYS
    assert summary["requests_completed"] == 60
    assert summary["prefix_hit_rate"] > 0  # the default shares a 512-token system prompt
    assert err == ""  # no progress bar off a terminal, no messages


def test_table_output(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "TTFT p90" in out and "requests completed         60" in out


def test_out_writes_parquet_summary_and_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["run", *SMALL, "--out", str(out), "--json"]) == 0
    requests = pd.read_parquet(out / "requests.parquet")
    steps = pd.read_parquet(out / "steps.parquet")
    assert len(requests) == 60 and (requests["status"] == "finished").all()
    assert steps["steps"].sum() > 0
    assert json.loads((out / "summary.json").read_text())["requests_completed"] == 60
    report = (out / "report.html").read_text()
    for title in ("Latency CDFs", "KV memory over time", "Batch size over time"):
        assert title in report
    assert not list(out.glob(".*.tmp"))


def test_bad_scenario_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[model]\nname = "llama-3.1-8b"\n[hardware]\naccelerator = "h100-sxm"\n')
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"kvsim: error: {path}: workload: missing required section")
    assert main(["run", "--set", "hardware.tp"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
