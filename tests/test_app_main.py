"""The multipage app through its entry script, and ``kvsim dashboard``'s command line."""

from __future__ import annotations

import argparse
import sys

import pytest
from streamlit.testing.v1 import AppTest

from app.navigation import APP_DIR, available_pages
from sim.cli import dashboard_cmd


def test_every_available_page_renders_through_navigation():
    at = AppTest.from_file(str(APP_DIR / "main.py"), default_timeout=120).run()
    assert not at.exception
    pages = available_pages()
    assert at.title[0].value == pages[0].title  # the first available page is the default
    for page in pages:
        at.switch_page(str(APP_DIR / page.script)).run()
        assert not at.exception, page.title
        assert not at.error, page.title
        assert at.title[0].value == page.title


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kvsim")
    dashboard_cmd.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    "extra",
    [[], ["--server.port", "8600", "--server.headless", "true"], ["--server.port=1"], ["--help"]],
)
def test_dashboard_passes_every_argument_to_streamlit(extra):
    args = _parse(["dashboard", *extra])
    assert args.streamlit_args == extra
    command = dashboard_cmd.streamlit_command(args.streamlit_args)
    assert command[:4] == [sys.executable, "-m", "streamlit", "run"]
    assert command[4] == str(APP_DIR / "main.py")
    assert command[5:] == extra


def test_dashboard_returns_streamlit_exit_code(monkeypatch):
    seen = []
    monkeypatch.setattr(dashboard_cmd.subprocess, "call", lambda cmd: seen.append(cmd) or 3)
    assert dashboard_cmd.run(_parse(["dashboard", "--server.port", "9"])) == 3
    assert seen[0][-2:] == ["--server.port", "9"]
