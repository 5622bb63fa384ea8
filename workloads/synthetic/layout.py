"""Per-request columns of a synthetic workload before sorting: timing, lengths and the
content stream each prompt begins (see :mod:`workloads.synthetic.prefix`).

A prompt of ``prompt_tokens`` tokens is the start of the stream ``[system prompt
(shared_tokens)] + [document (doc_tokens)] + [tokens unique to owner]``; ``shared_index`` and
``doc_index`` say which system prompt and document (-1: none), ``owner`` which unique stream
(the request itself, or its session). :mod:`workloads.synthetic.blocks` turns this into
chained block ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workloads.synthetic.arrivals import ArrivalProcess
from workloads.synthetic.distributions import Distribution
from workloads.synthetic.prefix import (
    MultiTurnPrefix,
    NoPrefix,
    RagPrefix,
    SessionPrefix,
    SystemPromptPrefix,
)
from workloads.workload import NO_SESSION


@dataclass(frozen=True)
class Layout:
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    session_id: np.ndarray
    shared_index: np.ndarray
    shared_tokens: np.ndarray
    doc_index: np.ndarray
    doc_tokens: np.ndarray
    owner: np.ndarray

    def take(self, keep: np.ndarray) -> Layout:
        return Layout(**{name: getattr(self, name)[keep] for name in self.__dataclass_fields__})


def zipf_choice(rng: np.random.Generator, items: int, s: float, size: int) -> np.ndarray:
    """``size`` indices in ``[0, items)``, index ``r`` with probability ∝ ``(r + 1)^-s``
    (finite Zipf; ``s = 0`` is uniform)."""
    weights = np.arange(1, items + 1, dtype=np.float64) ** -s
    return rng.choice(items, size=size, p=weights / weights.sum())


def clip_to_context(
    prompt: np.ndarray, output: np.ndarray, context: int
) -> tuple[np.ndarray, np.ndarray]:
    """Prompt at most ``context - 1`` tokens, then output at most what is left, so
    ``prompt + output <= context`` and both stay >= 1."""
    prompt = np.minimum(prompt, context - 1)
    return prompt, np.minimum(output, context - prompt)


def request_layout(
    prefix: NoPrefix | SystemPromptPrefix | RagPrefix,
    arrival_s: np.ndarray,
    own_tokens: np.ndarray,
    output_tokens: np.ndarray,
    rng: np.random.Generator,
) -> Layout:
    """One request per arrival; shared system prompts or documents per ``prefix``."""
    n = len(arrival_s)
    none = np.full(n, -1, dtype=np.int64)
    shared_index, shared_tokens = none.copy(), np.zeros(n, dtype=np.int64)
    doc_index, doc_tokens = none.copy(), np.zeros(n, dtype=np.int64)
    if isinstance(prefix, SystemPromptPrefix):
        lengths = prefix.prompt_tokens.sample_tokens(rng, prefix.num_prompts)
        chosen = zipf_choice(rng, prefix.num_prompts, prefix.zipf_s, n)
        has = rng.random(n) < prefix.share
        shared_index = np.where(has, chosen, -1)
        shared_tokens = np.where(has, lengths[chosen], 0)
    elif isinstance(prefix, RagPrefix):
        lengths = prefix.document_tokens.sample_tokens(rng, prefix.documents)
        doc_index = zipf_choice(rng, prefix.documents, prefix.zipf_s, n)
        doc_tokens = lengths[doc_index]
        if prefix.system_prompt_tokens:
            shared_index = np.zeros(n, dtype=np.int64)
            shared_tokens = np.full(n, prefix.system_prompt_tokens, dtype=np.int64)
    return Layout(
        arrival_s=arrival_s,
        prompt_tokens=shared_tokens + doc_tokens + own_tokens,
        output_tokens=output_tokens,
        session_id=np.full(n, NO_SESSION, dtype=np.int64),
        shared_index=shared_index,
        shared_tokens=shared_tokens,
        doc_index=doc_index,
        doc_tokens=doc_tokens,
        owner=np.arange(n, dtype=np.int64),
    )


def _within_session(values: np.ndarray, first: np.ndarray, session: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum of ``values`` restarting at each session's first turn."""
    total = np.cumsum(values)
    return total - (total[first] - values[first])[session]


