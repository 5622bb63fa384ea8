"""Quality of lossy KV policies, looked up — never estimated.

Entries come from ``quality_table.toml`` beside this module (published figures with their
paper, benchmark and figure) and from tables the real-execution harness writes (measured,
with a run id). An entry names every parameter of its policy and matches only a policy with
exactly those parameters on exactly that model id; anything else is "unknown".
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardware.errors import KvsimError
from sim.policies.registry import get_policy, policy_params

TABLE_PATH = Path(__file__).resolve().parent / "quality_table.toml"
ORIGINS = ("published", "measured")
_REQUIRED = ("model", "kind", "policy", "params", "metric", "value", "baseline", "origin")
_CITATION = {"published": ("paper", "benchmark", "figure"), "measured": ("run_id",)}
UNKNOWN = "unknown"


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
        missing = sorted(set(policy_params(type(policy))) - set(item["params"]))
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
