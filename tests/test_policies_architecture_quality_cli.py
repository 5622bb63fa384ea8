"""Model transforms (KV bytes per token from reference §1.6), the quality table (lookup or
"unknown", never a guess) and ``kvsim policies``."""

from __future__ import annotations

import argparse
import json

import pytest

from hardware.errors import KvsimError
from sim.cli import policies_cmd
from sim.policies import (
    KvStrategy,
    QualityTable,
    as_cla,
    as_gqa,
    as_mla,
    default_quality_table,
    get_policy,
    quality_label,
    transform_model,
)
from workloads.model_catalog import get_model

LLAMA = get_model("llama-3.1-8b")  # 32 layers, 32 query heads, 8 KV heads, head dim 128


def test_gqa_mqa_cla_mla_bytes_per_token():
    assert LLAMA.kv_bytes_per_token() == 131072  # 128 KiB (reference §1.6)
    gqa2 = as_gqa(LLAMA, 2)
    assert gqa2.id == "llama-3.1-8b+gqa2" and gqa2.kv_bytes_per_token() == 2 * 32 * 2 * 128 * 2
    assert as_gqa(LLAMA, 1).attention == "mqa" and as_gqa(LLAMA, 32).attention == "mha"
    assert as_cla(LLAMA, 2).kv_bytes_per_token() == 131072 / 2
    mla = as_mla(LLAMA)  # d_c = 512, d_R = 64: 576 elements per layer (DeepSeek-V2)
    assert mla.kv_bytes_per_token() == 32 * 576 * 2
    assert transform_model(LLAMA, "gqa-2+cla2").kv_bytes_per_token() == 131072 / 8
    assert transform_model(LLAMA, "mla512").id == "llama-3.1-8b+mla512"


def test_transform_errors():
    with pytest.raises(KvsimError) as err:
        as_gqa(LLAMA, 3)
    assert err.value.field == "groups"
    with pytest.raises(KvsimError):
        transform_model(LLAMA, "gqa")
    with pytest.raises(KvsimError):
        transform_model(LLAMA, "yoco")
    with pytest.raises(KvsimError):
        as_gqa(as_mla(LLAMA), 2)


def test_published_kivi_entry_and_unknown_elsewhere():
    table = default_quality_table()
    kivi2 = get_policy("quantization", "kivi", bits=2, group_size=32, residual_tokens=128)
    entry = table.lookup("longchat-7b", kivi2)
    assert entry is not None and (entry.value, entry.baseline) == (38.30, 38.72)
    assert entry.origin == "published" and "KIVI" in quality_label(entry)
    assert table.lookup("llama-3.1-8b", kivi2) is None
    assert (
        table.lookup("longchat-7b", get_policy("quantization", "kivi", residual_tokens=32)) is None
    )
    assert quality_label(None) == "unknown"
    quality = KvStrategy(get_policy("selection", "h2o"), kivi2).quality("longchat-7b")
    assert quality["selection"] is None and quality["quantization"] is entry


def test_measured_entries_win_and_must_name_every_parameter(tmp_path):
    path = tmp_path / "measured.toml"
    path.write_text(
        '[[entry]]\nmodel = "llama-3.1-8b"\nkind = "selection"\npolicy = "h2o"\n'
        "params = { budget_fraction = 0.2, budget_tokens = 0, recent_fraction = 0.5 }\n"
        'metric = "passkey"\nvalue = 0.9\nbaseline = 1.0\norigin = "measured"\nrun_id = "r1"\n'
    )
    with pytest.raises(KvsimError) as err:  # budget_tokens = 0 is not a valid budget
        QualityTable.from_toml(path)
    assert err.value.source == str(path) and err.value.field.startswith("entry[0].")
    path.write_text(
        '[[entry]]\nmodel = "llama-3.1-8b"\nkind = "selection"\npolicy = "h2o"\n'
        "params = { budget_fraction = 0.2 }\n"
        'metric = "passkey"\nvalue = 0.9\nbaseline = 1.0\norigin = "measured"\nrun_id = "r1"\n'
    )
    with pytest.raises(KvsimError) as err:
        QualityTable.from_toml(path)
    assert err.value.field == "entry[0].params"
    path.write_text(
        path.read_text()
        .replace("{ budget_fraction = 0.2 }", "{ budget_fraction = 0.2, recent_fraction = 0.5 }")
        .replace("budget_fraction = 0.2,", "budget_fraction = 0.2, budget_tokens = 1,")
    )
    with pytest.raises(KvsimError):  # both budgets set
        QualityTable.from_toml(path)
    path.write_text(
        '[[entry]]\nmodel = "llama-3.1-8b"\nkind = "selection"\npolicy = "streaming_llm"\n'
        "params = { sink_tokens = 4, window_tokens = 1020 }\n"
        'metric = "passkey"\nvalue = 0.5\nbaseline = 1.0\norigin = "measured"\n'
    )
    with pytest.raises(KvsimError) as err:
        QualityTable.from_toml(path)
    assert err.value.field == "entry[0].run_id"
    path.write_text(path.read_text() + 'run_id = "r2"\n')
    table = default_quality_table().merged(QualityTable.from_toml(path))
    entry = table.lookup("llama-3.1-8b", get_policy("selection", "streaming_llm"))
    assert entry is not None and entry.value == 0.5


def run(argv, capsys):
    parser = argparse.ArgumentParser()
    policies_cmd.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    code = args.func(args)
    return code, capsys.readouterr().out


def test_cli_list_json_shows_every_policy_with_defaults(capsys):
    code, out = run(["policies", "list", "--json"], capsys)
    rows = json.loads(out)["policies"]
    assert code == 0
    by_name = {(r["kind"], r["name"]): r for r in rows}
    assert by_name[("selection", "pyramidkv")]["params"]["beta"] == 20
    assert by_name[("quantization", "kivi")]["params"] == {
        "bits": 2,
        "group_size": 32,
        "residual_tokens": 128,
    }
    assert all(r["summary"] for r in rows)


def test_cli_list_text_and_show(capsys):
    code, out = run(["policies", "list", "--kind", "quantization"], capsys)
    assert code == 0 and "kivi" in out and "snapkv" not in out
    code, out = run(["policies", "show", "snapkv"], capsys)
    assert code == 0 and "window_tokens = 32" in out and "SnapKV" in out
    with pytest.raises(KvsimError):
        run(["policies", "show", "nonesuch"], capsys)
