"""Transfer physics of a processor-sharing link (``sim/transfer.py``) and of its simpy face in
the engine: B bytes over a link of W bytes/s take B/W plus the latency; n transfers sharing
the link each get W/n (Kleinrock, Queueing Systems vol. 2, §4.4, egalitarian processor
sharing). Expected times are hand-computed from those two rules."""

from __future__ import annotations

import pytest
import simpy
from hypothesis import given
from hypothesis import strategies as st

from hardware.errors import KvsimError
from sim.engine import NS, _LinkEvents
from sim.transfer import SharedLink

W = 50e9  # bytes/s
B = 2e9  # bytes: 40 ms alone at W
LATENCY = 5e-6


def test_one_transfer_takes_bytes_over_bandwidth_plus_latency():
    link = SharedLink(W, LATENCY)
    link.start(1, B, 0.0)
    assert link.next_completion_s() == pytest.approx(B / W + LATENCY, rel=1e-12)
    assert link.finish(B / W + LATENCY) == [1]
    assert link.in_flight == 0


def test_two_concurrent_transfers_each_take_twice_as_long():
    link = SharedLink(W, LATENCY)
    link.start(1, B, 0.0)
    link.start(2, B, 0.0)
    assert link.next_completion_s() == pytest.approx(2 * B / W + LATENCY, rel=1e-12)
    assert link.finish(2 * B / W + LATENCY) == [1, 2]


def test_staggered_transfer_shares_then_speeds_up():
    """Transfer 2 starts halfway through transfer 1: from then on each gets W/2. Transfer 1
    has B/2 left, done at B/(2W) + B/W; transfer 2 has sent B/2 by then and finishes its
    remaining B/2 alone at full rate: B/(2W) + B/W + B/(2W) = 2B/W."""
    link = SharedLink(W, 0.0)
    link.start(1, B, 0.0)
    link.start(2, B, B / (2 * W))
    first = B / (2 * W) + B / W
    assert link.next_completion_s() == pytest.approx(first, rel=1e-12)
    assert link.finish(first) == [1]
    assert link.next_completion_s() == pytest.approx(2 * B / W, rel=1e-12)
    assert link.finish(2 * B / W) == [2]


@given(
    count=st.integers(min_value=1, max_value=8),
    nbytes=st.floats(min_value=1e3, max_value=1e12),
)
def test_n_equal_transfers_finish_together_at_n_times_the_solo_time(count, nbytes):
    link = SharedLink(W, LATENCY)
    for key in range(count):
        link.start(key, nbytes, 0.0)
    assert link.next_completion_s() == pytest.approx(count * nbytes / W + LATENCY, rel=1e-9)


def test_bad_inputs_are_named():
    with pytest.raises(KvsimError) as err:
        SharedLink(0.0)
    assert err.value.field == "bytes_per_s"
    link = SharedLink(W)
    link.start(1, B, 0.0)
    with pytest.raises(KvsimError) as err:
        link.start(1, B, 0.0)
    assert err.value.field == "transfer_id"
    with pytest.raises(KvsimError) as err:
        link.start(2, -1.0, 0.0)
    assert err.value.field == "nbytes"


def _landing_times(starts_s: list[float], nbytes: float) -> list[int]:
    """Land ``len(starts_s)`` transfers on one link through the engine's simpy driver and
    return when each lands (ns)."""
    env = simpy.Environment()
    events = _LinkEvents(env, SharedLink(W, LATENCY, resolution_s=1 / NS))
    landed: list[int] = [0] * len(starts_s)

    def sender(index: int, start_s: float):
        yield env.timeout(round(start_s * NS))
        yield events.transfer(nbytes)
        landed[index] = env.now

    for index, start_s in enumerate(starts_s):
        env.process(sender(index, start_s))
    env.run()
    return landed


def test_engine_link_events_one_and_two_transfers():
    alone = _landing_times([0.0], B)
    assert alone == [round((B / W + LATENCY) * NS)]
    both = _landing_times([0.0, 0.0], B)
    assert both == [round((2 * B / W + LATENCY) * NS)] * 2


def test_engine_link_events_staggered():
    both = _landing_times([0.0, B / (2 * W)], B)
    assert both[0] == pytest.approx((1.5 * B / W + LATENCY) * NS, abs=2)
    assert both[1] == pytest.approx((2 * B / W + LATENCY) * NS, abs=2)
