"""The torch executor: real steps through the engine, the paged backend and the offload tier.

Independent truths used here:

- the engine's own records under the cost-model executor: with every request arriving at
  t = 0 the scheduler's decisions cannot depend on step durations (nothing happens between
  steps but the steps themselves), so a real run and a simulated run must agree step by step
  on batches, blocks, preemptions and swaps, and request by request on the step in which it
  was scheduled, produced its first token and finished;
- a replay: an executor that returns the real run's measured durations must reproduce the
  real run exactly, arrivals included, which shows durations are all the executor adds;
- :func:`sim.real.model.greedy_generate` (contiguous block tables, checked against
  ``transformers`` in ``test_real_model.py``) for the backend's paged bookkeeping;
- hand-computed byte counts (layers × 2 × tokens × KV heads × head dim × element size) for
  the tier files and for swap traffic against the engine's ``swap_*_tokens``;
- greedy decoding is a function of the token prefix, so a run whose sequences are preempted
  (recompute or swap) must generate the same tokens as one without preemption (float64,
  so that rounding differences between batch shapes cannot flip an argmax).

The real SmolLM2 run (40 requests) is marked slow.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch", reason="needs the 'real' extra: pip install 'kvsim[real]'")
for _module in ("gguf", "tokenizers", "safetensors"):
    pytest.importorskip(_module, reason="needs the 'real' extra: pip install 'kvsim[real]'")

from hardware.catalog import get_accelerator  # noqa: E402
from hardware.errors import KvsimError  # noqa: E402
from sim.cli import main  # noqa: E402
from sim.cost import plan_memory  # noqa: E402
from sim.executor import StepResult  # noqa: E402
from sim.real.backend import SeqWork  # noqa: E402
from sim.real.executor import (  # noqa: E402
    PromptSource,
    TorchExecutor,
    build_torch_executor,
    policy_strategy,
)
from sim.real.model import LlamaModel, greedy_generate  # noqa: E402
from sim.real.offload import FileTier, PinnedHostTier  # noqa: E402
from sim.real.paged_backend import PagedKvBackend  # noqa: E402
from sim.real.tokenizer import gpt2_byte_chars  # noqa: E402
from sim.real.weights import LlamaConfig, load_checkpoint, smollm2_gguf_path  # noqa: E402
from sim.run import load_workload, resolve, run_scenario  # noqa: E402
from sim.scenario import Scenario, load_scenario  # noqa: E402
from sim.scenarios import builtin_path  # noqa: E402
from workloads.model_catalog import get_model  # noqa: E402
from workloads.workload import Workload  # noqa: E402

TINY = {
    "model_type": "llama",
    "vocab_size": 257,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 512,
    "rope_theta": 5000.0,
    "tie_word_embeddings": False,
}
#: KV bytes per token of the tiny model: layers × (K and V) × KV heads × head dim.
TINY_KV_ELEMENTS = 2 * 2 * 2 * 16
SCHEDULER = {"max_num_seqs": 6, "max_batched_tokens": 64, "block_tokens": 4, "max_model_len": 128}
#: Engine columns that describe what a step did (everything but its time).
STEP_SHAPE = [
    "num_prefill",
    "prefill_tokens",
    "num_decode",
    "decode_tokens",
    "kv_blocks_used",
    "kv_blocks_host",
    "preempted",
    "swap_out_tokens",
    "swap_in_tokens",
    "finished",
]
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]


# ---- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face-style checkpoint of a random tiny Llama (weights from a seeded numpy
    Generator) with a byte-level tokenizer: 256 byte tokens plus ``<eos>``."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    directory = tmp_path_factory.mktemp("tiny-llama")
    (directory / "config.json").write_text(json.dumps(TINY))
    config = LlamaConfig(
        vocab_size=TINY["vocab_size"],
        hidden_size=TINY["hidden_size"],
        intermediate_size=TINY["intermediate_size"],
        num_layers=TINY["num_hidden_layers"],
        num_heads=TINY["num_attention_heads"],
        num_kv_heads=TINY["num_key_value_heads"],
        head_dim=TINY["head_dim"],
        rope_theta=TINY["rope_theta"],
        rms_norm_eps=TINY["rms_norm_eps"],
        max_position_embeddings=TINY["max_position_embeddings"],
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in LlamaModel(config).state_dict().items()}
    rng = np.random.default_rng(7)
    tensors = {
        name: torch.from_numpy(
            (
                1.0 + rng.normal(0, 0.1, shape) if "norm" in name else rng.normal(0, 0.3, shape)
            ).astype(np.float32)
        )
        for name, shape in shapes.items()
    }
    save_file(tensors, str(directory / "model.safetensors"))
    vocab = {char: i for i, char in enumerate(gpt2_byte_chars())}
    vocab["<eos>"] = 256
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<eos>"])
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
    return directory


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "prompt.txt"
    path.write_text(
        "Paged attention keeps the key and value cache in fixed-size blocks, so that memory "
        "is allocated on demand and freed as soon as a request finishes. " * 8
    )
    return path


def tiny_model(directory: Path, dtype: torch.dtype = torch.float32) -> LlamaModel:
    return LlamaModel.from_checkpoint(load_checkpoint(directory), dtype=dtype)


def fraction_for_blocks(model_ref: str, blocks: int, accelerator: str = "l4") -> float:
    """The ``gpu_memory_fraction`` whose memory plan leaves exactly ``blocks`` KV blocks."""
    spec, device = get_model(model_ref), get_accelerator(accelerator)
    full = plan_memory(
        spec,
        device,
        gpu_memory_fraction=1.0,
        max_batched_tokens=SCHEDULER["max_batched_tokens"],
        block_tokens=SCHEDULER["block_tokens"],
        max_num_seqs=SCHEDULER["max_num_seqs"],
    )
    fixed = device.memory_bytes - full.kv_pool_bytes_per_gpu
    block = full.kv_bytes_per_token * SCHEDULER["block_tokens"]
    return (fixed + (blocks + 0.5) * block) / device.memory_bytes


def tiny_scenario(
    directory: Path, *, blocks: int, preemption: str = "swap", requests: int = 40
) -> Scenario:
    data = {
        "seed": 3,
        "name": "tiny real run",
        "model": {"config": str(directory)},
        "hardware": {
            "accelerator": "l4",
            "gpu_memory_fraction": fraction_for_blocks(str(directory), blocks),
        },
        "workload": {
            "synthetic": {
                "arrival": "poisson",
                "rate_per_s": 200.0,
                "requests": requests,
                "prompt_tokens": {"dist": "uniform", "low": 6, "high": 40},
                "output_tokens": {"dist": "uniform", "low": 1, "high": 12},
            }
        },
        "scheduler": {**SCHEDULER, "preemption": preemption},
    }
    scenario = Scenario.from_dict(data)
    assert resolve(scenario).memory.num_blocks == blocks
    return scenario


def at_time_zero(workload: Workload) -> Workload:
    return Workload(
        arrival_s=np.zeros(len(workload)),
        prompt_tokens=workload.prompt_tokens,
        output_tokens=workload.output_tokens,
    )


def step_of(times: pd.Series, bounds: np.ndarray) -> np.ndarray:
    """Index of the step whose boundary (start or end time) each time is."""
    index = np.searchsorted(bounds, times.to_numpy() - 5e-10)  # half the 1 ns clock tick
    assert np.allclose(bounds[index], times.to_numpy(), rtol=0, atol=1e-9)
    return index


def schedule(run) -> np.ndarray:
    """Per request: the step that scheduled it, the step of its first token, the step it
    finished in, and its preemption count (one-step rows, single replica)."""
    assert (run.steps["steps"] == 1).all()
    starts, ends = run.steps["start_s"].to_numpy(), run.steps["end_s"].to_numpy()
    return np.stack(
        [
            step_of(run.requests["scheduled_s"], starts),
            step_of(run.requests["first_token_s"], ends),
            step_of(run.requests["finish_s"], ends),
            run.requests["preemptions"].to_numpy(),
        ]
    )


# ---- prompts -------------------------------------------------------------------------------
def test_prompt_source_is_a_seeded_window_of_the_corpus() -> None:
    corpus = np.random.default_rng(1).integers(0, 1000, 300)
    doubled = np.concatenate([corpus, corpus])
    first = PromptSource(corpus, seed=5)
    ids = {index: first.prompt(index, 20 + index) for index in (4, 0, 9)}
    for index, prompt in ids.items():
        start = first.offset(index)
        np.testing.assert_array_equal(prompt, doubled[start : start + 20 + index])
    # Order of requests does not matter; the same seed gives the same prompts.
    again = PromptSource(corpus, seed=5)
    for index in (0, 9, 4):
        np.testing.assert_array_equal(again.prompt(index, 20 + index), ids[index])
    # Longer than the corpus: it wraps around.
    np.testing.assert_array_equal(first.prompt(1, 700)[300:600], first.prompt(1, 700)[:300])
    offsets = {PromptSource(corpus, seed=s).offset(0) for s in range(8)}
    assert len(offsets) > 1  # the seed moves the window


# ---- the second tier -----------------------------------------------------------------------
@pytest.mark.parametrize("fsync", [False, True])
def test_file_tier_round_trip_is_bit_exact_and_on_disk(tmp_path: Path, fsync: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(2, 5, 3, 4, generator=generator),
        torch.randn(3, 7, generator=generator).to(torch.bfloat16),
        torch.randn(6, generator=generator, dtype=torch.float64),
    ]
    expected = 2 * 5 * 3 * 4 * 4 + 3 * 7 * 2 + 6 * 8
    tier = FileTier(tmp_path, fsync=fsync)
    stored = tier.store(11, tensors)
    assert stored.size_bytes == expected
    assert tier.path(11).stat().st_size == expected
    assert tier.held_bytes() == expected
    loaded, transfer = tier.load(11, "cpu")
    assert transfer.size_bytes == expected
    for before, after in zip(tensors, loaded, strict=True):
        assert after.dtype == before.dtype and after.shape == before.shape
        assert torch.equal(after, before)
    assert not tier.path(11).exists() and tier.held_bytes() == 0
    assert tier.bytes_out == tier.bytes_in == expected
    with pytest.raises(KvsimError, match="not offloaded"):
        tier.load(11, "cpu")


def test_file_tier_temporary_directory_is_removed_on_close() -> None:
    tier = FileTier()
    tier.store(0, [torch.ones(4)])
    directory = tier.directory
    assert (directory / "seq-0.kv").stat().st_size == 16
    tier.close()
    assert not directory.exists()
    forgotten = FileTier()
    forgotten.store(0, [torch.ones(4)])
    directory = forgotten.directory
    del forgotten  # never closed: its temporary directory still goes
    assert not directory.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_pinned_host_tier_round_trip_is_bit_exact() -> None:
    tensor = torch.randn(3, 100, 2, 64, device="cuda", dtype=torch.bfloat16)
    tier = PinnedHostTier()
    assert tier.store(1, [tensor]).size_bytes == 3 * 100 * 2 * 64 * 2
    assert tier.held_bytes() == 3 * 100 * 2 * 64 * 2
    (back,), _ = tier.load(1, "cuda")
    assert torch.equal(back, tensor) and tier.held_bytes() == 0


# ---- the paged backend ---------------------------------------------------------------------
def _greedy(backend: PagedKvBackend, prompts: list[list[int]], steps: int) -> list[list[int]]:
    work = [SeqWork(i, tuple(p), 0, len(p)) for i, p in enumerate(prompts)]
    out = [[t] for t in backend.step(work).argmax(-1).tolist()]
    for _ in range(steps - 1):
        work = [
            SeqWork(i, (out[i][-1],), len(p) + len(out[i]) - 1, len(p))
            for i, p in enumerate(prompts)
        ]
        for row, token in zip(out, backend.step(work).argmax(-1).tolist(), strict=True):
            row.append(token)
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_paged_backend_greedy_equals_greedy_generate(tiny_dir: Path, device: str) -> None:
    model = tiny_model(tiny_dir).to(device)
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, 256, n).tolist() for n in (13, 5, 9)]
    backend = PagedKvBackend(model, num_blocks=20, block_tokens=4)
    # Fragment the free list so the sequences' blocks are not contiguous.
    backend.step([SeqWork(99, (1, 2, 3, 4, 5), 0, 5)])
    backend.release(99)
    got = _greedy(backend, prompts, 6)
    assert got == greedy_generate(model, prompts, 6, block_tokens=4)
    used = sum(math.ceil((len(p) + 5) / 4) for p in prompts)
    assert backend.num_free_blocks == 20 - used
    assert backend.stored_bytes() == used * 4 * TINY_KV_ELEMENTS * 4


def test_offload_and_restore_give_bit_identical_logits(tiny_dir: Path, tmp_path: Path) -> None:
    model = tiny_model(tiny_dir)
    rng = np.random.default_rng(3)
    a, b, c = (rng.integers(0, 256, n).tolist() for n in (11, 7, 14))
    swapped = PagedKvBackend(model, num_blocks=12, block_tokens=4, tier=FileTier(tmp_path))
    plain = PagedKvBackend(model, num_blocks=12, block_tokens=4)
    first = [SeqWork(0, tuple(a), 0, 11), SeqWork(1, tuple(b), 0, 7)]
    for backend in (swapped, plain):
        backend.step(first)
    assert swapped.offload(0) == 2 * 2 * 11 * 2 * 16 * 4  # layers, K/V, tokens, heads, dim, B
    assert swapped.tier.path(0).stat().st_size == 2 * 2 * 11 * 2 * 16 * 4
    assert swapped.num_free_blocks == 12 - 2  # sequence 1 keeps its 2 blocks
    # Another sequence takes the freed blocks, so the restore lands elsewhere.
    swapped.step([SeqWork(2, tuple(c), 0, 14)])
    assert swapped.restore(0) == 2 * 2 * 11 * 2 * 16 * 4
    assert not swapped.tier.path(0).exists()
    assert swapped.num_free_blocks == 12 - 3 - 2 - 4
    decode = [SeqWork(0, (5,), 11, 11), SeqWork(1, (6,), 7, 7)]
    assert torch.equal(swapped.step(decode), plain.step(decode))


def test_backend_refuses_what_the_engine_would_not_allow(tiny_dir: Path) -> None:
    backend = PagedKvBackend(tiny_model(tiny_dir), num_blocks=3, block_tokens=4)
    with pytest.raises(KvsimError, match="needs 4 more KV blocks but 3"):
        backend.step([SeqWork(0, tuple(range(13)), 0, 13)])
    backend.step([SeqWork(1, tuple(range(5)), 0, 5)])
    with pytest.raises(KvsimError, match="5 cached tokens but the step starts at position 4"):
        backend.step([SeqWork(1, (7,), 4, 5)])
    with pytest.raises(KvsimError, match="no second memory tier"):
        backend.offload(1)


# ---- through the engine --------------------------------------------------------------------
@pytest.mark.parametrize("preemption", ["swap", "recompute", "cost"])
def test_torch_run_has_the_cost_model_schedule(
    tiny_dir: Path, text_file: Path, preemption: str
) -> None:
    """The acceptance test on a tiny model: 40 requests at t = 0 (module docstring)."""
    scenario = tiny_scenario(tiny_dir, blocks=24, preemption=preemption)
    resolved = resolve(scenario)
    workload = at_time_zero(load_workload(scenario, resolved.max_model_len))
    with build_torch_executor(
        scenario, resolved, checkpoint=tiny_dir, text=text_file, threads=1
    ) as executor:
        real = run_scenario(scenario, executor=executor, workload=workload)
    simulated = run_scenario(scenario, workload=workload, step_mode=True)
    assert real.summary["requests_completed"] == 40
    assert real.summary["preemptions"] > 0  # the pool of 24 blocks is too small for 6 at once
    pd.testing.assert_frame_equal(real.steps[STEP_SHAPE], simulated.steps[STEP_SHAPE])
    np.testing.assert_array_equal(schedule(real), schedule(simulated))
    assert not np.allclose(real.steps["duration_s"], simulated.steps["duration_s"])
    outputs = executor.outputs()
    assert [len(outputs[i]) for i in range(40)] == workload.output_tokens.tolist()
    assert executor.backend.num_free_blocks == executor.backend.num_blocks  # all released


class ReplayExecutor:
    """Returns recorded step durations in order."""

    supports_stretch = False

    def __init__(self, durations: list[float]) -> None:
        self.durations = iter(durations)

    def step(self, plan) -> StepResult:
        return StepResult(duration_s=next(self.durations))

    def decode_stretch(self, contexts: np.ndarray, steps: int) -> np.ndarray:
        raise AssertionError("not used")


def test_replaying_measured_durations_reproduces_the_real_run(
    tiny_dir: Path, text_file: Path
) -> None:
    scenario = tiny_scenario(tiny_dir, blocks=24, requests=30)
    with build_torch_executor(
        scenario, resolve(scenario), checkpoint=tiny_dir, text=text_file, threads=1
    ) as executor:
        real = run_scenario(scenario, executor=executor)
    durations = [m.duration_s for m in executor.measurements]
    assert len(durations) == len(real.steps)
    replay = run_scenario(scenario, executor=ReplayExecutor(durations))
    pd.testing.assert_frame_equal(real.requests, replay.requests)
    timing = ["start_s", "end_s", "duration_s", *STEP_SHAPE]
    pd.testing.assert_frame_equal(real.steps[timing], replay.steps[timing])
    # The breakdown: swap time in transfer_s, the rest in compute_s (float32 columns).
    parts = real.steps["compute_s"] + real.steps["transfer_s"]
    np.testing.assert_allclose(parts, real.steps["duration_s"], rtol=1e-5)
    assert (real.steps.loc[real.steps["swap_out_tokens"] > 0, "transfer_s"] > 0).all()


@pytest.mark.parametrize("preemption", ["swap", "recompute", "cost"])
def test_preempted_requests_generate_the_same_tokens(
    tiny_dir: Path, tmp_path: Path, text_file: Path, preemption: str
) -> None:
    model = tiny_model(tiny_dir, torch.float64)
    runs = {}
    for blocks in (20, 400):
        scenario = tiny_scenario(tiny_dir, blocks=blocks, preemption=preemption, requests=24)
        backend = PagedKvBackend(model, blocks, SCHEDULER["block_tokens"], FileTier(tmp_path))
        with build_torch_executor(
            scenario,
            resolve(scenario),
            checkpoint=tiny_dir,
            text=text_file,
            threads=1,
            backend=backend,
        ) as executor:
            result = run_scenario(scenario, executor=executor)
        runs[blocks] = (result, executor)
    (small, tight), (large, roomy) = runs[20], runs[400]
    assert small.summary["preemptions"] > 0 and large.summary["preemptions"] == 0
    assert tight.outputs() == roomy.outputs()
    # And they are the model's greedy continuations of the prompts the executor gave out.
    lengths = large.requests["output_tokens"].tolist()
    prompts = [roomy.prompt_ids(i).tolist() for i in range(len(lengths))]
    reference = greedy_generate(model, prompts, max(lengths), block_tokens=4)
    assert roomy.outputs() == {
        i: ref[:n] for i, (ref, n) in enumerate(zip(reference, lengths, strict=True))
    }
    swapped_tokens = int(small.steps["swap_out_tokens"].sum() + small.steps["swap_in_tokens"].sum())
    if preemption != "cost":  # cost preemption picks swap or recompute per victim
        assert (swapped_tokens > 0) == (preemption == "swap")
    # Every swapped token moved its K and V of every layer, in float64, out and back.
    assert tight.transfer_bytes == swapped_tokens * TINY_KV_ELEMENTS * 8


# ---- building and the CLI ------------------------------------------------------------------
def test_build_names_the_checkpoint_and_the_scenario_model(tiny_dir: Path) -> None:
    scenario = load_scenario(builtin_path("real_smollm2"))
    with pytest.raises(KvsimError) as caught:
        build_torch_executor(scenario, resolve(scenario), checkpoint=tiny_dir)
    assert "torch executor runs" in str(caught.value)
    assert "tiny-llama" in str(caught.value) and "scenario model is smollm2-135m" in str(
        caught.value
    )
    assert caught.value.field == "model"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["policies.prefix_cache.enabled=true"], "policies.prefix_cache"),
        (
            [
                "disaggregation.prefill_replicas=1",
                "disaggregation.decode_replicas=1",
                "scheduler.preemption=recompute",
            ],
            "disaggregation",
        ),
        (["model.compute_dtype=fp8"], "model.compute_dtype"),
        (["hardware.tp=2"], "hardware.tp"),
    ],
)
def test_build_rejects_what_it_cannot_run(overrides: list[str], field: str) -> None:
    scenario = load_scenario(builtin_path("real_smollm2"), overrides)
    with pytest.raises(KvsimError) as caught:
        build_torch_executor(scenario, resolve(scenario))
    assert caught.value.field == field


def test_policy_strategy_is_none_for_the_plain_16_bit_cache() -> None:
    path = builtin_path("real_smollm2")
    assert policy_strategy(load_scenario(path)) is None
    assert policy_strategy(load_scenario(path, ["policies.quantization.name=bf16"])) is None
    for overrides, kind, name in (
        (["policies.quantization.name=int8"], "quantization", "int8"),
        (["policies.selection.name=streaming_llm"], "selection", "streaming_llm"),
    ):
        strategy = policy_strategy(load_scenario(path, overrides))
        assert strategy is not None and getattr(strategy, kind).name == name


@pytest.mark.parametrize(
    "policy", [{"quantization": {"name": "int8"}}, {"selection": {"name": "streaming_llm"}}]
)
def test_kv_policies_run_on_the_policy_backend(
    tiny_dir: Path, text_file: Path, policy: dict
) -> None:
    policy_cache = pytest.importorskip("sim.real.policy_cache")
    data = tiny_scenario(tiny_dir, blocks=24, requests=10).to_dict() | {"policies": policy}
    scenario = Scenario.from_dict(data)
    with build_torch_executor(
        scenario, resolve(scenario), checkpoint=tiny_dir, text=text_file, threads=1
    ) as executor:
        result = run_scenario(scenario, executor=executor)
    assert isinstance(executor.backend, policy_cache.PolicyKvBackend)
    assert result.summary["requests_completed"] == 10
    lengths = [len(executor.outputs()[i]) for i in range(10)]
    assert lengths == result.requests["output_tokens"].tolist()


def test_decode_stretch_is_refused(tiny_dir: Path) -> None:
    executor = TorchExecutor(
        PagedKvBackend(tiny_model(tiny_dir), 4, 4), PromptSource(np.arange(10), 0)
    )
    assert executor.supports_stretch is False
    with pytest.raises(KvsimError, match="one at a time"):
        executor.decode_stretch(np.array([5]), 3)


def test_cli_torch_options_need_the_torch_executor(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--threads", "1", str(builtin_path("real_smollm2"))]) == 2
    assert "--threads applies to --executor torch only" in capsys.readouterr().err


def test_cli_runs_the_torch_executor(
    tiny_dir: Path, text_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    scenario = tiny_scenario(tiny_dir, blocks=24, requests=8)
    path = tmp_path / "tiny.toml"
    lines = [
        f'model.config = "{tiny_dir}"',
        'hardware.accelerator = "l4"',
        f"hardware.gpu_memory_fraction = {scenario.hardware.gpu_memory_fraction!r}",
        "workload.synthetic.requests = 8",
        "workload.synthetic.rate_per_s = 200.0",
        'workload.synthetic.prompt_tokens = { dist = "uniform", low = 6, high = 40 }',
        'workload.synthetic.output_tokens = { dist = "uniform", low = 1, high = 12 }',
        *(f"scheduler.{k} = {v}" for k, v in SCHEDULER.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    argv = ["run", str(path), "--executor", "torch", "--checkpoint", str(tiny_dir)]
    argv += ["--text", str(text_file), "--threads", "1", "--json", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["requests_completed"] == 8
    assert summary["torch"]["steps"] == len(pd.read_parquet(out / "steps.parquet"))
    assert summary["torch"]["device"] == "cpu"
    records = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    requests = pd.read_parquet(out / "requests.parquet")
    assert [len(r["output_ids"]) for r in records] == requests["output_tokens"].tolist()
    assert [len(r["prompt_ids"]) for r in records] == requests["prompt_tokens"].tolist()
    # The tiny tokenizer's ids are byte values, so each prompt is a window of the text's
    # bytes, read as a ring.
    ring = text_file.read_bytes() * 2
    assert all(bytes(r["prompt_ids"]) in ring for r in records)


# ---- the real model ------------------------------------------------------------------------
@pytest.mark.slow
def test_real_smollm2_run_of_40_requests_has_the_cost_model_schedule(shared_dir: Path) -> None:
    """The issue's acceptance: SmolLM2-135M, 40 requests, prompts from shared/data/text."""
    try:
        smollm2_gguf_path()
    except KvsimError as err:
        pytest.skip(str(err))
    scenario = load_scenario(builtin_path("real_smollm2"))
    resolved = resolve(scenario)
    workload = at_time_zero(load_workload(scenario, resolved.max_model_len))
    assert len(workload) == 40
    with build_torch_executor(
        scenario, resolved, text=shared_dir / "data" / "text", threads=1
    ) as executor:
        real = run_scenario(scenario, executor=executor, workload=workload)
    simulated = run_scenario(scenario, workload=workload, step_mode=True)
    assert real.summary["requests_completed"] == 40
    assert real.summary["preemptions"] > 0  # 96 blocks for up to 8 requests of up to 303
    pd.testing.assert_frame_equal(real.steps[STEP_SHAPE], simulated.steps[STEP_SHAPE])
    np.testing.assert_array_equal(schedule(real), schedule(simulated))
    outputs = executor.outputs()
    assert [len(outputs[i]) for i in range(40)] == workload.output_tokens.tolist()
    assert executor.transfer_bytes == 23_040 * int(
        real.steps["swap_out_tokens"].sum() + real.steps["swap_in_tokens"].sum()
    )
