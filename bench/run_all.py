"""Run every benchmark in ``bench/`` and print its figures (``make bench``).

Each ``bench/bench_*.py`` module exposes ``main()``, which prints its own figures. Benchmarks
are measurements, never pass/fail tests: this machine is shared and noisy, so compare ratios
measured side by side in one run rather than absolute times across runs.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(selected: list[str]) -> int:
    modules = sorted(HERE.glob("bench_*.py"))
    if selected:
        modules = [m for m in modules if any(s in m.stem for s in selected)]
    failures = 0
    for path in modules:
        print(f"\n=== {path.stem} ===", flush=True)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        assert spec.loader is not None
        start = time.perf_counter()
        try:
            spec.loader.exec_module(module)
            module.main()
        except Exception as err:  # a broken benchmark must not hide the others' figures
            failures += 1
            print(f"{path.stem} FAILED: {type(err).__name__}: {err}", flush=True)
        print(f"({path.stem} took {time.perf_counter() - start:.1f} s)", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
