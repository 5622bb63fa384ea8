"""The policy KV cache on a tiny random Llama: independent references are the paged
``LlamaModel.forward`` (logits), the selection policies' simulation faces (token counts per
layer), ``KvStrategy.kv_bytes`` (stored bytes in each format), the papers' rules (which
positions StreamingLLM keeps, KIVI's residual), and exactness invariants (full-rank Palu,
MiniCache retaining every token, merging with an unreachable threshold, token-by-token vs
chunked decoding where the policy acts by position or at prompt completion)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the 'real' extra: pip install 'kvsim[real]'")
pytest.importorskip("gguf", reason="needs the 'real' extra: pip install 'kvsim[real]'")
pytest.importorskip("tokenizers", reason="needs the 'real' extra: pip install 'kvsim[real]'")
pytest.importorskip("safetensors", reason="needs the 'real' extra: pip install 'kvsim[real]'")

from hardware.errors import KvsimError  # noqa: E402
from sim.policies import KvStrategy, QualityTable, get_policy  # noqa: E402
from sim.policies.quality import TABLE_PATH, measured_entry, write_measured  # noqa: E402
from sim.policies.tensor import selection as ts  # noqa: E402
from sim.real.backend import KvBackend, SeqWork  # noqa: E402
from sim.real.kv_cache import PagedKVCache  # noqa: E402
from sim.real.model import LlamaModel, StepBatch  # noqa: E402
from sim.real.policy_cache import PolicyKvBackend, model_spec_of  # noqa: E402
from sim.real.weights import LlamaConfig  # noqa: E402

torch.set_num_threads(1)
CONFIG = LlamaConfig(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=32,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)
PROMPT = 48
LENGTH = 66


@pytest.fixture(scope="module")
def model() -> LlamaModel:
    built = LlamaModel(CONFIG)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for name, param in built.named_parameters():
            scale = 0.1 if name.endswith("norm.weight") else 0.3
            values = rng.normal(0, scale, param.shape) + (1.0 if scale == 0.1 else 0.0)
            param.copy_(torch.from_numpy(values.astype(np.float32)))
    return built.eval()


@pytest.fixture(scope="module")
def ids() -> list[int]:
    return np.random.default_rng(1).integers(0, CONFIG.vocab_size, LENGTH).tolist()


def paged_logits(
    model: LlamaModel, ids: list[int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The paged model's logits, its cache held in ``dtype``."""
    c = CONFIG
    cache = PagedKVCache(32, 4, c.num_layers, c.num_kv_heads, c.head_dim, dtype)
    with torch.no_grad():
        return model(StepBatch.from_lists([ids], [0], [list(range(32))], 4), cache)[0]


def run(
    backend: PolicyKvBackend, ids: list[int], chunk: int, seq: int = 0, check=None
) -> torch.Tensor:
    """Prefill the first PROMPT tokens, then decode in chunks; logits of every position.
    ``check(ctx)`` runs after each step."""
    out, start, size = [], 0, PROMPT
    while start < len(ids):
        part = ids[start : start + size]
        out.append(backend.step([SeqWork(seq, tuple(part), start, PROMPT)], all_logits=True)[0])
        start, size = start + len(part), chunk
        if check is not None:
            check(start)
    return torch.cat(out)


def strategy(**tables: dict) -> KvStrategy:
    return KvStrategy.from_tables(tables)


# ---- logits -------------------------------------------------------------------------------
def test_full_strategy_gives_the_paged_models_logits(model, ids):
    backend = PolicyKvBackend(model, KvStrategy())
    assert isinstance(backend, KvBackend)
    got = run(backend, ids, chunk=5)
    assert torch.allclose(got, paged_logits(model, ids), atol=1e-4)


