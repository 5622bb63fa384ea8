"""Uploaded files as real, content-addressed files the project's readers can open.

Scenarios name their trace or model config by path, so an upload is written once to
``<tmp>/kvsim-dashboard/uploads/<sha256 prefix>/<file name>`` (temp file then rename: never
half-written) and referenced from there; the same bytes always map to the same path, which
keeps scenario hashes, and therefore cached results, stable across reruns and sessions.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hardware.errors import KvsimError

T = TypeVar("T")
UPLOAD_ROOT = Path(tempfile.gettempdir()) / "kvsim-dashboard" / "uploads"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """The file name without folders, other characters than ``[A-Za-z0-9._-]`` replaced."""
    cleaned = _UNSAFE.sub("_", Path(name).name).strip("._")
    return cleaned or "upload"


def save_upload(name: str, data: bytes, root: Path = UPLOAD_ROOT) -> Path:
    """Write ``data`` under ``root`` keyed by its SHA-256 and return the path."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    folder = root / digest
    path = folder / safe_name(name)
    if path.is_file() and path.stat().st_size == len(data):
        return path
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_as_upload(path: Path, name: str, reader: Callable[[Path], T]) -> T:
    """``reader(path)``, with errors that name the stored copy renamed to the upload's
    ``name`` so the message points at the file the user chose."""
    try:
        return reader(path)
    except KvsimError as err:
        if err.source is None or str(path) not in str(err.source):
            raise
        raise KvsimError(err.message, source=name, line=err.line, field=err.field) from None
