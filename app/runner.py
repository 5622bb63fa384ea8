"""Runs for the dashboard: cached by scenario hash, with fractional progress, cancellable.

A run is deterministic in its scenario (same seed, same bytes out), so a result can be
served again for the same scenario dict and trace content (:func:`app.state.scenario_hash`).
The cache is a small thread-safe LRU shared by every session of one server (the page holds
it in ``st.cache_resource``). Cancelling is raising from the progress callback: Streamlit
interrupts a script at its next UI call when the user clicks a button (Cancel), and the
progress update is such a call; the exception unwinds the engine and nothing is cached.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from sim.run import RunResult, load_workload, resolve, run_scenario
from sim.scenario import Scenario

#: Progress callbacks fire at most every this many seconds (plus at 0 and at the end).
PROGRESS_INTERVAL_S = 0.1

T = TypeVar("T")


@dataclass
class RunCache(Generic[T]):
    """Most recently used results by key (a scenario or plan hash), at most ``maxsize``."""

    maxsize: int = 16
    _items: OrderedDict[str, T] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def get(self, key: str) -> T | None:
        with self._lock:
            result = self._items.get(key)
            if result is not None:
                self._items.move_to_end(key)
            return result

    def put(self, key: str, result: T) -> None:
        with self._lock:
            self._items[key] = result
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class _Progress:
    """Turns the engine's ``progress(n)`` increments into a fraction of ``total`` requests,
    reported to ``report`` at most every :data:`PROGRESS_INTERVAL_S`."""

    def __init__(self, total: int, report: Callable[[float], None]) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.report = report
        self.last = time.monotonic()
        report(0.0)

    def __call__(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= PROGRESS_INTERVAL_S:
            self.last = now
            self.report(min(self.done / self.total, 1.0))


def run_cached(
    scenario: Scenario,
    key: str,
    cache: RunCache[RunResult],
    progress: Callable[[float], None] | None = None,
) -> tuple[RunResult, bool]:
    """The result of ``scenario`` (hash ``key``) and whether it came from ``cache``.

    Resolves the hardware first, so a model that does not fit fails before any request is
    generated; ``progress(fraction)`` follows completed requests. Any exception (a
    :class:`~hardware.errors.KvsimError`, or the one Streamlit raises to cancel) leaves the
    cache unchanged.
    """
    cached = cache.get(key)
    if cached is not None:
        return cached, True
    resolved = resolve(scenario)
    workload = load_workload(scenario, resolved.max_model_len)
    tracker = _Progress(len(workload), progress) if progress is not None else None
    result = run_scenario(scenario, workload=workload, progress=tracker)
    if progress is not None:
        progress(1.0)
    cache.put(key, result)
    return result, False
