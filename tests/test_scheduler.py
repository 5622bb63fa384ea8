"""The vLLM V1 iteration-level scheduler: hand-worked steps (chunk sizes, admissions, exact
preemption victims, prefix hits), rejections, fast-forward equivalence, and invariants under
random scenarios (hypothesis)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.errors import KvsimError
from sim.scheduler import (
    REJECT_CONTEXT,
    REJECT_KV_POOL,
    ReplicaScheduler,
    SchedulerConfig,
    Sequence,
    StepPlan,
)


def _run(scheduler: ReplicaScheduler, first_step: int = 1) -> list[StepPlan]:
    """Step until idle; step ``k`` ends at time ``k``."""
    plans, step = [], first_step
    while (plan := scheduler.schedule(float(step - 1))) is not None:
        plans.append(plan)
        scheduler.commit(plan, float(step))
        step += 1
    return plans


def _names(seqs) -> list[str]:
    return ["ABCDEFGH"[seq.index] for seq in seqs]


class TestConfig:
    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"max_num_seqs": 0}, "scheduler.max_num_seqs"),
            ({"preemption": "drop"}, "scheduler.preemption"),
            ({"prefix_caching": "lru"}, "scheduler.prefix_caching"),
            ({"max_num_seqs": 512, "max_batched_tokens": 256}, "scheduler.max_batched_tokens"),
            (
                {"chunked_prefill": False, "max_batched_tokens": 2048},
                "scheduler.max_batched_tokens",
            ),
            ({"block_tokens": True}, "scheduler.block_tokens"),
        ],
    )
    def test_validation_names_the_field(self, changes, field):
        with pytest.raises(KvsimError) as err:
            SchedulerConfig(**{"max_model_len": 4096, **changes})
        assert err.value.field == field


class TestBatching:
    def test_chunked_prefill_chunks_under_the_token_budget(self):
        """Budget 64: A (prompt 100) takes 64 then 36; B (prompt 50) gets the 28 left in step
        2 and its last 22 in step 3, beside A's first decode."""
        config = SchedulerConfig(max_model_len=1024, max_batched_tokens=64, max_num_seqs=8)
        scheduler = ReplicaScheduler(config, 100)
        a, b = Sequence(0, 0.0, 100, 3), Sequence(1, 0.0, 50, 2)
        scheduler.add(a, 0.0)
        scheduler.add(b, 0.0)
        plans = _run(scheduler)
        chunks = [
            (_names(p.prefill), p.prefill_tokens.tolist(), p.prefill_context.tolist())
            for p in plans
        ]
        assert chunks == [
            (["A"], [64], [0]),
            (["A", "B"], [36, 28], [64, 0]),
            (["B"], [22], [28]),
            ([], [], []),
        ]
        assert [p.prefill_emits.tolist() for p in plans] == [[False], [True, False], [True], []]
        decodes = [(_names(p.decode), p.decode_context.tolist()) for p in plans]
        assert decodes == [([], []), ([], []), (["A"], [101]), (["A", "B"], [102, 51])]
        assert [p.num_batched_tokens for p in plans] == [64, 64, 23, 2]
        shape = plans[2].batch_shape()
        assert shape.prefill_tokens.tolist() == [22] and shape.prefill_context.tolist() == [28]
        assert shape.decode_context.tolist() == [101]
        assert (shape.num_tokens, shape.num_emitting) == (23, 2)
        assert (a.scheduled_s, a.first_token_s, a.finish_s) == (0.0, 2.0, 4.0)
        assert (b.scheduled_s, b.first_token_s, b.finish_s) == (1.0, 3.0, 4.0)

    def test_without_chunking_a_prompt_is_admitted_whole(self):
        """Budget 128: A (100) is admitted whole; B (50) does not fit the 28 left and waits."""
        config = SchedulerConfig(
            max_model_len=128, max_batched_tokens=128, max_num_seqs=8, chunked_prefill=False
        )
        scheduler = ReplicaScheduler(config, 100)
        scheduler.add(Sequence(0, 0.0, 100, 2), 0.0)
        scheduler.add(Sequence(1, 0.0, 50, 2), 0.0)
        plans = _run(scheduler)
        assert [(_names(p.prefill), p.prefill_tokens.tolist()) for p in plans[:2]] == [
            (["A"], [100]),
            (["B"], [50]),
        ]
        assert _names(plans[1].decode) == ["A"]

    def test_max_num_seqs_holds_back_admission(self):
        config = SchedulerConfig(max_model_len=64, max_batched_tokens=64, max_num_seqs=2)
        scheduler = ReplicaScheduler(config, 100)
        seqs = [Sequence(i, 0.0, 4, 3) for i in range(3)]
        for seq in seqs:
            scheduler.add(seq, 0.0)
        plans = _run(scheduler)
        assert [_names(p.prefill) for p in plans] == [["A", "B"], [], [], ["C"], [], []]
        assert [seq.finish_s for seq in seqs] == [3.0, 3.0, 6.0]


