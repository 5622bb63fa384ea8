"""Streamlit helpers shared by the pages: user errors as messages, page state kept in the URL,
the scenario TOML download and upload, cached catalog reads, the run cache."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import streamlit as st

from app import state
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


def url_state(
    key: str, defaults: Mapping[str, Any], validate: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """A copy of the page's state dict, kept in ``st.session_state[key]``. On the session's
    first run of the page it is the link's (:func:`app.state.from_link`); a link that does
    not validate is shown as an error and the defaults are used."""
    if key not in st.session_state:
        params = {name: st.query_params[name] for name in st.query_params}
        data, error = state.from_link(params, defaults, validate)
        st.session_state[key] = data
        if error is not None:
            st.session_state[f"{key}_url_error"] = error
    if f"{key}_url_error" in st.session_state:
        st.error(st.session_state.pop(f"{key}_url_error"), icon=":material/link_off:")
    return copy.deepcopy(st.session_state[key])


def keep_in_url(key: str, data: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """Store the page's state dict and write its difference from ``defaults`` to the URL."""
    st.session_state[key] = copy.deepcopy(dict(data))
    st.query_params.from_dict(state.to_query(data, defaults))


def reset_widgets(prefixes: Iterable[str]) -> None:
    """Forget the widgets whose keys start with one of ``prefixes``, so each re-reads its
    initial value from the page's state dict on the next run."""
    starts = tuple(prefixes)
    for name in [k for k in st.session_state if str(k).startswith(starts)]:
        del st.session_state[name]


def select(label: str, options: list, current: Any, key: str, **kwargs: Any) -> Any:
    """A selectbox at ``current``, which is offered even when not among ``options`` (a value
    loaded from a link or a scenario TOML stays what it was)."""
    if current is not None and current not in options:
        options = [current, *options]
    index = options.index(current) if current in options else 0
    return st.selectbox(label, options, index=index, key=key, **kwargs)


def scenario_file(
    key: str, data: Mapping[str, Any], file_name: str, validate: Callable[[dict], None]
) -> dict[str, Any] | None:
    """Download ``data`` as the scenario TOML ``kvsim run`` reads, and take a scenario TOML
    upload: the new file's dict once ``validate`` accepts it, else ``None`` (a malformed or
    invalid file is shown as an error naming it). Widget keys start with ``key``."""
    st.download_button(
        "Download scenario TOML",
        state.scenario_toml(data),
        file_name=file_name,
        mime="application/toml",
        on_click="ignore",
        icon=":material/download:",
        key=f"{key}_download_toml",
    )
    upload = st.file_uploader("Load a scenario TOML", type=["toml"], key=f"{key}_toml_upload")
    if upload is None or st.session_state.get(f"{key}_toml_loaded") == upload.file_id:
        return None
    st.session_state[f"{key}_toml_loaded"] = upload.file_id
    with user_errors():
        loaded = state.parse_scenario_toml(upload.getvalue(), upload.name)
        try:
            validate(loaded)
        except KvsimError as err:
            source = err.source or upload.name
            raise KvsimError(err.message, source=source, line=err.line, field=err.field) from None
        return loaded
    return None


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
