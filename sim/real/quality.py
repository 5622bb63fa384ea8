"""Quality harness: what a KV strategy costs a real model in perplexity, next-token
distribution and passkey retrieval.

**Perplexity, ΔNLL, KL.** A token sequence ``x_0 … x_{N−1}`` is fed through a
:class:`~sim.real.policy_cache.PolicyKvBackend` in serving order: the first ``prompt_tokens``
as one prefill step, then chunks of ``chunk_tokens`` (teacher forcing: the chunk is the text's
next tokens, not the model's). Each position's logits give ``−log p(x_{t+1} | x_≤t)`` under the
policy. With ``chunk_tokens = 1`` this is exactly token-by-token decoding with the policy
applied after every token. A longer chunk lets its tokens attend to each other before the
policy runs again, so it is exact for what acts by position (StreamingLLM and DuoAttention
windows are applied per query), per query (Quest, page summaries over each query's own
context), only at prompt completion (SnapKV, PyramidKV, Ada-KV, K-norm) or per token
(fp8/int8/int4/int2, Palu; up to floating-point rounding), and approximate for what acts
every step from attention (H2O, TOVA: default chunk 8), for KIVI's residual (quantized at
chunk ends, not token ends) and for merging (MiniCache, similarity merge act per step).
``docs/real_mode.md`` gives the measured differences against ``chunk_tokens = 1``.

The baseline is one full-cache pass of :class:`~sim.real.model.LlamaModel` over its paged cache
(the fused attention path), so the comparison is between two independent code paths:

* perplexity ``exp(mean_t NLL_t)`` over the ``N − 1`` predicted tokens;
* mean ΔNLL ``mean_t (NLL_t^policy − NLL_t^full)`` = ``log(ppl_policy / ppl_full)``;
* mean ``KL(p_full ‖ p_policy) = mean_t Σ_v p_full(v) (log p_full(v) − log p_policy(v))``.

**Passkey retrieval** (Mohtashami & Jaggi 2023, "Landmark Attention"; the KIVI and kvpress
evaluations use it): a haystack of the fixed filler sentences with "The pass key is K.
Remember it. K is the pass key." inserted at a depth fraction, ending in "What is the pass
key? The pass key is"; ``K`` is five digits drawn from a seeded generator. The prompt is
prefilled (policy applied when it completes), the answer decoded greedily for
``PASSKEY_ANSWER_TOKENS`` tokens; a trial is correct when the first five-digit number in the
answer is ``K``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import torch

from hardware.errors import KvsimError
from sim.policies.compose import KvStrategy
from sim.policies.quality import QualityEntry, measured_entry
from sim.policies.selection import H2O, TOVA
from sim.real.backend import SeqWork
from sim.real.model import LlamaModel, StepBatch
from sim.real.policy_cache import PolicyKvBackend
from sim.real.tokenizer import TextTokenizer

#: Serving-order defaults: a 1,024-token prompt prefilled at once, then 64-token chunks, or
#: 8-token chunks for selections that evict by attention every step (H2O, TOVA): chunks let
#: tokens attend to each other before eviction, which at 64 underestimated their perplexity by
#: about 6 % on a 1,024-token span; at 8 by under 0.5 % (docs/real_mode.md), and their small
#: caches keep fine steps cheap.
DEFAULT_PROMPT_TOKENS = 1024
DEFAULT_CHUNK_TOKENS = 64
ATTENTION_EVICTION_CHUNK_TOKENS = 8
#: Chunk of the full-cache reference pass (exact for any chunk size).
REFERENCE_CHUNK_TOKENS = 1024
PASSKEY_INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
    "it. I will quiz you about the important information there.\n"
)
PASSKEY_FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)
PASSKEY_QUESTION = "\nWhat is the pass key? The pass key is"
PASSKEY_ANSWER_TOKENS = 8
DEFAULT_PASSKEY_LENGTHS = (512, 1024, 2048)
DEFAULT_PASSKEY_DEPTHS = (0.1, 0.5, 0.9)

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Reference:
    """The full-cache pass: next-token log-probabilities ``[N − 1, vocab]`` (float32) and
    negative log-likelihoods of the text's next tokens."""

    token_ids: tuple[int, ...]
    log_probs: torch.Tensor
    nll: np.ndarray
    wall_s: float

    @property
    def perplexity(self) -> float:
        return math.exp(float(self.nll.mean()))


