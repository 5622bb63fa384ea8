"""The torch executor: engine steps run on a real model, timed on the real device.

:class:`TorchExecutor` implements :class:`sim.executor.Executor`. The engine, scheduler and
block accounting are the ones the cost model runs under (DESIGN.md, "one engine, two
executors"); only a step's duration comes from a measurement instead of the roofline. For
each :class:`~sim.scheduler.StepPlan` it

1. handles the plan's preemptions: a sequence preempted for recompute loses its KV
   (``backend.release``; it will be prefilled again, prompt plus the tokens it already
   generated, as vLLM's ``PreemptionMode.RECOMPUTE`` does); one preempted for swap has its
   KV moved to the second memory tier (``backend.offload``: pinned host memory on CUDA, files
   on disk on CPU, :mod:`sim.real.offload`); under ``cost`` preemption the scheduler picks
   one of the two per victim (``seq.swapped``) and the executor follows;
2. brings back the KV of swapped sequences the plan resumes (``backend.restore``);
3. runs every prefill chunk and decode token of the plan as one batched forward
   (``backend.step``): a prefill chunk's tokens are the request's prompt ids (a window of a
   text corpus, :class:`PromptSource`) followed by the tokens it has generated, a decode's
   token is the one it sampled last;
4. samples greedily (argmax) for each chunk that completes its sequence's tokens and for each
   decode, and keeps the tokens per request (:meth:`TorchExecutor.outputs`);
5. releases the KV of sequences that generated their last token (the engine frees their
   blocks when it commits the step: ``generated == output_tokens``).

The step's wall time covers all of this; on CUDA the device is synchronised before the
clock starts and before it stops, so the time is the device's, not the launch queue's.
Warm-up steps (:meth:`TorchExecutor.warm_up`) run before the engine starts and are not
recorded. Output lengths come from the workload, as in the simulation: the model's
end-of-sequence token does not stop a request.

Prefix caching is not supported (a request's KV is its own; the backend interface has no
block sharing), nor is prefill/decode disaggregation (KV would have to move between
replicas), nor tensor or pipeline parallelism (a replica runs on one device). Several
replicas share one model and one cache of ``replicas × num_blocks`` blocks; their steps run
one after another in real time, each timed alone, while simulated time runs them side by
side.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hardware.errors import KvsimError
from sim.executor import StepResult
from sim.real.backend import KvBackend, SeqWork

if TYPE_CHECKING:
    from sim.real.tokenizer import TextTokenizer
    from sim.real.weights import LlamaConfig
    from sim.run import Resolved
    from sim.scenario import Scenario
    from sim.scheduler import StepPlan
    from workloads.model import ModelSpec

#: Torch dtypes the executor computes in, by the scenario's ``model.compute_dtype``.
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: KV formats the full-precision paged cache stores as they are (the model's dtype).
PLAIN_KV_DTYPES = ("fp16", "bf16")
#: Sequence id of the warm-up sequence (engine ids are request indices, never negative).
WARMUP_SEQ_ID = -1
#: Fraction of the currently available memory the real KV cache may take.
CACHE_MEMORY_FRACTION = 0.8


# ---- prompts -------------------------------------------------------------------------------
def default_text_files() -> list[Path]:
    """The ``*.txt`` files of ``shared/data/text`` beside the checkout (or under
    ``$KVSIM_SHARED``), sorted by name; a :class:`KvsimError` when there is none."""
    root = Path(__file__).resolve().parents[2]
    candidates = [os.environ.get("KVSIM_SHARED"), root.parent / "shared", root / "shared"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "data" / "text").is_dir():
            files = sorted((Path(candidate) / "data" / "text").glob("*.txt"))
            if files:
                return files
    raise KvsimError(
        "no prompt text: shared/data/text is not beside this checkout; pass a text file "
        "(--text FILE) or set KVSIM_SHARED",
        field="text",
    )


def text_files(text: str | Path | None) -> list[Path]:
    """The corpus files: the default ones, one file, or a directory's ``*.txt`` files."""
    if text is None:
        return default_text_files()
    path = Path(text)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise KvsimError("directory holds no *.txt file", source=str(path), field="text")
        return files
    if not path.is_file():
        raise KvsimError("text file not found", source=str(path), field="text")
    return [path]


