"""``kvsim dashboard [streamlit options]``: start the Streamlit what-if dashboard.

Runs ``python -m streamlit run <app/main.py> ARGS...`` in a child process and returns its
exit code. Every argument after ``dashboard`` goes to ``streamlit run`` unchanged (e.g.
``--server.port 8600 --server.headless true``; ``--help`` shows streamlit's options), so this
subcommand defines no options of its own. The app's path is found without importing it
(the dependency direction is app -> sim).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

from hardware.errors import KvsimError


def app_main_path() -> Path:
    """The dashboard's entry script, ``app/main.py`` of the installed package."""
    spec = importlib.util.find_spec("app.main")
    if spec is None or spec.origin is None:
        raise KvsimError("the dashboard package 'app' is not installed", field="app.main")
    return Path(spec.origin)


def streamlit_command(extra: list[str]) -> list[str]:
    """The command line that starts the dashboard with ``extra`` streamlit arguments."""
    return [sys.executable, "-m", "streamlit", "run", str(app_main_path()), *extra]


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("streamlit") is None:
        raise KvsimError("streamlit is not installed; pip install streamlit", field="dashboard")
    try:
        return subprocess.call(streamlit_command(list(args.streamlit_args)))
    except KeyboardInterrupt:  # Ctrl-C reaches streamlit too, which shuts down cleanly
        return 130


def register(subparsers: argparse._SubParsersAction) -> None:
    # prefix_chars="+" makes every "--server.port"-style argument a plain string, so they all
    # land in REMAINDER and reach streamlit untouched.
    parser = subparsers.add_parser(
        "dashboard",
        help="start the Streamlit what-if dashboard (arguments go to `streamlit run`)",
        description="Start the Streamlit dashboard. All arguments are passed to `streamlit run`.",
        prefix_chars="+",
        add_help=False,
    )
    parser.add_argument("streamlit_args", nargs=argparse.REMAINDER, help="streamlit options")
    parser.set_defaults(func=run)