@dataclass(frozen=True)
class PerplexityResult:
    """One strategy against the full cache on one text (module docstring)."""

    label: str
    tokens: int
    prompt_tokens: int
    chunk_tokens: int
    perplexity: float
    full_perplexity: float
    delta_nll: float
    kl_divergence: float
    stored_bytes: int
    wall_s: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.label,
            "tokens": self.tokens,
            "prompt_tokens": self.prompt_tokens,
            "chunk_tokens": self.chunk_tokens,
            "perplexity": self.perplexity,
            "full_perplexity": self.full_perplexity,
            "delta_nll": self.delta_nll,
            "kl_divergence": self.kl_divergence,
            "stored_bytes": self.stored_bytes,
            "wall_s": self.wall_s,
        }


@dataclass(frozen=True)
class PasskeyTrial:
    context_tokens: int
    depth: float
    key: str
    answer: str

    @property
    def correct(self) -> bool:
        found = re.search(r"\d{5}", self.answer)
        return found is not None and found.group() == self.key


@dataclass(frozen=True)
class PasskeyResult:
    trials: tuple[PasskeyTrial, ...]

    @property
    def accuracy(self) -> float:
        return sum(t.correct for t in self.trials) / len(self.trials)

    def as_dict(self) -> dict[str, Any]:
        lengths = sorted({t.context_tokens for t in self.trials})
        by_length = {
            str(n): float(np.mean([t.correct for t in self.trials if t.context_tokens == n]))
            for n in lengths
        }
        return {
            "accuracy": self.accuracy,
            "accuracy_by_context": by_length,
            "trials": [
                {
                    "context_tokens": t.context_tokens,
                    "depth": t.depth,
                    "key": t.key,
                    "answer": t.answer,
                    "correct": t.correct,
                }
                for t in self.trials
            ],
        }


def default_chunk_tokens(strategy: KvStrategy) -> int:
    """The decode chunk :func:`evaluate` uses when none is given (see the constants)."""
    if isinstance(strategy.selection, H2O | TOVA):
        return ATTENTION_EVICTION_CHUNK_TOKENS
    return DEFAULT_CHUNK_TOKENS


def _check_counts(tokens: int, prompt_tokens: int, chunk_tokens: int) -> None:
    if tokens < 2:
        raise KvsimError(f"need at least 2 tokens to score one, got {tokens}", field="tokens")
    for name, value in (("prompt_tokens", prompt_tokens), ("chunk_tokens", chunk_tokens)):
        if value < 1:
            raise KvsimError(f"must be positive, got {value}", field=name)


