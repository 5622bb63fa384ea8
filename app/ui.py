"""Streamlit helpers shared by the pages: user errors as messages, cached catalog reads, the
run cache."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import streamlit as st

from hardware.catalog import list_accelerators, list_links, list_tiers
from hardware.errors import KvsimError
from hardware.specs import Accelerator, Link, MemoryTier
from workloads.model import ModelSpec
from workloads.model_catalog import list_models

if TYPE_CHECKING:
    from app.runner import RunCache
    from sim.run import RunResult


@contextmanager
def user_errors() -> Iterator[None]:
    """Show a :class:`KvsimError` raised inside the block as ``st.error`` (its one-line text,
    no traceback) and every warning raised there as ``st.warning``; the page carries on
    after the block."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except KvsimError as err:
            st.error(str(err), icon=":material/error:")
    for warning in caught:
        st.warning(str(warning.message), icon=":material/warning:")


@st.cache_resource
def accelerators() -> list[Accelerator]:
    return list_accelerators()


@st.cache_resource
def tiers() -> list[MemoryTier]:
    return list_tiers()


@st.cache_resource
def links() -> list[Link]:
    return list_links()


@st.cache_resource
def models() -> list[ModelSpec]:
    return list_models()


@st.cache_resource
def run_cache() -> RunCache[RunResult]:
    """Simulation results by scenario hash, shared by every page and session of the server
    (a strategy on the Policies page and the same scenario on What-if are one run). Imported
    here, not at the top, so pages without simulations do not need :mod:`sim.run`."""
    from app.runner import RunCache

    return RunCache(maxsize=32)
