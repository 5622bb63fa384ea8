"""Engine speed and memory: simulated requests per wall-second and peak RSS.

Cases (each in a fresh subprocess, so peak memory is the case's own, read from the child's
``VmHWM`` in ``/proc/self/status``, falling back to ``ru_maxrss``):

* ``azure-conv``: the Azure LLM inference 2023 conversation trace (19,366 requests, 58 min)
  replayed on llama-2-70b, a100-80gb-sxm, TP 2, 6 replicas, round robin. Target on the
  2-core development machine: under 3 s wall and 400 MB peak RSS (a Python peer simulator
  needs about 67 s and 1.2 GB for it).
* ``synthetic-10k`` / ``-100k`` / ``-1m``: the built-in default chat workload (Poisson,
  lognormal lengths after the Azure conversation medians) on 4 × llama-3.1-8b / h100-sxm
  replicas at 24 req/s, prefix caching off. Memory should stay O(active requests) plus the
  compact records (~70 B per request, ~96 B per step row).

Run ``python bench/bench_engine.py [case ...]`` or ``make bench``. Wall times are for
``run_scenario`` (workload load or generation, simulation, DataFrames and summary); the
process's own start-up and imports are printed separately.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AZURE_TRACE = Path("data") / "traces" / "azure2023" / "AzureLLMInferenceTrace_conv.csv"
SYNTHETIC = {"synthetic-10k": 10_000, "synthetic-100k": 100_000, "synthetic-1m": 1_000_000}
CASES = ("azure-conv", *SYNTHETIC)


def _shared_dir() -> Path | None:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from conftest import _find_shared
    finally:
        sys.path.pop(0)
    return _find_shared()


def _scenario(case: str):
    from sim.scenario import Scenario, load_scenario
    from sim.scenarios import builtin_path

    if case == "azure-conv":
        shared = _shared_dir()
        if shared is None:
            return None
        return Scenario.from_dict(
            {
                "seed": 1,
                "name": "azure-conv replay",
                "model": {"name": "llama-2-70b"},
                "hardware": {"accelerator": "a100-80gb-sxm", "tp": 2, "replicas": 6},
                "workload": {"trace": str(shared / AZURE_TRACE)},
                "scheduler": {"max_num_seqs": 128},
                "slo": {"ttft_p90_s": 2.0, "tpot_p90_s": 0.2},
            }
        )
    return load_scenario(
        builtin_path(),
        [
            f"workload.synthetic.requests={SYNTHETIC[case]}",
            "workload.synthetic.rate_per_s=24.0",
            "hardware.replicas=4",
            "policies.prefix_cache.enabled=false",
        ],
    )


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(case: str) -> dict:
    """Run one case in this process and return its figures."""
    started = time.perf_counter()
    from sim.run import run_scenario

    scenario = _scenario(case)
    if scenario is None:
        return {"case": case, "skipped": "shared data (Azure trace) not found"}
    ready = time.perf_counter()
    result = run_scenario(scenario)
    wall = time.perf_counter() - ready
    summary = result.summary
    return {
        "case": case,
        "requests": len(result.requests),
        "completed": summary["requests_completed"],
        "rejected": summary["requests_rejected"],
        "model_steps": summary["steps"],
        "step_rows": summary["step_rows"],
        "simulated_s": summary["makespan_s"],
        "wall_s": wall,
        "startup_s": ready - started,
        "peak_rss_mb": _peak_rss_mb(),
    }


def main(cases: list[str] | None = None) -> None:
    selected = cases or list(CASES)
    print(
        f"{'case':<16} {'requests':>9} {'steps':>10} {'rows':>9} {'wall s':>8} "
        f"{'req/wall-s':>11} {'sim s/wall-s':>12} {'peak MB':>8} {'startup s':>9}"
    )
    for case in selected:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", case],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if proc.returncode != 0:
            print(f"{case:<16} FAILED: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        if "skipped" in row:
            print(f"{case:<16} skipped: {row['skipped']}", flush=True)
            continue
        print(
            f"{case:<16} {row['requests']:>9,} {row['model_steps']:>10,} {row['step_rows']:>9,} "
            f"{row['wall_s']:>8.2f} {row['requests'] / row['wall_s']:>11,.0f} "
            f"{row['simulated_s'] / row['wall_s']:>12,.0f} {row['peak_rss_mb']:>8.0f} "
            f"{row['startup_s']:>9.2f}",
            flush=True,
        )
        if case == "azure-conv":
            verdict = "met" if row["wall_s"] < 3 and row["peak_rss_mb"] < 400 else "NOT met"
            print(
                f"{'':<16} target < 3 s and < 400 MB: {verdict} "
                f"(completed {row['completed']:,}, rejected {row['rejected']:,} over "
                "max_model_len; a Python peer simulator: ~67 s, ~1.2 GB)",
                flush=True,
            )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
    else:
        main(sys.argv[1:])
