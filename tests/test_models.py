"""Model catalog, KV/parameter/FLOP arithmetic, HF config import, errors and CLI.

Expected numbers: KV bytes/token from ``shared/reference/models.md`` §3 (its table was computed
independently by ``scripts/kv_bytes.py``); parameter counts from the models' published sizes
(Hugging Face model cards and papers); KV format ratios from KIVI's bit accounting (Liu et al.,
ICML 2024: b bits + fp16 scale + fp16 zero per group of 32); the rest by hand below.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.errors import KvsimError
from sim.cli import main
from workloads.model_catalog import (
    CATALOG_DIR,
    MODEL_PATH_ENV,
    get_model,
    list_models,
    model_from_hf_config,
)

REQUIRED_IDS = [
    "llama-2-7b",
    "llama-2-13b",
    "llama-2-70b",
    "llama-3.1-8b",
    "llama-3.1-70b",
    "llama-3.1-405b",
    "mistral-7b-v0.1",
    "mixtral-8x7b",
    "qwen2.5-7b",
    "qwen2.5-72b",
    "deepseek-v2",
    "deepseek-v3",
    "gemma-2-9b",
    "gemma-2-27b",
    "phi-3-mini",
    "phi-3-medium",
    "smollm2-135m",
    "smollm2-360m",
    "smollm2-1.7b",
    "bloom-176b",
]

#: models.md §3, column "KV bytes/token fp16".
REFERENCE_KV_BYTES_FP16 = {
    "llama-2-7b": 524_288,
    "llama-2-13b": 819_200,
    "llama-2-70b": 327_680,
    "llama-3.1-8b": 131_072,
    "llama-3.1-70b": 327_680,
    "llama-3.1-405b": 516_096,
    "mistral-7b-v0.1": 131_072,
    "mixtral-8x7b": 131_072,
    "qwen2.5-7b": 57_344,
    "qwen2.5-72b": 327_680,
    "deepseek-v2": 69_120,
    "deepseek-v3": 70_272,
    "gemma-2-9b": 344_064,
    "gemma-2-27b": 376_832,
    "phi-3-mini": 393_216,
    "phi-3-medium": 204_800,
    "smollm2-135m": 23_040,
    "smollm2-360m": 40_960,
    "smollm2-1.7b": 196_608,
}

#: Published total (and, for MoE, active) parameter counts.
PUBLISHED_PARAMS = {
    "llama-2-7b": (6.74e9, None),
    "llama-2-70b": (68.98e9, None),
    "llama-3.1-8b": (8.03e9, None),
    "llama-3.1-70b": (70.55e9, None),
    "llama-3.1-405b": (405.85e9, None),
    "mixtral-8x7b": (46.7e9, 12.9e9),
    "deepseek-v2": (236e9, 21e9),
    "deepseek-v3": (671e9, 37e9),  # the MTP module is excluded, as in the 671B figure
    "smollm2-135m": (134.5e6, None),
    "qwen2.5-7b": (7.62e9, None),
    "gemma-2-9b": (9.24e9, None),
    "phi-3-mini": (3.82e9, None),
    "bloom-176b": (176.2e9, None),
}

# ---- Hugging Face config.json files as published (architecture fields) -------------------
HF_CONFIGS: dict[str, dict] = {
    "llama-3.1-8b": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "max_position_embeddings": 131072,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "vocab_size": 128256,
    },
    "deepseek-v3": {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "hidden_size": 7168,
        "intermediate_size": 18432,
        "moe_intermediate_size": 2048,
        "num_hidden_layers": 61,
        "num_nextn_predict_layers": 1,
        "num_attention_heads": 128,
        "num_key_value_heads": 128,
        "n_shared_experts": 1,
        "n_routed_experts": 256,
        "num_experts_per_tok": 8,
        "moe_layer_freq": 1,
        "first_k_dense_replace": 3,
        "kv_lora_rank": 512,
        "q_lora_rank": 1536,
        "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 128,
        "v_head_dim": 128,
        "max_position_embeddings": 163840,
        "rope_theta": 10000,
        "tie_word_embeddings": False,
        "vocab_size": 129280,
    },
    "deepseek-v2": {
        "model_type": "deepseek_v2",
        "hidden_size": 5120,
        "intermediate_size": 12288,
        "moe_intermediate_size": 1536,
        "num_hidden_layers": 60,
        "num_attention_heads": 128,
        "num_key_value_heads": 128,
        "n_shared_experts": 2,
        "n_routed_experts": 160,
        "num_experts_per_tok": 6,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "kv_lora_rank": 512,
        "q_lora_rank": 1536,
        "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 128,
        "v_head_dim": 128,
        "max_position_embeddings": 163840,
        "rope_theta": 10000,
        "tie_word_embeddings": False,
        "vocab_size": 102400,
    },
    "gemma-2-9b": {
        "model_type": "gemma2",
        "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 3584,
        "intermediate_size": 14336,
        "max_position_embeddings": 8192,
        "num_attention_heads": 16,
        "num_hidden_layers": 42,
        "num_key_value_heads": 8,
        "query_pre_attn_scalar": 256,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "vocab_size": 256000,
    },
    "mistral-7b-v0.1": {
        "model_type": "mistral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
        "vocab_size": 32000,
    },
    "mixtral-8x7b": {
        "model_type": "mixtral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "num_attention_heads": 32,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "num_local_experts": 8,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "vocab_size": 32000,
    },
    "qwen2.5-7b": {
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "max_position_embeddings": 32768,
        "max_window_layers": 28,
        "num_attention_heads": 28,
        "num_hidden_layers": 28,
        "num_key_value_heads": 4,
        "rope_theta": 1000000.0,
        "sliding_window": 131072,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "vocab_size": 152064,
    },
    "phi-3-mini": {
        "model_type": "phi3",
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "max_position_embeddings": 4096,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 32,
        "rope_theta": 10000.0,
        "sliding_window": 2047,
        "tie_word_embeddings": False,
        "vocab_size": 32064,
    },
    "smollm2-135m": {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "max_position_embeddings": 8192,
        "num_attention_heads": 9,
        "num_hidden_layers": 30,
        "num_key_value_heads": 3,
        "rope_theta": 100000,
        "tie_word_embeddings": True,
        "vocab_size": 49152,
    },
    "bloom-176b": {
        "architectures": ["BloomForCausalLM"],
        "model_type": "bloom",
        "hidden_size": 14336,
        "n_head": 112,
        "n_inner": None,
        "n_layer": 70,
        "vocab_size": 250880,
    },
}

_IDENTITY = ("id", "name", "source")


def _architecture(spec) -> dict:
    return {k: v for k, v in dataclasses.asdict(spec).items() if k not in _IDENTITY}


def _write_json(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    return path


# ---- catalog ------------------------------------------------------------------------------
def test_catalog_holds_every_required_id():
    ids = {m.id for m in list_models()}
    assert set(REQUIRED_IDS) <= ids


@pytest.mark.parametrize("model_id", REQUIRED_IDS)
def test_every_catalog_number_cites_a_source(model_id):
    text = (CATALOG_DIR / f"{model_id}.toml").read_text()
    numeric = re.compile(r"^\s*\w+\s*=\s*-?[\d.]+")
    uncited = [line for line in text.splitlines() if numeric.match(line) and "#" not in line]
    assert uncited == []


def test_lookup_is_case_insensitive():
    assert get_model("Llama-3.1-8B") == get_model("llama-3.1-8b")


# ---- KV bytes -----------------------------------------------------------------------------
@pytest.mark.parametrize(("model_id", "expected"), sorted(REFERENCE_KV_BYTES_FP16.items()))
def test_kv_bytes_per_token_fp16_matches_reference(model_id, expected):
    assert get_model(model_id).kv_bytes_per_token("fp16") == expected


def test_bloom_kv_bytes_per_token_by_hand():
    # 2 (K, V) × 70 layers × 112 heads × 128 dims × 2 bytes
    assert get_model("bloom-176b").kv_bytes_per_token() == 2 * 70 * 112 * 128 * 2


@pytest.mark.parametrize("model_id", REQUIRED_IDS)
def test_kv_dtype_ratios(model_id):
    model = get_model(model_id)
    fp16 = model.kv_bytes_per_token("fp16")
    assert model.kv_bytes_per_token("bf16") == fp16
    assert model.kv_bytes_per_token("fp8") == fp16 / 2
    assert model.kv_bytes_per_token("int4") == fp16 * 5 / 16  # 4 bits + 32 meta bits / 32
    assert model.kv_bytes_per_token("int2") == fp16 * 3 / 16  # 2 bits + 32 meta bits / 32
    assert model.kv_bytes_per_token("int8") == fp16 * (8 + 16 / 128) / 16


def test_gemma2_9b_at_8k_holds_three_quarters_of_naive():
    model = get_model("gemma-2-9b")
    # transformers Gemma2Config: layer i slides when (i + 1) is odd, so layer 0 slides.
    assert [model.is_sliding_layer(i) for i in range(4)] == [True, False, True, False]
    naive = 8192 * model.kv_bytes_per_token()
    # 21 layers capped at 4096 + 21 layers at 8192 over 42 × 8192.
    assert model.kv_bytes_for_sequence(8192) == 0.75 * naive
    assert model.kv_bytes_for_sequence(4096) == 4096 * model.kv_bytes_per_token()


def test_gemma2_27b_alternates_23_of_46_layers():
    model = get_model("gemma-2-27b")
    assert sum(model.is_sliding_layer(i) for i in range(model.num_layers)) == 23
    assert model.kv_bytes_for_sequence(8192) == 0.75 * 8192 * model.kv_bytes_per_token()


@pytest.mark.parametrize("tokens", [0, 1, 4095, 4096, 4097, 32768])
def test_mistral_v01_saturates_at_window(tokens):
    model = get_model("mistral-7b-v0.1")
    assert model.kv_bytes_for_sequence(tokens) == min(tokens, 4096) * 131_072


def test_mistral_v01_full_context_is_512_mib():
    assert get_model("mistral-7b-v0.1").kv_bytes_for_sequence(32768) == 512 * 2**20


def test_phi3_mini_window_caps_at_2047():
    model = get_model("phi-3-mini")
    assert model.kv_bytes_for_sequence(4096) == 2047 * 393_216


def test_cla_factor_two_halves_kv():
    base = get_model("llama-3.1-8b")
    shared = dataclasses.replace(base, kv_share_factor=2)
    assert shared.kv_bytes_per_token() == base.kv_bytes_per_token() / 2
    assert shared.kv_bytes_for_sequence(1000) == base.kv_bytes_for_sequence(1000) / 2
    # 32 layers in groups of 3 -> ceil(32 / 3) = 11 KV-holding layers.
    assert dataclasses.replace(base, kv_share_factor=3).kv_bytes_per_token() == 11 * 4096


@settings(max_examples=60, deadline=None)
@given(
    model_id=st.sampled_from(REQUIRED_IDS),
    tokens=st.integers(min_value=0, max_value=300_000),
    extra=st.integers(min_value=0, max_value=10_000),
)
def test_sequence_kv_is_monotone_and_never_above_naive(model_id, tokens, extra):
    model = get_model(model_id)
    held = model.kv_bytes_for_sequence(tokens)
    assert held <= tokens * model.kv_bytes_per_token()
    assert model.kv_bytes_for_sequence(tokens + extra) >= held
    if model.sliding_window_pattern == "none" or tokens <= model.sliding_window_tokens:
        assert held == tokens * model.kv_bytes_per_token()


# ---- parameters and FLOPs --------------------------------------------------------------------
@pytest.mark.parametrize(("model_id", "published"), sorted(PUBLISHED_PARAMS.items()))
def test_param_counts_match_published(model_id, published):
    total, active = published
    model = get_model(model_id)
    assert model.param_count() == pytest.approx(total, rel=0.02)
    if active is not None:
        assert model.active_param_count() == pytest.approx(active, rel=0.03)
    else:
        assert model.active_param_count() == model.param_count()


def test_smollm2_135m_params_by_hand():
    h, layers, q, kv, ffn, vocab = 576, 30, 9 * 64, 3 * 64, 1536, 49152
    per_layer = 2 * h * q + 2 * h * kv + 3 * h * ffn + 2 * h  # q,o + k,v + SwiGLU + 2 norms
    expected = layers * per_layer + vocab * h + h  # tied embeddings + final norm
    assert expected == 134_515_008
    assert get_model("smollm2-135m").param_count() == expected
    # 2 FLOPs per MAC through every matrix, LM head included (Kaplan et al. 2020).
    assert get_model("smollm2-135m").linear_flops_per_token() == 2 * (
        layers * (2 * h * q + 2 * h * kv + 3 * h * ffn) + vocab * h
    )


@pytest.mark.parametrize(
    "model_id", ["llama-2-70b", "llama-3.1-405b", "mixtral-8x7b", "deepseek-v3", "gemma-2-9b"]
)
def test_linear_flops_are_about_twice_active_params(model_id):
    model = get_model(model_id)
    assert model.linear_flops_per_token() == pytest.approx(2 * model.active_param_count(), rel=0.03)


def test_param_bytes_per_weight_dtype():
    model = get_model("llama-2-7b")
    count = model.param_count()
    assert model.param_bytes("bf16") == 2 * count
    assert model.param_bytes("fp8") == count
    assert model.param_bytes("int4") == count / 2


# ---- Hugging Face config.json ---------------------------------------------------------------
@pytest.mark.parametrize("model_id", sorted(HF_CONFIGS))
def test_hf_config_round_trip_matches_catalog(tmp_path, model_id):
    path = _write_json(tmp_path / model_id / "config.json", HF_CONFIGS[model_id])
    spec = model_from_hf_config(path)
    assert spec.id == model_id
    assert _architecture(spec) == _architecture(get_model(model_id))


def test_hf_config_from_dict_and_via_get_model(tmp_path):
    config = HF_CONFIGS["deepseek-v3"]
    from_dict = model_from_hf_config(config, id="dsv3")
    assert from_dict.id == "dsv3"
    assert from_dict.kv_bytes_per_token() == 70_272
    folder = tmp_path / "DeepSeek-V3"
    _write_json(folder / "config.json", config)
    assert _architecture(get_model(str(folder))) == _architecture(from_dict)
    assert _architecture(get_model(str(folder / "config.json"))) == _architecture(from_dict)


def test_hf_gemma2_layer_types_list():
    config = dict(HF_CONFIGS["gemma-2-9b"])
    config["layer_types"] = ["sliding_attention", "full_attention"] * 21
    spec = model_from_hf_config(config, id="g")
    assert spec.sliding_window_pattern == "alternate"
    config["layer_types"] = ["full_attention"] * 42
    assert model_from_hf_config(config, id="g").sliding_window_pattern == "none"


def test_hf_gpt_neox_style_config():
    config = {  # EleutherAI/pythia-160m
        "model_type": "gpt_neox",
        "hidden_size": 768,
        "intermediate_size": 3072,
        "max_position_embeddings": 2048,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "rotary_emb_base": 10000,
        "vocab_size": 50304,
    }
    spec = model_from_hf_config(config, id="pythia-160m")
    assert (spec.attention, spec.gated_ffn, spec.tied_embeddings) == ("mha", False, False)
    # 4h² attention + 2·h·4h plain MLP per layer, biases not counted.
    assert spec.attention_params_per_layer + spec.ffn_params(0) == 4 * 768**2 + 2 * 768 * 3072


def test_hf_gpt2_style_config():
    config = {"model_type": "gpt2", "n_embd": 768, "n_head": 12, "n_layer": 12}
    config |= {"n_inner": None, "n_positions": 1024, "vocab_size": 50257}
    spec = model_from_hf_config(config, id="gpt2")
    assert (spec.ffn_size, spec.tied_embeddings, spec.max_context_tokens) == (3072, True, 1024)
    assert spec.kv_bytes_per_token() == 2 * 12 * 12 * 64 * 2


# ---- errors ----------------------------------------------------------------------------------
def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def _cli_error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and captured.out == ""
    return lines[0]


def _toml_entry(tmp_path: Path, model_id: str, replace: dict[str, str]) -> Path:
    text = (CATALOG_DIR / "llama-2-7b.toml").read_text().replace('"llama-2-7b"', f'"{model_id}"')
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / f"{model_id}.toml"
    path.write_text(text)
    return path


def _line_of(path: Path, prefix: str) -> int:
    lines = path.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.startswith(prefix))


def test_unknown_id_suggests_close_match(capsys):
    with pytest.raises(KvsimError) as err:
        get_model("llama-2-7")
    assert "llama-2-7b" in _one_line(err)
    assert "llama-2-7b" in _cli_error(capsys, "kv-size", "--model", "llama-2-7", "--tokens", "8")


def test_malformed_toml_names_file_and_line(tmp_path, capsys):
    path = _toml_entry(tmp_path, "broken", {"num_heads = 32 ": "num_heads = = 32 "})
    with pytest.raises(KvsimError) as err:
        get_model(str(path))
    assert err.value.line == _line_of(path, "num_heads")
    assert str(path) in _one_line(err)
    line = _cli_error(capsys, "kv-size", "--model", str(path), "--tokens", "8")
    assert f"{path}:{err.value.line}" in line


def test_malformed_json_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text('{\n  "hidden_size": 4096,\n  "num_hidden_layers": 32,,\n}\n')
    with pytest.raises(KvsimError) as err:
        model_from_hf_config(path)
    assert (err.value.source, err.value.line) == (str(path), 3)
    assert f"{path}:3" in _cli_error(capsys, "kv-size", "--model", str(path), "--tokens", "8")


def test_hf_config_missing_num_hidden_layers(tmp_path, capsys):
    config = {k: v for k, v in HF_CONFIGS["llama-3.1-8b"].items() if k != "num_hidden_layers"}
    path = _write_json(tmp_path / "m" / "config.json", config)
    with pytest.raises(KvsimError) as err:
        model_from_hf_config(path)
    assert (err.value.source, err.value.field) == (str(path), "num_hidden_layers")
    line = _cli_error(capsys, "kv-size", "--model", str(path), "--tokens", "8")
    assert "num_hidden_layers" in line and str(path) in line


def test_negative_size_in_toml(tmp_path, capsys):
    path = _toml_entry(tmp_path, "neg", {"num_layers = 32 ": "num_layers = -32 "})
    with pytest.raises(KvsimError) as err:
        get_model(str(path))
    assert (err.value.field, err.value.line) == ("num_layers", _line_of(path, "num_layers"))
    _one_line(err)
    assert "num_layers" in _cli_error(capsys, "kv-size", "--model", str(path), "--tokens", "8")


def test_negative_size_in_hf_config(tmp_path, capsys):
    config = dict(HF_CONFIGS["llama-3.1-8b"], num_key_value_heads=-8)
    path = _write_json(tmp_path / "m" / "config.json", config)
    with pytest.raises(KvsimError) as err:
        model_from_hf_config(path)
    assert err.value.field == "num_key_value_heads"
    assert err.value.line == _line_of(path, '  "num_key_value_heads"')
    assert "num_key_value_heads" in _cli_error(
        capsys, "kv-size", "--model", str(path), "--tokens", "8"
    )


def test_negative_tokens(capsys):
    assert "--tokens" in _cli_error(capsys, "kv-size", "--model", "llama-2-7b", "--tokens", "-1")


def test_unknown_kv_dtype(capsys):
    line = _cli_error(
        capsys, "kv-size", "--model", "llama-2-7b", "--tokens", "1", "--kv-dtype", "q3"
    )
    assert "kv_dtype" in line


@pytest.mark.parametrize(
    ("replace", "field", "in_file"),
    [
        ({"hidden_size = 4096": "hidden_sise = 4096"}, "hidden_sise", True),  # typo
        ({"vocab_size = 32000": 'vocab_size = "32000"'}, "vocab_size", True),  # wrong type
        ({"rope_theta = 10000.0": "rope_theta = -1.0"}, "rope_theta", True),
        ({"rope_theta = 10000.0": "rope_theta = nan"}, "rope_theta", True),
        ({'attention = "mha"': 'attention = "mqa"'}, "num_kv_heads", True),  # MQA: 1 KV head
        ({"max_context_tokens = 4096": "max_context_tokens = 0"}, "max_context_tokens", True),
        (
            {"ffn_size = 11008": "ffn_size = 11008\nsliding_window_pattern = 'all'"},
            "sliding_window_tokens",
            False,
        ),  # a pattern without a window
    ],
)
def test_toml_field_errors_name_the_field(tmp_path, replace, field, in_file):
    path = _toml_entry(tmp_path, "bad", replace)
    with pytest.raises(KvsimError) as err:
        get_model(str(path))
    _one_line(err)
    assert (err.value.source, err.value.field) == (str(path), field)
    assert (err.value.line is not None) == in_file


def test_toml_missing_field_and_id_mismatch(tmp_path):
    path = _toml_entry(tmp_path, "short", {"vocab_size = 32000": ""})
    with pytest.raises(KvsimError) as err:
        get_model(str(path))
    assert err.value.field == "vocab_size"
    other = tmp_path / "other.toml"
    other.write_text((CATALOG_DIR / "llama-2-7b.toml").read_text())
    with pytest.raises(KvsimError) as err:
        get_model(str(other))
    assert err.value.field == "id"


def test_moe_errors_name_the_moe_field(tmp_path):
    text = (CATALOG_DIR / "mixtral-8x7b.toml").read_text()
    path = tmp_path / "mixtral-8x7b.toml"
    path.write_text(text.replace("active_experts = 2 ", "active_experts = 9 "))
    with pytest.raises(KvsimError) as err:
        get_model(str(path))
    assert err.value.field == "moe.active_experts"
    assert err.value.line == _line_of(path, "active_experts")
    path.write_text(text.replace("num_experts = 8 ", "num_experts = -8 "))
    with pytest.raises(KvsimError) as err:
        get_model(str(path))
    assert err.value.field == "moe.num_experts"


def test_hf_unsupported_layer_pattern_names_layer_types():
    config = dict(HF_CONFIGS["gemma-2-9b"])
    config["layer_types"] = (["sliding_attention"] * 5 + ["full_attention"]) * 7
    with pytest.raises(KvsimError) as err:
        model_from_hf_config(config, id="gemma-3-like")
    assert err.value.field == "layer_types"


@pytest.mark.parametrize("base", ["llama-3.1-8b", "deepseek-v3", "gemma-2-9b", "qwen2.5-7b"])
@pytest.mark.parametrize("bad", ["x", -1, 0, 1.5, [1], {"a": 1}, True])
def test_hf_bad_values_give_kvsim_error_or_spec(base, bad):
    """Whatever a key holds, the result is a spec or a KvsimError naming that key."""
    for key in HF_CONFIGS[base]:
        config = dict(HF_CONFIGS[base], **{key: bad})
        try:
            model_from_hf_config(config, id="fuzz")
        except KvsimError as err:
            assert "\n" not in str(err)
            assert err.field == key or key in str(err)


def test_hf_config_not_an_object(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    with pytest.raises(KvsimError) as err:
        get_model(str(path))
    assert err.value.source == str(path)


def test_missing_file(tmp_path):
    with pytest.raises(KvsimError) as err:
        get_model(str(tmp_path / "nope.toml"))
    assert err.value.source == str(tmp_path / "nope.toml")


# ---- user catalog directories ---------------------------------------------------------------
def test_model_path_env_adds_and_overrides(tmp_path, monkeypatch):
    _toml_entry(tmp_path, "my-llama", {})
    _toml_entry(tmp_path, "llama-2-7b", {"num_layers = 32 ": "num_layers = 16 "}).rename(
        tmp_path / "Llama-2-7B.toml"
    )
    monkeypatch.setenv(MODEL_PATH_ENV, str(tmp_path))
    assert get_model("my-llama").kv_bytes_per_token() == 524_288
    assert get_model("llama-2-7b").kv_bytes_per_token() == 524_288 / 2
    ids = [m.id for m in list_models()]
    assert ids.count("llama-2-7b") == 1 and "my-llama" in ids


def test_model_path_env_must_name_directories(tmp_path, monkeypatch):
    monkeypatch.setenv(MODEL_PATH_ENV, str(tmp_path / "missing"))
    with pytest.raises(KvsimError) as err:
        list_models()
    assert MODEL_PATH_ENV in _one_line(err)


# ---- CLI -----------------------------------------------------------------------------------
def test_kv_size_json(capsys):
    assert main(["kv-size", "--model", "gemma-2-9b", "--tokens", "8192", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kv_bytes_per_token"] == 344_064
    assert result["total_bytes"] == 0.75 * 8192 * 344_064
    assert isinstance(result["total_bytes"], int)
    assert result["naive_total_bytes"] == 8192 * 344_064


def test_kv_size_json_int4_from_config_path(tmp_path, capsys):
    path = _write_json(tmp_path / "llama" / "config.json", HF_CONFIGS["llama-3.1-8b"])
    argv = ["kv-size", "--model", str(path), "--tokens", "1000", "--kv-dtype", "int4", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kv_bytes_per_token"] == 131_072 * 5 // 16
    assert result["total_bytes"] == 1000 * 131_072 * 5 // 16


def test_kv_size_text(capsys):
    assert main(["kv-size", "--model", "llama-2-7b", "--tokens", "4096"]) == 0
    out = capsys.readouterr().out
    assert "524,288 B/token" in out and "2.00 GiB" in out


def test_models_list_json(capsys):
    assert main(["models", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["models"]
    by_id = {row["id"]: row for row in rows}
    assert set(REQUIRED_IDS) <= set(by_id)
    assert by_id["deepseek-v3"]["kv_bytes_per_token"] == 70_272


def test_models_list_text(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert all(model_id in out for model_id in REQUIRED_IDS)


def test_models_show_json(capsys):
    assert main(["models", "show", "DeepSeek-V3", "--json", "--kv-dtype", "fp8"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["id"] == "deepseek-v3"
    assert info["kv_bytes_per_token"] == 70_272 // 2
    assert info["moe"]["num_experts"] == 256
    assert info["param_bytes"] == 2 * info["param_count"]


def test_models_show_unknown(capsys):
    assert "phi-3-mini" in _cli_error(capsys, "models", "show", "phi-3-mni")
