"""Page state outside the widgets: URL query parameters, scenario TOML, result hash.

Every page with a scenario (What-if, Policies, Capacity planner) keeps a TOML-shaped dict. Its URL holds only what differs from
:data:`DEFAULT_SCENARIO` (``kvsim run``'s built-in default), one query parameter per dotted key, each value written as the
``kvsim run --set`` overrides read it (a TOML literal, or a bare string): ``?hardware.tp=2&
hardware.accelerator=h200-sxm``. A key the user removed (a synthetic workload replaced by a
trace) is sent with an empty value. So a link reproduces the scenario exactly, and the same
dict also downloads and uploads as the scenario TOML that ``kvsim run`` takes. The Policies
and Capacity planner pages add their own settings under one top-level key that is not a scenario
section (``strategies``, ``plan``): :func:`check_table` and :func:`check_choices` validate those
where :class:`~sim.scenario.Scenario` validates the rest, and :func:`from_link` falls back to
the page's defaults, with the reason, when a link does not validate.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from hardware import toml_write
from hardware.errors import KvsimError
from sim.scenario import apply_overrides
from sim.scenarios import builtin_path

#: Keys every What-if knob writes, at the values :class:`~sim.scenario.Scenario` assumes when
#: they are absent; filled into the default so an untouched page has an empty URL.
KNOB_DEFAULTS: dict[str, Any] = {
    "model.weight_dtype": "bf16",
    "scheduler.preemption": "recompute",
    "policies.quantization.name": "fp16",
    "policies.prefix_cache.kind": "hash",
    "router.name": "round_robin",
}


def _builtin_default() -> dict[str, Any]:
    """``kvsim run``'s built-in default scenario with :data:`KNOB_DEFAULTS` filled in: the
    What-if page starts from exactly what ``make run`` simulates."""
    data = tomllib.loads(builtin_path().read_text(encoding="utf-8"))
    for dotted, value in KNOB_DEFAULTS.items():
        table = dotted.rpartition(".")[0]
        # A prefix-cache table switches caching on, so only complete one that is there.
        if table == "policies.prefix_cache" and get_path(data, table) is None:
            continue
        if get_path(data, dotted) is None:
            data = apply_overrides(data, [f"{dotted}={encode_value(value)}"])
    return data


def default_scenario() -> dict[str, Any]:
    """A fresh copy of :data:`DEFAULT_SCENARIO`."""
    return copy.deepcopy(DEFAULT_SCENARIO)


# ---- nested dict <-> dotted keys --------------------------------------------------------------
def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Leaf values by dotted key (arrays are leaves)."""
    out: dict[str, Any] = {}
    for name, item in data.items():
        dotted = f"{prefix}{name}"
        if isinstance(item, Mapping):
            out.update(flatten(item, f"{dotted}."))
        else:
            out[dotted] = item
    return out


