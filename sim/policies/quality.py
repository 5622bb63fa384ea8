"""Quality of lossy KV policies, looked up — never estimated.

Entries come from ``quality_table.toml`` beside this module (published figures with their
paper, benchmark and figure) and from what the real-execution harness measured (``kvsim
quality``, written by :func:`write_measured` below a marker line, with a run id). An entry
names every parameter of its policy (parameters left unset, ``None``, are omitted: TOML has
no null) and matches only a policy with exactly those parameters on exactly that model id;
anything else is "unknown".
"""

from __future__ import annotations

import functools
import os
import tempfile
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardware import toml_write
from hardware.errors import KvsimError
from sim.policies.registry import get_policy

TABLE_PATH = Path(__file__).resolve().parent / "quality_table.toml"
ORIGINS = ("published", "measured")
_REQUIRED = ("model", "kind", "policy", "params", "metric", "value", "baseline", "origin")
_CITATION = {"published": ("paper", "benchmark", "figure"), "measured": ("run_id",)}
UNKNOWN = "unknown"
#: Metrics where lower is better (the harness' perplexity); others (accuracies, benchmark
#: scores) are higher-is-better.
LOWER_IS_BETTER = ("perplexity",)
#: Everything below this line in a table file is rewritten by :func:`write_measured`.
MEASURED_MARKER = (
    "# ---- measured by `kvsim quality` (sim/real/quality.py); rewritten by each run, "
    "edit above this line ----"
)


@dataclass(frozen=True)
class QualityEntry:
    """One measured or published quality figure for ``policy`` (with ``params``) on ``model``."""

    model: str
    kind: str
    policy: str
    params: tuple[tuple[str, Any], ...]
    metric: str
    value: float
    baseline: float
    origin: str
    citation: tuple[tuple[str, str], ...]

    @property
    def retained(self) -> float | None:
        """Quality kept against the full cache, 1.0 = no loss: ``value / baseline``, or
        ``baseline / value`` for a lower-is-better metric; None when that is undefined."""
        lower = self.metric in LOWER_IS_BETTER
        numerator, denominator = (
            (self.baseline, self.value) if lower else (self.value, self.baseline)
        )
        return numerator / denominator if denominator else None

    def label(self) -> str:
        cite = "; ".join(v for _, v in self.citation)
        return f"{self.value:g} {self.metric} (full KV {self.baseline:g}; {self.origin}: {cite})"


def quality_label(entry: QualityEntry | None) -> str:
    """The report's quality cell: the entry's figure and source, or ``unknown``."""
    return UNKNOWN if entry is None else entry.label()


@dataclass(frozen=True)
class QualityTable:
    entries: tuple[QualityEntry, ...] = ()

    def lookup(self, model_id: str, policy: Any) -> QualityEntry | None:
        """The entry for this exact model id and policy (all parameters equal), else None."""
        params = policy.params()
        for entry in self.entries:
            if (
                entry.model.lower() == model_id.lower()
                and entry.kind == policy.kind
                and entry.policy == policy.name
                and dict(entry.params) == params
            ):
                return entry
        return None

    def merged(self, other: QualityTable) -> QualityTable:
        """Both tables' entries; ``other``'s come first, so its entries win lookups."""
        return QualityTable(other.entries + self.entries)

    @classmethod
    def from_toml(cls, path: str | Path) -> QualityTable:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise KvsimError(f"cannot read quality table: {err}", source=str(path)) from None
        return cls(tuple(_entries(data.get("entry", []), str(path))))


