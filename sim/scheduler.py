"""Iteration-level scheduler of one replica: vLLM V1 continuous batching over a paged KV pool.

A pure state machine (no clock of its own, no simpy): the engine calls :meth:`add` when a
request arrives, :meth:`schedule` when the replica is idle, runs the returned
:class:`StepPlan` through an executor, and calls :meth:`commit` with the step's end time.

The algorithm is vLLM V1's ``Scheduler.schedule`` (``vllm/v1/core/sched/scheduler.py``):
there are no prefill and decode phases, each sequence has ``num_tokens`` (prompt + generated)
and ``computed_tokens`` (tokens whose KV exists), and every step tries to close the gap under
one token budget (``max_num_batched_tokens``) and ``max_num_seqs``:

1. *Running first*, in admission order: each gets ``min(num_tokens - computed, budget)``
   tokens (1 for a decode, the next chunk for a partial prefill). If its KV blocks cannot
   grow, the newest running sequence is preempted (``running.pop()``), repeatedly, until the
   allocation succeeds or the victim is the requester itself. Recompute preemption frees the
   victim's blocks (they stay cached), resets ``computed_tokens`` to 0 and puts it at the
   *front* of the waiting queue. Swap preemption (vLLM V0's ``PreemptionMode.SWAP``) copies
   its KV to the host tier (``swap_out_tokens``) and parks it on a swapped queue.
2. Only if nothing was preempted this step: swapped sequences are resumed first, oldest
   victim first (their KV comes back: ``swap_in_tokens``, less what the prefix cache still
   holds), and waiting sequences are admitted only once the swapped queue is empty.
3. Waiting sequences in order while budget, ``max_num_seqs`` and blocks allow: prefix-cache
   hits skip computed tokens (at most ``num_tokens - 1`` tokens hit, as in vLLM, so the last
   token is recomputed to produce logits), the rest gets ``min(remaining, budget)`` tokens
   with chunked prefill; without it a prompt is admitted only whole. The first waiting
   sequence that does not fit stops admission (FCFS, head-of-line).

A chunk that reaches ``num_tokens`` samples a token; a sequence finishes when it has
generated ``output_tokens`` and its blocks are freed at once. Since decodes are the oldest
running sequences and admission appends, decodes are served before new prefill chunks
(vLLM V1's decode priority under one budget).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from hardware.errors import KvsimError
from sim.kv.block_pool import BlockPool
from sim.kv.holds import BlockHolds
from sim.kv.radix_cache import RadixBlockPool
from sim.kv.tiers import SpillingBlockPool, TieredStore, TierMatch
from sim.scheduling import (
    ADMISSION_MODES,
    REJECT_SLO,
    Fcfs,
    QueuePolicy,
    SchedulingInputs,
    WaitingOrder,
    preemption_policy,
    recompute_time_s,
    swap_time_s,
    ttft_lower_bound_s,
)

if TYPE_CHECKING:
    from sim.cost.batch import BatchShape
    from sim.policies.footprint import KvFootprint

PREEMPTION_MODES = ("recompute", "swap", "cost")
PREFIX_CACHING_MODES = ("none", "hash", "radix")

#: Decode steps a stretch looks ahead under a KV footprint (bounds its per-step hold matrix).
FOOTPRINT_HORIZON = 1024

#: ``Sequence.reject_reason`` values.
REJECT_CONTEXT = "exceeds_max_model_len"
REJECT_KV_POOL = "exceeds_kv_pool"


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """Knobs of vLLM's scheduler and block manager (keyword-only).

    ``max_num_seqs`` / ``max_batched_tokens``: vLLM's ``max_num_seqs`` and
    ``max_num_batched_tokens`` (8192 is the API-server default); ``block_tokens``: KV block
    size (16 on CUDA); ``max_model_len``: context limit (prompt + output). ``policy``: the
    waiting-queue order, ``preemption``: ``recompute``, ``swap`` or ``cost`` (per victim),
    ``admission``: ``none`` or ``reject`` (:mod:`sim.scheduling`); ``swap_space_blocks``:
    blocks of swapped-out KV host memory may hold (vLLM's ``swap_space``; ``None``:
    unbounded) — a victim the policy would swap is recomputed when it does not fit.
    """

    max_model_len: int
    max_num_seqs: int = 256
    max_batched_tokens: int = 8192
    chunked_prefill: bool = True
    block_tokens: int = 16
    preemption: str = "recompute"
    prefix_caching: str = "none"
    policy: QueuePolicy = Fcfs()
    admission: str = "none"
    swap_space_blocks: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_model_len", "max_num_seqs", "max_batched_tokens", "block_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise KvsimError(
                    f"expected an integer >= 1, got {value!r}", field=f"scheduler.{name}"
                )
        if self.preemption not in PREEMPTION_MODES:
            raise KvsimError(
                f"expected one of {', '.join(PREEMPTION_MODES)}, got {self.preemption!r}",
                field="scheduler.preemption",
            )
        if not isinstance(self.policy, QueuePolicy):
            raise KvsimError(
                f"expected a queue policy (sim.scheduling), got {self.policy!r}",
                field="scheduler.policy",
            )
        if self.admission not in ADMISSION_MODES:
            raise KvsimError(
                f"expected one of {', '.join(ADMISSION_MODES)}, got {self.admission!r}",
                field="scheduler.admission",
            )
        if self.prefix_caching not in PREFIX_CACHING_MODES:
            raise KvsimError(
                f"expected one of {', '.join(PREFIX_CACHING_MODES)}, got {self.prefix_caching!r}",
                field="scheduler.prefix_caching",
            )
        if self.max_batched_tokens < self.max_num_seqs:
            raise KvsimError(
                f"{self.max_batched_tokens} must be >= max_num_seqs ({self.max_num_seqs}), as vLLM "
                "requires, so that every running sequence can decode in one step",
                field="scheduler.max_batched_tokens",
            )
        if not self.chunked_prefill and self.max_batched_tokens < self.max_model_len:
            raise KvsimError(
                f"{self.max_batched_tokens} < max_model_len ({self.max_model_len}) with chunked "
                "prefill disabled: long prompts could never be scheduled (vLLM rejects this too)",
                field="scheduler.max_batched_tokens",
            )


def _no_hashes() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass(eq=False)
class Sequence:
    """Runtime state of one request on one replica.

    ``computed_tokens`` counts tokens whose KV exists (prompt progress, then generated tokens;
    prefix hits included); ``status`` is one of ``waiting``, ``running``, ``swapped``,
    ``finished``, ``rejected``. ``prefix_hit_tokens`` is the hit on first admission;
    ``scheduled_s`` the first time it entered a batch (queue wait = scheduled_s - arrival_s).
    ``priority`` (larger = more important) and ``session_id`` (``-1``: none) are read by
    the queue policies and routers (:mod:`sim.scheduling`, :mod:`sim.router`).
    """

    index: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    priority: int = 0
    session_id: int = -1
    block_hashes: np.ndarray = field(default_factory=_no_hashes)
    computed_tokens: int = 0
    generated_tokens: int = 0
    prefix_hit_tokens: int = 0
    preemptions: int = 0
    swapped: bool = False
    first_token_s: float = math.nan
    finish_s: float = math.nan
    scheduled_s: float = math.nan
    status: str = "waiting"
    reject_reason: str = ""

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens: what the KV must eventually cover."""
        return self.prompt_tokens + self.generated_tokens


