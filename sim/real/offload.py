"""The second memory tier of the real execution mode: where swapped-out KV really goes.

Swap preemption (vLLM V0's ``PreemptionMode.SWAP``; Kwon et al., SOSP 2023, §4.5) copies a
preempted sequence's KV out of device memory and back when it resumes. The tier is the
memory the copy lands in:

- :class:`PinnedHostTier` (CUDA): page-locked host memory, so the copies are DMA transfers
  over the host link (PCIe or NVLink-C2C), as vLLM's CPU swap space is. Each copy is followed
  by ``torch.cuda.synchronize()``, so its time is the transfer's own.
- :class:`FileTier` (CPU, where "host memory" is the device memory itself): a directory of
  files, one per sequence, written and read with ordinary file I/O. Writes go through a
  temporary file and a rename. With ``fsync=True`` each write is flushed to the disk
  (``os.fsync``) and its pages dropped from the page cache (``posix_fadvise``
  ``POSIX_FADV_DONTNEED``), so the read that restores it comes from the disk; with the
  default ``fsync=False`` the file is written (its size on disk is real) but the kernel may
  serve the read from its page cache when memory is plentiful, as it would for any swap
  file.

Both store a sequence's tensors under an integer key, return a :class:`Transfer` (bytes and
seconds) for every store and load, keep running totals, and drop a sequence's copy once it
has been loaded back (a swap moves the KV; it does not duplicate it).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from hardware.errors import KvsimError


@dataclass(frozen=True)
class Transfer:
    """One copy between device memory and the tier: its size and its (synchronised) time."""

    size_bytes: int
    duration_s: float


@dataclass(frozen=True)
class _Layout:
    """Shapes and dtypes of the tensors stored under one key, in order."""

    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]

    @property
    def sizes_bytes(self) -> tuple[int, ...]:
        return tuple(
            math.prod(shape) * dtype.itemsize
            for shape, dtype in zip(self.shapes, self.dtypes, strict=True)
        )


@runtime_checkable
class OffloadTier(Protocol):
    """A second memory that holds tensors by key, away from the device."""

    def store(self, key: int, tensors: Sequence[torch.Tensor]) -> Transfer:
        """Copy ``tensors`` out of device memory under ``key`` (which must be free)."""
        ...

    def load(self, key: int, device: str | torch.device) -> tuple[list[torch.Tensor], Transfer]:
        """Copy the tensors under ``key`` back to ``device`` and forget them."""
        ...

    def discard(self, key: int) -> None:
        """Forget the tensors under ``key`` without copying them back (no-op if absent)."""
        ...

    def held_bytes(self) -> int:
        """Bytes the tier holds now."""
        ...

    def close(self) -> None:
        """Release everything the tier holds."""
        ...


class _Totals:
    """Running totals of one tier's traffic."""

    def __init__(self) -> None:
        self.bytes_out = 0
        self.bytes_in = 0
        self.seconds_out = 0.0
        self.seconds_in = 0.0

    def out(self, transfer: Transfer) -> Transfer:
        self.bytes_out += transfer.size_bytes
        self.seconds_out += transfer.duration_s
        return transfer

    def back(self, transfer: Transfer) -> Transfer:
        self.bytes_in += transfer.size_bytes
        self.seconds_in += transfer.duration_s
        return transfer


class PinnedHostTier(_Totals):
    """Page-locked host memory of a CUDA machine; copies are synchronised DMA transfers.

    The pinned buffer of each store is allocated before its copy starts, so the measured
    time is the copy alone.
    """

    def __init__(self) -> None:
        super().__init__()
        if not torch.cuda.is_available():
            raise KvsimError("pinned host memory needs a CUDA device", field="device")
        self._held: dict[int, list[torch.Tensor]] = {}

    def store(self, key: int, tensors: Sequence[torch.Tensor]) -> Transfer:
        if key in self._held:
            raise KvsimError(f"sequence {key} is already offloaded", field="seq_id")
        hosts = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
        torch.cuda.synchronize()
        start = time.perf_counter()
        for host, tensor in zip(hosts, tensors, strict=True):
            host.copy_(tensor, non_blocking=True)
        torch.cuda.synchronize()
        self._held[key] = hosts
        size = sum(h.numel() * h.element_size() for h in hosts)
        return self.out(Transfer(size, time.perf_counter() - start))

    def load(self, key: int, device: str | torch.device) -> tuple[list[torch.Tensor], Transfer]:
        hosts = self._take(key)
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = [h.to(device, non_blocking=True) for h in hosts]
        torch.cuda.synchronize()
        size = sum(h.numel() * h.element_size() for h in hosts)
        return out, self.back(Transfer(size, time.perf_counter() - start))

    def _take(self, key: int) -> list[torch.Tensor]:
        if key not in self._held:
            raise KvsimError(f"sequence {key} is not offloaded", field="seq_id")
        return self._held.pop(key)

    def discard(self, key: int) -> None:
        self._held.pop(key, None)

    def held_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for ts in self._held.values() for t in ts)

    def close(self) -> None:
        self._held.clear()


