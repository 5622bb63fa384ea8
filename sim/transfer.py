"""A processor-sharing link: concurrent KV transfers share its bandwidth equally.

Under prefill/decode disaggregation (DistServe, Zhong et al. OSDI 2024; Splitwise, Patel et
al. ISCA 2024) each request's KV moves from the prefill replica to a decode replica. The
link is modelled as an egalitarian processor-sharing server (Kleinrock, *Queueing Systems*
vol. 2, §4.4): with ``n`` transfers in flight each receives ``bytes_per_s / n``, and after a
transfer's last byte is sent it completes ``latency_s`` later (propagation and setup). A
transfer alone therefore takes ``latency_s + bytes / bytes_per_s``. Completion times are
recomputed whenever a transfer starts or finishes. This module holds no simulation clock: the
engine passes the current time in, and schedules an event at :meth:`next_completion_s`.
"""

from __future__ import annotations

from hardware.errors import KvsimError


class SharedLink:
    """Bandwidth shared equally among transfers in flight; times in seconds, sizes in bytes.

    A transfer is *sending* until its bytes are through, then *landing* for ``latency_s``.
    Times closer than ``resolution_s`` count as equal (the engine's clock tick), so a
    completion rounded to the engine's clock is never missed.
    """

    def __init__(
        self, bytes_per_s: float, latency_s: float = 0.0, resolution_s: float = 0.0
    ) -> None:
        if not bytes_per_s > 0:
            raise KvsimError(f"must be > 0, got {bytes_per_s}", field="bytes_per_s")
        if not latency_s >= 0:
            raise KvsimError(f"must be >= 0, got {latency_s}", field="latency_s")
        self.bytes_per_s = float(bytes_per_s)
        self.latency_s = float(latency_s)
        self.resolution_s = float(resolution_s)
        self._sending: dict[int, float] = {}  # transfer id -> bytes left
        self._landing: dict[int, float] = {}  # transfer id -> completion time (s)
        self._now_s = 0.0

    @property
    def in_flight(self) -> int:
        return len(self._sending) + len(self._landing)

    def _advance(self, now_s: float) -> None:
        """Move time to ``now_s``, sharing bandwidth among the transfers sending at each
        moment: whenever one finishes sending, the others' shares grow from then on."""
        if now_s < self._now_s - self.resolution_s:
            raise KvsimError(f"time went backwards: {now_s} < {self._now_s}", field="now_s")
        now_s = max(now_s, self._now_s)
        while self._sending:
            share = self.bytes_per_s / len(self._sending)
            least = max(min(self._sending.values()), 0.0)
            done_at = self._now_s + least / share
            if done_at > now_s + self.resolution_s:
                sent = (now_s - self._now_s) * share
                for key in self._sending:
                    self._sending[key] -= sent
                break
            for key in list(self._sending):
                self._sending[key] -= least
                if self._sending[key] <= 0.0:
                    del self._sending[key]
                    self._landing[key] = done_at + self.latency_s
            self._now_s = done_at
        self._now_s = max(now_s, self._now_s)

    def start(self, transfer_id: int, nbytes: float, now_s: float) -> None:
        """Begin sending ``nbytes`` at ``now_s``."""
        if nbytes < 0:
            raise KvsimError(f"must be >= 0, got {nbytes}", field="nbytes")
        if transfer_id in self._sending or transfer_id in self._landing:
            raise KvsimError(f"transfer {transfer_id} is already in flight", field="transfer_id")
        self._advance(now_s)
        if nbytes == 0:
            self._landing[transfer_id] = self._now_s + self.latency_s
        else:
            self._sending[transfer_id] = float(nbytes)

    def next_completion_s(self) -> float | None:
        """When the next transfer completes if nothing else starts, or ``None`` when idle.
        Exact: no share changes before the transfer with the fewest bytes left is through."""
        times = list(self._landing.values())
        if self._sending:
            share = self.bytes_per_s / len(self._sending)
            least = max(min(self._sending.values()), 0.0)
            times.append(self._now_s + least / share + self.latency_s)
        return min(times) if times else None

    def finish(self, now_s: float) -> list[int]:
        """Advance to ``now_s`` and return the ids completed by then, oldest first."""
        self._advance(now_s)
        done = sorted((t, k) for k, t in self._landing.items() if t <= now_s + self.resolution_s)
        for _, key in done:
            del self._landing[key]
        return [key for _, key in done]
