"""Dashboard in a real browser: time from clicking Run to the What-if charts being drawn.

Starts ``streamlit run app/main.py`` (the command ``kvsim dashboard`` runs) headless on a
free localhost port, drives headless Chromium with Playwright, changes one knob (the arrival
rate of the built-in 2,000-request scenario), clicks Run and waits until the latency CDFs,
KV memory and batch-size charts are drawn. Prints the click-to-charts time; the target is
under 3 s (reported, never asserted). ``tests/test_dashboard_e2e.py`` drives the same
functions and checks the numbers shown.

Needs Chromium at ``/usr/bin/chromium`` (Debian package ``chromium``) and the ``playwright``
Python package; ``playwright install`` is not needed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qsl, urlsplit

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: The What-if knob the run changes, and the value typed into it.
ARRIVAL_RATE_LABEL = "Arrival rate (requests/s)"
CHARTS = ("wi_cdf", "wi_kv", "wi_batch")


def missing_requirements() -> str | None:
    """Why the browser run cannot happen here, or None."""
    if not Path(CHROMIUM).is_file():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install playwright)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def dashboard_server(timeout_s: float = 90.0) -> Iterator[str]:
    """A headless dashboard server on a free port; yields its base URL, stops it after."""
    from sim.cli.dashboard_cmd import streamlit_command

    port = free_port()
    command = streamlit_command(
        [
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
            "--server.fileWatcherType",
            "none",
        ]
    )
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(server, log, url, timeout_s)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _wait_healthy(server: subprocess.Popen, log, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if server.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"dashboard exited early:\n{log.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"dashboard did not answer on {url} within {timeout_s} s")
        time.sleep(0.3)


@contextlib.contextmanager
def browser_page(profile_dir: str | os.PathLike[str]) -> Iterator[object]:
    """A Playwright page in headless Chromium with a fresh user-data dir."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile_dir),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1200},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


class WhatIfRun(NamedTuple):
    """What the browser saw: the page URL's query, the shown TTFT p90 text, the seconds
    from clicking Run to all three charts drawn, and when (seconds after the click) the
    progress bar appeared (``progress_shown``: the script reached the simulation) and went
    (``progress_gone``: the simulation finished); both are None for a cached run."""

    query: dict[str, str]
    ttft_p90_text: str
    click_to_charts_s: float
    progress_shown_s: float | None
    progress_gone_s: float | None


#: Records, in the page, when the progress bar first appears and then disappears.
_WATCH_PROGRESS = """() => {
  window.__kvsimMarks = {};
  const start = performance.now();
  const observer = new MutationObserver(() => {
    const marks = window.__kvsimMarks;
    const shown = document.querySelector('[data-testid="stProgress"]') !== null;
    if (shown && marks.shown === undefined) marks.shown = (performance.now() - start) / 1000;
    if (!shown && marks.shown !== undefined && marks.gone === undefined) {
      marks.gone = (performance.now() - start) / 1000;
    }
  });
  observer.observe(document.body, {subtree: true, childList: true});
}"""


def run_whatif(page, base_url: str, rate_per_s: float, timeout_s: float = 120.0) -> WhatIfRun:
    """Open What-if, type ``rate_per_s`` into the arrival-rate knob, click Run, wait for the
    charts, and read the TTFT p90 metric."""
    timeout_ms = timeout_s * 1000
    page.goto(base_url, timeout=timeout_ms)  # What-if is the default page, served at "/"
    knob = page.get_by_label(ARRIVAL_RATE_LABEL)
    knob.wait_for(timeout=timeout_ms)
    knob.fill(f"{rate_per_s:g}")
    knob.press("Enter")
    page.wait_for_url(f"**rate_per_s={rate_per_s}**", timeout=timeout_ms)
    run_button = page.locator(".st-key-wi_run button")
    run_button.wait_for(timeout=timeout_ms)
    page.evaluate(_WATCH_PROGRESS)
    start = time.perf_counter()
    run_button.click()
    for key in CHARTS:
        page.locator(f".st-key-{key} .main-svg").first.wait_for(timeout=timeout_ms)
    elapsed = time.perf_counter() - start
    marks = page.evaluate("() => window.__kvsimMarks")
    metric = page.locator('[data-testid="stMetric"]', has_text="TTFT p90")
    value = metric.locator('[data-testid="stMetricValue"]').inner_text(timeout=timeout_ms)
    query = dict(parse_qsl(urlsplit(page.url).query, keep_blank_values=True))
    return WhatIfRun(query, value.strip(), elapsed, marks.get("shown"), marks.get("gone"))


def main() -> None:
    reason = missing_requirements()
    if reason is not None:
        print(f"skipped: {reason}")
        return
    with (
        tempfile.TemporaryDirectory() as profile,
        dashboard_server() as url,
        browser_page(profile) as page,
    ):
        runs = [run_whatif(page, url, rate) for rate in (6.0, 7.0, 6.0)]
    print("What-if, built-in 2,000-request scenario, click Run -> 3 charts drawn (target < 3 s):")
    for run, label in zip(
        runs, ("6 req/s, first run", "7 req/s, first run", "6 req/s, cached"), strict=True
    ):
        line = f"  arrival rate {label:<18}: {run.click_to_charts_s:.2f} s"
        if run.progress_shown_s is not None and run.progress_gone_s is not None:
            line += (
                f"  (click -> simulating {run.progress_shown_s:.2f} s, simulation "
                f"{run.progress_gone_s - run.progress_shown_s:.2f} s, done -> charts "
                f"{run.click_to_charts_s - run.progress_gone_s:.2f} s)"
            )
        print(line)


if __name__ == "__main__":
    sys.exit(main())
