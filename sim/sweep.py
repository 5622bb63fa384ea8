"""Parameter sweeps: many scenario variants run in parallel, each result kept on disk.

A sweep file (TOML, documented in ``docs/planning.md`` §Sweeps) names a base scenario and the
overrides of each point: a ``[grid]`` of ``"a.b" = [v1, v2, ...]`` keys (their cartesian
product) and/or a list of ``[[points]]`` tables (crossed with the grid when both are given).
Each point is the base with its overrides applied through :func:`sim.scenario.apply_overrides`
(the path of ``kvsim run --set``), validated, and keyed by its **content hash**: the sha256 of
the canonical JSON (sorted keys) of the resolved scenario dict together with the kvsim
version. Two points that resolve to the same scenario share one hash and run once.

Results land in a parquet dataset as they finish, one file per point, ``<hash>.parquet``
(written to a temporary name, then renamed), holding the point's overrides, its summary
metrics (:func:`sim.metrics.summarize`), a status (``ok`` or ``error``) and the error text.
Rerunning a sweep skips every hash already present, so an interrupted sweep resumes without
redoing finished points and loses nothing. A failing point is recorded with its error and
does not stop the others.

Points run on a Dask cluster (:mod:`distributed`): a ``LocalCluster`` sized to the machine by
default, an existing scheduler with ``scheduler="tcp://host:port"``, or in this process with
``serial=True``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import json
import os
import time
import tomllib
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from hardware.errors import KvsimError
from hardware.toml_write import value as toml_literal
from sim.scenario import Scenario, apply_overrides

#: Columns every result file has besides the summary metrics.
META_COLUMNS = ("hash", "index", "overrides", "status", "error", "kvsim_version", "elapsed_s")
STATUSES = ("ok", "error")
_SWEEP_KEYS = ("base", "grid", "points", "output")


def kvsim_version() -> str:
    """The installed kvsim version; part of every content hash, so results of another
    version are not mistaken for this one's."""
    try:
        return importlib.metadata.version("kvsim")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def content_hash(scenario_dict: Mapping[str, Any], version: str | None = None) -> str:
    """sha256 (hex) of the canonical JSON of ``scenario_dict`` (sorted keys, no spaces)
    followed by the kvsim version."""
    text = json.dumps(scenario_dict, sort_keys=True, separators=(",", ":"), allow_nan=False)
    digest = hashlib.sha256(text.encode("utf-8"))
    digest.update(b"\0kvsim=" + (version or kvsim_version()).encode("utf-8"))
    return digest.hexdigest()


