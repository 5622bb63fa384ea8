"""``kvsim policies list|show``: every registered KV policy (built-in and plug-in) with its
parameters and defaults (mechanisms in ``docs/policies.md``)."""

from __future__ import annotations

import argparse
import inspect
import json
from typing import Any

from hardware.errors import KvsimError
from sim.policies.registry import KINDS, list_policies


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("policies", help="list KV policies or show one")
    actions = parser.add_subparsers(dest="policies_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every registered policy with its parameters")
    listing.add_argument("--kind", choices=KINDS, help="only this kind")
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    listing.set_defaults(func=run_list)
    show = actions.add_parser("show", help="one policy: description and parameters")
    show.add_argument("name", help="policy name, e.g. snapkv or kivi")
    show.add_argument("--kind", choices=KINDS, help="the kind, when a name is used by several")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(func=run_show)


def _row(kind: str, name: str, cls: type, params: dict[str, Any]) -> dict[str, Any]:
    doc = inspect.getdoc(cls) or ""
    return {
        "kind": kind,
        "name": name,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "params": params,
        "summary": doc.split("\n\n")[0].replace("\n", " "),
    }


def _rows(kind: str | None) -> list[dict[str, Any]]:
    return [
        _row(k, name, cls, params)
        for k, entries in list_policies().items()
        if kind is None or k == kind
        for name, cls, params in entries
    ]


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items()) or "-"


def run_list(args: argparse.Namespace) -> int:
    rows = _rows(args.kind)
    if args.json:
        print(json.dumps({"policies": rows}))
        return 0
    width = max((len(r["name"]) for r in rows), default=4)
    for row in rows:
        print(f"{row['kind']:<13} {row['name']:<{width}}  {_params_text(row['params'])}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    matches = [r for r in _rows(args.kind) if r["name"] == args.name]
    if not matches:
        known = sorted({r["name"] for r in _rows(args.kind)})
        raise KvsimError(
            f"unknown policy {args.name!r}; expected one of {', '.join(known)}", field="name"
        )
    if len(matches) > 1:
        kinds = ", ".join(r["kind"] for r in matches)
        raise KvsimError(
            f"{args.name!r} is a policy of several kinds ({kinds}); pass --kind", field="name"
        )
    row = matches[0]
    cls_doc = inspect.getdoc(_class(row)) or ""
    if args.json:
        print(json.dumps({**row, "doc": cls_doc}))
        return 0
    print(f"{row['name']} ({row['kind']}, {row['class']})")
    print(cls_doc)
    print("parameters:")
    for key, value in row["params"].items():
        print(f"  {key} = {value!r}")
    return 0


def _class(row: dict[str, Any]) -> type:
    for name, cls, _ in list_policies()[row["kind"]]:
        if name == row["name"]:
            return cls
    raise KvsimError(f"policy {row['name']!r} vanished from the registry", field="name")
