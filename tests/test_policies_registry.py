"""Policy registry: lookup errors name ``policies.<kind>.<param>``; scenario tables; plug-ins
through the ``kvsim.policies`` entry-point group (a fake distribution, monkeypatched)."""

from __future__ import annotations

import importlib.metadata
import sys
import types
from dataclasses import dataclass

import pytest

from hardware.errors import KvsimError
from sim.policies import registry
from sim.policies.registry import get_policy, list_policies, load_plugins, policy_from_table


def test_unknown_name_suggests_the_close_one():
    with pytest.raises(KvsimError) as err:
        get_policy("selection", "snapk")
    assert err.value.field == "policies.selection.name"
    assert "did you mean 'snapkv'" in str(err.value)


def test_unknown_parameter_names_the_field_and_suggests():
    with pytest.raises(KvsimError) as err:
        get_policy("selection", "snapkv", budget_token=100)
    assert err.value.field == "policies.selection.budget_token"
    assert "budget_tokens" in str(err.value)


def test_bad_value_names_the_field():
    with pytest.raises(KvsimError) as err:
        get_policy("selection", "h2o", budget_fraction=1.5)
    assert err.value.field == "policies.selection.budget_fraction"
    with pytest.raises(KvsimError) as err:
        get_policy("quantization", "kivi", residual_tokens=40)
    assert err.value.field == "policies.quantization.residual_tokens"


def test_unknown_kind():
    with pytest.raises(KvsimError) as err:
        get_policy("selectoin", "h2o")
    assert "did you mean 'selection'" in str(err.value)


def test_naming_one_budget_clears_the_other():
    policy = get_policy("selection", "h2o", budget_tokens=300)
    assert (policy.budget_tokens, policy.budget_fraction) == (300, None)
    policy = get_policy("selection", "snapkv", budget_fraction=0.25)
    assert (policy.budget_tokens, policy.budget_fraction) == (None, 0.25)
    with pytest.raises(KvsimError) as err:
        get_policy("selection", "snapkv", budget_fraction=0.25, budget_tokens=64)
    assert err.value.field == "policies.selection.budget_tokens"


def test_policy_from_table():
    policy = policy_from_table("quantization", {"name": "kivi", "bits": 4})
    assert (policy.name, policy.bits, policy.group_size, policy.residual_tokens) == (
        "kivi",
        4,
        32,
        128,
    )
    with pytest.raises(KvsimError) as err:
        policy_from_table("quantization", {"bits": 4})
    assert err.value.field == "policies.quantization.name"


def test_every_kind_has_a_registry_and_token_level_kinds_are_filled():
    listing = list_policies()
    assert set(listing) == set(registry.KINDS)
    names = {kind: {n for n, _, _ in rows} for kind, rows in listing.items()}
    assert {
        "full",
        "streaming_llm",
        "h2o",
        "tova",
        "snapkv",
        "pyramidkv",
        "ada_kv",
        "quest",
        "duo_attention",
        "knorm",
    } <= names["selection"]
    assert {"fp8", "int8", "int4", "int2", "kivi"} <= names["quantization"]
    assert "palu" in names["low_rank"]
    assert {"similarity_merge", "minicache"} <= names["merging"]


class _FakeEntryPoint:
    def __init__(self, name: str, value: str, loader):
        self.name, self.value, self._loader = name, value, loader

    def load(self):
        return self._loader()


def _plugin_module():
    """A module whose import registers a selection policy, as a third-party package would."""
    module = types.ModuleType("kvsim_fake_plugin")

    def load():
        @registry.register("selection", "keep_first")
        @dataclass(frozen=True)
        class KeepFirst:
            """Keep the first ``budget_tokens`` tokens (a test plug-in)."""

            budget_tokens: int = 8

        module.KeepFirst = KeepFirst
        sys.modules["kvsim_fake_plugin"] = module
        return module

    return load


def test_entry_point_plugins_register(monkeypatch):
    def entry_points(group=None):
        assert group == registry.ENTRY_POINT_GROUP
        return [_FakeEntryPoint("keep_first", "kvsim_fake_plugin", _plugin_module())]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    try:
        assert load_plugins(refresh=True) == ["keep_first"]
        policy = get_policy("selection", "keep_first", budget_tokens=3)
        assert policy.budget_tokens == 3 and policy.name == "keep_first"
        rows = {n: p for n, _, p in list_policies()["selection"]}
        assert rows["keep_first"] == {"budget_tokens": 8}
    finally:
        registry.unregister("selection", "keep_first")
        sys.modules.pop("kvsim_fake_plugin", None)


def test_broken_plugin_is_named(monkeypatch):
    def broken():
        raise ImportError("no module named kvsim_missing")

    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        lambda group=None: [_FakeEntryPoint("missing", "kvsim_missing", broken)],
    )
    with pytest.raises(KvsimError) as err:
        load_plugins(refresh=True)
    assert err.value.field == "missing" and "kvsim_missing" in str(err.value)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [])
    load_plugins(refresh=True)


def test_a_name_cannot_be_taken_by_another_class():
    with pytest.raises(KvsimError) as err:

        @registry.register("selection", "h2o")
        @dataclass(frozen=True)
        class Impostor:
            pass

    assert "already registered" in str(err.value)
    assert get_policy("selection", "h2o").__class__.__module__ == "sim.policies.selection"


def test_policies_import_without_torch():
    import subprocess

    code = "import sys, sim.policies; sim.policies.list_policies(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
