"""The dashboard's pages and which backends each needs.

A page is listed only when every module it imports from the project exists, so the app runs
(and its tests pass) while parts of the engine are still being built; adding a page is one
:class:`PageSpec` line. Kept free of Streamlit so the selection logic is unit-tested.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class PageSpec:
    """One page: its script (relative to ``app/``), title, Material icon, URL path and the
    project modules it needs."""

    script: str
    title: str
    icon: str
    url_path: str
    requires: tuple[str, ...] = ()


#: Every page, in sidebar order; the first available one is the default page.
PAGES: tuple[PageSpec, ...] = (
    PageSpec(
        "pages/whatif_page.py", "What-if", ":material/tune:", "whatif", ("sim.run", "sim.figures")
    ),
    PageSpec(
        "pages/policies_page.py",
        "Policies",
        ":material/compare_arrows:",
        "policies",
        ("sim.run", "sim.policies"),
    ),
    PageSpec(
        "pages/planner_page.py",
        "Capacity planner",
        ":material/calculate:",
        "planner",
        ("sim.plan",),
    ),
    PageSpec(
        "pages/traces_page.py",
        "Traces",
        ":material/timeline:",
        "traces",
        ("workloads.traces", "workloads.stats", "workloads.synthetic"),
    ),
    PageSpec("pages/hardware_page.py", "Hardware & models", ":material/memory:", "hardware", ()),
    PageSpec(
        "pages/calibration_page.py",
        "Calibration",
        ":material/straighten:",
        "calibration",
        ("sim.calibration",),
    ),
)


def module_exists(name: str) -> bool:
    """Whether ``name`` can be imported (its parent packages are imported to find it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def available_pages(
    pages: Sequence[PageSpec] = PAGES, exists: Callable[[str], bool] = module_exists
) -> list[PageSpec]:
    """The pages whose script file is present and whose required modules all exist."""
    return [
        page
        for page in pages
        if (APP_DIR / page.script).is_file() and all(exists(m) for m in page.requires)
    ]