@torch.inference_mode()
def full_reference(
    model: LlamaModel,
    token_ids: Sequence[int],
    *,
    chunk_tokens: int = REFERENCE_CHUNK_TOKENS,
    progress: Progress | None = None,
) -> Reference:
    """Teacher-forced full-cache pass of ``LlamaModel.forward`` over its paged cache."""
    ids = list(token_ids)
    _check_counts(len(ids), 1, chunk_tokens)
    started = time.perf_counter()
    block = 16
    table = [list(range(-(-len(ids) // block)))]
    cache = model.new_cache(len(table[0]), block)
    targets = torch.tensor(ids[1:], device=model.device)
    log_probs = torch.empty((len(ids) - 1, model.config.vocab_size), dtype=torch.float32)
    for start in range(0, len(ids), chunk_tokens):
        chunk = ids[start : start + chunk_tokens]
        batch = StepBatch.from_lists([chunk], [start], table, block, model.device)
        scored = min(len(chunk), len(ids) - 1 - start)
        if scored > 0:
            logits = model(batch, cache)[0, :scored]
            log_probs[start : start + scored] = torch.log_softmax(logits, dim=-1).cpu()
        else:
            model(batch, cache, last_only=True)
        if progress is not None:
            progress(len(chunk))
    nll = -log_probs.gather(1, targets.cpu().unsqueeze(1)).squeeze(1)
    return Reference(tuple(ids), log_probs, nll.double().numpy(), time.perf_counter() - started)


@torch.inference_mode()
def evaluate(
    model: LlamaModel,
    strategy: KvStrategy,
    reference: Reference,
    *,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    chunk_tokens: int | None = None,
    model_id: str = "real",
    progress: Progress | None = None,
) -> PerplexityResult:
    """Feed the reference's text through a :class:`PolicyKvBackend` in serving order and
    compare each next-token distribution with the full cache's (``chunk_tokens`` ``None``:
    :func:`default_chunk_tokens`)."""
    ids = list(reference.token_ids)
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(strategy)
    _check_counts(len(ids), prompt_tokens, chunk_tokens)
    prompt = min(prompt_tokens, len(ids))
    backend = PolicyKvBackend(model, strategy, model_id)
    started = time.perf_counter()
    nll = np.empty(len(ids) - 1)
    kl = np.empty(len(ids) - 1)
    targets = torch.tensor(ids[1:])
    start = 0
    while start < len(ids):
        size = prompt if start == 0 else chunk_tokens
        chunk = ids[start : start + size]
        logits = backend.step([SeqWork(0, tuple(chunk), start, prompt)], all_logits=True)[0]
        scored = min(len(chunk), len(ids) - 1 - start)
        if scored > 0:
            log_p = torch.log_softmax(logits[:scored].cpu(), dim=-1)
            full = reference.log_probs[start : start + scored]
            part = slice(start, start + scored)
            nll[part] = -log_p.gather(1, targets[part].unsqueeze(1)).squeeze(1).double().numpy()
            kl[part] = (full.exp() * (full - log_p)).sum(dim=-1).double().numpy()
        start += len(chunk)
        if progress is not None:
            progress(len(chunk))
    return PerplexityResult(
        label=strategy.label(),
        tokens=len(ids),
        prompt_tokens=prompt,
        chunk_tokens=chunk_tokens,
        perplexity=math.exp(float(nll.mean())),
        full_perplexity=reference.perplexity,
        delta_nll=float((nll - reference.nll).mean()),
        kl_divergence=float(kl.mean()),
        stored_bytes=backend.stored_bytes(),
        wall_s=time.perf_counter() - started,
    )


def passkey_prompt(
    tokenizer: TextTokenizer, context_tokens: int, depth: float, key: str
) -> list[int]:
    """The passkey haystack of at most ``context_tokens`` tokens with ``key`` at ``depth``
    (fraction of the filler before it)."""
    if not 0 <= depth <= 1:
        raise KvsimError(f"must be in [0, 1], got {depth}", field="passkey_depths")
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    fixed = len(tokenizer.encode(PASSKEY_INTRO + needle + PASSKEY_QUESTION))
    per_filler = len(tokenizer.encode(PASSKEY_FILLER))
    repeats = (context_tokens - fixed) // per_filler
    if repeats < 1:
        raise KvsimError(
            f"a passkey prompt needs more than {fixed + per_filler} tokens, got {context_tokens}",
            field="passkey_lengths",
        )
    before = round(depth * repeats)
    text = (
        PASSKEY_INTRO
        + PASSKEY_FILLER * before
        + needle
        + PASSKEY_FILLER * (repeats - before)
        + PASSKEY_QUESTION
    )
    return tokenizer.encode(text)


@torch.inference_mode()
def passkey(
    model: LlamaModel,
    tokenizer: TextTokenizer,
    strategy: KvStrategy,
    *,
    lengths: Sequence[int] = DEFAULT_PASSKEY_LENGTHS,
    depths: Sequence[float] = DEFAULT_PASSKEY_DEPTHS,
    seed: int = 0,
    model_id: str = "real",
    progress: Progress | None = None,
) -> PasskeyResult:
    """Passkey retrieval accuracy: one trial per context length and depth; the depths of one
    length run as one batch (prefill step, then one decode step per answer token)."""
    rng = np.random.default_rng(seed)
    trials = []
    for length in lengths:
        keys = [str(k) for k in rng.integers(10_000, 100_000, size=len(depths))]
        prompts = [
            passkey_prompt(tokenizer, length, d, k) for d, k in zip(depths, keys, strict=True)
        ]
        backend = PolicyKvBackend(model, strategy, model_id)
        work = [SeqWork(i, tuple(p), 0, len(p)) for i, p in enumerate(prompts)]
        answers = [[] for _ in prompts]
        for _ in range(PASSKEY_ANSWER_TOKENS):
            chosen = backend.step(work).argmax(dim=-1).tolist()
            for answer, token in zip(answers, chosen, strict=True):
                answer.append(token)
            work = [
                SeqWork(w.seq_id, (t,), w.start_position + len(w.token_ids), w.prompt_tokens)
                for w, t in zip(work, chosen, strict=True)
            ]
        trials += [
            PasskeyTrial(len(p), float(d), k, tokenizer.decode(a))
            for p, d, k, a in zip(prompts, depths, keys, answers, strict=True)
        ]
        if progress is not None:
            progress(1)
    return PasskeyResult(tuple(trials))


def run_id(text_name: str, result: PerplexityResult, when: date | None = None) -> str:
    """The measured entries' source: ``measured: kvsim quality, <date>, <text>, <tokens>``
    plus the serving order used."""
    day = (when or date.today()).isoformat()
    return (
        f"measured: kvsim quality, {day}, {text_name}, {result.tokens} tokens "
        f"(prompt {result.prompt_tokens}, chunks of {result.chunk_tokens})"
    )


def table_entries(
    strategy: KvStrategy,
    model_id: str,
    result: PerplexityResult,
    source: str,
    passkey_result: PasskeyResult | None = None,
    passkey_baseline: PasskeyResult | None = None,
) -> list[QualityEntry]:
    """Quality-table entries for a strategy with exactly one lossy component (an entry is
    keyed by one policy and its parameters); none for composed or lossless strategies."""
    lossy = [p for p in strategy.policies() if p.name not in ("full", "fp16", "bf16")]
    if len(lossy) != 1:
        return []
    policy = lossy[0]
    entries = [
        measured_entry(
            model_id, policy, "perplexity", result.perplexity, result.full_perplexity, source
        )
    ]
    if passkey_result is not None and passkey_baseline is not None:
        entries.append(
            measured_entry(
                model_id,
                policy,
                "passkey_accuracy",
                passkey_result.accuracy,
                passkey_baseline.accuracy,
                source,
            )
        )
    return entries


def default_grid() -> list[dict[str, dict[str, Any]]]:
    """``kvsim quality --sweep``: each policy at two or three budgets or bit widths, as
    scenario-style tables ``{kind: {"name": ..., params}}`` (budgets sized for a 1,024-token
    prompt and a text of a few thousand tokens)."""
    sel = [
        {"name": "streaming_llm", "sink_tokens": 4, "window_tokens": 256},
        {"name": "streaming_llm", "sink_tokens": 4, "window_tokens": 512},
        {"name": "streaming_llm", "sink_tokens": 4, "window_tokens": 1020},
        {"name": "h2o", "budget_fraction": 0.1},
        {"name": "h2o", "budget_fraction": 0.2},
        {"name": "tova", "budget_fraction": 0.125},
        {"name": "tova", "budget_fraction": 0.25},
        {"name": "snapkv", "budget_tokens": 256},
        {"name": "snapkv", "budget_tokens": 512},
        {"name": "pyramidkv", "budget_tokens": 256},
        {"name": "pyramidkv", "budget_tokens": 512},
        {"name": "ada_kv", "budget_tokens": 256},
        {"name": "ada_kv", "budget_tokens": 512},
        {"name": "knorm", "budget_fraction": 0.5},
        {"name": "knorm", "budget_fraction": 0.75},
        {"name": "quest", "budget_tokens": 256},
        {"name": "quest", "budget_tokens": 1024},
        {"name": "duo_attention", "streaming_head_fraction": 0.25},
        {"name": "duo_attention", "streaming_head_fraction": 0.5},
    ]
    quant = [
        {"name": "fp8"},
        {"name": "int8"},
        {"name": "int4"},
        {"name": "int2"},
        {"name": "kivi", "bits": 2},
        {"name": "kivi", "bits": 4},
    ]
    grid: list[dict[str, dict[str, Any]]] = [{"selection": s} for s in sel]
    grid += [{"quantization": q} for q in quant]
    grid += [{"low_rank": {"name": "palu", "rank_fraction": f}} for f in (0.5, 0.75)]
    grid += [
        {"merging": {"name": "minicache"}},
        {
            "selection": {"name": "streaming_llm", "sink_tokens": 4, "window_tokens": 256},
            "merging": {"name": "similarity_merge"},
        },
    ]
    return grid