def test_batched_sequences_of_different_lengths_match_one_by_one(model, ids):
    """Two sequences in one step (right-padded tokens; KV heads padded because SnapKV keeps
    different tokens per head) give each sequence the logits it gets alone."""
    pick = strategy(selection={"name": "snapkv", "budget_tokens": 24, "window_tokens": 8})
    seqs = {0: (ids, PROMPT), 1: (ids[::-1][:40], 30)}

    def steps(seq: int) -> list[SeqWork]:
        tokens, prompt = seqs[seq]
        out = [SeqWork(seq, tuple(tokens[:prompt]), 0, prompt)]
        out += [SeqWork(seq, (tokens[p],), p, prompt) for p in (prompt, prompt + 1)]
        return out

    alone = {}
    for seq in seqs:
        solo = PolicyKvBackend(model, pick)
        alone[seq] = [solo.step([w], all_logits=True)[0] for w in steps(seq)]
    together = PolicyKvBackend(model, pick)
    for i, pair in enumerate(zip(steps(0), steps(1), strict=True)):
        logits = together.step(list(pair), all_logits=True)
        for row, w in enumerate(pair):
            width = len(w.token_ids)
            assert torch.allclose(logits[row, :width], alone[w.seq_id][i], atol=1e-4)


@pytest.mark.parametrize(
    "tables",
    [
        {"selection": {"name": "streaming_llm", "sink_tokens": 4, "window_tokens": 12}},
        {"selection": {"name": "snapkv", "budget_tokens": 24, "window_tokens": 8}},
        {"selection": {"name": "knorm", "budget_fraction": 0.5}},
        {"selection": {"name": "duo_attention", "sink_tokens": 4, "window_tokens": 8}},
        {"selection": {"name": "quest", "budget_tokens": 12, "page_tokens": 4}},
        {"quantization": {"name": "int8"}},
        {"quantization": {"name": "int4"}},
    ],
    ids=lambda t: next(iter(t.values()))["name"],
)
def test_chunked_decoding_equals_token_by_token_where_policies_act_by_position(model, ids, tables):
    """StreamingLLM and DuoAttention windows apply per query; Quest selects pages per query
    over what it can read; SnapKV and K-norm act once at prompt completion; int8/int4 encode
    per token: chunks change nothing."""
    one = run(PolicyKvBackend(model, strategy(**tables)), ids, chunk=1)
    eight = run(PolicyKvBackend(model, strategy(**tables)), ids, chunk=8)
    assert torch.allclose(one, eight, atol=1e-4)


def test_chunks_matter_for_h2o_where_eviction_follows_attention(model, ids):
    tables = {"selection": {"name": "h2o", "budget_fraction": 0.25}}
    one = run(PolicyKvBackend(model, strategy(**tables)), ids, chunk=1)
    eight = run(PolicyKvBackend(model, strategy(**tables)), ids, chunk=8)
    assert torch.allclose(one[:PROMPT], eight[:PROMPT], atol=1e-4)
    assert not torch.allclose(one[PROMPT:], eight[PROMPT:], atol=1e-3)


# ---- kept tokens against the simulation face -------------------------------------------------
SELECTIONS = [
    ("full", {}),
    ("streaming_llm", {"sink_tokens": 4, "window_tokens": 12}),
    ("h2o", {"budget_fraction": 0.25}),
    ("h2o", {"budget_tokens": 20, "recent_fraction": 0.3}),
    ("tova", {"budget_fraction": 0.25}),
    ("snapkv", {"budget_tokens": 24, "window_tokens": 8}),
    ("pyramidkv", {"budget_tokens": 24, "window_tokens": 8}),
    ("ada_kv", {"budget_tokens": 24, "window_tokens": 8}),
    ("ada_kv", {"budget_tokens": 24, "window_tokens": 8, "physical": True}),
    ("knorm", {"budget_fraction": 0.5, "dense_layers": 1}),
    ("quest", {"budget_tokens": 16, "page_tokens": 4}),
    ("duo_attention", {"sink_tokens": 4, "window_tokens": 8}),
    ("duo_attention", {"sink_tokens": 4, "window_tokens": 8, "physical": False}),
]


