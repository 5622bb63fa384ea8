"""Requests and the columnar workload that holds many of them.

A :class:`Workload` is a set of numpy columns, one entry per request, sorted by arrival:
cheap to slice, to iterate, to hand to the engine in bulk and to save as parquet. Prefix
structure is a CSR pair (``prefix_offsets``, ``prefix_hashes``): request ``i`` owns
``prefix_hashes[prefix_offsets[i]:prefix_offsets[i+1]]``, the ids of its prompt's leading
blocks of ``prefix_block_tokens`` tokens each (Mooncake's ``hash_ids``, block 512). Equal ids
at equal positions mean reusable KV.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hardware.errors import KvsimError

NO_SESSION = -1


@dataclass(frozen=True)
class Request:
    """One inference request. ``prefix_hashes`` are ids of full or partial prompt blocks of
    the workload's ``prefix_block_tokens``; ``session_id`` groups turns of one conversation
    (``-1``: none); higher ``priority`` is served first by priority schedulers."""

    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_hashes: tuple[int, ...] = ()
    session_id: int = NO_SESSION
    priority: int = 0


def _column(values, dtype) -> np.ndarray:
    array = np.ascontiguousarray(values, dtype=dtype)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class Workload:
    """Columnar requests sorted by ``arrival_s`` (seconds from the first arrival)."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    session_id: np.ndarray | None = None
    priority: np.ndarray | None = None
    prefix_offsets: np.ndarray | None = None
    prefix_hashes: np.ndarray | None = None
    prefix_block_tokens: int = 512
    name: str = "workload"
    request_id: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        set_ = object.__setattr__
        set_(self, "arrival_s", _column(self.arrival_s, np.float64))
        set_(self, "prompt_tokens", _column(self.prompt_tokens, np.int64))
        set_(self, "output_tokens", _column(self.output_tokens, np.int64))
        defaults = {
            "session_id": (np.full(n, NO_SESSION), np.int64),
            "priority": (np.zeros(n), np.int64),
            "request_id": (np.arange(n), np.int64),
            "prefix_offsets": (np.zeros(n + 1), np.int64),
            "prefix_hashes": (np.zeros(0), np.int64),
        }
        for name, (default, dtype) in defaults.items():
            value = getattr(self, name)
            set_(self, name, _column(default if value is None else value, dtype))
        for name in ("prompt_tokens", "output_tokens", "session_id", "priority", "request_id"):
            if len(getattr(self, name)) != n:
                raise KvsimError(
                    f"has {len(getattr(self, name))} rows, arrival_s has {n}", field=name, source=self.name
                )
        if len(self.prefix_offsets) != n + 1 or (
            n and self.prefix_offsets[-1] != len(self.prefix_hashes)
        ):
            raise KvsimError("prefix_offsets does not match prefix_hashes", source=self.name)
        if n and np.any(np.diff(self.arrival_s) < 0):
            raise KvsimError("arrival_s must be sorted ascending", source=self.name, field="arrival_s")
        if n and (self.prompt_tokens.min() < 1 or self.output_tokens.min() < 1):
            raise KvsimError("token counts must be >= 1", source=self.name)

    # ---- size and access ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def has_prefixes(self) -> bool:
        return len(self.prefix_hashes) > 0

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) else 0.0

    def prefix_of(self, index: int) -> np.ndarray:
        """The prefix block ids of request ``index``."""
        return self.prefix_hashes[self.prefix_offsets[index] : self.prefix_offsets[index + 1]]

    def request(self, index: int) -> Request:
        return Request(
            id=int(self.request_id[index]),
            arrival_s=float(self.arrival_s[index]),
            prompt_tokens=int(self.prompt_tokens[index]),
            output_tokens=int(self.output_tokens[index]),
            prefix_hashes=tuple(int(h) for h in self.prefix_of(index)),
            session_id=int(self.session_id[index]),
            priority=int(self.priority[index]),
        )

    def __iter__(self) -> Iterator[Request]:
        return (self.request(i) for i in range(len(self)))

    def __getitem__(self, key: int | slice) -> Request | Workload:
        if isinstance(key, (int, np.integer)):
            index = int(key)
            if index < 0:
                index += len(self)
            if not 0 <= index < len(self):
                raise IndexError(key)
            return self.request(index)
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        raise TypeError(f"Workload indices must be int or slice, not {type(key).__name__}")

    def take(self, indices: np.ndarray) -> Workload:
        """The requests at ``indices`` (sorted ascending), prefix blocks carried along."""
        indices = np.asarray(indices, dtype=np.int64)
        starts = self.prefix_offsets[indices]
        lengths = self.prefix_offsets[indices + 1] - starts
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return Workload(
            arrival_s=self.arrival_s[indices],
            prompt_tokens=self.prompt_tokens[indices],
            output_tokens=self.output_tokens[indices],
            session_id=self.session_id[indices],
            priority=self.priority[indices],
            prefix_offsets=offsets,
            prefix_hashes=self.prefix_hashes[gather],
            prefix_block_tokens=self.prefix_block_tokens,
            name=self.name,
            request_id=self.request_id[indices],
            meta=dict(self.meta),
        )

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def from_requests(cls, requests: list[Request], *, prefix_block_tokens: int = 512, name: str = "workload") -> Workload:
        """Build from :class:`Request` objects, sorting them by arrival (stable)."""
        ordered = sorted(requests, key=lambda r: r.arrival_s)
        lengths = [len(r.prefix_hashes) for r in ordered]
        return cls(
            arrival_s=[r.arrival_s for r in ordered],
            prompt_tokens=[r.prompt_tokens for r in ordered],
            output_tokens=[r.output_tokens for r in ordered],
            session_id=[r.session_id for r in ordered],
            priority=[r.priority for r in ordered],
            prefix_offsets=np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]),
            prefix_hashes=[h for r in ordered for h in r.prefix_hashes],
            prefix_block_tokens=prefix_block_tokens,
            name=name,
            request_id=[r.id for r in ordered],
        )

    def with_arrivals(self, arrival_s: np.ndarray, *, name: str | None = None) -> Workload:
        """The same requests at new (sorted) arrival times."""
        from dataclasses import replace

        return replace(self, arrival_s=arrival_s, name=name or self.name)

    # ---- persistence ----------------------------------------------------------------
    def to_frame(self):
        """A pandas DataFrame, one row per request; prefix ids as a list column."""
        import pandas as pd

        frame = pd.DataFrame(
            {
                "request_id": self.request_id,
                "arrival_s": self.arrival_s,
                "prompt_tokens": self.prompt_tokens,
                "output_tokens": self.output_tokens,
                "session_id": self.session_id,
                "priority": self.priority,
            }
        )
        if self.has_prefixes:
            frame["prefix_hashes"] = np.split(self.prefix_hashes, self.prefix_offsets[1:-1])
        return frame

    def to_parquet(self, path: str | Path) -> Path:
        """Write atomically (temp file, then rename) with ``prefix_block_tokens`` in metadata."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        table = pa.Table.from_pandas(self.to_frame(), preserve_index=False)
        table = table.replace_schema_metadata(
            {b"kvsim.prefix_block_tokens": str(self.prefix_block_tokens).encode(), b"kvsim.name": self.name.encode()}
        )
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def from_parquet(cls, path: str | Path) -> Workload:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        frame = table.to_pandas()
        offsets = np.zeros(len(frame) + 1, dtype=np.int64)
        hashes = np.zeros(0, dtype=np.int64)
        if "prefix_hashes" in frame:
            lists = [np.asarray(x, dtype=np.int64) for x in frame["prefix_hashes"]]
            offsets[1:] = np.cumsum([len(x) for x in lists])
            hashes = np.concatenate(lists) if lists else hashes
        return cls(
            arrival_s=frame["arrival_s"].to_numpy(),
            prompt_tokens=frame["prompt_tokens"].to_numpy(),
            output_tokens=frame["output_tokens"].to_numpy(),
            session_id=frame["session_id"].to_numpy(),
            priority=frame["priority"].to_numpy(),
            prefix_offsets=offsets,
            prefix_hashes=hashes,
            prefix_block_tokens=int(meta.get(b"kvsim.prefix_block_tokens", b"512")),
            name=meta.get(b"kvsim.name", b"workload").decode(),
            request_id=frame["request_id"].to_numpy(),
        )
