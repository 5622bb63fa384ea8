"""Reading one table of a synthetic-workload spec, with errors that name the field path.

A spec arrives as a plain dict (a TOML table, a dashboard form, Python code). :class:`Fields`
hands out its keys one at a time, checked for type and range, and :meth:`Fields.done` rejects
whatever was not taken, so a typo is an error rather than a silently ignored setting. Every
error names the full dotted path, e.g. ``workload.synthetic.prompt_tokens.sigma: must be > 0,
got -1``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hardware.errors import KvsimError

_MISSING = object()


def join(path: str, key: str) -> str:
    """``path.key``, or ``key`` at the top level (empty path)."""
    return f"{path}.{key}" if path else key


def fail(path: str, message: str) -> KvsimError:
    """A :class:`KvsimError` naming ``path`` as the offending field."""
    return KvsimError(message, field=path or None)


class Fields:
    """The keys of one table at ``path``, taken one by one, each validated."""

    def __init__(self, table: Any, path: str, *, base_dir: Path | None = None) -> None:
        if not isinstance(table, Mapping):
            raise fail(path, f"must be a table, got {type(table).__name__}")
        self.table = dict(table)
        self.path = path
        self.base_dir = base_dir
        self._taken: set[str] = set()

    def child(self, key: str) -> str:
        return join(self.path, key)

    def has(self, key: str) -> bool:
        return key in self.table

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        self._taken.add(key)
        if key in self.table:
            return self.table[key]
        if default is _MISSING:
            raise fail(self.child(key), "is required")
        return default

    def string(self, key: str, choices: tuple[str, ...], default: Any = _MISSING) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str) or value not in choices:
            raise fail(self.child(key), f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def number(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        gt: float | None = None,
        ge: float | None = None,
        le: float | None = None,
    ) -> float:
        return check_number(self.raw(key, default), self.child(key), gt=gt, ge=ge, le=le)

    def integer(self, key: str, default: Any = _MISSING, *, ge: int | None = None) -> int:
        return check_integer(self.raw(key, default), self.child(key), ge=ge)

    def optional_number(self, key: str, *, gt: float | None = None) -> float | None:
        value = self.raw(key, None)
        return None if value is None else check_number(value, self.child(key), gt=gt)

    def optional_integer(self, key: str, *, ge: int | None = None) -> int | None:
        value = self.raw(key, None)
        return None if value is None else check_integer(value, self.child(key), ge=ge)

    def path_value(self, key: str) -> Path:
        value = self.raw(key)
        if not isinstance(value, str) or not value:
            raise fail(self.child(key), f"must be a file path, got {value!r}")
        path = Path(value).expanduser()
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        return path

    def done(self) -> None:
        """Reject keys nobody took (typos, parameters of another kind)."""
        unknown = sorted(set(self.table) - self._taken)
        if unknown:
            allowed = ", ".join(sorted(self._taken))
            raise fail(self.child(unknown[0]), f"unknown key (allowed here: {allowed})")


def check_number(
    value: Any,
    path: str,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(path, f"must be a finite number, got {value!r}")
    if gt is not None and not value > gt:
        raise fail(path, f"must be > {gt:g}, got {value:g}")
    if ge is not None and not value >= ge:
        raise fail(path, f"must be >= {ge:g}, got {value:g}")
    if le is not None and not value <= le:
        raise fail(path, f"must be <= {le:g}, got {value:g}")
    return float(value)


def check_integer(value: Any, path: str, *, ge: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(path, f"must be an integer, got {value!r}")
    if ge is not None and value < ge:
        raise fail(path, f"must be >= {ge}, got {value}")
    return int(value)