class TestPreemption:
    """Pool of 6 blocks x 4 tokens. A, B (prompt 8) and C (prompt 4), 10 output tokens each.

    Step 1 prefills all three (2 + 2 + 1 blocks). Step 2: A grows to 3 blocks (last free
    one); B cannot grow, so the newest running sequence, C, is preempted and B takes its
    block. Step 6: A needs a 4th block; B (now newest) is preempted. A finishes at step 10;
    step 11 re-admits B (13 tokens, 4 blocks) and C (5 tokens, 2 blocks). Step 15: B needs a
    5th block; C is preempted again. B finishes at 15; C returns at 16 and finishes at 20.
    """

    @staticmethod
    def _scheduler(mode: str) -> tuple[ReplicaScheduler, list[Sequence]]:
        config = SchedulerConfig(
            max_model_len=64, max_batched_tokens=64, max_num_seqs=8, block_tokens=4, preemption=mode
        )
        scheduler = ReplicaScheduler(config, 6)
        seqs = [Sequence(i, 0.0, prompt, 10) for i, prompt in enumerate((8, 8, 4))]
        for seq in seqs:
            scheduler.add(seq, 0.0)
        return scheduler, seqs

    def test_recompute_victims(self):
        scheduler, seqs = self._scheduler("recompute")
        plans = _run(scheduler)
        victims = [(step, name) for step, p in enumerate(plans, 1) for name in _names(p.preempted)]
        assert victims == [(2, "C"), (6, "B"), (15, "C")]
        assert [seq.finish_s for seq in seqs] == [10.0, 15.0, 20.0]
        assert [seq.preemptions for seq in seqs] == [0, 1, 2]
        # Recompute re-prefills prompt + generated tokens from scratch.
        assert _names(plans[10].prefill) == ["B", "C"]
        assert plans[10].prefill_tokens.tolist() == [13, 5]
        assert plans[15].prefill_tokens.tolist() == [9]
        assert [seq.first_token_s for seq in seqs] == [1.0, 1.0, 1.0]
        assert all(p.swap_out_tokens == p.swap_in_tokens == 0 for p in plans)

    def test_swap_victims_and_transfers(self):
        """Same victims; swapped KV comes back instead of being recomputed: out 4 (C, step 2)
        + 12 (B, step 6) + 8 (C, step 15); in 12 + 4 (step 11) + 8 (step 16)."""
        scheduler, seqs = self._scheduler("swap")
        plans = _run(scheduler)
        victims = [(step, name) for step, p in enumerate(plans, 1) for name in _names(p.preempted)]
        assert victims == [(2, "C"), (6, "B"), (15, "C")]
        outs = {step: p.swap_out_tokens for step, p in enumerate(plans, 1) if p.swap_out_tokens}
        ins = {step: p.swap_in_tokens for step, p in enumerate(plans, 1) if p.swap_in_tokens}
        assert outs == {2: 4, 6: 12, 15: 8}
        assert ins == {11: 16, 16: 8}
        assert (_names(plans[10].decode), plans[10].decode_context.tolist()) == (
            ["B", "C"],
            [13, 5],
        )
        assert [seq.finish_s for seq in seqs] == [10.0, 15.0, 20.0]


