"""The hardware catalog: accelerators, memory tiers and links read from TOML files.

Each entry is one TOML file whose keys are the field names of the spec it describes
(:class:`~hardware.specs.Accelerator`, :class:`~hardware.specs.MemoryTier`,
:class:`~hardware.specs.Link`), in SI units, and whose trailing ``# comment`` on each line is
that number's source. A search directory holds accelerators at its top level or under
``accelerators/``, memory tiers under ``tiers/`` and links under ``links/``. The built-in
catalog (``hardware/catalog/``) is searched first, then every directory named in the
``KVSIM_HARDWARE_PATH`` environment variable (``os.pathsep``-separated), then any files passed as
``extra_files`` (the CLI's ``--hardware-file``); a later entry with the same id replaces an
earlier one, so users override built-ins by id. Ids are case-insensitive.

Everything a file gets wrong is a :class:`~hardware.errors.KvsimError` naming the file, the line
where tomllib or the field check found it, and the field: malformed TOML, unknown keys, missing
required keys, wrong types, negative or non-finite numbers, a price without its date and source.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from hardware.errors import KvsimError
from hardware.specs import Accelerator, Efficiency, Link, MemoryTier

#: Environment variable naming extra catalog directories, ``os.pathsep``-separated.
HARDWARE_PATH_ENV = "KVSIM_HARDWARE_PATH"

#: The built-in catalog shipped with the package.
BUILTIN_CATALOG_DIR = Path(__file__).resolve().parent / "catalog"

Kind = Literal["accelerator", "tier", "link"]
KINDS: tuple[Kind, ...] = ("accelerator", "tier", "link")

_SPEC_CLASSES: dict[str, type] = {"accelerator": Accelerator, "tier": MemoryTier, "link": Link}
#: Sub-directories of a search directory holding each kind ("" = the directory itself).
_KIND_DIRS: dict[str, tuple[str, ...]] = {
    "accelerator": ("", "accelerators"),
    "tier": ("tiers",),
    "link": ("links",),
}
#: Numeric fields that must be strictly positive (all others must be >= 0).
_POSITIVE_FIELDS = {
    "accelerator": {
        "bf16_flops_per_s",
        "fp16_flops_per_s",
        "fp8_flops_per_s",
        "int8_flops_per_s",
        "fp4_flops_per_s",
        "fp32_flops_per_s",
        "memory_bytes",
        "memory_bytes_per_s",
        "host_link_bytes_per_s",
        "l2_bytes",
        "scale_up_domain",
        "tdp_w",
    },
    "tier": {"capacity_bytes", "read_bytes_per_s", "write_bytes_per_s"},
    "link": {"bytes_per_s", "efficiency"},
}
_TIER_KINDS = ("dram", "cxl", "nvme", "remote")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_DATE_RE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")
_TOML_POSITION_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TABLE_RE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$")
_KEY_RE = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=\s*(.*)$")


@dataclass(frozen=True)
class CatalogEntry:
    """One parsed catalog file: the spec, where it came from, and each field's source.

    ``sources`` maps a field name (``efficiency.<name>`` inside the ``[efficiency]`` table) to
    the trailing comment on its line, which by catalog convention cites where the number
    comes from.
    """

    kind: Kind
    spec: Accelerator | MemoryTier | Link
    path: Path
    sources: Mapping[str, str]


def get_accelerator(id: str, *, extra_files: Sequence[str | os.PathLike[str]] = ()) -> Accelerator:
    """The accelerator ``id`` (case-insensitive); unknown ids list the close matches."""
    return _lookup("accelerator", id, extra_files).spec  # type: ignore[return-value]


def list_accelerators(*, extra_files: Sequence[str | os.PathLike[str]] = ()) -> list[Accelerator]:
    """All accelerators on the search path, sorted by id."""
    return [e.spec for e in _entries("accelerator", extra_files)]  # type: ignore[misc]


def get_tier(id: str) -> MemoryTier:
    """The memory tier ``id`` (case-insensitive); unknown ids list the close matches."""
    return _lookup("tier", id, ()).spec  # type: ignore[return-value]


def list_tiers() -> list[MemoryTier]:
    """All memory tiers on the search path, sorted by id."""
    return [e.spec for e in _entries("tier", ())]  # type: ignore[misc]


def get_link(id: str) -> Link:
    """The link ``id`` (case-insensitive); unknown ids list the close matches."""
    return _lookup("link", id, ()).spec  # type: ignore[return-value]


def list_links() -> list[Link]:
    """All links on the search path, sorted by id."""
    return [e.spec for e in _entries("link", ())]  # type: ignore[misc]


def load_accelerator_file(path: str | os.PathLike[str]) -> Accelerator:
    """Parse one accelerator TOML file (the CLI's ``--hardware-file``)."""
    return _parse_path(Path(path), "accelerator").spec  # type: ignore[return-value]


def get_entry(
    id: str,
    *,
    kind: Kind | None = None,
    extra_files: Sequence[str | os.PathLike[str]] = (),
) -> CatalogEntry:
    """The catalog entry ``id`` with its file and per-field sources.

    With ``kind=None`` the id is looked up among accelerators, then tiers, then links.
    """
    if kind is not None:
        return _lookup(kind, id, extra_files)
    catalog = _catalog(extra_files)
    key = id.strip().lower()
    for each in KINDS:
        if key in catalog[each]:
            return catalog[each][key]
    known = [k for each in KINDS for k in catalog[each]]
    raise KvsimError(_unknown_message("hardware", id, known))


def list_entries(
    kind: Kind, *, extra_files: Sequence[str | os.PathLike[str]] = ()
) -> list[CatalogEntry]:
    """All entries of ``kind`` on the search path with their files and sources, sorted by id."""
    return _entries(kind, extra_files)


def search_dirs() -> list[Path]:
    """The built-in catalog followed by the ``KVSIM_HARDWARE_PATH`` directories, in order."""
    dirs = [BUILTIN_CATALOG_DIR]
    for raw in os.environ.get(HARDWARE_PATH_ENV, "").split(os.pathsep):
        if not raw.strip():
            continue
        path = Path(raw).expanduser()
        if not path.is_dir():
            raise KvsimError(f"{HARDWARE_PATH_ENV} entry is not a directory", source=str(path))
        dirs.append(path)
    return dirs


def _entries(kind: Kind, extra_files: Sequence[str | os.PathLike[str]]) -> list[CatalogEntry]:
    found = _catalog(extra_files)[kind]
    return [found[k] for k in sorted(found)]


def _lookup(kind: Kind, id: str, extra_files: Sequence[str | os.PathLike[str]]) -> CatalogEntry:
    found = _catalog(extra_files)[kind]
    entry = found.get(id.strip().lower())
    if entry is None:
        raise KvsimError(_unknown_message(kind, id, list(found)))
    return entry


def _unknown_message(kind: str, id: str, known: Iterable[str]) -> str:
    known = sorted(set(known))
    close = difflib.get_close_matches(id.strip().lower(), known, n=4, cutoff=0.5)
    hint = f"close matches: {', '.join(close)}" if close else f"known: {', '.join(known)}"
    command = "tiers" if kind in ("tier", "link") else "list"
    return f"unknown {kind} id {id!r} ({hint}; see `kvsim hardware {command}`)"


def _catalog(extra_files: Sequence[str | os.PathLike[str]]) -> dict[str, dict[str, CatalogEntry]]:
    """Stat every catalog file now (so env changes and edits are seen) and reuse the parse of an
    unchanged set of files."""
    files: list[tuple[str, tuple[tuple[str, int, int], ...]]] = []
    for directory in search_dirs():
        for kind in KINDS:
            paths = [
                p
                for sub in _KIND_DIRS[kind]
                for p in sorted((directory / sub).glob("*.toml"))
                if p.is_file()
            ]
            files.append((kind, tuple(_stat_key(p) for p in paths)))
    extras = []
    for raw in extra_files:
        path = Path(raw)
        if not path.is_file():
            raise KvsimError("hardware file not found", source=str(path))
        extras.append(_stat_key(path))
    files.append(("accelerator", tuple(extras)))
    return _build_catalog(tuple(files))


def _stat_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _build_catalog(
    files: tuple[tuple[str, tuple[tuple[str, int, int], ...]], ...],
) -> dict[str, dict[str, CatalogEntry]]:
    catalog: dict[str, dict[str, CatalogEntry]] = {kind: {} for kind in KINDS}
    for kind, group in files:
        seen: dict[str, Path] = {}
        for path_str, mtime_ns, size in group:
            entry = _parse_cached(path_str, kind, mtime_ns, size)
            key = entry.spec.id
            if key in seen:
                raise KvsimError(
                    f"duplicate {kind} id {key!r} (also defined in {seen[key]})",
                    source=path_str,
                    field="id",
                )
            seen[key] = entry.path
            catalog[kind][key] = entry
    return catalog


@functools.lru_cache(maxsize=512)
def _parse_cached(path_str: str, kind: Kind, mtime_ns: int, size: int) -> CatalogEntry:
    return _parse_path(Path(path_str), kind)


def _parse_path(path: Path, kind: Kind) -> CatalogEntry:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KvsimError("hardware file not found", source=str(path)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise KvsimError(f"cannot read file: {err}", source=str(path)) from None
    return parse_text(text, kind, source=str(path))


def parse_text(text: str, kind: Kind, *, source: str) -> CatalogEntry:
    """Parse and validate one catalog file's text; ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        match = _TOML_POSITION_RE.search(message)
        line = int(match.group(1)) if match else None
        if match:
            message = message[: match.start()]
        elif message.endswith("(at end of document)"):
            message = message.removesuffix("(at end of document)").rstrip()
            line = max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
        raise KvsimError(f"malformed TOML: {message}", source=source, line=line) from None
    lines = _scan_lines(text)
    sources = MappingProxyType({name: c for name, (_line, c) in lines.items() if c})
    spec = _build_spec(kind, data, lines, source)
    return CatalogEntry(kind=kind, spec=spec, path=Path(source), sources=sources)


def _scan_lines(text: str) -> dict[str, tuple[int, str]]:
    """Map ``key`` / ``table.key`` to its 1-based line and trailing comment.

    tomllib discards comments, and the comments are the sources, so the key lines are read
    once more here; the file has already parsed, so only bare keys and one-line values occur.
    """
    found: dict[str, tuple[int, str]] = {}
    table = ""
    for number, line in enumerate(text.splitlines(), start=1):
        header = _TABLE_RE.match(line)
        if header:
            table = header.group(1).strip()
            found.setdefault(table, (number, ""))
            continue
        key = _KEY_RE.match(line)
        if key:
            name = f"{table}.{key.group(1)}" if table else key.group(1)
            found.setdefault(name, (number, _trailing_comment(key.group(2))))
    return found


def _trailing_comment(value: str) -> str:
    quote = ""
    escaped = False
    for index, char in enumerate(value):
        if quote:
            if escaped:
                escaped = False
            elif char == "\\" and quote == '"':
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "#":
            return value[index + 1 :].strip()
    return ""


def _build_spec(
    kind: Kind, data: dict[str, Any], lines: Mapping[str, tuple[int, str]], source: str
) -> Accelerator | MemoryTier | Link:
    cls = _SPEC_CLASSES[kind]
    values = _check_table(cls, data, "", kind, lines, source)
    if kind == "accelerator":
        values["efficiency"] = _build_efficiency(data.get("efficiency"), lines, source)
        _check_price(values, lines, source)
    if kind == "tier" and values["kind"] not in _TIER_KINDS:
        raise _field_error(
            f"expected one of {', '.join(_TIER_KINDS)}, got {values['kind']!r}",
            "kind",
            lines,
            source,
        )
    if kind == "link" and values.get("efficiency", 0.8) > 1:
        raise _field_error("must be in (0, 1]", "efficiency", lines, source)
    values["id"] = values["id"].strip().lower()
    if not _ID_RE.match(values["id"]):
        raise _field_error(
            "expected lower-case letters, digits, '.', '_' or '-'", "id", lines, source
        )
    return cls(**values)


def _build_efficiency(table: Any, lines: Mapping[str, tuple[int, str]], source: str) -> Efficiency:
    if table is None:
        return Efficiency()
    if not isinstance(table, dict):
        raise _field_error("expected a table [efficiency]", "efficiency", lines, source)
    values = _check_table(Efficiency, table, "efficiency.", "efficiency", lines, source)
    values.setdefault("source", f"{Path(source).name}; unset fields keep the §2.4 defaults")
    try:
        return Efficiency(**values)
    except KvsimError as err:
        raise _field_error(err.message, err.field or "efficiency", lines, source) from None


def _check_price(values: dict[str, Any], lines: Mapping[str, tuple[int, str]], source: str) -> None:
    if values.get("price_usd_per_hour") is None:
        return
    for name in ("price_date", "price_source"):
        if not values.get(name):
            raise _field_error(
                "required when price_usd_per_hour is set (prices are dated and sourced)",
                name,
                lines,
                source,
            )
    if not _DATE_RE.match(values["price_date"]):
        raise _field_error(
            f"expected YYYY, YYYY-MM or YYYY-MM-DD, got {values['price_date']!r}",
            "price_date",
            lines,
            source,
        )


def _check_table(
    cls: type,
    data: dict[str, Any],
    prefix: str,
    kind: str,
    lines: Mapping[str, tuple[int, str]],
    source: str,
) -> dict[str, Any]:
    """Check ``data`` against the scalar fields of dataclass ``cls``; return the kwargs."""
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: f for f in dataclasses.fields(cls) if not dataclasses.is_dataclass(hints[f.name])
    }
    nested = {f.name for f in dataclasses.fields(cls) if f.name not in fields}
    for key in data:
        if key not in fields and key not in nested:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _field_error(f"unknown key{hint}", prefix + key, lines, source)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in data:
            if required:
                raise _field_error("required key is missing", prefix + name, lines, source)
            continue
        values[name] = _coerce(data[name], hints[name], prefix + name, kind, lines, source)
    return values


def _coerce(
    value: Any,
    hint: Any,
    name: str,
    kind: str,
    lines: Mapping[str, tuple[int, str]],
    source: str,
) -> Any:
    options = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
    options.discard(type(None))
    (want,) = options
    if want is str:
        if not isinstance(value, str):
            raise _field_error(f"expected a string, got {value!r}", name, lines, source)
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _field_error(f"expected a number, got {value!r}", name, lines, source)
    if not math.isfinite(value):
        raise _field_error(f"expected a finite number, got {value!r}", name, lines, source)
    if want is int:
        if value != int(value):
            raise _field_error(f"expected a whole number, got {value!r}", name, lines, source)
        value = int(value)
    else:
        value = float(value)
    field = name.rsplit(".", 1)[-1]
    if value < 0:
        raise _field_error(f"must be >= 0, got {value!r}", name, lines, source)
    if value == 0 and field in _POSITIVE_FIELDS.get(kind, set()):
        raise _field_error(f"must be > 0, got {value!r}", name, lines, source)
    return value


def _field_error(
    message: str, name: str, lines: Mapping[str, tuple[int, str]], source: str
) -> KvsimError:
    line = lines.get(name, (None, ""))[0]
    return KvsimError(message, source=source, line=line, field=name)
