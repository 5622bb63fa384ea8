"""The one TOML writer (hardware/toml_write.py): whatever it writes, ``tomllib`` (the
reference reader, TOML 1.0) reads back equal; and its three callers use it."""

from __future__ import annotations

import math
import tomllib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import state
from hardware import toml_write
from hardware.errors import KvsimError
from sim import sweep
from sim.scenario import apply_overrides

#: Any text, control characters, quotes, backslashes, DEL and astral code points included
#: (surrogates cannot be encoded as UTF-8, so TOML cannot hold them).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
SCALARS = st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | TEXT
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
TABLES = st.recursive(
    st.dictionaries(TEXT, VALUES, max_size=4),
    lambda children: st.dictionaries(TEXT, children | VALUES, min_size=1, max_size=3),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(TABLES)
def test_documents_read_back_equal(table):
    assert tomllib.loads(toml_write.dumps(table)) == table


@settings(max_examples=150, deadline=None)
@given(VALUES)
def test_values_read_back_equal(value):
    assert tomllib.loads(f"v = {toml_write.value(value)}")["v"] == value


@settings(max_examples=100, deadline=None)
@given(VALUES)
def test_values_are_what_kvsim_run_set_reads(value):
    # The sweep's overrides and the dashboard's links go through apply_overrides.
    assert apply_overrides({}, [f"a.b={toml_write.value(value)}"]) == {"a": {"b": value}}


def test_special_floats_are_toml_keywords():
    assert toml_write.value(math.inf) == "inf" and toml_write.value(-math.inf) == "-inf"
    assert math.isnan(tomllib.loads(f"v = {toml_write.value(math.nan)}")["v"])


def test_numpy_scalars_are_written_as_numbers():
    # repr(np.float64(x)) is "np.float64(x)" under numpy 2; the writer must not use it.
    assert toml_write.value(np.float64(0.25)) == "0.25"
    assert toml_write.value(np.int64(80_000_000_000)) == "80000000000"
    assert tomllib.loads(f"v = {toml_write.value(np.float32(1.5))}")["v"] == 1.5


def test_control_characters_and_del_are_escaped():
    # TOML forbids U+0000-U+001F (except tab) and U+007F raw in a basic string.
    assert toml_write.string('a"\\\n\x7f') == '"a\\"\\\\\\u000a\\u007f"'


def test_keys_are_bare_only_where_toml_allows():
    assert toml_write.key("max_num-seqs9") == "max_num-seqs9"
    assert toml_write.key("a.b") == '"a.b"' and toml_write.key("") == '""'
    # "$" in a regex also matches before a final newline; a bare "a\n" would be invalid.
    assert toml_write.key("a\n") == '"a\\u000a"'
    text = toml_write.dumps({"hardware": {"tp": 2}, "a b": {"c.d": {"e": 1}}})
    assert text == '[hardware]\ntp = 2\n\n["a b"."c.d"]\ne = 1\n'


def test_unsupported_types_name_the_key():
    with pytest.raises(KvsimError) as err:
        toml_write.dumps({"workload": {"trace": object()}})
    assert err.value.field == "workload.trace"
    with pytest.raises(KvsimError, match="cannot write NoneType"):
        toml_write.value(None)


def test_the_three_callers_use_this_writer():
    assert sweep.toml_literal is toml_write.value
    assert state.scenario_toml(state.DEFAULT_SCENARIO) == toml_write.dumps(state.DEFAULT_SCENARIO)
    assert state.encode_value([1, "x"]) == toml_write.value([1, "x"])
