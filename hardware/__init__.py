"""What kvsim runs on: accelerator, memory-tier and link specs, their catalog, and a probe."""

from hardware.catalog import (
    HARDWARE_PATH_ENV,
    CatalogEntry,
    get_accelerator,
    get_entry,
    get_link,
    get_tier,
    list_accelerators,
    list_entries,
    list_links,
    list_tiers,
    load_accelerator_file,
)
from hardware.errors import KvsimError
from hardware.specs import Accelerator, Efficiency, Link, MemoryTier, Node

__all__ = [
    "HARDWARE_PATH_ENV",
    "Accelerator",
    "CatalogEntry",
    "Efficiency",
    "KvsimError",
    "Link",
    "MemoryTier",
    "Node",
    "get_accelerator",
    "get_entry",
    "get_link",
    "get_tier",
    "list_accelerators",
    "list_entries",
    "list_links",
    "list_tiers",
    "load_accelerator_file",
]