def _session_batch(
    prefix: SessionPrefix,
    counts: np.ndarray,
    prompt: Distribution,
    output: Distribution,
    context: int | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, ...]:
    """Turns of ``len(counts)`` sessions: (session, offset_s, prompt, output), sessions cut
    before the first later turn that would not fit in ``context``."""
    sessions, turns = len(counts), int(counts.sum())
    session = np.repeat(np.arange(sessions), counts)
    first = np.cumsum(counts) - counts
    later = np.ones(turns, dtype=bool)
    later[first] = False
    new = np.empty(turns, dtype=np.int64)
    new[first] = prompt.sample_tokens(rng, sessions)
    if isinstance(prefix, MultiTurnPrefix):
        new[later] = prompt.sample_tokens(rng, turns - sessions)
        gap_dist = prefix.think_time_s
    else:
        new[later] = prefix.tool_output_tokens.sample_tokens(rng, turns - sessions)
        gap_dist = prefix.tool_time_s
    out = output.sample_tokens(rng, turns)
    gaps = np.zeros(turns)
    gaps[later] = gap_dist.sample(rng, turns - sessions)
    offset_s = _within_session(gaps, first, session)
    prompt_tokens = prefix.system_prompt_tokens + _within_session(new + out, first, session) - out
    keep = np.ones(turns, dtype=bool)
    if context is not None:
        overflow = (prompt_tokens + out > context) & later
        keep = _within_session(overflow.astype(np.int64), first, session) == 0
    return session[keep], offset_s[keep], prompt_tokens[keep], out[keep]


def session_layout(
    prefix: SessionPrefix,
    arrival: ArrivalProcess,
    prompt: Distribution,
    output: Distribution,
    requests: int | None,
    duration_s: float | None,
    context: int | None,
    rng: np.random.Generator,
) -> Layout:
    """Sessions whose starts follow ``arrival``; ``requests`` counts turns, not sessions."""
    count_dist = prefix.turns if isinstance(prefix, MultiTurnPrefix) else prefix.steps
    batches: list[tuple[np.ndarray, ...]] = []
    if requests is None:
        starts = arrival.sample(rng, None, duration_s)
        batches.append(
            _session_batch(
                prefix, count_dist.sample_tokens(rng, len(starts)), prompt, output, context, rng
            )
        )
    else:
        kept = 0
        while kept < requests:
            counts = count_dist.sample_tokens(rng, max(requests - kept, 1))
            needed = int(np.searchsorted(np.cumsum(counts), requests - kept)) + 1
            batches.append(_session_batch(prefix, counts[:needed], prompt, output, context, rng))
            kept += len(batches[-1][0])
    sizes = [int(batch[0][-1]) + 1 if len(batch[0]) else 0 for batch in batches]
    base = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    session = np.concatenate([batch[0] + b for batch, b in zip(batches, base, strict=True)])
    offset_s, prompt_tokens, output_tokens = (
        np.concatenate([batch[i] for batch in batches]) for i in (1, 2, 3)
    )
    if requests is not None:
        starts = arrival.sample(rng, int(sum(sizes)), duration_s)
        session, offset_s = session[:requests], offset_s[:requests]
        prompt_tokens, output_tokens = prompt_tokens[:requests], output_tokens[:requests]
        keep = session < len(starts)
        session, offset_s = session[keep], offset_s[keep]
        prompt_tokens, output_tokens = prompt_tokens[keep], output_tokens[keep]
    arrival_s = starts[session] + offset_s
    n = len(session)
    has_system = prefix.system_prompt_tokens > 0
    layout = Layout(
        arrival_s=arrival_s,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        session_id=session,
        shared_index=np.full(n, 0 if has_system else -1, dtype=np.int64),
        shared_tokens=np.full(n, prefix.system_prompt_tokens, dtype=np.int64),
        doc_index=np.full(n, -1, dtype=np.int64),
        doc_tokens=np.zeros(n, dtype=np.int64),
        owner=session,
    )
    return layout if duration_s is None else layout.take(arrival_s < duration_s)