@pytest.mark.parametrize(("name", "params"), SELECTIONS, ids=[f"{n}{p}" for n, p in SELECTIONS])
def test_kept_and_stored_tokens_equal_the_simulation_face(model, ids, name, params):
    policy = get_policy("selection", name, **params)
    backend = PolicyKvBackend(model, KvStrategy(policy))
    layers = CONFIG.num_layers
    seen = []

    def check(ctx: int) -> None:
        kept = backend.kept_tokens(0)
        stored = backend.stored_tokens(0)
        want_kept = policy.kept_tokens_per_layer([ctx], [PROMPT], layers)[0]
        want_stored = policy.stored_tokens_per_layer([ctx], [PROMPT], layers)[0]
        if name == "duo_attention":  # streaming heads are chosen over all layers together
            kept, stored = kept.mean(), stored.mean()
            want_kept, want_stored = want_kept.mean(), want_stored.mean()
        np.testing.assert_allclose(kept, want_kept)
        np.testing.assert_allclose(stored, want_stored)
        seen.append(ctx)

    run(backend, ids, chunk=3, check=check)
    assert seen[0] == PROMPT and seen[-1] == LENGTH


def test_streaming_keeps_the_sinks_and_the_most_recent_positions(model, ids):
    backend = PolicyKvBackend(
        model, strategy(selection={"name": "streaming_llm", "sink_tokens": 4, "window_tokens": 12})
    )
    run(backend, ids, chunk=5)
    expected = [*range(4), *range(LENGTH - 12, LENGTH)]
    for layer in range(CONFIG.num_layers):
        assert backend.kept_positions(0, layer) == [expected] * CONFIG.num_kv_heads


def test_h2o_always_keeps_its_recent_share(model, ids):
    policy = get_policy("selection", "h2o", budget_fraction=0.25, recent_fraction=0.5)
    backend = PolicyKvBackend(model, KvStrategy(policy))

    def check(ctx: int) -> None:
        recent = int(policy.kept_tokens([ctx], [PROMPT])[0]) // 2
        for head in backend.kept_positions(0, 1):
            assert head[len(head) - recent :] == list(range(ctx - recent, ctx))

    run(backend, ids, chunk=4, check=check)


def test_duo_attention_streams_the_chosen_fraction_of_heads(model, ids):
    policy = get_policy("selection", "duo_attention", streaming_head_fraction=0.25)
    backend = PolicyKvBackend(model, KvStrategy(policy))
    backend.step([SeqWork(0, tuple(ids[:PROMPT]), 0, PROMPT)])
    heads = backend.streaming_heads(0)
    assert heads.shape == (CONFIG.num_layers, CONFIG.num_kv_heads)
    assert int(heads.sum()) == round(0.25 * CONFIG.num_layers * CONFIG.num_kv_heads)


# ---- bytes -----------------------------------------------------------------------------------
BYTES_CASES = [
    {},
    {"quantization": {"name": "fp8"}},
    {"quantization": {"name": "int8"}},
    {"quantization": {"name": "int4"}},
    {"quantization": {"name": "int2", "group_size": 16}},
    {"quantization": {"name": "kivi", "bits": 2, "residual_tokens": 32}},
    {"quantization": {"name": "kivi", "bits": 4, "group_size": 16, "residual_tokens": 16}},
    {"low_rank": {"name": "palu"}},
    {"low_rank": {"name": "palu"}, "quantization": {"name": "int8"}},
    {
        "selection": {"name": "streaming_llm", "sink_tokens": 4, "window_tokens": 12},
        "quantization": {"name": "int4"},
    },
    {
        "selection": {"name": "snapkv", "budget_tokens": 24, "window_tokens": 8},
        "quantization": {"name": "int8"},
    },
    {
        "selection": {"name": "quest", "budget_tokens": 16, "page_tokens": 4},
        "quantization": {"name": "kivi", "residual_tokens": 32},
    },
]


@pytest.mark.parametrize(
    "tables", BYTES_CASES, ids=lambda t: "+".join(v["name"] for v in t.values()) or "full"
)
def test_stored_bytes_equal_kv_strategy_stored_bytes(model, ids, tables):
    """Bytes counted from what the cache holds (codes, fp16 scales, KIVI's residual at each
    step) equal the simulation face's formula for the same context."""
    chosen = strategy(**tables)
    backend = PolicyKvBackend(model, chosen)
    spec = model_spec_of(CONFIG)

    def check(ctx: int) -> None:
        want = chosen.kv_bytes(spec, [ctx], [PROMPT]).stored_bytes[0]
        assert backend.stored_bytes() == pytest.approx(want)

    run(backend, ids, chunk=5, check=check)


