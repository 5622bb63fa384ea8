"""End to end: the real dashboard server driven by headless Chromium through Playwright.

Loads What-if, changes the arrival rate, runs, waits for the charts, and checks that the
TTFT p90 on screen equals what ``kvsim run --json`` prints for the scenario in the page's URL
(the shared link). Saves a screenshot and prints its path and the click-to-charts time.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from app import run_data, state

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_dashboard.py"


def _driver():
    spec = importlib.util.spec_from_file_location("bench_dashboard", BENCH)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules.setdefault("bench_dashboard", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_whatif_in_a_real_browser_matches_kvsim_run(tmp_path):
    driver = _driver()
    reason = driver.missing_requirements()
    if reason is not None:
        pytest.skip(reason)
    with driver.dashboard_server() as url, driver.browser_page(tmp_path / "profile") as page:
        seen = driver.run_whatif(page, url, rate_per_s=6.0)
        screenshot = tmp_path / "whatif.png"
        page.screenshot(path=str(screenshot), full_page=True)
    print(f"\nscreenshot: {screenshot}")
    print(f"click Run -> charts drawn: {seen.click_to_charts_s:.2f} s")

    assert seen.query == {"workload.synthetic.rate_per_s": "6.0"}
    scenario_file = tmp_path / "scenario.toml"
    scenario_file.write_text(
        state.scenario_toml(state.from_query(seen.query, state.DEFAULT_SCENARIO))
    )
    cli = subprocess.run(
        [sys.executable, "-m", "sim", "run", str(scenario_file), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(cli.stdout)
    assert seen.ttft_p90_text == run_data.format_seconds(summary["ttft_p90_s"])
    assert screenshot.stat().st_size > 0
