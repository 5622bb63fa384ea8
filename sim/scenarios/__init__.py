"""Built-in scenarios shipped with kvsim (TOML files in this folder)."""

from __future__ import annotations

from pathlib import Path

from hardware.errors import KvsimError

SCENARIOS_DIR = Path(__file__).resolve().parent
DEFAULT_SCENARIO = "default"


def builtin_scenarios() -> list[str]:
    """Names of the built-in scenarios."""
    return sorted(p.stem for p in SCENARIOS_DIR.glob("*.toml"))


def builtin_path(name: str = DEFAULT_SCENARIO) -> Path:
    """The TOML file of built-in scenario ``name``."""
    path = SCENARIOS_DIR / f"{name}.toml"
    if not path.is_file():
        raise KvsimError(
            f"no built-in scenario {name!r}; known: {', '.join(builtin_scenarios())}",
            field="scenario",
        )
    return path