def test_offload_moves_the_stored_bytes_and_restore_resumes(model, ids):
    chosen = strategy(quantization={"name": "int8"})
    reference = run(PolicyKvBackend(model, chosen), ids, chunk=len(ids))
    backend = PolicyKvBackend(model, chosen)
    backend.step([SeqWork(7, tuple(ids[:PROMPT]), 0, PROMPT)])
    held = backend.stored_bytes()
    assert backend.offload(7) == held and backend.stored_bytes() == 0
    with pytest.raises(KvsimError):
        backend.step([SeqWork(7, (ids[PROMPT],), PROMPT, PROMPT)])
    assert backend.restore(7) == held
    rest = backend.step([SeqWork(7, tuple(ids[PROMPT:]), PROMPT, PROMPT)], all_logits=True)[0]
    assert torch.allclose(rest, reference[PROMPT:], atol=1e-4)
    backend.release(7)
    assert backend.stored_bytes() == 0


# ---- exactness of the lossy formats at their lossless settings -----------------------------
def test_full_rank_palu_reconstructs_keys_and_values(model, ids):
    got = run(
        PolicyKvBackend(model, strategy(low_rank={"name": "palu", "rank_fraction": 1.0})), ids, 6
    )
    assert torch.allclose(got, paged_logits(model, ids), atol=1e-3)
    half = run(PolicyKvBackend(model, strategy(low_rank={"name": "palu"})), ids, 6)
    assert not torch.allclose(half, got, atol=1e-2)


def test_minicache_retaining_every_token_is_exact(model, ids):
    exact = strategy(
        merging={"name": "minicache", "start_layer_fraction": 0.0, "retention_fraction": 1.0}
    )
    got = run(PolicyKvBackend(model, exact), ids, 6)
    assert torch.allclose(got, paged_logits(model, ids), atol=1e-4)
    merged = strategy(merging={"name": "minicache", "start_layer_fraction": 0.0})
    assert not torch.allclose(run(PolicyKvBackend(model, merged), ids, 6), got, atol=1e-2)


def test_similarity_merge_with_an_unreachable_threshold_only_evicts(model, ids):
    stream = {"name": "streaming_llm", "sink_tokens": 4, "window_tokens": 12}
    plain = run(PolicyKvBackend(model, strategy(selection=stream)), ids, 4)
    never = strategy(
        selection=stream, merging={"name": "similarity_merge", "similarity_threshold": 1.0}
    )
    always = strategy(
        selection=stream, merging={"name": "similarity_merge", "similarity_threshold": -1.0}
    )
    assert torch.allclose(run(PolicyKvBackend(model, never), ids, 4), plain, atol=1e-5)
    assert not torch.allclose(run(PolicyKvBackend(model, always), ids, 4), plain, atol=1e-3)


def test_kivi_keeps_the_last_residual_tokens_exact(model, ids):
    """With the residual longer than the text, KIVI quantizes nothing: logits equal those of
    the paged model with an fp16 cache (KIVI's residual precision)."""
    kivi = strategy(quantization={"name": "kivi", "residual_tokens": 128})
    got = run(PolicyKvBackend(model, kivi), ids, 5)
    assert torch.allclose(got, paged_logits(model, ids, torch.float16), atol=3e-4)
    assert not torch.allclose(got, paged_logits(model, ids), atol=3e-4)


# ---- rejected combinations and bad steps -------------------------------------------------------
@pytest.mark.parametrize(
    ("tables", "field"),
    [
        (
            {"selection": {"name": "h2o"}, "quantization": {"name": "kivi"}},
            "policies.quantization.name",
        ),
        ({"selection": {"name": "h2o"}, "merging": {"name": "minicache"}}, "policies.merging.name"),
        ({"selection": {"name": "snapkv"}, "low_rank": {"name": "palu"}}, "policies.low_rank.name"),
        (
            {"selection": {"name": "ada_kv"}, "merging": {"name": "similarity_merge"}},
            "policies.merging.name",
        ),
        ({"quantization": {"name": "int4", "group_size": 24}}, "policies.quantization.group_size"),
    ],
)
def test_unsupported_combinations_are_rejected(model, tables, field):
    with pytest.raises(KvsimError) as err:
        PolicyKvBackend(model, strategy(**tables))
    assert err.value.field == field


