"""Microbenchmarks of the local device, for hardware profiles and calibration.

Measures what the cost model needs (``docs/cost_model.md``): dense GEMM FLOP/s over shapes,
device-memory copy bandwidth, fused attention throughput, host↔device copy bandwidth (pinned
memory, CUDA only) and disk sequential read/write bandwidth. Each figure is the median of
repeated timed runs after warm-up, with the spread reported, because the machines this runs on
are shared and noisy. torch is imported lazily: this module is part of ``hardware`` but needs
the ``real`` extra to run.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hardware import toml_write
from hardware.errors import KvsimError

#: GEMM shapes (m, n, k): decode-like skinny, prefill-like square, and FFN-like wide.
GEMM_SHAPES = (
    (16, 4096, 4096),
    (256, 4096, 4096),
    (2048, 4096, 4096),
    (4096, 4096, 4096),
    (4096, 14336, 4096),
)
QUICK_GEMM_SHAPES = ((16, 1024, 1024), (256, 1024, 1024), (1024, 1024, 1024))


@dataclass(frozen=True)
class Measurement:
    """Median and spread of one quantity over repeats."""

    median: float
    low: float
    high: float
    repeats: int


@dataclass(frozen=True)
class GemmPoint:
    m: int
    n: int
    k: int
    flops_per_s: Measurement


@dataclass(frozen=True)
class ProbeResult:
    """Everything one probe run measured, in base units (FLOP/s, bytes/s)."""

    device: str
    device_name: str
    dtype: str
    date: str
    memory_bytes: int
    gemm: tuple[GemmPoint, ...]
    memory_copy_bytes_per_s: Measurement
    attention_flops_per_s: Measurement
    host_to_device_bytes_per_s: Measurement | None = None
    device_to_host_bytes_per_s: Measurement | None = None
    disk_read_bytes_per_s: Measurement | None = None
    disk_write_bytes_per_s: Measurement | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def best_gemm_flops_per_s(self) -> float:
        return max(point.flops_per_s.median for point in self.gemm)

    def as_dict(self) -> dict:
        return asdict(self)


def _torch():
    try:
        import torch
    except ImportError as err:
        raise KvsimError(
            "the probe needs torch: pip install 'kvsim[real]' (or make install-full)"
        ) from err
    return torch


def _measure(
    run: Callable[[], None],
    sync: Callable[[], None],
    repeats: int,
    warmup: int = 2,
    timer: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Seconds by ``timer`` of ``repeats`` calls of ``run`` after ``warmup`` calls,
    synchronised."""
    for _ in range(warmup):
        run()
    sync()
    times = []
    for _ in range(repeats):
        start = timer()
        run()
        sync()
        times.append(timer() - start)
    return times


def _rate(amount: float, times: list[float]) -> Measurement:
    rates = sorted(amount / t for t in times)
    return Measurement(statistics.median(rates), rates[0], rates[-1], len(rates))