def get_path(data: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def delete_path(data: dict[str, Any], dotted: str) -> None:
    """Remove ``dotted`` and any tables it leaves empty."""
    parts = dotted.split(".")
    chain = [data]
    for part in parts[:-1]:
        child = chain[-1].get(part)
        if not isinstance(child, dict):
            return
        chain.append(child)
    chain[-1].pop(parts[-1], None)
    for depth in range(len(parts) - 2, -1, -1):
        if not chain[depth + 1]:
            chain[depth].pop(parts[depth], None)


# ---- URL ---------------------------------------------------------------------------------------
def encode_value(item: Any) -> str:
    """A query-parameter value that :func:`sim.scenario.apply_overrides` reads back equal:
    bare strings where they cannot be mistaken for a TOML literal, else TOML literals."""
    if isinstance(item, str) and item and apply_overrides({}, [f"v={item}"])["v"] == item:
        return item
    return toml_write.value(item)


def to_query(data: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, str]:
    """The query parameters that turn ``defaults`` into ``data``."""
    flat, base = flatten(data), flatten(defaults)
    params = {k: encode_value(v) for k, v in flat.items() if k not in base or base[k] != v}
    for dotted in base:
        if dotted in flat:
            continue
        parts = dotted.split(".")
        removed = next(
            ".".join(parts[: i + 1])
            for i in range(len(parts))
            if get_path(data, ".".join(parts[: i + 1])) is None
        )
        params[removed] = ""
    return dict(sorted(params.items()))


def from_query(params: Mapping[str, str], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` with the query parameters applied (empty value: key removed). Values
    that are not scenario keys are left for :meth:`Scenario.from_dict` to reject by name."""
    data = copy.deepcopy(dict(defaults))
    for dotted in sorted(k for k, v in params.items() if v == ""):
        delete_path(data, dotted)
    return apply_overrides(data, [f"{k}={v}" for k, v in params.items() if v != ""])


def from_link(
    params: Mapping[str, str],
    defaults: Mapping[str, Any],
    validate: Callable[[dict[str, Any]], None],
) -> tuple[dict[str, Any], str | None]:
    """The page state a link describes, and ``None``; or a copy of ``defaults`` and why the
    link was ignored, when :func:`from_query` or ``validate`` (raising
    :class:`KvsimError`) rejects it."""
    try:
        data = from_query(params, defaults)
        validate(data)
    except KvsimError as err:
        return copy.deepcopy(dict(defaults)), f"Link ignored: {err}"
    return data, None


# ---- a page's own settings -------------------------------------------------------------------
def _matches(value: Any, kind: Any) -> bool:
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, k) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_table(table: Any, schema: Mapping[str, Any], field: str) -> None:
    """``table`` holds exactly the dotted keys of ``schema`` (those whose type admits ``None``
    may be absent), each of its type: ``float`` takes whole numbers too, ``list[int]`` a list
    of them. Raises :class:`KvsimError` naming ``field.key`` and what was expected."""
    if not isinstance(table, Mapping):
        raise KvsimError(f"expected a table, got {table!r}", field=field)
    flat = flatten(table)
    for dotted, value in flat.items():
        if dotted not in schema:
            close = difflib.get_close_matches(dotted, list(schema), n=1)
            hint = (
                f" (did you mean {close[0]}?)"
                if close
                else f"; expected one of {', '.join(schema)}"
            )
            raise KvsimError(f"unknown key{hint}", field=f"{field}.{dotted}")
        if not _matches(value, schema[dotted]):
            kind = schema[dotted]
            expected = kind.__name__ if isinstance(kind, type) else str(kind)
            raise KvsimError(f"expected {expected}, got {value!r}", field=f"{field}.{dotted}")
    for dotted, kind in schema.items():
        if dotted not in flat and not _matches(None, kind):
            raise KvsimError("missing key", field=f"{field}.{dotted}")


def check_choices(values: Iterable[Any], options: Iterable[Any], field: str) -> None:
    """Every one of ``values`` is one of ``options`` (what a page's select widgets offer)."""
    allowed = list(options)
    for value in values:
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(o) for o in allowed], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise KvsimError(
                f"unknown choice {value!r}{hint}; expected one of "
                f"{', '.join(str(o) for o in allowed)}",
                field=field,
            )


# ---- TOML --------------------------------------------------------------------------------------
def scenario_toml(data: Mapping[str, Any]) -> str:
    """The scenario as the TOML file ``kvsim run`` reads."""
    return toml_write.dumps(data)


def parse_scenario_toml(data: bytes, name: str) -> dict[str, Any]:
    """An uploaded scenario file as a dict; malformed TOML names the file and line."""
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise KvsimError(f"not UTF-8 text: {err.reason}", source=name) from None
    except tomllib.TOMLDecodeError as err:
        text = str(err)
        line = None
        if "(at line " in text:
            text, _, where = text.partition(" (at line ")
            line = int(where.split(",")[0])
        raise KvsimError(f"malformed TOML: {text}", source=name, line=line) from None


# ---- identity ----------------------------------------------------------------------------------
def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (a trace's content is part of a run's identity)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def scenario_hash(data: Mapping[str, Any]) -> str:
    """Identity of a run: SHA-256 of the scenario dict as canonical JSON, plus the content
    of its trace file when it names one (so an edited file is not served stale results)."""
    payload: dict[str, Any] = {"scenario": data}
    trace = get_path(data, "workload.trace")
    if isinstance(trace, str) and Path(trace).is_file():
        payload["trace_sha256"] = file_digest(trace)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


#: Where the What-if page starts (see :func:`_builtin_default`).
DEFAULT_SCENARIO: dict[str, Any] = _builtin_default()
