"""Download public serving traces by name into a local cache, checking their SHA-256.

:data:`TRACES` lists what ``kvsim trace fetch NAME`` knows: where each file lives, its format
and licence, and its SHA-256 where it is known (the copies the project validates against,
listed in ``shared/data/README.md``). Traces without a recorded hash are downloaded but
reported as "not verified". Files go to ``$KVSIM_CACHE_DIR`` or ``~/.cache/kvsim/traces``
(or ``dest``), written to a temporary file in the same directory and renamed only once the
download is complete and its hash matches, so no half-written trace is ever left behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hardware.errors import KvsimError

_AZURE_2023 = "https://raw.githubusercontent.com/Azure/AzurePublicDataset/master/data/"
_AZURE_2024 = "https://azurepublicdatasettraces.blob.core.windows.net/azurellminfererencetrace/"
_MOONCAKE = "https://raw.githubusercontent.com/kvcache-ai/Mooncake/main/FAST25-release/traces/"
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class TraceSource:
    """A downloadable trace: ``url``, local ``filename``, reader ``format``, ``sha256`` (None:
    not verified) and the licence under which it is published."""

    name: str
    url: str
    filename: str
    format: str
    sha256: str | None
    license: str
    description: str


def _source(
    name: str, base: str, filename: str, fmt: str, sha256: str | None, license_: str, text: str
) -> TraceSource:
    return TraceSource(name, base + filename, filename, fmt, sha256, license_, text)


TRACES: dict[str, TraceSource] = {
    s.name: s
    for s in (
        _source(
            "azure2023-conv",
            _AZURE_2023,
            "AzureLLMInferenceTrace_conv.csv",
            "azure",
            "2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8",
            "CC-BY-4.0",
            "Azure LLM inference 2023, conversation (19,366 requests, 1 h)",
        ),
        _source(
            "azure2023-code",
            _AZURE_2023,
            "AzureLLMInferenceTrace_code.csv",
            "azure",
            "54e9a6d2a4bd06ba1e060304b900abbc74cbea53de96506e60fe5bb4f2277fb6",
            "CC-BY-4.0",
            "Azure LLM inference 2023, code (8,819 requests, 1 h)",
        ),
        _source(
            "azure2024-conv",
            _AZURE_2024,
            "AzureLLMInferenceTrace_conv_1week.csv",
            "azure",
            None,
            "CC-BY-4.0",
            "Azure LLM inference 2024, conversation (27.3 M requests, 1 week, ~1.2 GB)",
        ),
        _source(
            "azure2024-code",
            _AZURE_2024,
            "AzureLLMInferenceTrace_code_1week.csv",
            "azure",
            None,
            "CC-BY-4.0",
            "Azure LLM inference 2024, code (16.8 M requests, 1 week, ~0.7 GB)",
        ),
        _source(
            "mooncake-conversation",
            _MOONCAKE,
            "conversation_trace.jsonl",
            "mooncake",
            "b8cbb061a85206d729d91cdc2981f43c9e0d99209dce588d3af5f7934408b9df",
            "Apache-2.0",
            "Mooncake FAST'25 conversation (12,031 requests, prefix block ids)",
        ),
        _source(
            "mooncake-synthetic",
            _MOONCAKE,
            "synthetic_trace.jsonl",
            "mooncake",
            "bd070915a98fc0ed264d7cfef2ce746002eb3076a695ec31ba2674c0111ec131",
            "Apache-2.0",
            "Mooncake FAST'25 synthetic (3,993 requests, prefix block ids)",
        ),
        _source(
            "mooncake-toolagent",
            _MOONCAKE,
            "toolagent_trace.jsonl",
            "mooncake",
            None,
            "Apache-2.0",
            "Mooncake FAST'25 tool&agent (23,608 requests, prefix block ids)",
        ),
    )
}


def cache_dir() -> Path:
    """``$KVSIM_CACHE_DIR`` if set, else ``~/.cache/kvsim/traces``."""
    configured = os.environ.get("KVSIM_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "kvsim" / "traces"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(source: TraceSource, tmp: Path, timeout_s: float, progress: bool) -> str:
    from tqdm import tqdm

    digest = hashlib.sha256()
    with urllib.request.urlopen(source.url, timeout=timeout_s) as response, tmp.open("wb") as out:
        total = response.headers.get("Content-Length")
        with tqdm(
            total=int(total) if total and total.isdigit() else None,
            unit="B",
            unit_scale=True,
            desc=source.filename,
            disable=None if progress else True,
        ) as bar:
            for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    return digest.hexdigest()


def fetch_trace(
    name: str,
    dest: str | Path | None = None,
    *,
    force: bool = False,
    timeout_s: float = 60.0,
    progress: bool = True,
) -> Path:
    """The local path of trace ``name``, downloading it first unless a cached copy (with the
    right hash, where known) is already there. Raises :class:`KvsimError` for an unknown
    name, a failed download (no network) or a hash mismatch; nothing partial is kept."""
    if name not in TRACES:
        raise KvsimError(f"unknown trace; known: {', '.join(TRACES)}", field="name", source=name)
    source = TRACES[name]
    folder = Path(dest) if dest is not None else cache_dir()
    target = folder / source.filename
    if (
        target.is_file()
        and not force
        and (source.sha256 is None or sha256_of(target) == source.sha256)
    ):
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(
            dir=folder, prefix=f".{source.filename}.", suffix=".part"
        )
    except OSError as err:
        raise KvsimError(f"cannot write to the cache directory: {err}", source=str(folder)) from err
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        try:
            got = _download(source, tmp, timeout_s, progress)
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise KvsimError(
                f"download of {name!r} failed ({reason}); check the internet connection, or "
                f"download it by hand and place it at {target}",
                source=source.url,
            ) from err
        if source.sha256 is not None and got != source.sha256:
            raise KvsimError(
                f"SHA-256 mismatch for {name!r}: expected {source.sha256}, got {got}; "
                "the download was discarded",
                source=source.url,
                field="sha256",
            )
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
