"""Write a calibrated hardware profile: the base device's peaks with the fitted efficiencies.

The profile is an ordinary accelerator TOML (``docs/hardware.md``) that ``--hardware-file`` or
``KVSIM_HARDWARE_PATH`` loads like any catalog entry. Its header comments record how it was
made — date, device, model, dtype, threads, repeats, the machine's load — and the fit: each
parameter with its prior, standard error and status, and every fitted step's measured and
predicted time (the residuals). The ``[efficiency]`` table holds the fitted values and a
``source`` line that names the calibration.

Calibration never overwrites a catalog profile: a path inside the built-in catalog, an
existing catalog entry's file, or an id the catalog already has is refused with a
:class:`KvsimError`, and an existing file is only replaced with ``force``. The text is parsed
back by the catalog's own parser before it is written, then written to a temporary file in the
target folder and renamed into place, so no half-written or unloadable profile is left.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hardware import toml_write
from hardware.catalog import BUILTIN_CATALOG_DIR, KINDS, list_entries, parse_text
from hardware.errors import KvsimError
from hardware.specs import Accelerator, Efficiency
from sim.calibration.fit import FitResult


@dataclass(frozen=True)
class CalibrationInfo:
    """How a calibration was run, for the profile's header and the reports."""

    date: str
    device: str
    device_name: str
    model_id: str
    dtype: str
    threads: int
    torch_version: str
    repeats: int
    warmup: int
    weights: str
    base: str
    load_average: tuple[float, float, float]
    clock: str = "wall"
    command: str = ""


def check_output(path: str | Path, profile_id: str, *, force: bool = False) -> Path:
    """Refuse to write into the built-in catalog, over a catalog entry's file, under an id the
    catalog already has, or over an existing file without ``force``; returns the path."""
    path = Path(path)
    target = path.resolve()
    if BUILTIN_CATALOG_DIR in target.parents:
        raise KvsimError(
            "refusing to write into the built-in hardware catalog; choose another path",
            source=str(path),
            field="--out",
        )
    for kind in KINDS:
        for entry in list_entries(kind):
            if entry.path.resolve() == target:
                raise KvsimError(
                    f"refusing to overwrite the catalog entry {entry.spec.id!r}; choose another "
                    "path",
                    source=str(path),
                    field="--out",
                )
            if kind == "accelerator" and entry.spec.id == profile_id:
                raise KvsimError(
                    f"the catalog already has an accelerator {profile_id!r} "
                    f"({entry.path}); choose another id",
                    field="--id",
                )
    if path.exists() and not force:
        raise KvsimError(f"{path} exists; pass --force to overwrite it", field="--out")
    return path


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1e3:.4g} ms"
    return f"{value:.4g}"


def profile_text(
    base: Accelerator,
    fit: FitResult,
    steps: Sequence[str],
    *,
    profile_id: str,
    info: CalibrationInfo,
) -> str:
    """The calibrated profile's TOML text. ``steps`` labels the fitted steps in the order of
    ``fit.measured_s``."""
    if len(steps) != fit.measured_s.size:
        raise KvsimError(f"{len(steps)} labels for {fit.measured_s.size} steps", field="steps")
    load = ", ".join(f"{x:.2f}" for x in info.load_average)
    header = [
        f"# Calibrated by `kvsim calibrate` on {info.date} (docs/calibration.md).",
        f"# Device: {info.device} ({info.device_name}), torch {info.torch_version}, "
        f"{info.threads} thread(s); load average at start {load}.",
        f"# Model: {info.model_id} in {info.dtype}, {info.weights} weights. Base profile: "
        f"{info.base}.",
        f"# {fit.measured_s.size} fitted steps, median of {info.repeats} repeats each timed "
        f"with the {info.clock} clock after {info.warmup} warm-up round(s).",
        "# Fit: scipy.optimize.least_squares (trf, soft_l1 loss, f_scale 0.05) of relative "
        f"errors, best of {fit.starts} starts; fitted-step MAPE {fit.mape:.1%}.",
    ]
    if info.command:
        header.append(f"# Command: {info.command}")
    header.append("#")
    header.append("# parameter                  value       prior       stderr      status")
    for p in fit.parameters:
        unit = "s" if p.name.endswith("_s") else ""
        if not p.free:
            status = "prior (not fitted)"
        elif not p.identified:
            status = "not identified (kept at prior or above, predictions unchanged)"
        else:
            status = "fitted, at bound" if p.at_bound else "fitted"
        header.append(
            f"# {p.name:<26} {_fmt(p.value, unit):<11} {_fmt(p.prior, unit):<11} "
            f"{_fmt(p.stderr, unit):<11} {status}"
        )
    header.append("#")
    header.append("# fitted step                               measured    predicted   error")
    for label, measured, predicted in zip(steps, fit.measured_s, fit.predicted_s, strict=True):
        error = predicted / measured - 1
        header.append(
            f"# {label:<41} {measured * 1e3:>8.2f} ms {predicted * 1e3:>8.2f} ms {error:>+7.1%}"
        )
    body: dict[str, object] = {}
    for f in dataclasses.fields(Accelerator):
        if f.name == "efficiency":
            continue
        value = getattr(base, f.name)
        if value is not None:
            body[f.name] = value
    body["id"] = profile_id
    body["name"] = f"{base.name} (calibrated {info.date})"
    efficiency: dict[str, object] = {}
    for f in dataclasses.fields(Efficiency):
        value = getattr(fit.efficiency, f.name)
        if value is not None and f.name != "source":
            efficiency[f.name] = float(f"{value:.4g}")  # four significant digits
    efficiency["source"] = (
        f"kvsim calibrate {info.date}: {info.model_id} {info.dtype} on {info.device} "
        f"({info.device_name}), {fit.measured_s.size} steps, MAPE {fit.mape:.1%}"
    )
    body["efficiency"] = efficiency
    return "\n".join(header) + "\n\n" + toml_write.dumps(body)


def write_profile(text: str, path: str | Path, *, force: bool = False) -> Path:
    """Check ``text`` parses as an accelerator profile, then write it to ``path`` atomically
    (:func:`check_output` first)."""
    path = Path(path)
    entry = parse_text(text, "accelerator", source=str(path))
    check_output(path, entry.spec.id, force=force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