def _entries(raw: Iterable[Any], source: str) -> Iterable[QualityEntry]:
    for i, item in enumerate(raw):
        where = f"entry[{i}]"
        if not isinstance(item, dict):
            raise KvsimError("must be a table", source=source, field=where)
        for key in _REQUIRED:
            if key not in item:
                raise KvsimError("missing", source=source, field=f"{where}.{key}")
        origin = item["origin"]
        if origin not in ORIGINS:
            raise KvsimError(
                f"must be one of {', '.join(ORIGINS)}, got {origin!r}",
                source=source,
                field=f"{where}.origin",
            )
        for key in _CITATION[origin]:
            if not str(item.get(key, "")).strip():
                raise KvsimError(
                    f"a {origin} entry needs a {key}", source=source, field=f"{where}.{key}"
                )
        for key in ("value", "baseline"):
            if isinstance(item[key], bool) or not isinstance(item[key], int | float):
                raise KvsimError(
                    f"must be a number, got {item[key]!r}", source=source, field=f"{where}.{key}"
                )
        try:
            policy = get_policy(item["kind"], item["policy"], **item["params"])
        except KvsimError as err:
            raise KvsimError(err.message, source=source, field=f"{where}.{err.field}") from None
        missing = sorted(
            k for k, v in policy.params().items() if k not in item["params"] and v is not None
        )
        if missing:
            raise KvsimError(
                f"name every parameter of {item['policy']} (missing {', '.join(missing)}) so the "
                "entry matches one configuration",
                source=source,
                field=f"{where}.params",
            )
        yield QualityEntry(
            model=str(item["model"]),
            kind=item["kind"],
            policy=item["policy"],
            params=tuple(policy.params().items()),
            metric=str(item["metric"]),
            value=float(item["value"]),
            baseline=float(item["baseline"]),
            origin=origin,
            citation=tuple((k, str(item[k])) for k in _CITATION[origin]),
        )


@functools.cache
def default_quality_table() -> QualityTable:
    """The published entries shipped with kvsim."""
    return QualityTable.from_toml(TABLE_PATH)


def measured_entry(
    model: str, policy: Any, metric: str, value: float, baseline: float, run_id: str
) -> QualityEntry:
    """A measured entry for ``policy`` (all its parameters) on ``model``."""
    return QualityEntry(
        model=model,
        kind=policy.kind,
        policy=policy.name,
        params=tuple(policy.params().items()),
        metric=metric,
        value=float(value),
        baseline=float(baseline),
        origin="measured",
        citation=(("run_id", run_id),),
    )


def _render(entry: QualityEntry) -> str:
    params = ", ".join(f"{k} = {toml_write.value(v)}" for k, v in entry.params if v is not None)
    lines = [
        "[[entry]]",
        f"model = {toml_write.value(entry.model)}",
        f"kind = {toml_write.value(entry.kind)}",
        f"policy = {toml_write.value(entry.policy)}",
        f"params = {{ {params} }}" if params else "params = {}",
        f"metric = {toml_write.value(entry.metric)}",
        f"value = {toml_write.value(entry.value)}",
        f"baseline = {toml_write.value(entry.baseline)}",
        f"origin = {toml_write.value(entry.origin)}",
        *(f"{k} = {toml_write.value(v)}" for k, v in entry.citation),
    ]
    return "\n".join(lines) + "\n"


def _entry_key(entry: QualityEntry) -> tuple[Any, ...]:
    return (entry.model.lower(), entry.kind, entry.policy, entry.params, entry.metric)


def write_measured(entries: Iterable[QualityEntry], path: str | Path = TABLE_PATH) -> None:
    """Add measured entries to the table file below :data:`MEASURED_MARKER`, replacing a
    measured entry there with the same model, policy, parameters and metric. Lines above the
    marker (published entries, comments) are kept as written. The new file is checked by
    reading it back before it replaces the old one (temp file, then rename)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    head, _, tail = text.partition(MEASURED_MARKER)
    kept = {_entry_key(e): e for e in _entries(tomllib.loads(tail).get("entry", []), str(path))}
    for entry in entries:
        if entry.origin != "measured":
            raise KvsimError(
                f"only measured entries are written, got {entry.origin!r}", field="origin"
            )
        kept[_entry_key(entry)] = entry
    body = "\n".join(_render(e) for e in kept.values())
    new_text = head.rstrip("\n") + ("\n\n" if head.strip() else "") + MEASURED_MARKER + "\n\n"
    new_text += body
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(new_text)
        QualityTable.from_toml(temp)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    if path.resolve() == TABLE_PATH:
        default_quality_table.cache_clear()
