"""Write a TOML-shaped dict (scenario) as TOML text; ``tomllib`` reads it back equal.

The standard library reads TOML but does not write it. Scenario dicts hold only tables,
strings, booleans, integers, finite floats and arrays of those (or of inline tables), so a
short writer suffices: scalars and arrays first, then one ``[a.b]`` header per sub-table
(TOML 1.0, https://toml.io/en/v1.0.0). Strings use JSON escapes, all of which are TOML
basic-string escapes (plus ``\\u007f`` for DEL, which JSON leaves raw).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from hardware.errors import KvsimError

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _string(text: str) -> str:
    # JSON escapes every control character below U+0020 but not DEL, which TOML forbids raw.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def key(name: str) -> str:
    """A bare key where TOML allows one, else a quoted key."""
    return name if _BARE_KEY.match(name) else _string(name)


def value(item: Any, path: str = "") -> str:
    """One value as a TOML literal (tables inline)."""
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        if math.isnan(item):
            return "nan"
        if math.isinf(item):
            return "inf" if item > 0 else "-inf"
        return repr(item)
    if isinstance(item, str):
        return _string(item)
    if isinstance(item, list | tuple):
        return "[" + ", ".join(value(v, path) for v in item) + "]"
    if isinstance(item, Mapping):
        body = ", ".join(f"{key(str(k))} = {value(v, path)}" for k, v in item.items())
        return "{ " + body + " }" if body else "{}"
    raise KvsimError(f"cannot write {type(item).__name__} {item!r} as TOML", field=path or None)


def dumps(data: Mapping[str, Any]) -> str:
    """``data`` as a TOML document."""
    lines: list[str] = []
    _table(data, [], lines)
    return "\n".join(lines).strip() + "\n"


def _table(data: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in data.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    if path and (scalars or not tables):
        lines.append("")
        lines.append("[" + ".".join(key(p) for p in path) + "]")
    for name, item in scalars.items():
        lines.append(f"{key(str(name))} = {value(item, '.'.join([*path, str(name)]))}")
    for name, item in tables.items():
        _table(item, [*path, str(name)], lines)