class TestPrefixCaching:
    @pytest.mark.parametrize("mode", ["hash", "radix"])
    def test_shared_prefix_skips_computed_blocks(self, mode):
        """A (50 tokens, 3 hashed 16-token blocks) finishes its prefill; B shares the 3 blocks
        and computes only 60 - 48 tokens; C's 48-token prompt hits entirely, so (as in vLLM) the
        hit stops at 47 tokens -> 2 blocks and the last block is recomputed."""
        config = SchedulerConfig(max_model_len=512, max_batched_tokens=256, prefix_caching=mode)
        scheduler = ReplicaScheduler(config, 64)
        hashes = np.array([11, 12, 13], dtype=np.int64)
        a = Sequence(0, 0.0, 50, 2, block_hashes=hashes)
        scheduler.add(a, 0.0)
        first = scheduler.schedule(0.0)
        scheduler.commit(first, 1.0)
        b = Sequence(1, 1.0, 60, 2, block_hashes=hashes)
        c = Sequence(2, 1.0, 48, 2, block_hashes=hashes)
        scheduler.add(b, 1.0)
        scheduler.add(c, 1.0)
        second = scheduler.schedule(1.0)
        assert _names(second.prefill) == ["B", "C"]
        assert second.prefill_tokens.tolist() == [12, 16]
        assert second.prefill_context.tolist() == [48, 32]
        assert (b.prefix_hit_tokens, c.prefix_hit_tokens) == (48, 32)
        assert scheduler.pool.block_ids(1)[:3] == scheduler.pool.block_ids(0)[:3]
        scheduler.commit(second, 2.0)
        _run(scheduler, first_step=3)
        assert all(seq.status == "finished" for seq in (a, b, c))
        # C recomputed block 3 into a block of its own: vLLM V1 keeps that duplicate cached
        # (append-only block tables); SGLang's insert frees it and adopts the tree's block.
        assert scheduler.pool.num_cached_free_blocks == {"hash": 4, "radix": 3}[mode]

    def test_no_caching_ignores_hashes(self):
        config = SchedulerConfig(max_model_len=512, max_batched_tokens=256)
        scheduler = ReplicaScheduler(config, 64)
        hashes = np.array([11, 12, 13], dtype=np.int64)
        for i in range(2):
            scheduler.add(Sequence(i, 0.0, 50, 2, block_hashes=hashes), 0.0)
        plan = scheduler.schedule(0.0)
        assert plan.prefill_tokens.tolist() == [50, 50]


class TestRejection:
    def test_reasons(self):
        """max_model_len 100; pool 4 blocks x 16 = 64 tokens. KV holds prompt + output - 1
        tokens (the last sampled token is never stored)."""
        config = SchedulerConfig(max_model_len=100, max_batched_tokens=256)
        scheduler = ReplicaScheduler(config, 4)
        too_long = Sequence(0, 0.0, 90, 11)  # 101 > 100
        fits = Sequence(1, 0.0, 60, 5)  # 64 KV tokens = 4 blocks
        too_big = Sequence(2, 0.0, 60, 6)  # 65 KV tokens = 5 blocks > 4
        assert [scheduler.add(s, 0.0) for s in (too_long, fits, too_big)] == [False, True, False]
        assert [(s.index, s.reject_reason) for s in scheduler.rejected] == [
            (0, REJECT_CONTEXT),
            (2, REJECT_KV_POOL),
        ]
        assert too_long.status == too_big.status == "rejected"
        _run(scheduler)
        assert fits.status == "finished" and scheduler.outstanding_requests == 0

    def test_bad_sequence(self):
        scheduler = ReplicaScheduler(SchedulerConfig(max_model_len=100), 4)
        with pytest.raises(KvsimError):
            scheduler.add(Sequence(0, 0.0, 10, 0), 0.0)
        with pytest.raises(KvsimError):
            scheduler.add(Sequence(0, 0.0, 20, 1, block_hashes=np.arange(2)), 0.0)


