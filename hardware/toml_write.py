"""The project's one TOML writer: values as TOML literals, TOML-shaped dicts as documents.

The standard library reads TOML (``tomllib``) but does not write it. What kvsim writes
(scenario files, ``a.b=c`` overrides, probed hardware profiles, dashboard links) holds only
tables, strings, booleans, integers, floats and arrays of those or of inline tables, so a
short writer suffices (TOML 1.0, https://toml.io/en/v1.0.0): scalars and arrays of a table
first, then one ``[a.b]`` header per sub-table. ``tomllib`` reads every output back equal.

- Strings are basic strings: ``"`` and ``\\`` are backslash-escaped and every character TOML
  forbids raw in a basic string (U+0000–U+001F and DEL, U+007F) is written ``\\uXXXX``.
- Floats are written with ``repr`` (the shortest text that reads back to the same double);
  NaN and ±infinity as TOML's ``nan``, ``inf``, ``-inf``.
- Integers and floats may be any :class:`numbers.Integral` / :class:`numbers.Real`
  (numpy scalars included); booleans must be :class:`bool`.
- Keys are bare where TOML allows (``[A-Za-z0-9_-]+``) in headers and ``key = value`` lines,
  and always quoted inside inline tables.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from typing import Any

from hardware.errors import KvsimError

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def string(text: str) -> str:
    """``text`` as a TOML basic string."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def key(name: str) -> str:
    """A bare key where TOML allows one, else a quoted key."""
    return name if _BARE_KEY.fullmatch(name) else string(name)


def value(item: Any, path: str = "") -> str:
    """``item`` as a TOML literal (tables inline): the right-hand side of ``key = value``
    and of a ``kvsim run --set a.b=VALUE`` override. ``path`` names the item in the error
    raised for a type TOML cannot hold."""
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, numbers.Integral):
        return str(int(item))
    if isinstance(item, numbers.Real):
        number = float(item)
        if math.isnan(number):
            return "nan"
        if math.isinf(number):
            return "inf" if number > 0 else "-inf"
        return repr(number)
    if isinstance(item, str):
        return string(item)
    if isinstance(item, list | tuple):
        return "[" + ", ".join(value(v, path) for v in item) + "]"
    if isinstance(item, Mapping):
        body = ", ".join(f"{string(str(k))} = {value(v, path)}" for k, v in item.items())
        return "{ " + body + " }" if body else "{}"
    raise KvsimError(f"cannot write {type(item).__name__} {item!r} as TOML", field=path or None)


def dumps(data: Mapping[str, Any]) -> str:
    """``data`` as a TOML document (sub-tables as ``[a.b]`` sections)."""
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