class FileTier(_Totals):
    """Files on disk, one per sequence, in ``directory`` (a fresh temporary directory by
    default, removed by :meth:`close`, or when the tier is collected or the interpreter
    exits; a given directory is kept, only the files this tier wrote are removed). Tensors are written as their raw bytes, back to back; their shapes
    and dtypes stay in memory. See the module docstring for ``fsync``."""

    def __init__(self, directory: str | Path | None = None, *, fsync: bool = False) -> None:
        super().__init__()
        self._own_directory = directory is None
        self.directory = Path(
            tempfile.mkdtemp(prefix="kvsim-offload-") if directory is None else directory
        )
        # A temporary directory goes when the tier does, even if close() is never called.
        self._cleanup = (
            weakref.finalize(self, shutil.rmtree, self.directory, ignore_errors=True)
            if self._own_directory
            else None
        )
        if not self.directory.is_dir():
            raise KvsimError("offload directory does not exist", source=str(self.directory))
        self.fsync = fsync
        self._layouts: dict[int, _Layout] = {}

    def path(self, key: int) -> Path:
        """The file holding sequence ``key``'s tensors while it is offloaded."""
        return self.directory / f"seq-{key}.kv"

    def store(self, key: int, tensors: Sequence[torch.Tensor]) -> Transfer:
        if key in self._layouts:
            raise KvsimError(f"sequence {key} is already offloaded", field="seq_id")
        layout = _Layout(tuple(tuple(t.shape) for t in tensors), tuple(t.dtype for t in tensors))
        start = time.perf_counter()
        target = self.path(key)
        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, "wb") as handle:
            for tensor in tensors:
                raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
                handle.write(memoryview(raw.numpy()))
            handle.flush()
            if self.fsync:
                os.fsync(handle.fileno())
        tmp.replace(target)
        if self.fsync:
            _drop_page_cache(target)
        self._layouts[key] = layout
        return self.out(Transfer(sum(layout.sizes_bytes), time.perf_counter() - start))

    def load(self, key: int, device: str | torch.device) -> tuple[list[torch.Tensor], Transfer]:
        layout = self._layouts.pop(key, None)
        if layout is None:
            raise KvsimError(f"sequence {key} is not offloaded", field="seq_id")
        start = time.perf_counter()
        path = self.path(key)
        raw = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
        path.unlink()
        out, offset = [], 0
        for shape, dtype, size in zip(
            layout.shapes, layout.dtypes, layout.sizes_bytes, strict=True
        ):
            chunk = raw[offset : offset + size]
            if offset % dtype.itemsize:  # a view must start on an element boundary
                chunk = chunk.clone()
            out.append(chunk.view(dtype).reshape(shape).to(device))
            offset += size
        return out, self.back(Transfer(offset, time.perf_counter() - start))

    def discard(self, key: int) -> None:
        if self._layouts.pop(key, None) is not None:
            self.path(key).unlink(missing_ok=True)

    def held_bytes(self) -> int:
        return sum(sum(layout.sizes_bytes) for layout in self._layouts.values())

    def close(self) -> None:
        for key in list(self._layouts):
            self.discard(key)
        if self._cleanup is not None:
            self._cleanup()


def _drop_page_cache(path: Path) -> None:
    """Ask the kernel to evict ``path``'s (already fsync'd) pages, so the next read hits the
    disk. Not available on every platform; where it is not, the read may be cached."""
    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def default_tier(device: str | torch.device, directory: str | Path | None = None) -> OffloadTier:
    """Pinned host memory on CUDA, files on disk (in ``directory``, default a temporary
    directory) on CPU."""
    if torch.device(device).type == "cuda":
        return PinnedHostTier()
    return FileTier(directory)