# ---- the sweep file ----------------------------------------------------------------------
@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep: the base scenario dict (relative paths resolve against ``base_dir``),
    the override list of each point (``"a.b=c"`` strings, in file order) and the output
    folder."""

    base: Mapping[str, Any]
    base_dir: str | None
    points: tuple[tuple[str, ...], ...]
    output_dir: str
    source: str = "sweep"


def load_sweep(path: str | Path, output_dir: str | Path | None = None) -> SweepSpec:
    """Read a sweep TOML file. ``[base] scenario`` and ``[output] dir`` are relative to the
    sweep file; ``output_dir`` replaces ``[output] dir``."""
    path = Path(path)
    source = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KvsimError("sweep file not found", source=source) from None
    except tomllib.TOMLDecodeError as err:
        raise KvsimError(f"malformed TOML: {err}", source=source) from None
    here = path.resolve().parent
    for key in data:
        if key not in _SWEEP_KEYS:
            raise KvsimError(
                f"unknown section; expected {', '.join(_SWEEP_KEYS)}", source=source, field=key
            )
    base, base_dir = _base(data.get("base"), here, source)
    grid = _table(data.get("grid", {}), "grid", source)
    points = data.get("points", [])
    if not isinstance(points, list) or not all(isinstance(p, Mapping) for p in points):
        raise KvsimError("must be an array of tables ([[points]])", source=source, field="points")
    output = _table(data.get("output", {}), "output", source)
    for key in output:
        if key != "dir":
            raise KvsimError("unknown key; expected dir", source=source, field=f"output.{key}")
    if output_dir is None:
        if "dir" not in output:
            raise KvsimError(
                "is required (or pass an output folder)", source=source, field="output.dir"
            )
        output_dir = here / str(output["dir"])
    return SweepSpec(
        base=base,
        base_dir=str(base_dir),
        points=tuple(expand(grid, points, source)),
        output_dir=str(Path(output_dir).resolve()),
        source=source,
    )


def _table(value: Any, name: str, source: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise KvsimError(f"must be a table, got {type(value).__name__}", source=source, field=name)
    return value


def _base(value: Any, here: Path, source: str) -> tuple[dict[str, Any], Path]:
    base = _table(value, "base", source) if value is not None else {}
    for key in base:
        if key != "scenario":
            raise KvsimError("unknown key; expected scenario", source=source, field=f"base.{key}")
    scenario = base.get("scenario")
    if isinstance(scenario, str):
        file = (here / scenario).resolve()
        try:
            return tomllib.loads(file.read_text(encoding="utf-8")), file.parent
        except FileNotFoundError:
            raise KvsimError(
                f"scenario file not found: {file}", source=source, field="base.scenario"
            ) from None
        except tomllib.TOMLDecodeError as err:
            raise KvsimError(
                f"{file}: malformed TOML: {err}", source=source, field="base.scenario"
            ) from None
    if isinstance(scenario, Mapping):
        return dict(scenario), here
    raise KvsimError(
        'give scenario = "path.toml" or an inline [base.scenario] table',
        source=source,
        field="base.scenario",
    )


def _flatten(table: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted keys of a grid or point table. ``"a.b" = 1`` and ``a.b = 1`` (a nested table)
    both give ``("a.b", 1)``: a table under a key without a dot is walked into, while a
    quoted dotted key keeps its value whole, so ``"x.y" = { ... }`` replaces table ``x.y``."""
    for key, value in table.items():
        if isinstance(value, Mapping) and "." not in key:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def expand(
    grid: Mapping[str, Any], points: Iterable[Mapping[str, Any]], source: str = "sweep"
) -> list[tuple[str, ...]]:
    """Override lists of every point: the cartesian product of the grid's value lists (keys
    in file order, the last varying fastest), crossed with each ``[[points]]`` table (the
    point's keys after the grid's). With neither, the single point is the base itself."""
    axes: list[list[str]] = []
    for key, values in _flatten(grid):
        if not isinstance(values, list) or not values:
            raise KvsimError(
                "must be a non-empty array of values", source=source, field=f"grid.{key}"
            )
        axes.append([f"{key}={toml_literal(v)}" for v in values])
    combos = [tuple(c) for c in itertools.product(*axes)]
    extra = [tuple(f"{k}={toml_literal(v)}" for k, v in _flatten(p)) for p in points] or [()]
    return [combo + more for combo in combos for more in extra]


# ---- points --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepPoint:
    """One point: its position, overrides and content hash; ``scenario`` is the resolved
    scenario dict, or ``None`` with ``error`` set when the overrides do not validate."""

    index: int
    overrides: tuple[str, ...]
    hash: str
    scenario: Mapping[str, Any] | None
    base_dir: str | None
    source: str
    error: str = ""


def resolve_points(spec: SweepSpec) -> list[SweepPoint]:
    """Apply each point's overrides to the base and validate it. A point that does not
    validate keeps its error and is hashed by its unresolved dict."""
    version = kvsim_version()
    out = []
    for index, overrides in enumerate(spec.points):
        source = f"{spec.source} point {index}"
        try:
            data = apply_overrides(spec.base, overrides)
        except KvsimError as err:
            raw = {"base": spec.base, "overrides": list(overrides)}
            out.append(
                SweepPoint(
                    index,
                    overrides,
                    content_hash(raw, version),
                    None,
                    spec.base_dir,
                    source,
                    str(err),
                )
            )
            continue
        try:
            resolved = Scenario.from_dict(data, base_dir=spec.base_dir, source=source).to_dict()
        except KvsimError as err:
            point = SweepPoint(
                index, overrides, content_hash(data, version), None, spec.base_dir, source, str(err)
            )
        else:
            point = SweepPoint(
                index, overrides, content_hash(resolved, version), resolved, spec.base_dir, source
            )
        out.append(point)
    return out


def run_point(point: SweepPoint) -> dict[str, Any]:
    """Simulate one point and return its result record; any exception becomes an ``error``
    record (message and the last traceback line) instead of propagating."""
    from sim.run import run_scenario

    record: dict[str, Any] = {
        "hash": point.hash,
        "index": point.index,
        "overrides": json.dumps(list(point.overrides)),
        "status": "error",
        "error": point.error,
        "kvsim_version": kvsim_version(),
        "elapsed_s": 0.0,
    }
    if point.scenario is None:
        return record
    start = time.perf_counter()
    try:
        scenario = Scenario.from_dict(point.scenario, base_dir=point.base_dir, source=point.source)
        summary = run_scenario(scenario).summary
    except Exception as err:  # a failing point is recorded, never fatal to the sweep
        record["error"] = _error_text(err)
    else:
        record.update({k: v for k, v in summary.items() if k not in META_COLUMNS})
        record["status"] = "ok"
    record["elapsed_s"] = time.perf_counter() - start
    return record