def _state(scheduler: ReplicaScheduler, seqs: list[Sequence]) -> tuple:
    fields = [
        (s.status, s.computed_tokens, s.generated_tokens, s.preemptions, s.finish_s, s.swapped)
        for s in seqs
    ]
    pool = scheduler.pool
    blocks = [pool.block_ids(s.index) for s in seqs]
    return (
        fields,
        blocks,
        pool.free_queue(),
        pool.num_free_blocks,
        pool.num_cached_free_blocks,
        pool.evictions,
        [s.index for s in scheduler.running],
        [s.index for s in scheduler.waiting],
    )


def _fast_forward_matches_stepping(scheduler: ReplicaScheduler, seqs, now: float, limit: int):
    """Check the fast-forward on a copy against ``k`` schedule+commit rounds on another."""
    steps = scheduler.stable_decode_steps(limit)
    if steps < 1:
        return 0
    stepped = copy.deepcopy((scheduler, seqs))
    stepped_scheduler, stepped_seqs = stepped
    running = [s.index for s in stepped_scheduler.running]
    for k in range(steps):
        plan = stepped_scheduler.schedule(now + k)
        assert not plan.prefill and not plan.preempted
        assert [s.index for s in plan.decode] == running
        stepped_scheduler.commit(plan, now + k + 1)
    scheduler.commit_decode_steps(steps, now + 1 + np.arange(steps, dtype=float))
    assert _state(scheduler, seqs) == _state(stepped_scheduler, stepped_seqs)
    return steps


@pytest.mark.parametrize("mode", ["none", "hash", "radix"])
def test_fast_forward_equals_stepping(mode):
    """Four 30-token prompts sharing a 1-block prefix decode in a 24-block pool while a fifth
    request waits for blocks: every stable run equals step-by-step scheduling."""
    config = SchedulerConfig(
        max_model_len=256,
        max_batched_tokens=64,
        max_num_seqs=8,
        block_tokens=4,
        prefix_caching=mode,
    )
    scheduler = ReplicaScheduler(config, 24)
    shared = np.array([5, 6, 7], dtype=np.int64)
    seqs = [
        Sequence(i, 0.0, 30, out, block_hashes=np.append(shared, 100 + i))
        for i, out in enumerate((9, 14, 20, 25))
    ]
    seqs.append(Sequence(4, 0.0, 40, 5))
    for seq in seqs:
        scheduler.add(seq, 0.0)
    now, fast_forwarded = 0.0, 0
    while scheduler.outstanding_requests:
        steps = _fast_forward_matches_stepping(scheduler, seqs, now, limit=50)
        if steps:
            fast_forwarded += steps
            now += steps
            continue
        plan = scheduler.schedule(now)
        now += 1
        scheduler.commit(plan, now)
    assert fast_forwarded > 10
    assert all(seq.status == "finished" for seq in seqs)


def test_stable_steps_zero_when_someone_could_join():
    config = SchedulerConfig(
        max_model_len=256, max_batched_tokens=64, max_num_seqs=8, block_tokens=4
    )
    scheduler = ReplicaScheduler(config, 100)
    scheduler.add(Sequence(0, 0.0, 8, 20), 0.0)
    scheduler.commit(scheduler.schedule(0.0), 1.0)
    assert scheduler.stable_decode_steps(100) == 19  # until it finishes
    scheduler.add(Sequence(1, 1.0, 8, 20), 1.0)
    assert scheduler.stable_decode_steps(100) == 0
    with pytest.raises(KvsimError):
        scheduler.commit_decode_steps(2, np.array([2.0, 3.0]))