def probe(
    device: str = "cpu",
    *,
    dtype: str = "bf16",
    quick: bool = False,
    repeats: int = 7,
    disk_dir: str | Path | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> ProbeResult:
    """Run the microbenchmarks on ``device`` (``cpu`` or ``cuda``) in ``dtype``. ``timer``
    times the GEMM, copy and attention runs (calibration passes the thread's CPU clock on a
    one-thread CPU run, so other processes' load does not deflate the peaks); disk
    transfers are always timed by the wall clock, since waiting on I/O is their cost."""
    torch = _torch()
    if device not in ("cpu", "cuda"):
        raise KvsimError(f"unknown device {device!r}; expected cpu or cuda", field="device")
    if device == "cuda" and not torch.cuda.is_available():
        raise KvsimError("no CUDA device is visible to torch", field="device")
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(dtype)
    if torch_dtype is None:
        raise KvsimError(f"unknown dtype {dtype!r}; expected bf16, fp16 or fp32", field="dtype")
    dev = torch.device(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        name, memory_bytes = props.name, int(props.total_memory)
    else:
        name = _cpu_name()
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    gemm = []
    for m, n, k in QUICK_GEMM_SHAPES if quick else GEMM_SHAPES:
        a = torch.randn(m, k, device=dev, dtype=torch_dtype)
        b = torch.randn(k, n, device=dev, dtype=torch_dtype)
        times = _measure(lambda a=a, b=b: torch.matmul(a, b), sync, repeats, timer=timer)
        gemm.append(GemmPoint(m, n, k, _rate(2.0 * m * n * k, times)))

    copy_bytes = (64 if quick else (1024 if device == "cuda" else 256)) * 2**20
    src = torch.empty(copy_bytes // 4, device=dev, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    times = _measure(lambda: dst.copy_(src), sync, repeats, timer=timer)
    memory_copy = _rate(2.0 * copy_bytes, times)  # a copy reads and writes every byte

    batch, heads, seq, head_dim = (1, 8, 512, 64) if quick else (4, 32, 2048, 128)
    q = torch.randn(batch, heads, seq, head_dim, device=dev, dtype=torch_dtype)
    kv = torch.randn(batch, heads, seq, head_dim, device=dev, dtype=torch_dtype)
    attention = torch.nn.functional.scaled_dot_product_attention
    times = _measure(lambda: attention(q, kv, kv, is_causal=True), sync, repeats, timer=timer)
    # causal: QKᵀ and PV each cost 2·seq²/2·head_dim per head
    attention_rate = _rate(2.0 * batch * heads * seq * seq * head_dim, times)

    h2d = d2h = None
    if device == "cuda":
        host = torch.empty(copy_bytes // 4, dtype=torch.float32).pin_memory()
        dev_buf = torch.empty(copy_bytes // 4, device=dev, dtype=torch.float32)
        h2d = _rate(
            copy_bytes, _measure(lambda: dev_buf.copy_(host, non_blocking=True), sync, repeats)
        )
        d2h = _rate(
            copy_bytes, _measure(lambda: host.copy_(dev_buf, non_blocking=True), sync, repeats)
        )

    disk_read, disk_write = _probe_disk(
        disk_dir, (16 if quick else 256) * 2**20, max(3, repeats // 2)
    )
    return ProbeResult(
        device=device,
        device_name=name,
        dtype=dtype,
        date=dt.date.today().isoformat(),
        memory_bytes=memory_bytes,
        gemm=tuple(gemm),
        memory_copy_bytes_per_s=memory_copy,
        attention_flops_per_s=attention_rate,
        host_to_device_bytes_per_s=h2d,
        device_to_host_bytes_per_s=d2h,
        disk_read_bytes_per_s=disk_read,
        disk_write_bytes_per_s=disk_write,
        notes=(f"torch {torch.__version__}", f"threads {torch.get_num_threads()}"),
    )


def _probe_disk(
    directory: str | Path | None, size_bytes: int, repeats: int
) -> tuple[Measurement, Measurement]:
    """Sequential write (fsync'd) and read (page cache dropped with fadvise) of one file."""
    payload = os.urandom(size_bytes)
    write_times, read_times = [], []
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = Path(tmp) / "probe.bin"
        for _ in range(repeats):
            start = time.perf_counter()
            with open(path, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            write_times.append(time.perf_counter() - start)
            with open(path, "rb") as handle:
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                start = time.perf_counter()
                while handle.read(16 * 2**20):
                    pass
                read_times.append(time.perf_counter() - start)
    return _rate(size_bytes, read_times), _rate(size_bytes, write_times)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def _fraction(measured: float, peak: float) -> float:
    """Achieved fraction of a datasheet peak, capped at 1 (a probe can beat a rounded peak)."""
    return round(min(1.0, measured / peak), 4)


def profile_toml(result: ProbeResult, profile_id: str, base=None) -> str:
    """A hardware-catalog TOML for the probed device.

    With ``base`` (the catalog :class:`~hardware.specs.Accelerator` of the same chip) the
    datasheet peaks are kept and the efficiency fractions become measured/peak, which is what
    the cost model multiplies by. Without it the measured rates are the peaks and the fractions
    1.0: the profile then describes this machine as measured, and calibration fits the rest.
    """
    gemm = result.best_gemm_flops_per_s
    copy = result.memory_copy_bytes_per_s.median
    attention = result.attention_flops_per_s.median
    h2d = result.host_to_device_bytes_per_s
    header = [
        f"# Probed by `kvsim probe --device {result.device}` on {result.date}: {result.device_name}.",
        f"# dtype {result.dtype}; medians of {result.memory_copy_bytes_per_s.repeats} timed repeats; "
        + "; ".join(result.notes),
    ]
    for point in result.gemm:
        m = point.flops_per_s
        header.append(
            f"# GEMM {point.m}x{point.n}x{point.k}: {m.median / 1e12:.2f} TFLOP/s "
            f"(range {m.low / 1e12:.2f}-{m.high / 1e12:.2f})"
        )
    header.append(f"# device copy: {copy / 1e9:.1f} GB/s counting read+write bytes")
    header.append(f"# causal attention (SDPA): {attention / 1e12:.2f} TFLOP/s")
    if h2d is not None and result.device_to_host_bytes_per_s is not None:
        header.append(
            f"# pinned H2D {h2d.median / 1e9:.1f} GB/s, D2H "
            f"{result.device_to_host_bytes_per_s.median / 1e9:.1f} GB/s"
        )
    if result.disk_read_bytes_per_s is not None and result.disk_write_bytes_per_s is not None:
        header.append(
            f"# disk sequential read {result.disk_read_bytes_per_s.median / 1e9:.2f} GB/s, "
            f"write {result.disk_write_bytes_per_s.median / 1e9:.2f} GB/s (fsync'd)"
        )
    host_link = h2d.median if h2d is not None else copy / 2
    if base is not None:
        peak_flops = base.peak_flops_per_s(result.dtype)
        body = {
            "id": profile_id,
            "name": f"{base.name} (probed {result.date})",
            "vendor": base.vendor,
            "bf16_flops_per_s": base.bf16_flops_per_s,
            "memory_bytes": base.memory_bytes,
            "memory_bytes_per_s": base.memory_bytes_per_s,
            "host_link_bytes_per_s": base.host_link_bytes_per_s,
            "scale_up_bytes_per_s": base.scale_up_bytes_per_s,
        }
        efficiency = {
            "gemm_fraction": _fraction(gemm, peak_flops),
            "attention_fraction": _fraction(attention, peak_flops),
            "hbm_fraction": _fraction(copy, base.memory_bytes_per_s),
            "host_link_fraction": _fraction(host_link, base.host_link_bytes_per_s),
        }
        for key in (
            "fp8_flops_per_s",
            "int8_flops_per_s",
            "tdp_w",
            "price_usd_per_hour",
            "price_date",
            "price_source",
        ):
            value = getattr(base, key)
            if value is not None:
                body[key] = value
    else:
        body = {
            "id": profile_id,
            "name": f"{result.device_name} (probed {result.date})",
            "vendor": "local",
            "bf16_flops_per_s": gemm,
            "memory_bytes": result.memory_bytes,
            "memory_bytes_per_s": copy,
            "host_link_bytes_per_s": host_link,
        }
        efficiency = {
            "gemm_fraction": 1.0,
            "attention_fraction": _fraction(attention, gemm),
            "hbm_fraction": 1.0,
            "host_link_fraction": 1.0,
        }
    efficiency["source"] = f"kvsim probe {result.date}"
    lines = header + [""] + [f"{key} = {toml_write.value(value)}" for key, value in body.items()]
    lines += ["", "[efficiency]"] + [
        f"{key} = {toml_write.value(value)}" for key, value in efficiency.items()
    ]
    return "\n".join(lines) + "\n"
