"""One explicit registry per policy kind, filled by class decorators and plug-ins.

Built-in policies register when their module is imported (:data:`BUILTIN_MODULES`, imported
on first use); third-party distributions add theirs through the ``kvsim.policies`` entry-point
group, whose entries name a module or class whose import registers (loaded lazily, once, by
:func:`load_plugins`). Scenario tables ``[policies.<kind>] name = "..."`` become policy objects
through :func:`policy_from_table`; every error names ``policies.<kind>.<param>``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from hardware.errors import KvsimError

#: Policy kinds. Token-level kinds are built here; the system-level ones (offload, prefix,
#: scheduler, preemption, router) are filled by the modules that own them.
KINDS = (
    "selection",
    "quantization",
    "low_rank",
    "merging",
    "offload",
    "prefix",
    "scheduler",
    "preemption",
    "router",
)
ENTRY_POINT_GROUP = "kvsim.policies"
BUILTIN_MODULES = (
    "sim.policies.selection",
    "sim.policies.quantization",
    "sim.policies.low_rank",
    "sim.policies.merging",
    "sim.policies.offload",
    "sim.scheduling",
)
#: Parameters whose values replace each other: naming one clears the other's default.
_BUDGET_PAIR = ("budget_tokens", "budget_fraction")

_REGISTRY: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}
_loaded = {"builtins": False, "plugins": False}

T = TypeVar("T", bound=type)


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRY:
        raise KvsimError(
            f"unknown policy kind {kind!r}; expected one of {', '.join(KINDS)}{_hint(kind, KINDS)}",
            field="policies",
        )


def _hint(name: str, options: Any) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def register(kind: str, name: str) -> Callable[[T], T]:
    """Class decorator: register a frozen dataclass as policy ``name`` of ``kind`` and set its
    ``kind`` and ``name`` class attributes."""
    _check_kind(kind)

    def decorate(cls: T) -> T:
        if not dataclasses.is_dataclass(cls):
            raise KvsimError(f"policy {name!r} must be a dataclass", field=f"policies.{kind}")
        existing = _REGISTRY[kind].get(name)
        same = existing is not None and (existing.__module__, existing.__qualname__) == (
            cls.__module__,
            cls.__qualname__,
        )
        if existing is not None and not same:
            raise KvsimError(
                f"{name!r} is already registered by {existing.__module__}.{existing.__qualname__}",
                field=f"policies.{kind}.name",
            )
        cls.kind = kind
        cls.name = name
        _REGISTRY[kind][name] = cls
        return cls

    return decorate


def _load_builtins() -> None:
    if not _loaded["builtins"]:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        _loaded["builtins"] = True


def load_plugins(refresh: bool = False) -> list[str]:
    """Import every ``kvsim.policies`` entry point (once; again with ``refresh``) and return
    their names. A plug-in that fails to import raises a KvsimError naming it."""
    _load_builtins()
    if _loaded["plugins"] and not refresh:
        return []
    names = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as err:
            raise KvsimError(
                f"plug-in {entry.name!r} ({entry.value}) failed to load: {err}",
                source=ENTRY_POINT_GROUP,
                field=entry.name,
            ) from err
        names.append(entry.name)
    _loaded["plugins"] = True
    return names


def _ensure_loaded() -> None:
    _load_builtins()
    if not _loaded["plugins"]:
        load_plugins()


def policy_class(kind: str, name: str) -> type:
    """The class registered as ``name`` of ``kind``."""
    _check_kind(kind)
    _ensure_loaded()
    table = _REGISTRY[kind]
    if name not in table:
        known = ", ".join(sorted(table)) or "none registered"
        raise KvsimError(
            f"unknown {kind} policy {name!r}{_hint(name, table)}; expected one of {known}",
            field=f"policies.{kind}.name",
        )
    return table[name]


def policy_params(cls: type) -> dict[str, Any]:
    """A policy class's parameters and their defaults, in declaration order."""
    out: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        if not item.init:
            continue
        if item.default is not dataclasses.MISSING:
            out[item.name] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            out[item.name] = item.default_factory()
        else:
            out[item.name] = None
    return out


def get_policy(kind: str, name: str, **params: Any) -> Any:
    """Build policy ``name`` of ``kind`` with ``params`` over its paper defaults. Naming one of
    ``budget_tokens``/``budget_fraction`` clears the other."""
    cls = policy_class(kind, name)
    defaults = policy_params(cls)
    for key in params:
        if key not in defaults:
            raise KvsimError(
                f"{name} has no parameter {key!r}{_hint(key, defaults)}; "
                f"expected one of {', '.join(defaults) or 'none'}",
                field=f"policies.{kind}.{key}",
            )
    chosen = dict(params)
    for key, other in (_BUDGET_PAIR, _BUDGET_PAIR[::-1]):
        if key in chosen and other in defaults and other not in chosen:
            chosen[other] = None
    try:
        return cls(**chosen)
    except KvsimError as err:
        field = f"policies.{kind}.{err.field}" if err.field else f"policies.{kind}.{name}"
        raise KvsimError(err.message, source=err.source, line=err.line, field=field) from None
    except (TypeError, ValueError) as err:
        raise KvsimError(str(err), field=f"policies.{kind}.{name}") from None


def policy_from_table(kind: str, table: Mapping[str, Any]) -> Any:
    """A policy from a scenario table ``{"name": ..., <param>: ...}``."""
    if "name" not in table:
        raise KvsimError("a policy table needs a name", field=f"policies.{kind}.name")
    name = table["name"]
    if not isinstance(name, str):
        raise KvsimError(f"must be a string, got {name!r}", field=f"policies.{kind}.name")
    return get_policy(kind, name, **{k: v for k, v in table.items() if k != "name"})


def list_policies() -> dict[str, list[tuple[str, type, dict[str, Any]]]]:
    """Every registered policy by kind: ``(name, class, parameters with defaults)``."""
    _ensure_loaded()
    return {
        kind: [(name, cls, policy_params(cls)) for name, cls in sorted(table.items())]
        for kind, table in _REGISTRY.items()
    }


def unregister(kind: str, name: str) -> None:
    """Remove a registration (tests and plug-in reloads)."""
    _check_kind(kind)
    _REGISTRY[kind].pop(name, None)
