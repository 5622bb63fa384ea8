"""Shared fixtures. Real traces and texts live in ``../shared`` beside the checkout (CI always
has it); tests that need them take the ``shared_dir`` fixture, which skips with the reason
where it is absent. Nothing from ``../shared`` is copied into the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _find_shared() -> Path | None:
    candidates = [os.environ.get("KVSIM_SHARED"), REPO_ROOT.parent / "shared", REPO_ROOT / "shared"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "data").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    found = _find_shared()
    if found is None:
        pytest.skip("../shared (real traces and texts) is not beside this checkout")
    return found


@pytest.fixture(scope="session")
def traces_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "traces"
