"""The ``kvsim`` command line: one subcommand module per job, dispatched here.

Each module in :data:`COMMANDS` exposes ``register(subparsers)``, which adds its parser and
sets ``func`` to a callable taking the parsed ``argparse.Namespace`` and returning an exit
code. User errors (:class:`KvsimError`) print one line on stderr and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from hardware.errors import KvsimError

#: Subcommand modules under ``sim.cli``, in the order ``kvsim --help`` lists them.
COMMANDS = (
    "run_cmd",
    "estimate_cmd",
    "kv_size_cmd",
    "hardware_cmd",
    "models_cmd",
    "trace_cmd",
    "policies_cmd",
    "plan_cmd",
    "sweep_cmd",
    "dashboard_cmd",
    "probe_cmd",
    "quality_cmd",
    "calibrate_cmd",
    "validate_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvsim", description="Simulate and cost LLM-inference KV-cache strategies."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"sim.cli.{name}")
        except ModuleNotFoundError as err:  # a command still being built
            if err.name != f"sim.cli.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KvsimError as err:
        print(f"kvsim: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `kvsim ... --json | head`: the reader left, stay quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("kvsim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
