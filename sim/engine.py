"""The discrete-event engine: arrivals, routing, replicas stepping batches, KV hand-offs.

This is the only module that uses simpy. There is one simpy process per replica and one for
arrivals; requests are plain :class:`~sim.scheduler.Sequence` objects owned by the replica
schedulers, never processes, so the event count scales with batch changes, not requests or
tokens.

**Clock.** Simulated time is an integer number of nanoseconds. Every step duration is rounded
to the nearest nanosecond (at least 1 ns) before it is added, so sums are exact and a
fast-forwarded stretch lands on exactly the times step-by-step execution would. Records
report seconds (``ns / 1e9``).

**Order of events at one instant** (the tie rule). At a time ``t``: first, steps ending at
``t`` are committed (priority ``COMMIT``); then requests arriving at ``t`` (and, under
disaggregation, prefills handed off and KV transfers completing at ``t``) are routed and
queued, the router seeing the committed state (``ARRIVAL``); then replicas choose their next
batch (``SCHEDULE``). So a request arriving at
``t`` joins the first step that starts at or after ``t``, in both execution modes.

**Replica loop.** ``plan = scheduler.schedule(now)``; no plan: sleep until an arrival wakes
the replica. A plan with prefill work is one step: ask the executor for its duration, wait,
``commit``. A pure-decode plan whose batch cannot change for ``k > 1`` steps
(``stable_decode_steps``) is a *stretch*: the executor prices all ``k`` steps at once
(``decode_stretch``, vectorised), their end times are the running sum, and the replica waits
for the last one. A request routed to a replica in a stretch cuts it: the step in progress runs
to its end, the steps so far are committed, and the replica replans there, exactly where
step-by-step execution would have picked the newcomer up. Routers that read state changing
inside a stretch (KV load, cached blocks) first bring every replica to the state step-by-step
execution would show (:meth:`Engine._sync`). ``step_mode=True`` disables stretches;
per-request records are identical either way (``tests/test_engine_cases.py``,
``tests/test_engine_invariants.py``); ``docs/engine.md`` explains why.

**Disaggregation.** With separate prefill and decode pools, a request is prefilled on a
prefill replica (which emits its first token), its KV (``prompt_tokens ×
kv_bytes_per_token``) crosses that replica's :class:`~sim.transfer.SharedLink`, and it
decodes on a decode replica chosen by the router when the transfer starts.

**Tiered KV store.** A step whose admissions hit prefix blocks in a lower tier
(:attr:`StepPlan.loaded_blocks`, :mod:`sim.kv.tiers`) starts one transfer per tier on that
tier's :class:`~sim.transfer.SharedLink` when it starts (a remote tier's link is shared by
all replicas, so their loads contend). With prefetch the load runs layer by layer under the
step's compute and the step ends at ``max(compute end, load landed)``; without, it computes
after the load lands. The exposed load time is reported as the step's ``transfer_s``.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass, field, replace

import numpy as np
import simpy
from simpy.events import Event

from hardware.errors import KvsimError
from sim.executor import Executor, StepResult
from sim.kv.hashing import engine_block_hashes
from sim.records import FINISHED, RequestRecords, StepRecords
from sim.router import RouterSpec, choose
from sim.scheduler import (
    ReplicaScheduler,
    Sequence,
    StepPlan,
)
from sim.transfer import SharedLink
from workloads.workload import Workload

#: Nanoseconds per second: the engine clock's resolution is 1 ns.
NS = 1_000_000_000
#: Event priorities at one instant (lower runs first); see the module docstring.
COMMIT, ARRIVAL, SCHEDULE = 0, 1, 2
#: Most decode steps priced in one stretch; longer stable runs take several stretches.
STRETCH_LIMIT = 4096
_EMPTY = np.zeros(0, dtype=np.int64)
_EMPTY_BOOL = np.zeros(0, dtype=bool)


class _Mark(Event):
    """An event that fires ``delay`` ns from now at ``priority`` (a Timeout with a priority;
    the initialisation mirrors simpy's own ``Timeout``)."""

    def __init__(self, env: simpy.Environment, delay: int, priority: int) -> None:
        self.env = env
        self.callbacks = []
        self._value = None
        self._ok = True
        env.schedule(self, priority, delay)


def _fire(event: Event, priority: int) -> None:
    """Trigger an untriggered ``event`` now at ``priority`` (``succeed`` with a priority)."""
    event._ok = True
    event._value = None
    event.env.schedule(event, priority)


def duration_ns(seconds: float | np.ndarray) -> int | np.ndarray:
    """A duration on the engine clock: nearest nanosecond, at least 1."""
    if isinstance(seconds, np.ndarray):
        return np.maximum(np.rint(seconds * NS).astype(np.int64), 1)
    return max(round(seconds * NS), 1)  # round half to even, like np.rint


class _LinkEvents:
    """The completions of a :class:`~sim.transfer.SharedLink`'s transfers as simpy events:
    one wake-up at the link's next completion, re-armed whenever a transfer starts or ends
    (an older wake-up becomes stale)."""

    def __init__(self, env: simpy.Environment, link: SharedLink) -> None:
        self.env = env
        self.link = link
        self._done: dict[int, Event] = {}
        self._next_id = 0
        self._wake: Event | None = None
        self._due = -1

    def transfer(self, nbytes: float) -> Event:
        """Start sending ``nbytes`` now; the event fires (``COMMIT`` priority) when it lands."""
        key = self._next_id
        self._next_id += 1
        done = Event(self.env)
        self._done[key] = done
        self.link.start(key, nbytes, self.env.now / NS)
        self._arm()
        return done

    def _arm(self) -> None:
        due_s = self.link.next_completion_s()
        if due_s is None:
            self._wake, self._due = None, -1
            return
        now = self.env.now
        due = max(int(np.ceil(due_s * NS)), now)
        if self._due == due and self._wake is not None:
            return
        wake = _Mark(self.env, due - now, ARRIVAL)
        wake.callbacks.append(self._fired)
        self._wake, self._due = wake, due

    def _fired(self, event: Event) -> None:
        if event is not self._wake:
            return
        self._wake, self._due = None, -1
        for key in self.link.finish(self.env.now / NS):
            _fire(self._done.pop(key), COMMIT)
        self._arm()


@dataclass
class _Stretch:
    """A decode stretch in flight: its batch, end times (ns) of its steps, how many are
    committed, and whether a newcomer has cut it short."""

    plan: StepPlan
    start_ns: int
    ends_ns: np.ndarray
    first: StepResult
    done: int = 0
    cutting: bool = False


@dataclass
class _Replica:
    index: int
    scheduler: ReplicaScheduler
    role: str  # "mixed", "prefill" or "decode"
    process: simpy.Process | None = None
    wake: Event | None = None
    stretch: _Stretch | None = None
    #: Requests routed here during a stretch, queued once its step in progress commits.
    pending: list[tuple[Sequence, bool]] = field(default_factory=list)
    #: Whether a stretch may start now; False when the next step is known to change the
    #: batch (a newcomer queued, a prompt part-way through prefill), which saves the probe.
    #: Running a plain step instead of a stretch never changes results.
    probe: bool = True

    @property
    def outstanding(self) -> int:
        return self.scheduler.outstanding_requests + len(self.pending)


@dataclass
class _Handoff:
    """A request between its prefill and its decode replica."""

    decode_replica: int
    first_token_s: float
    scheduled_s: float
    prefix_hit_tokens: int
    preemptions: int


@dataclass(frozen=True)
class EngineConfig:
    """How the engine runs: router, replica roles (``mixed``, or ``prefill``/``decode``
    pools), one link per prefill replica, KV bytes per token (for transfers), whether to
    hash prompt blocks for prefix caching, and stretch settings."""

    router: RouterSpec
    block_tokens: int
    prefix_caching: bool = False
    step_mode: bool = False
    roles: tuple[str, ...] = ()
    links: tuple[SharedLink, ...] = ()
    kv_bytes_per_token: float = 0.0
    stretch_limit: int = STRETCH_LIMIT
    #: Per replica, one link per tier of its tiered KV store, fastest tier first (empty: no
    #: store); a remote tier's link is one object shared by every replica.
    tier_links: tuple[tuple[SharedLink, ...], ...] = ()
    #: Whether tier loads overlap the step's compute layer by layer (prefetch) or precede it.
    tier_prefetch: bool = True


class Engine:
    """Runs ``workload`` through ``schedulers`` (one per replica) with ``executor``;
    ``progress(n)`` is called as ``n`` more requests finish or are rejected."""

    def __init__(
        self,
        workload: Workload,
        schedulers: SequenceOf[ReplicaScheduler],
        executor: Executor,
        config: EngineConfig,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        if not schedulers:
            raise KvsimError("a cluster needs at least one replica", field="replicas")
        self.workload = workload
        self.executor = executor
        self.config = config
        self.progress = progress
        self.env = simpy.Environment()
        roles = config.roles or ("mixed",) * len(schedulers)
        self.replicas = [_Replica(i, s, roles[i]) for i, s in enumerate(schedulers)]
        self.entry = [r for r in self.replicas if r.role in ("mixed", "prefill")]
        self.decoders = [r for r in self.replicas if r.role == "decode"]
        if self.decoders and len(config.links) != len(self.entry):
            raise KvsimError("one link per prefill replica is needed", field="disaggregation")
        self.records = RequestRecords(workload)
        self.steps = StepRecords()
        self.stretch = executor.supports_stretch and not config.step_mode
        self._arrival_ns = np.rint(workload.arrival_s * NS).astype(np.int64)
        self._next_input_ns = int(self._arrival_ns[0]) if len(workload) else -1
        self._routed = 0
        self._handoffs: dict[int, _Handoff] = {}
        self._link_wakes: list[Event | None] = [None] * len(config.links)
        self._link_due_ns: list[int] = [-1] * len(config.links)
        spec = config.router
        self._sync_routing = spec.needs_kv_load or spec.needs_prefix_hits
        self._swap_tracking = any(s.config.preemption != "recompute" for s in schedulers)
        #: Session affinity: (pool role, session id) -> replica index of its last turn.
        self._sessions: dict[tuple[str, int], int] = {}
        drivers: dict[int, _LinkEvents] = {}
        self._tier_links = [
            tuple(drivers.setdefault(id(link), _LinkEvents(self.env, link)) for link in links)
            for links in config.tier_links
        ]

    # ---- running -------------------------------------------------------------------------
    def run(self) -> tuple[RequestRecords, StepRecords]:
        env = self.env
        for replica in self.replicas:
            replica.process = env.process(self._replica_loop(replica))
        env.process(self._arrivals())
        env.run()
        self._settle_leftovers()
        return self.records, self.steps

    def _input_due(self, now: int) -> bool:
        """Whether requests may still be routed at ``now`` (arrivals; under disaggregation,
        hand-offs and KV deliveries, which any commit at ``now`` may create)."""
        return self._next_input_ns == now or bool(self.decoders)

    # ---- arrivals and routing ------------------------------------------------------------
    def _arrival_times(self):
        """``(index, arrival ns)`` in order, as Python ints, a chunk at a time."""
        chunk = 4096
        for first in range(0, len(self._arrival_ns), chunk):
            yield from enumerate(self._arrival_ns[first : first + chunk].tolist(), first)

    def _arrivals(self):
        env = self.env
        times = self._arrival_times()
        upcoming = next(times, None)
        while upcoming is not None:
            t = upcoming[1]
            if t > env.now:
                yield _Mark(env, t - env.now, ARRIVAL)
            while upcoming is not None and upcoming[1] == t:
                self._admit(upcoming[0])
                upcoming = next(times, None)
            self._next_input_ns = upcoming[1] if upcoming is not None else -1

    def _new_sequence(self, index: int) -> Sequence:
        w = self.workload
        seq = Sequence(
            index=index,
            arrival_s=self._arrival_ns[index] / NS,
            prompt_tokens=int(w.prompt_tokens[index]),
            output_tokens=int(w.output_tokens[index]),
            priority=int(w.priority[index]),
            session_id=int(w.session_id[index]),
        )
        if self.config.prefix_caching and w.has_prefixes:
            seq.block_hashes = engine_block_hashes(
                w.prefix_of(index),
                w.prefix_block_tokens,
                self.config.block_tokens,
                seq.prompt_tokens,
            )
        return seq

    def _route(self, pool: list[_Replica], seq: Sequence, hashes: np.ndarray | None) -> _Replica:
        if len(pool) == 1:
            return pool[0]
        spec = self.config.router
        outstanding = kv_load = hits = backlog = None
        sticky = -1
        if spec.needs_kv_load or spec.needs_prefix_hits:
            now = self.env.now
            for replica in pool:
                self._sync(replica, now)
        if spec.needs_outstanding:
            outstanding = np.array([r.outstanding for r in pool])
        if spec.needs_kv_load:
            kv_load = np.array([r.scheduler.kv_load_fraction for r in pool])
        if spec.needs_prefix_hits:
            hits = np.array(
                [r.scheduler.pool.match_prefix(hashes) if hashes is not None else 0 for r in pool]
            )
        if spec.needs_backlog:
            backlog = np.array(
                [
                    r.scheduler.prefill_backlog_tokens
                    + sum(ReplicaScheduler.prefill_left(s) for s, _ in r.pending)
                    for r in pool
                ]
            )
        session = (pool[0].role, seq.session_id)
        if spec.needs_session and seq.session_id >= 0 and session in self._sessions:
            sticky = [r.index for r in pool].index(self._sessions[session])
        position = choose(
            spec,
            self._routed,
            len(pool),
            outstanding,
            kv_load,
            hits,
            backlog,
            seq.prompt_tokens,
            self.config.block_tokens,
            sticky,
        )
        self._routed += 1
        if spec.needs_session and seq.session_id >= 0:
            self._sessions[session] = pool[position].index
        return pool[position]

    def _admit(self, index: int) -> None:
        seq = self._new_sequence(index)
        if self.decoders:
            reason = self.decoders[0].scheduler.reject_reason(seq)
            if reason:
                self.records.reject(index, reason)
                self._progress(1)
                return
            seq.output_tokens = 1  # the prefill replica emits the first token only
        replica = self._route(self.entry, seq, seq.block_hashes)
        self.records.replica[index] = replica.index
        self._enqueue(replica, seq, transferred=False)

    def _enqueue(self, replica: _Replica, seq: Sequence, transferred: bool) -> None:
        stretch = replica.stretch
        if stretch is not None:
            # The step in progress was planned before this arrival: queue the newcomer once
            # it commits, and cut the stretch there.
            # Known without queueing it: on arrival under disaggregation (the prefill replica
            # sees only the first output token) and here, for a replica in a stretch.
            reason = "" if transferred else replica.scheduler.reject_reason(seq)
            if reason:
                self.records.reject(seq.index, reason, replica.index)
                self._progress(1)
                return
            replica.pending.append((seq, transferred))
            if not stretch.cutting:
                stretch.cutting = True
                replica.process.interrupt()
            return
        self._queue(replica, seq, transferred)
        replica.probe = False
        if replica.wake is not None:
            wake, replica.wake = replica.wake, None
            _fire(wake, SCHEDULE)

    def _queue(self, replica: _Replica, seq: Sequence, transferred: bool) -> None:
        scheduler = replica.scheduler
        if transferred:
            # KV that arrived from a prefill replica: resumable like swapped-out KV (no
            # recompute); the decode executor does not charge host-link time for it.
            scheduler.add_transferred(seq)
            return
        scheduler.add(seq, self.env.now / NS)
        rejected = scheduler.rejected
        if rejected:
            for each in rejected:
                self.records.reject(each.index, each.reject_reason, replica.index)
            self._progress(len(rejected))
            rejected.clear()

    # ---- replicas ------------------------------------------------------------------------
    def _replica_loop(self, replica: _Replica):
        env = self.env
        scheduler = replica.scheduler
        executor = self.executor
        stretch_ok = self.stretch
        limit = self.config.stretch_limit
        yield _Mark(env, 0, SCHEDULE)
        while True:
            start = env.now
            steps = scheduler.stable_decode_steps(limit) if stretch_ok and replica.probe else 0
            replica.probe = True
            if steps > 1 and self._sync_routing:
                steps = self._without_finishing_step(scheduler, steps)
            if steps > 1:
                yield from self._run_stretch(replica, steps)
            else:
                plan = scheduler.schedule(start / NS)
                if plan is None:
                    replica.wake = env.event()
                    yield replica.wake
                    continue
                result = executor.step(plan)
                duration = duration_ns(result.duration_s)
                if plan.loaded_blocks:
                    result = yield from self._load_tiers(replica, plan, result, start, duration)
                    duration = env.now - start
                else:
                    yield _Mark(env, duration, COMMIT)
                finished = scheduler.commit(plan, env.now / NS)
                self._step_row(replica, plan, result, start, duration, 1, len(finished))
                self._finish(replica, finished)
                if plan.prefill and not plan.prefill_emits.all():
                    replica.probe = False
            if self._input_due(env.now):
                yield _Mark(env, 0, SCHEDULE)

    def _run_stretch(self, replica: _Replica, steps: int):
        env = self.env
        start = env.now
        scheduler = replica.scheduler
        contexts = scheduler.decode_contexts()
        plan = StepPlan(
            prefill=(),
            prefill_tokens=_EMPTY,
            prefill_context=_EMPTY,
            prefill_emits=_EMPTY_BOOL,
            decode=tuple(scheduler.running),
            decode_context=contexts,
            preempted=(),
            swap_out_tokens=0,
            swap_in_tokens=0,
        )
        first = self.executor.step(plan)
        durations = duration_ns(self.executor.decode_stretch(plan, steps))
        ends = start + np.cumsum(durations)
        replica.stretch = _Stretch(plan, start, ends, first)
        try:
            yield _Mark(env, int(ends[-1]) - start, COMMIT)
            self._commit_stretch(replica, steps)
            replica.stretch = None
        except simpy.Interrupt:
            # A request was routed here at env.now: finish the step in progress (or the one
            # ending right now), commit, then replan with the newcomer.
            current = int(np.searchsorted(ends, env.now, side="left"))
            if int(ends[current]) > env.now:
                yield _Mark(env, int(ends[current]) - env.now, COMMIT)
            self._commit_stretch(replica, current + 1)
            replica.stretch = None
            for seq, transferred in replica.pending:
                self._queue(replica, seq, transferred)
            replica.pending.clear()
            replica.probe = False
            yield _Mark(env, 0, SCHEDULE)

    def _load_tiers(
        self, replica: _Replica, plan: StepPlan, result: StepResult, start: int, compute: int
    ):
        """Run a step of ``compute`` ns whose admissions load blocks from lower tiers: one
        transfer per tier on its link, overlapped with the compute (prefetch) or before it;
        return the step's result with the exposed load time as transfer."""
        env = self.env
        block_bytes = self.config.block_tokens * self.config.kv_bytes_per_token
        links = self._tier_links[replica.index]
        landed = [
            link.transfer(blocks * block_bytes)
            for link, blocks in zip(links, plan.loaded_blocks, strict=True)
            if blocks
        ]
        for event in landed:
            if not event.processed:
                yield event
        end = max(start + compute, env.now) if self.config.tier_prefetch else env.now + compute
        yield _Mark(env, end - env.now, COMMIT)
        exposed = (env.now - start - compute) / NS
        return replace(
            result,
            duration_s=(env.now - start) / NS,
            transfer_s=result.transfer_s + exposed,
        )

    @staticmethod
    def _without_finishing_step(scheduler: ReplicaScheduler, steps: int) -> int:
        """``steps`` less the last one if a sequence finishes in it: with state-reading
        routers a stretch's steps may be committed early (:meth:`_sync`), which is exact only
        for steps in which nothing finishes (finishing frees blocks)."""
        remaining = min(seq.output_tokens - seq.generated_tokens for seq in scheduler.running)
        return steps - 1 if remaining == steps else steps

    def _sync(self, replica: _Replica, now: int) -> None:
        """Bring ``replica``'s KV state to what step-by-step execution has at ``now``: every
        step that started before ``now`` scheduled (its blocks allocated). Such steps of a
        stretch are committed, the one in progress early; none of them finishes a request
        (:meth:`_without_finishing_step`), so nothing a router reads differs."""
        stretch = replica.stretch
        if stretch is not None and not stretch.cutting:
            started = min(
                int(np.searchsorted(stretch.ends_ns, now, side="left")) + 1,
                len(stretch.ends_ns),
            )
            if started > stretch.done:
                self._commit_stretch(replica, started)

    def _commit_stretch(self, replica: _Replica, upto: int) -> None:
        stretch = replica.stretch
        assert stretch is not None
        first, last = stretch.done, upto
        if last <= first:
            return
        ends = stretch.ends_ns
        start = int(ends[first - 1]) if first else stretch.start_ns
        finished = replica.scheduler.commit_decode_steps(last - first, ends[first:last] / NS)
        duration = int(ends[last - 1]) - start
        stretch.done = last
        self._step_row(
            replica, stretch.plan, stretch.first, start, duration, last - first, len(finished)
        )
        self._finish(replica, finished)

    def _host_blocks(self, scheduler: ReplicaScheduler) -> int:
        if not self._swap_tracking or not scheduler.swapped:
            return 0
        return sum(scheduler.held_blocks(seq, seq.computed_tokens) for seq in scheduler.swapped)

    def _step_row(
        self,
        replica: _Replica,
        plan: StepPlan,
        result: StepResult,
        start: int,
        duration: int,
        steps: int,
        finished: int,
    ) -> None:
        seconds = duration / NS
        scale = seconds / result.duration_s if result.duration_s > 0 else 0.0
        num_decode = len(plan.decode)
        scheduler = replica.scheduler
        self.steps.append(
            (
                replica.index,
                start / NS,
                seconds,
                steps,
                len(plan.prefill),
                int(plan.prefill_tokens.sum()) if plan.prefill else 0,
                num_decode,
                num_decode * steps,
                result.compute_s * scale,
                result.memory_s * scale,
                result.communication_s * scale,
                result.transfer_s * scale,
                result.overhead_s * scale,
                scheduler.used_blocks,
                self._host_blocks(scheduler),
                len(plan.preempted),
                plan.swap_out_tokens,
                plan.swap_in_tokens,
                finished,
            )
        )
        self.steps.maybe_flush()

    # ---- finishing -----------------------------------------------------------------------
    def _progress(self, count: int) -> None:
        if self.progress is not None and count:
            self.progress(count)

    def _finish(self, replica: _Replica, finished: list[Sequence]) -> None:
        if not finished:
            return
        if replica.scheduler.num_waiting:
            replica.probe = False  # freed room: a waiting sequence is likely admitted next
        records = self.records
        done = 0
        for seq in finished:
            index = seq.index
            if replica.role == "prefill" and self.workload.output_tokens[index] > 1:
                # Routed with the other requests of this instant, after every commit.
                mark = _Mark(self.env, 0, ARRIVAL)
                mark.callbacks.append(lambda _, r=replica, q=seq: self._hand_off(r, q))
                continue
            handoff = self._handoffs.pop(index, None)
            if handoff is None:
                records.scheduled_s[index] = seq.scheduled_s
                records.first_token_s[index] = seq.first_token_s
                records.prefix_hit_tokens[index] = seq.prefix_hit_tokens
                records.preemptions[index] = seq.preemptions
            else:
                records.scheduled_s[index] = handoff.scheduled_s
                records.first_token_s[index] = handoff.first_token_s
                records.prefix_hit_tokens[index] = handoff.prefix_hit_tokens
                records.preemptions[index] = handoff.preemptions + seq.preemptions
                records.decode_replica[index] = replica.index
            records.finish_s[index] = seq.finish_s
            records.status[index] = FINISHED
            done += 1
        self._progress(done)

    # ---- disaggregation ------------------------------------------------------------------
    def _hand_off(self, replica: _Replica, seq: Sequence) -> None:
        now = self.env.now
        index = seq.index
        target = self._route(self.decoders, seq, None)
        self._handoffs[index] = _Handoff(
            decode_replica=target.index,
            first_token_s=seq.first_token_s,
            scheduled_s=seq.scheduled_s,
            prefix_hit_tokens=seq.prefix_hit_tokens,
            preemptions=seq.preemptions,
        )
        self.records.transfer_start_s[index] = now / NS
        link_index = self.entry.index(replica)
        link = self.config.links[link_index]
        tokens = replica.scheduler.kv_tokens(seq, seq.prompt_tokens)
        link.start(index, tokens * self.config.kv_bytes_per_token, now / NS)
        self._arm_link(link_index)

    def _arm_link(self, link_index: int) -> None:
        """(Re)schedule the link's next completion; an older wake-up becomes stale."""
        link = self.config.links[link_index]
        due_s = link.next_completion_s()
        if due_s is None:
            self._link_due_ns[link_index] = -1
            self._link_wakes[link_index] = None
            return
        now = self.env.now
        due = max(int(np.ceil(due_s * NS)), now)
        if self._link_due_ns[link_index] == due and self._link_wakes[link_index] is not None:
            return
        wake = _Mark(self.env, due - now, ARRIVAL)
        wake.callbacks.append(lambda event, k=link_index: self._link_fired(k, event))
        self._link_wakes[link_index] = wake
        self._link_due_ns[link_index] = due

    def _link_fired(self, link_index: int, event: Event) -> None:
        if self._link_wakes[link_index] is not event:
            return  # superseded by a later (re)schedule
        self._link_wakes[link_index] = None
        self._link_due_ns[link_index] = -1
        now = self.env.now
        for index in self.config.links[link_index].finish(now / NS):
            handoff = self._handoffs[index]
            self.records.transfer_end_s[index] = now / NS
            seq = self._new_sequence(index)
            seq.computed_tokens = seq.prompt_tokens
            seq.generated_tokens = 1
            seq.first_token_s = handoff.first_token_s
            seq.scheduled_s = handoff.scheduled_s
            self._enqueue(self.replicas[handoff.decode_replica], seq, transferred=True)
        self._arm_link(link_index)

    def _settle_leftovers(self) -> None:
        """Requests neither finished nor rejected when events ran out are reported as
        rejected; a correct scheduler leaves none (the invariant tests check this)."""
        for index in np.flatnonzero(self.records.status == 0).tolist():
            self.records.reject(int(index), "unschedulable: still queued when the run ended")