_EMPTY_I64 = np.zeros(0, dtype=np.int64)
_EMPTY_BOOL = np.zeros(0, dtype=bool)


@dataclass(frozen=True, eq=False)
class StepPlan:
    """One engine step: what runs and what moves.

    ``prefill_tokens[i]`` new tokens of chunk ``i`` on top of ``prefill_context[i]`` already
    cached (earlier chunks and prefix hits); ``prefill_emits[i]``: the chunk completes the
    sequence's tokens and samples one; ``decode_context[j]``: KV tokens decode ``j`` attends,
    its new token included. ``preempted`` lost their place this step; ``swap_out_tokens`` /
    ``swap_in_tokens``: KV tokens copied to / from the host tier before the step.
    ``loaded_blocks[k]``: prefix blocks read from lower tier ``k`` of a tiered store
    (:mod:`sim.kv.tiers`) instead of being recomputed, for the step's admissions.
    """

    prefill: tuple[Sequence, ...]
    prefill_tokens: np.ndarray
    prefill_context: np.ndarray
    prefill_emits: np.ndarray
    decode: tuple[Sequence, ...]
    decode_context: np.ndarray
    preempted: tuple[Sequence, ...]
    swap_out_tokens: int
    swap_in_tokens: int
    loaded_blocks: tuple[int, ...] = ()

    @property
    def num_batched_tokens(self) -> int:
        """Tokens through the model this step (prefill chunks plus one per decode)."""
        return int(self.prefill_tokens.sum()) + len(self.decode)

    def batch_shape(self) -> BatchShape:
        """The step as the cost model sees it."""
        from sim.cost.batch import BatchShape

        return BatchShape(
            prefill_tokens=self.prefill_tokens,
            prefill_context=self.prefill_context,
            decode_context=self.decode_context,
            prefill_emits=self.prefill_emits,
        )