# ---------------------------------------------------------------- random scenarios
_request = st.tuples(
    st.integers(1, 70),  # prompt tokens
    st.integers(1, 30),  # output tokens
    st.integers(0, 3),  # prefix family
    st.integers(0, 5),  # arrival step
)


@settings(max_examples=80, deadline=None)
@given(
    mode=st.sampled_from(["none", "hash", "radix"]),
    preemption=st.sampled_from(["recompute", "swap"]),
    chunked=st.booleans(),
    max_num_seqs=st.integers(1, 6),
    budget=st.integers(6, 80),
    num_blocks=st.integers(2, 24),
    fast_forward=st.booleans(),
    requests=st.lists(_request, min_size=1, max_size=12),
)
def test_random_scenarios_keep_invariants_and_terminate(
    mode, preemption, chunked, max_num_seqs, budget, num_blocks, fast_forward, requests
):
    """Blocks are conserved, never over-allocated, every running sequence holds exactly the
    blocks its computed tokens need, every request finishes or is rejected with a reason
    within a bounded number of steps (no livelock), and each fast-forward equals stepping."""
    bt = 4
    config = SchedulerConfig(
        max_model_len=80 if chunked else max(budget, max_num_seqs),
        max_num_seqs=max_num_seqs,
        max_batched_tokens=max(budget, max_num_seqs),
        chunked_prefill=chunked,
        block_tokens=bt,
        preemption=preemption,
        prefix_caching=mode,
    )
    scheduler = ReplicaScheduler(config, num_blocks)
    families = [np.arange(20, dtype=np.int64) + 100 * f for f in range(4)]
    families[3][:4] = families[0][:4]
    seqs = [
        Sequence(i, float(at), p, o, block_hashes=families[f][: p // bt])
        for i, (p, o, f, at) in enumerate(requests)
    ]
    arrivals = sorted(seqs, key=lambda s: s.arrival_s)
    bound = 50 + 4 * sum(s.prompt_tokens + s.output_tokens for s in seqs) * (len(seqs) + 1)
    step = 0
    while arrivals or scheduler.outstanding_requests:
        while arrivals and arrivals[0].arrival_s <= step:
            scheduler.add(arrivals.pop(0), float(step))
        steps = _fast_forward_matches_stepping(scheduler, seqs, step, 7) if fast_forward else 0
        if steps:
            step += steps
        else:
            plan = scheduler.schedule(float(step))
            if plan is None:
                assert not scheduler.running and not scheduler.swapped
                assert not scheduler.waiting, "a queued request can never run: livelock"
            else:
                assert plan.num_batched_tokens <= config.max_batched_tokens
                assert len(plan.prefill) + len(plan.decode) <= max_num_seqs
                scheduler.commit(plan, float(step + 1))
            step += 1
        assert step < bound, "no progress: livelock"
        pool = scheduler.pool
        pool.check_invariants()
        assert 0 <= pool.num_free_blocks <= num_blocks
        assert len(scheduler.running) <= max_num_seqs
        for seq in scheduler.running:
            assert pool.num_held_blocks(seq.index) == -(-seq.computed_tokens // bt)
        for seq in (*scheduler.waiting, *scheduler.swapped):
            assert pool.num_held_blocks(seq.index) == 0
        if mode == "none":
            held = sum(-(-s.computed_tokens // bt) for s in scheduler.running)
            assert pool.num_used_blocks == held
    for seq in seqs:
        if seq.status == "rejected":
            kv_blocks = -(-(seq.prompt_tokens + seq.output_tokens - 1) // bt)
            too_long = seq.prompt_tokens + seq.output_tokens > config.max_model_len
            assert seq.reject_reason == (REJECT_CONTEXT if too_long else REJECT_KV_POOL)
            assert too_long or kv_blocks > num_blocks
        else:
            assert seq.status == "finished"
            assert seq.generated_tokens == seq.output_tokens
            assert seq.arrival_s <= seq.scheduled_s < seq.first_token_s <= seq.finish_s
            assert not math.isnan(seq.finish_s)
    assert pool.num_used_blocks == 0