def _error_text(err: BaseException) -> str:
    if isinstance(err, KvsimError):
        return str(err)
    where = traceback.extract_tb(err.__traceback__)
    place = f" ({Path(where[-1].filename).name}:{where[-1].lineno})" if where else ""
    return f"{type(err).__name__}: {err}{place}"


# ---- the dataset ---------------------------------------------------------------------------
def result_path(out_dir: str | Path, point_hash: str) -> Path:
    return Path(out_dir) / f"{point_hash}.parquet"


def write_record(record: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write one record as ``<hash>.parquet`` atomically (temporary name, then rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = result_path(out_dir, record["hash"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(pa.Table.from_pylist([dict(record)]), tmp)
    tmp.replace(path)
    return path


def finished_hashes(out_dir: str | Path, *, include_errors: bool = True) -> set[str]:
    """Hashes with a result file in ``out_dir`` (only ``ok`` ones unless ``include_errors``)."""
    folder = Path(out_dir)
    if not folder.is_dir():
        return set()
    found = {p.stem for p in folder.glob("*.parquet") if not p.name.startswith(".")}
    if include_errors:
        return found
    frame = read_results(folder, columns=["hash", "status"])
    return set(frame.loc[frame["status"] == "ok", "hash"]) if len(frame) else set()


def read_results(out_dir: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Every result file of ``out_dir`` as one DataFrame sorted by point index (error rows
    have no summary columns, so those are NaN there)."""
    import pyarrow.parquet as pq

    files = sorted(p for p in Path(out_dir).glob("*.parquet") if not p.name.startswith("."))
    if not files:
        return pd.DataFrame(columns=list(columns or META_COLUMNS))
    frames = [pq.read_table(p, columns=columns).to_pandas() for p in files]
    frame = pd.concat(frames, ignore_index=True)
    order = [c for c in ("index", "hash") if c in frame.columns]
    return frame.sort_values(order, kind="stable").reset_index(drop=True)


# ---- running ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepOutcome:
    """What one :func:`run_sweep` call did: how many points the sweep has, the hashes it
    skipped (already on disk), computed now, and of those the ones that failed."""

    output_dir: str
    points: int
    skipped: tuple[str, ...]
    computed: tuple[str, ...]
    failed: tuple[str, ...]


def run_sweep(
    spec: SweepSpec,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    serial: bool = False,
    retry_errors: bool = False,
    progress: Callable[[int], None] | None = None,
) -> SweepOutcome:
    """Run every point of ``spec`` whose hash has no result yet, writing each result as it
    finishes. ``serial`` runs them here, in order; otherwise on the Dask scheduler at
    ``scheduler`` or on a new ``LocalCluster`` of ``workers`` single-threaded processes
    (default: one per CPU). ``retry_errors`` reruns points recorded as errors.
    ``progress(n)`` is called as ``n`` more points land."""
    out_dir = Path(spec.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".*.parquet.*.tmp"):
        stale.unlink(missing_ok=True)
    points = resolve_points(spec)
    done = finished_hashes(out_dir, include_errors=not retry_errors)
    todo: dict[str, SweepPoint] = {}
    for point in points:
        if point.hash not in done:
            todo.setdefault(point.hash, point)
    skipped = tuple(sorted({p.hash for p in points} - set(todo)))
    computed: list[str] = []
    failed: list[str] = []

    def land(record: Mapping[str, Any]) -> None:
        write_record(record, out_dir)
        computed.append(record["hash"])
        if record["status"] != "ok":
            failed.append(record["hash"])
        if progress is not None:
            progress(1)

    if serial:
        for point in todo.values():
            land(run_point(point))
    elif todo:
        _run_dask(list(todo.values()), land, scheduler, workers)
    return SweepOutcome(str(out_dir), len(points), skipped, tuple(computed), tuple(failed))


def _run_dask(
    points: list[SweepPoint],
    land: Callable[[Mapping[str, Any]], None],
    scheduler: str | None,
    workers: int | None,
) -> None:
    import logging

    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=workers or os.cpu_count() or 1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as err:
            raise KvsimError(f"cannot reach Dask scheduler: {err}", field="--scheduler") from None
    try:
        futures = {
            client.submit(run_point, point, key=f"kvsim-point-{point.hash}", pure=False): point
            for point in points
        }
        for future in as_completed(futures):
            point = futures[future]
            try:
                record = future.result()
            except Exception as err:  # a lost worker: record it, keep going
                record = {
                    "hash": point.hash,
                    "index": point.index,
                    "overrides": json.dumps(list(point.overrides)),
                    "status": "error",
                    "error": _error_text(err),
                    "kvsim_version": kvsim_version(),
                    "elapsed_s": 0.0,
                }
            land(record)
            future.release()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