def test_steps_must_continue_where_the_sequence_stopped(model, ids):
    backend = PolicyKvBackend(model, KvStrategy())
    with pytest.raises(KvsimError):
        backend.step([SeqWork(0, tuple(ids[:4]), 3, 4)])
    backend.step([SeqWork(0, tuple(ids[:4]), 0, 4)])
    with pytest.raises(KvsimError):
        backend.step([SeqWork(0, (ids[5],), 5, 4)])


# ---- tensor faces added for the real cache ----------------------------------------------------
def test_streaming_visible_is_streaming_mask_of_each_query_context():
    keys = torch.zeros((2, 30, 4))
    visible = ts.streaming_visible(torch.arange(30), torch.arange(30), 3, 5)
    for p in range(30):
        expected = ts.streaming_mask(keys[:, : p + 1], 3, 5)[0]
        assert visible[p, : p + 1].tolist() == expected.tolist()


def test_quest_query_mask_is_quest_mask_per_query():
    gen = torch.Generator().manual_seed(3)
    keys = torch.randn((2, 37, 8), generator=gen)
    queries = torch.randn((4, 6, 8), generator=gen)
    batched = ts.quest_query_mask(keys, queries, 12, 4)
    assert batched.shape == (2, 6, 37)
    for t in range(6):
        assert torch.equal(batched[:, t], ts.quest_mask(keys, queries[:, t], 12, 4))
    # 12 tokens of budget = 3 pages of 4 per KV head
    assert batched.sum(-1).tolist() == [[12] * 6, [12] * 6]


def test_quest_query_mask_with_lengths_is_quest_mask_of_each_query_context():
    """Queries of a decode chunk see the chunk's later keys in the cache; with ``lengths``
    each query selects exactly as it would alone over its own prefix."""
    gen = torch.Generator().manual_seed(4)
    keys = torch.randn((2, 45, 8), generator=gen)
    queries = torch.randn((4, 7, 8), generator=gen)
    lengths = torch.tensor([30, 31, 33, 36, 40, 44, 45])
    batched = ts.quest_query_mask(keys, queries, 12, 4, lengths)
    for t, n in enumerate(lengths.tolist()):
        alone = ts.quest_mask(keys[:, :n], queries[:, t], 12, 4)
        assert torch.equal(batched[:, t, :n], alone)
        assert not batched[:, t, -(-n // 4) * 4 :].any()  # no page past the query's own


# ---- the quality table writer -------------------------------------------------------------------
def test_write_measured_adds_replaces_and_keeps_other_entries(tmp_path):
    path = tmp_path / "table.toml"
    path.write_text(TABLE_PATH.read_text(encoding="utf-8"), encoding="utf-8")
    before = QualityTable.from_toml(path).entries
    snap = get_policy("selection", "snapkv", budget_tokens=300, window_tokens=16)
    first = measured_entry("test-model", snap, "perplexity", 16.0, 15.6, "measured: run 1")
    write_measured([first], path)
    table = QualityTable.from_toml(path)
    assert table.lookup("test-model", snap).value == 16.0
    assert table.entries[: len(before)] == before  # published and earlier measured entries
    second = measured_entry("test-model", snap, "perplexity", 16.5, 15.6, "measured: run 2")
    write_measured([second], path)
    table = QualityTable.from_toml(path)
    mine = [e for e in table.entries if e.model == "test-model"]
    assert [(e.value, e.citation) for e in mine] == [(16.5, (("run_id", "measured: run 2"),))]
    assert len(table.entries) == len(before) + 1
    assert table.lookup("test-model", get_policy("selection", "snapkv")) is None


def test_retained_quality_reads_perplexity_as_lower_is_better():
    int8 = get_policy("quantization", "int8")
    worse_ppl = measured_entry("m", int8, "perplexity", 16.0, 15.0, "r")
    worse_accuracy = measured_entry("m", int8, "passkey_accuracy", 0.75, 1.0, "r")
    assert worse_ppl.retained == pytest.approx(15.0 / 16.0)
    assert worse_accuracy.retained == pytest.approx(0.75)
    assert measured_entry("m", int8, "passkey_accuracy", 0.5, 0.0, "r").retained is None