class PromptSource:
    """Prompt token ids cut from a corpus read as a ring.

    Request ``index`` with a prompt of ``length`` tokens gets ``length`` consecutive corpus
    tokens starting at an offset drawn from ``np.random.default_rng((seed, index))``,
    wrapping around the corpus end (so any length works). The draw depends only on the seed
    and the request, not on the order requests are served in, and is cached.
    """

    def __init__(self, corpus_ids: np.ndarray, seed: int) -> None:
        corpus = np.asarray(corpus_ids, dtype=np.int64).reshape(-1)
        if corpus.size == 0:
            raise KvsimError("the prompt corpus has no tokens", field="text")
        self.corpus = corpus
        self.seed = seed
        self._prompts: dict[int, np.ndarray] = {}

    @classmethod
    def from_files(
        cls, tokenizer: TextTokenizer, files: SequenceOf[Path], seed: int
    ) -> PromptSource:
        """Tokenize ``files`` (joined in the given order) into a corpus."""
        ids = []
        for path in files:
            try:
                ids.append(tokenizer.encode(path.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as err:
                raise KvsimError(f"cannot read text: {err}", source=str(path)) from None
            except KvsimError as err:
                raise KvsimError(err.message, source=str(path), field=err.field) from None
        return cls(np.concatenate([np.asarray(i, dtype=np.int64) for i in ids]), seed)

    def offset(self, index: int) -> int:
        """Where request ``index``'s prompt starts in the corpus."""
        rng = np.random.default_rng((self.seed, index))
        return int(rng.integers(0, self.corpus.size))

    def prompt(self, index: int, length: int) -> np.ndarray:
        """The ``length`` prompt ids of request ``index`` (the same array on every call)."""
        cached = self._prompts.get(index)
        if cached is None or cached.size != length:
            positions = self.offset(index) + np.arange(length)
            cached = self.corpus.take(positions, mode="wrap")
            cached.setflags(write=False)
            self._prompts[index] = cached
        return cached


# ---- measurements --------------------------------------------------------------------------
@dataclass(frozen=True)
class StepMeasurement:
    """What one real step took and held.

    ``duration_s``: wall time of the whole step; ``transfer_s``: the part spent moving KV to
    and from the second tier; ``transfer_bytes``: bytes moved; ``batched_tokens``: tokens
    through the model; ``kv_bytes``: KV the backend holds in device memory after the step;
    ``peak_memory_bytes``: on CUDA the most device memory allocated during the step, on CPU
    the process's peak resident set so far (``VmHWM``, which only grows).
    """

    duration_s: float
    transfer_s: float
    transfer_bytes: int
    batched_tokens: int
    kv_bytes: int
    peak_memory_bytes: int


def _peak_rss_bytes() -> int:
    """The process's peak resident set size (``VmHWM``), or ``ru_maxrss`` where there is no
    ``/proc``."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> None:
    """Restart the ``VmHWM`` count from the current resident set (Linux ``clear_refs``
    value 5), so the peak measured later is the run's, not the weight loading's."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


# ---- the executor --------------------------------------------------------------------------
class TorchExecutor:
    """Runs engine steps on ``backend`` with prompts from ``prompts`` (module docstring).

    ``device`` is where the backend's tensors live (for synchronisation and memory
    statistics); ``tokenizer``, if given, turns outputs back into text (:meth:`output_text`).
    """

    supports_stretch = False

    def __init__(
        self,
        backend: KvBackend,
        prompts: PromptSource,
        *,
        device: str | torch.device = "cpu",
        tokenizer: TextTokenizer | None = None,
    ) -> None:
        self.backend = backend
        self.prompts = prompts
        self.device = torch.device(device)
        self.tokenizer = tokenizer
        self.measurements: list[StepMeasurement] = []
        self._cuda = self.device.type == "cuda"
        self._generated: dict[int, list[int]] = {}
        self._prompt_lengths: dict[int, int] = {}
        self._offloaded: set[int] = set()

    # ---- results -------------------------------------------------------------------------
    def outputs(self) -> dict[int, list[int]]:
        """Generated token ids by request index (a copy)."""
        return {index: list(ids) for index, ids in self._generated.items()}

    def prompt_ids(self, index: int) -> np.ndarray:
        """The prompt ids request ``index`` was given (it must have been served)."""
        if index not in self._prompt_lengths:
            raise KvsimError(f"request {index} was not served", field="index")
        return self.prompts.prompt(index, self._prompt_lengths[index])

    def output_text(self, index: int) -> str:
        """Request ``index``'s generated tokens as text (needs a tokenizer)."""
        if self.tokenizer is None:
            raise KvsimError("this executor has no tokenizer", field="tokenizer")
        return self.tokenizer.decode(self._generated.get(index, []))

    @property
    def wall_s(self) -> float:
        """Total measured step time (warm-up excluded)."""
        return float(sum(m.duration_s for m in self.measurements))

    @property
    def peak_memory_bytes(self) -> int:
        """Peak over all steps (see :class:`StepMeasurement`)."""
        return max((m.peak_memory_bytes for m in self.measurements), default=0)

    @property
    def peak_kv_bytes(self) -> int:
        return max((m.kv_bytes for m in self.measurements), default=0)

    @property
    def transfer_bytes(self) -> int:
        return int(sum(m.transfer_bytes for m in self.measurements))

    # ---- running -------------------------------------------------------------------------
    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize(self.device)

    def warm_up(self, prefill_tokens: int = 32, decode_steps: int = 3) -> None:
        """Run a prefill of ``prefill_tokens`` corpus tokens and ``decode_steps`` decodes on a
        scratch sequence, then free it: first calls pay for kernel selection, allocator growth
        and caches, which a serving engine pays once at start-up, not per request."""
        if prefill_tokens < 1 or decode_steps < 0:
            raise KvsimError(
                f"need prefill_tokens >= 1 and decode_steps >= 0, got {prefill_tokens}, "
                f"{decode_steps}",
                field="warm_up",
            )
        ids = self.prompts.corpus.take(np.arange(prefill_tokens), mode="wrap").tolist()
        work = SeqWork(WARMUP_SEQ_ID, tuple(ids), 0, prefill_tokens)
        token = int(self.backend.step([work]).argmax(-1)[0])
        for position in range(prefill_tokens, prefill_tokens + decode_steps):
            work = SeqWork(WARMUP_SEQ_ID, (token,), position, prefill_tokens)
            token = int(self.backend.step([work]).argmax(-1)[0])
        self.backend.release(WARMUP_SEQ_ID)
        self._sync()
        if not self._cuda:
            _reset_peak_rss()

    def _tokens(self, index: int, prompt_tokens: int, start: int, count: int) -> tuple[int, ...]:
        """Ids at positions ``start .. start+count-1`` of request ``index``: its prompt, then
        what it generated."""
        self._prompt_lengths[index] = prompt_tokens
        generated = self._generated.setdefault(index, [])
        end = start + count
        if end > prompt_tokens + len(generated):
            raise KvsimError(
                f"request {index} is asked for tokens up to position {end} but has only "
                f"{prompt_tokens} prompt and {len(generated)} generated tokens",
                field="plan",
            )
        if end <= prompt_tokens:
            return tuple(self.prompts.prompt(index, prompt_tokens)[start:end].tolist())
        if start >= prompt_tokens:
            return tuple(generated[start - prompt_tokens : end - prompt_tokens])
        head = self.prompts.prompt(index, prompt_tokens)[start:].tolist()
        return (*head, *generated[: end - prompt_tokens])

    def step(self, plan: StepPlan) -> StepResult:
        """Run ``plan`` for real and return its measured duration (module docstring)."""
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self._sync()
        start = time.perf_counter()
        moved = 0
        for seq in plan.preempted:
            if seq.swapped:
                moved += self.backend.offload(seq.index)
                self._offloaded.add(seq.index)
            else:
                self.backend.release(seq.index)
        for seq in (*plan.prefill, *plan.decode):
            if seq.index in self._offloaded:
                moved += self.backend.restore(seq.index)
                self._offloaded.discard(seq.index)
        self._sync()
        transferred = time.perf_counter()
        work = [
            SeqWork(
                seq.index,
                self._tokens(seq.index, seq.prompt_tokens, int(context), int(count)),
                int(context),
                seq.prompt_tokens,
            )
            for seq, count, context in zip(
                plan.prefill, plan.prefill_tokens, plan.prefill_context, strict=True
            )
        ]
        work += [
            SeqWork(
                seq.index,
                self._tokens(seq.index, seq.prompt_tokens, int(context) - 1, 1),
                int(context) - 1,
                seq.prompt_tokens,
            )
            for seq, context in zip(plan.decode, plan.decode_context, strict=True)
        ]
        if work:
            sampled = self.backend.step(work).argmax(-1).tolist()
            emits = [*plan.prefill_emits.tolist(), *([True] * len(plan.decode))]
            for seq, token, emit in zip((*plan.prefill, *plan.decode), sampled, emits, strict=True):
                if not emit:
                    continue
                generated = self._generated[seq.index]
                generated.append(int(token))
                if len(generated) == seq.output_tokens:
                    self.backend.release(seq.index)
        self._sync()
        end = time.perf_counter()
        peak = torch.cuda.max_memory_allocated(self.device) if self._cuda else _peak_rss_bytes()
        self.measurements.append(
            StepMeasurement(
                duration_s=end - start,
                transfer_s=transferred - start,
                transfer_bytes=moved,
                batched_tokens=plan.num_batched_tokens,
                kv_bytes=self.backend.stored_bytes(),
                peak_memory_bytes=int(peak),
            )
        )
        return StepResult(
            duration_s=end - start, compute_s=end - transferred, transfer_s=transferred - start
        )

    def decode_stretch(self, plan: StepPlan, steps: int) -> np.ndarray:
        """Not available: real steps are run and measured one at a time
        (``supports_stretch = False``, so the engine never asks)."""
        raise KvsimError(
            "the torch executor runs steps one at a time and cannot price a decode stretch",
            field="executor",
        )

    def close(self) -> None:
        """Release the second tier's files or buffers."""
        tier = getattr(self.backend, "tier", None)
        if tier is not None:
            tier.close()

    def __enter__(self) -> TorchExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- building one for a scenario -----------------------------------------------------------
#: Architecture fields a scenario's model must share with the checkpoint, as
#: ``(ModelSpec field, LlamaConfig field)``.
ARCHITECTURE_FIELDS = (
    ("num_layers", "num_layers"),
    ("hidden_size", "hidden_size"),
    ("num_heads", "num_heads"),
    ("num_kv_heads", "num_kv_heads"),
    ("head_dim", "head_dim"),
    ("ffn_size", "intermediate_size"),
    ("vocab_size", "vocab_size"),
)


def same_architecture(spec: ModelSpec, config: LlamaConfig) -> bool:
    """Whether the catalog model ``spec`` is the Llama-family decoder ``config`` describes:
    equal shapes, dense (no MoE), grouped-query (or MHA/MQA) attention on every layer."""
    return (
        all(getattr(spec, a) == getattr(config, b) for a, b in ARCHITECTURE_FIELDS)
        and spec.moe is None
        and spec.attention in ("mha", "gqa", "mqa")
        and spec.sliding_window_tokens is None
        and spec.kv_share_factor == 1
    )


def _checkpoint_name(config: LlamaConfig, source: str) -> str:
    """The catalog id of the checkpoint's architecture, or its file name if none matches."""
    from workloads.model_catalog import list_models

    for spec in list_models():
        if same_architecture(spec, config):
            return spec.id
    return Path(source).name


def policy_strategy(scenario: Scenario) -> Any | None:
    """The scenario's KV strategy (:meth:`Scenario.kv_strategy`) when the paged
    full-precision cache cannot run it, else ``None``: a full cache in a 16-bit format (the
    model's own dtype) is plain paged KV; any selection, other format, low rank or merging
    needs the policy backend."""
    strategy = scenario.kv_strategy()
    plain = (
        strategy.selection.name == "full"
        and strategy.quantization.name in PLAIN_KV_DTYPES
        and strategy.low_rank is None
        and strategy.merging is None
    )
    return None if plain else strategy


def _policy_backend(model: Any, strategy: Any, scenario: Scenario, model_id: str) -> KvBackend:
    try:
        from sim.real.policy_cache import PolicyKvBackend
    except ModuleNotFoundError as err:
        if err.name != "sim.real.policy_cache":
            raise
        raise KvsimError(
            f"KV policies {strategy.label()} need the policy KV backend "
            "(sim.real.policy_cache.PolicyKvBackend), which this installation lacks; "
            "run the torch executor with the full cache in a 16-bit KV format",
            source=scenario.source,
            field="policies",
        ) from None
    try:
        return PolicyKvBackend(model, strategy, model_id)
    except KvsimError as err:
        raise KvsimError(err.message, source=scenario.source, field=err.field) from None


def _available_memory_bytes(device: torch.device) -> int | None:
    """Free device memory on CUDA; ``MemAvailable`` of ``/proc/meminfo`` on CPU (``None``
    where it cannot be read)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _check_scenario(scenario: Scenario) -> None:
    if scenario.prefix_caching != "none":
        raise KvsimError(
            "the torch executor keeps each request's KV to itself and cannot share cached "
            "prefix blocks; set [policies.prefix_cache] enabled = false",
            source=scenario.source,
            field="policies.prefix_cache",
        )
    if scenario.hardware.gpus_per_replica > 1:
        raise KvsimError(
            f"the torch executor runs a replica on one device, not tp × pp = "
            f"{scenario.hardware.gpus_per_replica}; set hardware.tp and hardware.pp to 1",
            source=scenario.source,
            field="hardware.tp",
        )
    if scenario.disaggregation is not None:
        raise KvsimError(
            "the torch executor runs one model and cannot hand KV between prefill and decode "
            "replicas; remove [disaggregation]",
            source=scenario.source,
            field="disaggregation",
        )


def build_torch_executor(
    scenario: Scenario,
    resolved: Resolved,
    *,
    device: str = "cpu",
    checkpoint: str | Path | None = None,
    text: str | Path | None = None,
    threads: int | None = None,
    backend: KvBackend | None = None,
    offload_dir: str | Path | None = None,
) -> TorchExecutor:
    """A warmed-up :class:`TorchExecutor` for ``scenario`` (``resolved`` by
    :func:`sim.run.resolve`).

    ``checkpoint``: the weights (default SmolLM2-135M-Instruct, see
    :func:`sim.real.weights.load_checkpoint`); the scenario's model must have its
    architecture. ``text``: the prompt corpus, a file or a directory of ``*.txt`` (default
    ``shared/data/text``). ``threads``: ``torch.set_num_threads`` (process-wide).
    ``backend``: the KV backend to run on (its model must be the checkpoint's); by default a
    :class:`~sim.real.paged_backend.PagedKvBackend` of ``replicas × num_blocks`` blocks, the
    engine's pool, in the scenario's ``model.compute_dtype`` with the second tier in
    ``offload_dir`` (CPU; default a temporary directory) or pinned host memory (CUDA), or the
    policy backend when the scenario has KV policies (:func:`policy_strategy`).
    """
    from sim.real.model import LlamaModel
    from sim.real.offload import default_tier
    from sim.real.paged_backend import PagedKvBackend
    from sim.real.tokenizer import load_tokenizer
    from sim.real.weights import load_checkpoint

    _check_scenario(scenario)
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise KvsimError(f"must be an integer >= 1, got {threads!r}", field="threads")
        torch.set_num_threads(threads)
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise KvsimError("CUDA is not available on this machine", field="device")
    if target.type not in ("cpu", "cuda"):
        raise KvsimError(f"expected cpu or cuda, got {device!r}", field="device")
    dtype = TORCH_DTYPES.get(scenario.model.compute_dtype)
    if dtype is None:
        raise KvsimError(
            f"the torch executor computes in {', '.join(TORCH_DTYPES)}, got "
            f"{scenario.model.compute_dtype!r}",
            source=scenario.source,
            field="model.compute_dtype",
        )
    weights = load_checkpoint(checkpoint)
    config = weights.config
    if not same_architecture(resolved.model, config):
        raise KvsimError(
            f"torch executor runs {_checkpoint_name(weights.config, weights.source)} (the "
            f"checkpoint); scenario model is {resolved.model.id}",
            source=scenario.source,
            field="model",
        )
    tokenizer = load_tokenizer(checkpoint)
    prompts = PromptSource.from_files(tokenizer, text_files(text), scenario.seed)
    if backend is None:
        model = LlamaModel.from_checkpoint(weights, dtype=dtype, device=target)
        del weights  # the float32 copies; the model holds its own in ``dtype``
        strategy = policy_strategy(scenario)
        if strategy is not None:
            backend = _policy_backend(model, strategy, scenario, resolved.model.id)
        else:
            block_tokens = scenario.scheduler.block_tokens
            num_blocks = resolved.memory.num_blocks * scenario.num_replicas
            need = (
                num_blocks
                * block_tokens
                * 2
                * config.num_layers
                * config.num_kv_heads
                * config.head_dim
                * dtype.itemsize
            )
            available = _available_memory_bytes(target)
            if available is not None and need > CACHE_MEMORY_FRACTION * available:
                raise KvsimError(
                    f"the engine's KV pool ({num_blocks} blocks of {block_tokens} tokens on "
                    f"{resolved.accelerator.id}) needs {need / 1e9:.2f} GB as a real "
                    f"{scenario.model.compute_dtype} cache on {target.type}, and "
                    f"{available / 1e9:.2f} GB are available; lower "
                    "hardware.gpu_memory_fraction or plan on a smaller accelerator profile "
                    "(kvsim probe --device cpu)",
                    source=scenario.source,
                    field="hardware.gpu_memory_fraction",
                )
            backend = PagedKvBackend(
                model, num_blocks, block_tokens, default_tier(target, offload_dir)
            )
    executor = TorchExecutor(backend, prompts, device=target, tokenizer=tokenizer)
    tokens = min(35, resolved.memory.max_kv_tokens)
    decode_steps = min(3, tokens - 1)
    executor.warm_up(prefill_tokens=tokens - decode_steps, decode_steps=decode_steps)
    return executor
