"""Scheduling policies of a replica: waiting-queue order, admission control, preemption.

:class:`~sim.scheduler.ReplicaScheduler` runs vLLM V1's iteration-level loop; this module
decides the four points where serving systems differ (``docs/scheduling.md``):

1. **Which waiting sequence is admitted next** — a *queue policy*, registered under the
   ``scheduler`` kind of :mod:`sim.policies.registry`:

   * ``fcfs``: arrival order, recompute-preempted sequences back at the front (vLLM's
     default);
   * ``sjf``: shortest predicted output first (SSJF, Qiu et al. 2024; "learning to rank",
     Fu et al. NeurIPS 2024), with an oracle or a noisy log-normal length predictor;
   * ``priority``: highest ``priority`` first, then arrival (vLLM's ``--scheduling-policy
     priority``, with the workload's convention that a larger value is more important);
   * ``lpm``: longest cached prefix first, falling back to FCFS when more than
     ``fcfs_threshold`` sequences wait (SGLang's ``--schedule-policy lpm``, 128;
     ``reference/policies.md`` §4.2);
   * ``fair``: the client (session) with the smallest virtual token counter first (VTC,
     Sheng et al., "Fairness in Serving Large Language Models", OSDI 2024).

   Every policy keeps head-of-line blocking, as vLLM and SGLang do: admission stops at the
   first sequence in policy order that does not fit (budget, ``max_num_seqs`` or blocks), so
   a long request cannot be starved by a stream of short ones that would fit around it.

2. **Which running sequence is preempted** when KV blocks run out: the newest (vLLM FCFS,
   ``running.pop()``), or under ``priority`` the least important, latest arrival (vLLM's
   ``max(running, key=(priority, arrival_time))``).

3. **Recompute or swap** for each victim — a *preemption policy* (``preemption`` kind):
   ``recompute``, ``swap``, or ``cost``: whichever is cheaper for that victim, comparing the
   time to prefill its computed tokens again with the time to move its KV to host memory and
   back (:class:`CostEstimates`).

4. **Admission control** on arrival: ``none`` queues everything; ``reject`` refuses a request
   whose TTFT cannot meet its class's SLO even in the best case (:func:`ttft_lower_bound_s`),
   with ``reject_reason`` :data:`REJECT_SLO`.

Policies are frozen dataclasses of parameters; per-replica mutable state (VTC counters) lives
in :class:`WaitingOrder`, which the scheduler owns. Nothing here reads a clock or simpy.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from hardware.errors import KvsimError
from sim.policies.registry import get_policy, register

if TYPE_CHECKING:
    from sim.scheduler import Sequence

#: ``Sequence.reject_reason`` of admission control.
REJECT_SLO = "slo_unattainable"
#: Admission-control modes.
ADMISSION_MODES = ("none", "reject")
#: Length predictors of ``sjf``.
PREDICTORS = ("oracle", "lognormal")
#: Stream id mixed into the scenario seed for the length predictor, so its noise is
#: independent of the synthetic workload drawn from the same seed.
PREDICTOR_STREAM = 0x51F
#: Client id of requests without a session (they share one VTC counter).
NO_CLIENT = -1


# ---- queue policies ----------------------------------------------------------------------------
@dataclass(frozen=True)
class QueuePolicy:
    """Base of the queue policies. ``sort_key`` (static policies) orders the waiting queue by
    insertion; a *dynamic* policy keeps insertion (FCFS) order and picks with :meth:`pick`
    before each admission, because its order changes while the queue does not (cached
    prefixes, service counters)."""

    kind: ClassVar[str]
    name: ClassVar[str]
    #: Whether the policy tracks per-client service (VTC).
    tracks_service: ClassVar[bool] = False

    def sort_key(self, seq: Sequence, order: WaitingOrder) -> tuple | None:
        """The static key (smaller first), or ``None`` to keep FCFS insertion order."""
        return None

    def dynamic(self, waiting: int) -> bool:
        """Whether the order of ``waiting`` queued sequences can change with no queue change."""
        return False

    def pick(self, waiting: deque[Sequence], order: WaitingOrder) -> int:
        """Position of the next sequence to try (dynamic policies)."""
        return 0

    def victim(self, running: list[Sequence]) -> int:
        """Position of the running sequence to preempt: the newest (vLLM's FCFS)."""
        return len(running) - 1


@register("scheduler", "fcfs")
@dataclass(frozen=True)
class Fcfs(QueuePolicy):
    """First come, first served (vLLM's default): arrival order, recompute-preempted
    sequences back at the front."""


@register("scheduler", "sjf")
@dataclass(frozen=True)
class ShortestJobFirst(QueuePolicy):
    """Shortest predicted remaining output first; ties by arrival.

    The key is ``max(predicted_output − generated, 0)``: SSJF (Qiu et al., "Efficient
    Interactive LLM Serving with Proxy Model-based Sequence Length Prediction", 2024) and the
    ranking scheduler of Fu et al. (NeurIPS 2024) order by predicted output length, the decode
    work that dominates a request's time in the batch. ``predictor = "oracle"`` uses the exact
    length; ``"lognormal"`` multiplies it by ``exp(sigma · z)``, ``z ~ N(0, 1)``, one draw per
    request from the scenario seed (:func:`predict_output_tokens`): the error is
    multiplicative with median 1 and ``sigma`` is the standard deviation of the log ratio
    (``sigma = 0.5``: 68 % of predictions within a factor ``exp(0.5) ≈ 1.65`` of the
    truth)."""

    predictor: str = "oracle"
    sigma: float = 0.5

    def __post_init__(self) -> None:
        if self.predictor not in PREDICTORS:
            raise KvsimError(
                f"expected one of {', '.join(PREDICTORS)}, got {self.predictor!r}",
                field="predictor",
            )
        if not (self.sigma >= 0 and math.isfinite(self.sigma)):
            raise KvsimError(f"must be a finite number >= 0, got {self.sigma!r}", field="sigma")

    def sort_key(self, seq: Sequence, order: WaitingOrder) -> tuple:
        remaining = max(order.predicted_output(seq) - seq.generated_tokens, 0.0)
        return (remaining, seq.arrival_s, seq.index)


@register("scheduler", "priority")
@dataclass(frozen=True)
class PriorityOrder(QueuePolicy):
    """Highest ``priority`` first, then arrival (vLLM's priority policy, whose smaller value is
    more important; kvsim's workloads use larger = more important). The preemption victim is
    the least important running sequence, latest arrival first."""

    def sort_key(self, seq: Sequence, order: WaitingOrder) -> tuple:
        return (-seq.priority, seq.arrival_s, seq.index)

    def victim(self, running: list[Sequence]) -> int:
        keys = [(-s.priority, s.arrival_s, position) for position, s in enumerate(running)]
        return max(keys)[2]


@register("scheduler", "lpm")
@dataclass(frozen=True)
class LongestPrefixMatch(QueuePolicy):
    """Longest cached prefix first, ties in FCFS order; plain FCFS while more than
    ``fcfs_threshold`` sequences wait, since matching every waiting prompt each step costs
    too much (SGLang's ``schedule_policy.py``: LPM falls back to FCFS above 128). Re-evaluated
    before each admission (SGLang sorts once per scheduling round)."""

    fcfs_threshold: int = 128

    def __post_init__(self) -> None:
        value = self.fcfs_threshold
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise KvsimError(f"must be an integer >= 1, got {value!r}", field="fcfs_threshold")

    def dynamic(self, waiting: int) -> bool:
        return waiting <= self.fcfs_threshold

    def pick(self, waiting: deque[Sequence], order: WaitingOrder) -> int:
        if len(waiting) > self.fcfs_threshold:
            return 0
        hits = [order.cached_tokens(seq) for seq in waiting]
        return int(np.argmax(hits))  # first maximum: FCFS among equal matches


@register("scheduler", "fair")
@dataclass(frozen=True)
class VirtualTokenCounter(QueuePolicy):
    """Virtual Token Counter (Sheng et al., OSDI 2024, Algorithm 2), clients = sessions.

    Each client ``u`` has a counter ``c_u``. A request is admitted from the client with the
    smallest counter among those waiting (its earliest request; FCFS among equal counters);
    admission adds ``input_weight × prompt_tokens`` to ``c_u`` and every generated token adds
    ``output_weight`` (the paper's ``w_p = 1``, ``w_q = 2``). A client arriving with nothing
    queued is lifted to ``max(c_u, min counter of the waiting clients)`` (to the last admitted
    client's counter when none waits), so idling earns no credit. Requests without a session
    share one client."""

    input_weight: float = 1.0
    output_weight: float = 2.0
    tracks_service: ClassVar[bool] = True

    def __post_init__(self) -> None:
        for name in ("input_weight", "output_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (value >= 0 and math.isfinite(value)):
                raise KvsimError(f"must be a finite number >= 0, got {value!r}", field=name)

    def dynamic(self, waiting: int) -> bool:
        return True

    def pick(self, waiting: deque[Sequence], order: WaitingOrder) -> int:
        counters = [order.counter(seq.session_id) for seq in waiting]
        return int(np.argmin(counters))


def queue_policy(name: str, **params: object) -> QueuePolicy:
    """The registered queue policy ``name`` with ``params`` (KvsimError naming the field)."""
    return get_policy("scheduler", name, **params)


# ---- preemption policies ---------------------------------------------------------------------
@dataclass(frozen=True)
class PreemptionPolicy:
    """Base of the preemption policies: :meth:`mode` says how one victim is preempted."""

    kind: ClassVar[str]
    name: ClassVar[str]
    #: Whether the policy needs :class:`CostEstimates`.
    needs_estimates: ClassVar[bool] = False

    def mode(self, recompute_s: Callable[[], float], swap_s: Callable[[], float]) -> str:
        raise NotImplementedError


@register("preemption", "recompute")
@dataclass(frozen=True)
class RecomputePreemption(PreemptionPolicy):
    """Free the victim's blocks and prefill it again later (vLLM V1's only mode)."""

    def mode(self, recompute_s: Callable[[], float], swap_s: Callable[[], float]) -> str:
        return "recompute"


@register("preemption", "swap")
@dataclass(frozen=True)
class SwapPreemption(PreemptionPolicy):
    """Copy the victim's KV to host memory and back (vLLM V0's ``PreemptionMode.SWAP``)."""

    def mode(self, recompute_s: Callable[[], float], swap_s: Callable[[], float]) -> str:
        return "swap"


@register("preemption", "cost")
@dataclass(frozen=True)
class CostPreemption(PreemptionPolicy):
    """Per victim, the cheaper of recompute (prefill its computed tokens again,
    :func:`recompute_time_s`) and swap (its KV to host and back, :func:`swap_time_s`); swap
    on a tie. The choice vLLM V0 left to a flag, made by cost as in "Compute or load KV?"
    (Cake) and FastSwitch's cost-aware preemption."""

    needs_estimates: ClassVar[bool] = True

    def mode(self, recompute_s: Callable[[], float], swap_s: Callable[[], float]) -> str:
        return "swap" if swap_s() <= recompute_s() else "recompute"


def preemption_policy(name: str) -> PreemptionPolicy:
    """The registered preemption policy ``name``."""
    return get_policy("preemption", name)


# ---- cost estimates --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class CostEstimates:
    """Executor-independent step costs the policies need, from the scenario's cost model.

    ``prefill_chunk_s(tokens, context)``: seconds of one step prefilling ``tokens`` new
    tokens on top of ``context`` cached ones, alone in the batch; ``kv_transfer_s(tokens)``:
    seconds to move ``tokens`` tokens of KV (in the stored format) one way between HBM and
    host memory; ``max_batched_tokens``: the step token budget (chunk size)."""

    prefill_chunk_s: Callable[[int, int], float]
    kv_transfer_s: Callable[[int], float]
    max_batched_tokens: int


def recompute_time_s(estimates: CostEstimates, tokens: int) -> float:
    """Seconds to prefill ``tokens`` tokens again from nothing, in chunks of the step budget
    (chunk ``k`` attends the ``k · budget`` tokens before it)."""
    budget = estimates.max_batched_tokens
    total, done = 0.0, 0
    while done < tokens:
        chunk = min(budget, tokens - done)
        total += estimates.prefill_chunk_s(chunk, done)
        done += chunk
    return total


def swap_time_s(estimates: CostEstimates, kv_tokens: int) -> float:
    """Seconds to swap ``kv_tokens`` tokens of KV out to host memory and back in."""
    return 2.0 * estimates.kv_transfer_s(kv_tokens)


def ttft_lower_bound_s(estimates: CostEstimates, tokens_ahead: int, own_tokens: int) -> float:
    """A lower bound on a request's TTFT: the prefill work queued ahead of it plus its own
    prompt, at the best prefill rate (a full budget chunk from an empty context,
    ``max_batched_tokens / prefill_chunk_s(max_batched_tokens, 0)`` tokens/s), with no decode
    sharing the steps and no wait for KV blocks or batch slots."""
    budget = estimates.max_batched_tokens
    per_token_s = estimates.prefill_chunk_s(budget, 0) / budget
    return (tokens_ahead + own_tokens) * per_token_s


def predict_output_tokens(
    output_tokens: np.ndarray, policy: QueuePolicy, seed: int
) -> np.ndarray | None:
    """Per-request predicted output lengths for ``sjf`` (``None`` for other policies): exact
    for the oracle; ``output · exp(sigma · z)`` with one standard normal ``z`` per request from
    ``np.random.default_rng((seed, PREDICTOR_STREAM))`` for ``lognormal``. Drawn once per
    workload, so a request's prediction does not depend on routing or execution mode."""
    if not isinstance(policy, ShortestJobFirst):
        return None
    exact = np.asarray(output_tokens, dtype=np.float64)
    if policy.predictor == "oracle":
        return exact
    rng = np.random.default_rng((seed, PREDICTOR_STREAM))
    return exact * np.exp(policy.sigma * rng.standard_normal(exact.size))


# ---- per-replica runtime ---------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SchedulingInputs:
    """What the policies read besides the scheduler's own state.

    ``predicted_output_tokens``: per workload request (:func:`predict_output_tokens`);
    ``estimates``: for ``cost`` preemption and ``reject`` admission; ``ttft_slo_s``: each
    priority's TTFT target (admission control), ``default_ttft_slo_s`` for priorities not
    listed."""

    predicted_output_tokens: np.ndarray | None = None
    estimates: CostEstimates | None = None
    ttft_slo_s: Mapping[int, float] = field(default_factory=dict)
    default_ttft_slo_s: float | None = None

    def ttft_target_s(self, priority: int) -> float | None:
        return self.ttft_slo_s.get(priority, self.default_ttft_slo_s)


class WaitingOrder:
    """One replica's queue policy at run time: inserts into the waiting deque, picks the next
    candidate, chooses victims, and keeps VTC's counters. ``cached_tokens(seq)`` is the
    scheduler's prefix match (for ``lpm``)."""

    def __init__(
        self,
        policy: QueuePolicy,
        inputs: SchedulingInputs,
        cached_tokens: Callable[[Sequence], int],
    ) -> None:
        self.policy = policy
        self.inputs = inputs
        self.cached_tokens = cached_tokens
        self.static = type(policy).sort_key is not QueuePolicy.sort_key
        self.tracks_service = policy.tracks_service
        self._counters: dict[int, float] = {}
        self._last_counter = 0.0
        noisy = isinstance(policy, ShortestJobFirst) and policy.predictor != "oracle"
        if noisy and inputs.predicted_output_tokens is None:
            raise KvsimError(
                "a noisy length predictor needs predicted lengths "
                "(sim.scheduling.predict_output_tokens)",
                field="scheduler.length_predictor",
            )

    # ---- queue order
    def predicted_output(self, seq: Sequence) -> float:
        predicted = self.inputs.predicted_output_tokens
        return float(seq.output_tokens if predicted is None else predicted[seq.index])

    def insert(self, waiting: deque[Sequence], seq: Sequence, front: bool) -> None:
        """Queue ``seq``: by the static key, else at the back (``front``: a recompute-preempted
        sequence, at the front as vLLM does)."""
        if self.static:
            key = self.policy.sort_key(seq, self)
            position = bisect.bisect_right(
                waiting, key, key=lambda s: self.policy.sort_key(s, self)
            )
            waiting.insert(position, seq)
        elif front:
            waiting.appendleft(seq)
        else:
            waiting.append(seq)

    def dynamic(self, waiting: int) -> bool:
        return not self.static and self.policy.dynamic(waiting)

    def head(self, waiting: deque[Sequence]) -> int:
        """Position of the next sequence to try to admit."""
        return self.policy.pick(waiting, self) if self.dynamic(len(waiting)) else 0

    def victim(self, running: list[Sequence]) -> int:
        return self.policy.victim(running)

    def ahead(self, waiting: Iterable[Sequence], seq: Sequence) -> Iterable[Sequence]:
        """Queued sequences that a newcomer ``seq`` would not overtake: under a static order
        those with a smaller key, else all."""
        if not self.static:
            return waiting
        key = self.policy.sort_key(seq, self)
        return (s for s in waiting if self.policy.sort_key(s, self) < key)

    # ---- VTC counters
    def counter(self, client: int) -> float:
        return self._counters.get(client, 0.0)

    def arrived(self, seq: Sequence, waiting: Iterable[Sequence]) -> None:
        """VTC's counter lift for a client with nothing queued."""
        if not self.tracks_service:
            return
        client = seq.session_id
        clients = {s.session_id for s in waiting}
        if client in clients:
            return
        floor = min((self.counter(c) for c in clients), default=self._last_counter)
        self._counters[client] = max(self.counter(client), floor)

    def admitted(self, seq: Sequence) -> None:
        """Charge a first admission's prompt to its client."""
        if self.tracks_service:
            client = seq.session_id
            self._counters[client] = (
                self.counter(client) + self.policy.input_weight * seq.prompt_tokens
            )
            self._last_counter = self._counters[client]

    def served(self, seqs: Iterable[Sequence], tokens: int = 1) -> None:
        """Charge ``tokens`` generated tokens to each sequence's client."""
        if self.tracks_service:
            charge = self.policy.output_weight * tokens
            for seq in seqs:
                self._counters[seq.session_id] = self.counter(seq.session_id) + charge