class ReplicaScheduler:
    """vLLM V1 scheduler of one replica over a KV pool of ``num_blocks`` blocks (module doc).

    ``footprint`` (a :class:`~sim.policies.footprint.KvFootprint`) says how many blocks a
    sequence holds under a KV strategy that drops, compresses or indexes tokens
    (:class:`~sim.kv.holds.BlockHolds`); without one, or when it is the identity, a sequence of
    ``t`` tokens holds ``ceil(t / block_tokens)``.

    ``store`` (a :class:`~sim.kv.tiers.TieredStore`, hash prefix caching only) receives the
    cached blocks the pool evicts, and an admission whose prompt misses in HBM continues its
    prefix match in the store: those blocks are loaded (:attr:`StepPlan.loaded_blocks`), not
    recomputed, and count as prefix hits.
    """

    def __init__(
        self,
        config: SchedulerConfig,
        num_blocks: int,
        footprint: KvFootprint | None = None,
        store: TieredStore | None = None,
        inputs: SchedulingInputs | None = None,
    ):
        self.config = config
        self.num_blocks = int(num_blocks)
        if footprint is not None and footprint.block_tokens != config.block_tokens:
            raise KvsimError(
                f"footprint counts {footprint.block_tokens}-token blocks, the scheduler "
                f"{config.block_tokens}-token ones",
                field="scheduler.block_tokens",
            )
        self.holds = BlockHolds(
            config.block_tokens,
            footprint,
            config.max_batched_tokens if config.chunked_prefill else None,
        )
        if store is not None and config.prefix_caching != "hash":
            raise KvsimError(
                "a tiered prefix store needs hash prefix caching "
                f"(scheduler prefix_caching is {config.prefix_caching!r})",
                field="policies.prefix_cache.kind",
            )
        self.store = store
        if config.prefix_caching == "radix":
            self.pool: BlockPool | RadixBlockPool = RadixBlockPool(num_blocks, config.block_tokens)
        elif store is not None:
            self.pool = SpillingBlockPool(num_blocks, config.block_tokens, store)
        else:
            self.pool = BlockPool(
                num_blocks,
                config.block_tokens,
                enable_prefix_caching=config.prefix_caching == "hash",
            )
        self.running: list[Sequence] = []
        self.waiting: deque[Sequence] = deque()
        self.swapped: deque[Sequence] = deque()
        self._rejected: list[Sequence] = []
        self._caching = config.prefix_caching != "none"
        self.inputs = inputs or SchedulingInputs()
        self.order = WaitingOrder(config.policy, self.inputs, self._cached_tokens)
        self.preemption = preemption_policy(config.preemption)
        needs_estimates = self.preemption.needs_estimates or config.admission != "none"
        if needs_estimates and self.inputs.estimates is None:
            raise KvsimError(
                f"preemption {config.preemption!r} with admission {config.admission!r} needs "
                "cost estimates (SchedulingInputs.estimates)",
                field="scheduler.preemption",
            )

    # ------------------------------------------------------------------ state
    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        """Sequences waiting for admission: never admitted, recompute-preempted, swapped out."""
        return len(self.waiting) + len(self.swapped)

    @property
    def num_swapped(self) -> int:
        return len(self.swapped)

    @property
    def outstanding_requests(self) -> int:
        return len(self.running) + len(self.waiting) + len(self.swapped)

    @property
    def used_blocks(self) -> int:
        return self.pool.num_used_blocks

    @property
    def kv_load_fraction(self) -> float:
        """Referenced blocks over the pool (free-but-cached blocks count as free)."""
        return self.pool.num_used_blocks / self.num_blocks

    @property
    def rejected(self) -> list[Sequence]:
        """Sequences refused at :meth:`add`, each with ``reject_reason`` set (the live list:
        an engine may clear it once it has recorded them)."""
        return self._rejected

    # ------------------------------------------------------------------ footprint
    def held_blocks(self, seq: Sequence, tokens: int) -> int:
        """Blocks ``seq`` holds with ``tokens`` tokens in KV (:class:`~sim.kv.holds.BlockHolds`)."""
        return self.holds.held(seq.prompt_tokens, tokens)

    def kv_tokens(self, seq: Sequence, tokens: int) -> int:
        """KV of ``seq`` at ``tokens`` tokens, in tokens of the stored format: what a swap or
        a transfer moves."""
        return self.holds.kv_tokens(seq.prompt_tokens, tokens)

    def _step_hold_tokens(self, seq: Sequence, computed: int, new: int) -> int:
        return self.holds.during_step_tokens(seq.prompt_tokens, computed, new)

    def _shrink(self, seqs: Iterable[Sequence]) -> None:
        """After a step, release what each sequence's policy dropped or compressed."""
        for seq in seqs:
            if seq.status == "running":
                hold = self.holds.hold_tokens(seq.prompt_tokens, seq.computed_tokens)
                self.pool.shrink(seq.index, hold)

    def reject_reason(self, seq: Sequence) -> str:
        """Why :meth:`add` would reject ``seq`` (``""`` if it would not): prompt + output
        longer than ``max_model_len`` (:data:`REJECT_CONTEXT`), or a KV footprint at prompt +
        output − 1 tokens (the last sampled token is never stored) larger than the whole
        pool (:data:`REJECT_KV_POOL`), which no preemption could ever make room for."""
        total = seq.prompt_tokens + seq.output_tokens
        if total > self.config.max_model_len:
            return REJECT_CONTEXT
        if self.holds.peak(seq.prompt_tokens, total - 1) > self.num_blocks:
            return REJECT_KV_POOL
        return ""

    # ------------------------------------------------------------------ arrivals
    def add_transferred(self, seq: Sequence) -> None:
        """Queue ``seq`` whose KV arrived from another replica (disaggregated prefill): it
        resumes like swapped-out KV, without recompute."""
        seq.swapped, seq.status = True, "swapped"
        self.swapped.append(seq)

    def add(self, seq: Sequence, now_s: float) -> bool:
        """Queue ``seq`` (arrived at ``now_s``); ``False`` if it is rejected instead.

        Rejected, with ``status = "rejected"`` and a ``reject_reason``
        (:meth:`reject_reason`), or by admission control (:meth:`slo_reject_reason`).
        """
        if seq.prompt_tokens < 1 or seq.output_tokens < 1:
            raise KvsimError(
                f"request {seq.index} has prompt {seq.prompt_tokens} and output "
                f"{seq.output_tokens} tokens; both must be >= 1",
                field="prompt_tokens",
            )
        if len(seq.block_hashes) > seq.prompt_tokens // self.config.block_tokens:
            raise KvsimError(
                f"request {seq.index} has {len(seq.block_hashes)} block hashes for a prompt of "
                f"{seq.prompt_tokens // self.config.block_tokens} full blocks",
                field="block_hashes",
            )
        reason = self.reject_reason(seq) or self.slo_reject_reason(seq)
        if reason:
            seq.status, seq.reject_reason = "rejected", reason
            self._rejected.append(seq)
            return False
        seq.status = "waiting"
        self.order.arrived(seq, self.waiting)
        self.order.insert(self.waiting, seq, front=False)
        return True

    # ------------------------------------------------------------------ policies' views
    def _cached_tokens(self, seq: Sequence) -> int:
        """Prompt tokens of ``seq`` whose KV the HBM prefix cache holds now (at most all but
        the last token, which is always recomputed)."""
        if not self._caching or not len(seq.block_hashes):
            return 0
        bt = self.config.block_tokens
        return self.pool.match_prefix(seq.block_hashes[: (seq.num_tokens - 1) // bt]) * bt

    @staticmethod
    def prefill_left(seq: Sequence) -> int:
        """Tokens ``seq`` still has to prefill before it decodes (0 for a decode)."""
        left = seq.num_tokens - seq.computed_tokens
        return 0 if left == 1 and seq.generated_tokens > 0 else left

    @property
    def prefill_backlog_tokens(self) -> int:
        """Tokens queued for prefill on this replica: the rest of every waiting, swapped and
        part-prefilled running sequence (prefix hits of unadmitted prompts not deducted)."""
        queues = (self.waiting, self.swapped, self.running)
        return sum(self.prefill_left(seq) for queue in queues for seq in queue)

    def slo_reject_reason(self, seq: Sequence) -> str:
        """:data:`~sim.scheduling.REJECT_SLO` when admission control is on and even the best
        case (:func:`~sim.scheduling.ttft_lower_bound_s`: the prefill work ahead of ``seq``
        in policy order plus its own uncached prompt, at the peak prefill rate) misses its
        class's TTFT target; else ``""``. Reads only what a pure-decode step leaves
        unchanged, so it decides alike in stretch and step mode."""
        estimates = self.inputs.estimates
        target = self.inputs.ttft_target_s(seq.priority)
        if self.config.admission == "none" or target is None or estimates is None:
            return ""
        ahead = sum(
            self.prefill_left(s) - (self._cached_tokens(s) if not s.computed_tokens else 0)
            for s in self.order.ahead(self.waiting, seq)
        )
        ahead += sum(self.prefill_left(s) for s in (*self.swapped, *self.running))
        own = seq.prompt_tokens - self._cached_tokens(seq)
        if ttft_lower_bound_s(estimates, ahead, own) > target:
            return REJECT_SLO
        return ""

    # ------------------------------------------------------------------ scheduling
    def _admission(self, seq: Sequence, budget: int) -> tuple[int, int, np.ndarray] | None:
        """(new tokens, tokens to hold, hashes to match) to admit a waiting or swapped ``seq``
        under ``budget``; ``None`` when chunked prefill is off and the rest exceeds it."""
        bt = self.config.block_tokens
        total = seq.num_tokens
        if seq.swapped:
            base = seq.computed_tokens
            hashes = seq.block_hashes[: base // bt]
        else:
            hashes = seq.block_hashes[: (total - 1) // bt]
            base = self._cached_prefix_blocks(hashes) * bt if self._caching else 0
        new_tokens = total - base
        if not self.config.chunked_prefill and new_tokens > budget:
            return None
        new_tokens = min(new_tokens, budget)
        return new_tokens, base + new_tokens, hashes

    def _cached_prefix_blocks(self, hashes: np.ndarray) -> int:
        """Leading blocks of ``hashes`` cached in HBM, then continued in the tiered store."""
        hit = self.pool.match_prefix(hashes)
        if self.store is None:
            return hit
        return hit + self.store.match(hashes, hit, len(hashes)).blocks

    def _tier_match(self, hashes: np.ndarray, base: int) -> TierMatch | None:
        """Before allocating: the store blocks of an admission whose prefix covers ``base``
        tokens (its HBM hit, then these)."""
        if self.store is None:
            return None
        hit = self.pool.match_prefix(hashes)
        return self.store.match(hashes, hit, base // self.config.block_tokens)

    def _load(self, hashes: np.ndarray, hit: int, match: TierMatch | None, loads: list[int]) -> int:
        """Read ``match``'s blocks into HBM after an allocation that hit ``hit`` tokens there;
        add them to ``loads`` (per tier) and return the tokens loaded. Nothing is loaded
        when the allocation's HBM hit differs from the one the match continued (a KV
        footprint holding fewer blocks than the prefix)."""
        bt = self.config.block_tokens
        if match is None or not match.blocks or self.store is None or hit != match.start * bt:
            return 0
        self.store.load(hashes, match)
        for position, count in enumerate(match.blocks_per_tier(len(self.store.tiers)).tolist()):
            loads[position] += count
        return match.blocks * bt

    def _cache_blocks(self, seq: Sequence, tokens: int) -> None:
        """Register the sequence's prompt blocks that are full once ``tokens`` are computed."""
        if self._caching and len(seq.block_hashes):
            full = tokens // self.config.block_tokens
            if self.holds.follows_policy:  # only blocks it holds (footprint module doc)
                full = min(full, self.pool.num_held_blocks(seq.index))
            self.pool.cache_full_blocks(seq.index, seq.block_hashes, full)

    def _preempt(self, victim: Sequence) -> int:
        """Preempt ``victim`` by swap or recompute, as the preemption policy says for it;
        return the KV tokens swapped out (0 for recompute)."""
        self.pool.free(victim.index)
        victim.preemptions += 1
        estimates = self.inputs.estimates
        kv = self.kv_tokens(victim, victim.computed_tokens)
        mode = self.preemption.mode(
            lambda: recompute_time_s(estimates, victim.computed_tokens),
            lambda: swap_time_s(estimates, kv),
        )
        if mode == "swap" and self._swap_fits(victim):
            victim.swapped, victim.status = True, "swapped"
            self.swapped.appendleft(victim)
            return kv
        victim.computed_tokens, victim.status = 0, "waiting"
        self.order.insert(self.waiting, victim, front=True)
        return 0

    def _swap_fits(self, victim: Sequence) -> bool:
        """Whether host swap space has room for ``victim``'s KV next to what is swapped."""
        space = self.config.swap_space_blocks
        if space is None:
            return True
        held = sum(self.held_blocks(s, s.computed_tokens) for s in self.swapped)
        return held + self.held_blocks(victim, victim.computed_tokens) <= space

    def schedule(self, now_s: float) -> StepPlan | None:
        """Plan the next step at ``now_s`` (vLLM V1 order, module docstring); ``None`` when
        nothing can run."""
        cfg, pool = self.config, self.pool
        budget = cfg.max_batched_tokens
        picked: list[tuple[Sequence, int, int]] = []
        preempted: list[Sequence] = []
        swap_out = swap_in = 0
        loads = [0] * (len(self.store.tiers) if self.store is not None else 0)

        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            computed = seq.computed_tokens
            new_tokens = min(seq.prompt_tokens + seq.generated_tokens - computed, budget)
            while not pool.grow(seq.index, self._step_hold_tokens(seq, computed, new_tokens)):
                position = self.order.victim(self.running)
                victim = self.running.pop(position)
                if position < index:  # scheduled earlier in this step: take its work back
                    index -= 1
                    budget += self._unpick(picked, victim)
                swap_out += self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            if preempted and preempted[-1] is seq:
                break
            if computed < len(seq.block_hashes) * cfg.block_tokens:
                self._cache_blocks(seq, computed + new_tokens)
            picked.append((seq, new_tokens, computed))
            budget -= new_tokens
            index += 1

        if not preempted:
            while self.swapped and budget > 0 and len(self.running) < cfg.max_num_seqs:
                seq = self.swapped[0]
                plan = self._admission(seq, budget)
                if plan is None:
                    break
                new_tokens, total, hashes = plan
                hold = self._step_hold_tokens(seq, total - new_tokens, new_tokens)
                hit = pool.allocate(seq.index, hold, hashes)
                if hit is None:
                    break
                self.swapped.popleft()
                computed = seq.computed_tokens
                swap_in += self.kv_tokens(seq, computed) - hit
                seq.swapped, seq.status = False, "running"
                self.running.append(seq)
                self._cache_blocks(seq, total)
                picked.append((seq, new_tokens, computed))
                budget -= new_tokens

            while (
                not self.swapped
                and self.waiting
                and budget > 0
                and len(self.running) < cfg.max_num_seqs
            ):
                position = self.order.head(self.waiting)
                seq = self.waiting[position]
                plan = self._admission(seq, budget)
                if plan is None:
                    break
                new_tokens, total, hashes = plan
                hold = self._step_hold_tokens(seq, total - new_tokens, new_tokens)
                match = self._tier_match(hashes, total - new_tokens)
                hit = pool.allocate(seq.index, hold, hashes if self._caching else None)
                if hit is None:
                    break
                hit += self._load(hashes, hit, match, loads)
                del self.waiting[position]
                seq.computed_tokens, seq.status = hit, "running"
                if math.isnan(seq.scheduled_s):
                    seq.scheduled_s, seq.prefix_hit_tokens = now_s, hit
                    self.order.admitted(seq)
                self.running.append(seq)
                self._cache_blocks(seq, total)
                picked.append((seq, new_tokens, hit))
                budget -= new_tokens

        if not picked and not preempted:
            return None
        return self._plan(picked, preempted, swap_out, swap_in, tuple(loads))

    @staticmethod
    def _unpick(picked: list[tuple[Sequence, int, int]], victim: Sequence) -> int:
        """Remove ``victim``'s entry from this step's ``picked``; return its tokens."""
        for position, (seq, new_tokens, _) in enumerate(picked):
            if seq is victim:
                del picked[position]
                return new_tokens
        raise AssertionError("a running sequence before the cursor was not picked")

    @staticmethod
    def _plan(
        picked: list[tuple[Sequence, int, int]],
        preempted: list[Sequence],
        swap_out: int,
        swap_in: int,
        loaded_blocks: tuple[int, ...] = (),
    ) -> StepPlan:
        prefill, chunk, context, emits, decode, decode_context = [], [], [], [], [], []
        for seq, new_tokens, computed in picked:
            remaining = seq.prompt_tokens + seq.generated_tokens - computed
            if new_tokens == 1 and remaining == 1 and seq.generated_tokens > 0:
                decode.append(seq)
                decode_context.append(computed + 1)
            else:
                prefill.append(seq)
                chunk.append(new_tokens)
                context.append(computed)
                emits.append(new_tokens == remaining)
        return StepPlan(
            prefill=tuple(prefill),
            prefill_tokens=np.array(chunk, dtype=np.int64) if chunk else _EMPTY_I64,
            prefill_context=np.array(context, dtype=np.int64) if context else _EMPTY_I64,
            prefill_emits=np.array(emits, dtype=bool) if emits else _EMPTY_BOOL,
            decode=tuple(decode),
            decode_context=(
                np.array(decode_context, dtype=np.int64) if decode_context else _EMPTY_I64
            ),
            preempted=tuple(preempted),
            swap_out_tokens=int(swap_out),
            swap_in_tokens=int(swap_in),
            loaded_blocks=loaded_blocks if any(loaded_blocks) else (),
        )

    # ------------------------------------------------------------------ completion
    def _finish(self, finished: list[Sequence], end_s: float) -> None:
        for seq in finished:
            self.pool.free(seq.index)
            seq.status, seq.finish_s = "finished", end_s
        done = set(map(id, finished))
        self.running = [seq for seq in self.running if id(seq) not in done]

    def commit(self, plan: StepPlan, end_s: float) -> list[Sequence]:
        """Apply ``plan``'s progress at ``end_s`` (the step's end); return finished sequences.

        A chunk that reaches ``num_tokens`` samples a token (the first one sets
        ``first_token_s``); a sequence with all its ``output_tokens`` finishes and frees its
        blocks.
        """
        finished: list[Sequence] = []
        work = zip(plan.prefill, plan.prefill_tokens.tolist(), strict=True)
        for seq, new_tokens in (*work, *((seq, 1) for seq in plan.decode)):
            seq.computed_tokens += new_tokens
            if seq.computed_tokens < seq.prompt_tokens + seq.generated_tokens:
                continue
            seq.generated_tokens += 1
            if self.order.tracks_service:
                self.order.served((seq,))
            if math.isnan(seq.first_token_s):
                seq.first_token_s = end_s
            if seq.generated_tokens == seq.output_tokens:
                finished.append(seq)
        if self.holds.follows_policy:
            self._shrink(seq for seq in (*plan.prefill, *plan.decode) if seq not in finished)
        if finished:
            self._finish(finished, end_s)
        return finished

    # ------------------------------------------------------------------ fast-forward
    def decode_contexts(self) -> np.ndarray:
        """KV tokens each running sequence attends in the next step, its new token included."""
        return np.fromiter(
            (seq.computed_tokens + 1 for seq in self.running),
            dtype=np.int64,
            count=len(self.running),
        )

    def stable_decode_steps(self, limit: int) -> int:
        """How many next steps are certainly the same pure-decode batch of every running
        sequence if nothing arrives: 0 if a prefill chunk, a swapped or a waiting sequence could
        be scheduled now; else ``min(limit, steps until the first sequence finishes, steps
        before block growth would preempt)``, shortened (prefix caching only) to the steps
        before the first block growth when a waiting sequence is held back only by blocks
        (growth may evict blocks it would hit). Under a footprint it also ends with the first
        step whose commit shrinks a hold, and looks at most :data:`FOOTPRINT_HORIZON` ahead.
        Under a queue policy whose order can change while the queue does not (``lpm``,
        ``fair``), every waiting sequence is checked as if it were the head."""
        running = self.running
        if limit < 1 or not running:
            return 0
        count = len(running)
        state = self._running_state()
        computed, generated = state[:, 0], state[:, 2]
        if np.any(state[:, 1] + generated - computed != 1) or generated.min() < 1:
            return 0
        horizon = int(min(limit, (state[:, 3] - generated).min()))
        holds = self.holds
        if holds.follows_policy:
            horizon = min(horizon, FOOTPRINT_HORIZON)
        free = self.pool.num_free_blocks
        if not holds.follows_policy:
            low, high = 0, horizon  # the largest s <= horizon whose growth fits the free blocks
            while low < high:
                middle = (low + high + 1) // 2
                if holds.decode_growth(computed, middle) <= free:
                    low = middle
                else:
                    high = middle - 1
            first_growth = holds.decode_growth(computed, 1)
        else:
            growth = holds.stretch_growth(computed, state[:, 1], horizon)
            low = int(np.searchsorted(growth, free, side="right"))
            first_growth = int(growth[0])
        if low == 0:
            return 0
        horizon = low
        if self.swapped:
            heads: tuple[Sequence, ...] = (self.swapped[0],)
        elif self.order.dynamic(len(self.waiting)):
            heads = tuple(self.waiting)  # any of them may become the head during the run
        else:
            heads = (self.waiting[self.order.head(self.waiting)],) if self.waiting else ()
        if not heads or count >= self.config.max_num_seqs:
            return horizon
        for head in heads:
            horizon = self._held_back_steps(head, state, free, first_growth, horizon)
            if horizon == 0:
                break
        return horizon

    def _held_back_steps(
        self, head: Sequence, state: np.ndarray, free: int, first_growth: int, horizon: int
    ) -> int:
        """How many of the next ``horizon`` pure-decode steps certainly leave ``head``, as the
        queue's head, unadmitted (:meth:`stable_decode_steps`)."""
        budget = self.config.max_batched_tokens - len(state)
        plan = self._admission(head, budget) if budget > 0 else None
        if plan is None:
            return horizon
        new_tokens, total, hashes = plan
        if not self._caching:
            needed = self.holds.during_step(head.prompt_tokens, total - new_tokens, new_tokens)
            return horizon if needed > free - first_growth else 0
        hold = self._step_hold_tokens(head, total - new_tokens, new_tokens)
        if first_growth > 0 or self.pool.can_allocate(hold, hashes):
            return 0
        growth = self.holds.stretch_growth(state[:, 0], state[:, 1], horizon)
        return min(horizon, int(np.searchsorted(growth, 0, side="right")))

    def _running_state(self) -> np.ndarray:
        """Per running sequence: computed, prompt, generated and output tokens."""
        return np.array(
            [
                (s.computed_tokens, s.prompt_tokens, s.generated_tokens, s.output_tokens)
                for s in self.running
            ],
            dtype=np.int64,
        ).reshape(-1, 4)

    def commit_decode_steps(self, steps: int, end_times_s: np.ndarray) -> list[Sequence]:
        """Apply ``steps`` pure-decode steps of the whole running batch at once (step ``k``
        ends at ``end_times_s[k]``); identical to ``steps`` rounds of :meth:`schedule` +
        :meth:`commit`. ``steps`` must not exceed :meth:`stable_decode_steps`."""
        end_times = np.asarray(end_times_s, dtype=np.float64).reshape(-1)
        if steps < 1 or end_times.size != steps:
            raise KvsimError(f"{steps} steps with {end_times.size} end times", field="end_times_s")
        if self.stable_decode_steps(steps) < steps:
            raise KvsimError(
                f"the next {steps} steps are not all the same pure-decode batch", field="steps"
            )
        running = self.running
        computed = np.fromiter(
            (s.computed_tokens for s in running), dtype=np.int64, count=len(running)
        )
        self._grow_decodes(computed, steps)
        self.order.served(running, steps)
        finished = []
        for seq in running:
            seq.computed_tokens += steps
            seq.generated_tokens += steps
            if seq.generated_tokens == seq.output_tokens:
                finished.append(seq)
        if self.holds.follows_policy:
            self._shrink(seq for seq in running if seq not in finished)
        if finished:
            self._finish(finished, float(end_times[-1]))
        return finished

    def _grow_decodes(self, computed: np.ndarray, steps: int) -> None:
        """Allocate the blocks of ``steps`` decode steps in the order step-by-step scheduling
        would (step, then running order), so block ids and evictions match exactly."""
        pool, running = self.pool, self.running
        if not self._caching and not self.holds.follows_policy:
            for seq, tokens in zip(running, (computed + steps).tolist(), strict=True):
                pool.grow(seq.index, tokens)
            return
        prompts = np.fromiter(
            (s.prompt_tokens for s in running), dtype=np.int64, count=len(running)
        )
        who, when, targets = self.holds.growth_events(computed, prompts, steps)
        for position in np.lexsort((who, when)).tolist():
            seq = running[int(who[position])]
            if not pool.grow(seq.index, int(targets[position])):
                raise AssertionError("decode growth failed inside a stable run")
