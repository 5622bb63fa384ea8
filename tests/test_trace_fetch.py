"""``kvsim trace fetch``: registry hashes against the shared copies, download via ``file://``,
checksum mismatch and no-network failures (nothing partial left), caching, CLI messages.
No test touches the internet."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hardware.errors import KvsimError
from sim.cli import main as kvsim
from workloads.fetch import TRACES, TraceSource, cache_dir, fetch_trace
from workloads.traces import read_trace

SHARED = {
    "azure2023-conv": "azure2023/AzureLLMInferenceTrace_conv.csv",
    "azure2023-code": "azure2023/AzureLLMInferenceTrace_code.csv",
    "mooncake-conversation": "mooncake/conversation_trace.jsonl",
    "mooncake-synthetic": "mooncake/synthetic_trace.jsonl",
}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_registry_hash_matches_shared_copy(traces_dir: Path, name: str) -> None:
    data = (traces_dir / SHARED[name]).read_bytes()
    assert TRACES[name].sha256 == hashlib.sha256(data).hexdigest()
    assert TRACES[name].filename == Path(SHARED[name]).name


def test_every_registered_trace_has_a_reader_and_https_url() -> None:
    for source in TRACES.values():
        assert source.url.startswith("https://")
        assert source.url.endswith(source.filename)
        assert source.format in ("azure", "mooncake")


def local_source(monkeypatch: pytest.MonkeyPatch, file: Path, sha256: str | None) -> str:
    source = TraceSource(
        "test-trace", file.as_uri(), "copy.jsonl", "mooncake", sha256, "Apache-2.0", "test"
    )
    monkeypatch.setitem(TRACES, source.name, source)
    return source.name


def test_fetch_file_url_verifies_and_caches(
    traces_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = traces_dir / SHARED["mooncake-synthetic"]
    name = local_source(monkeypatch, original, TRACES["mooncake-synthetic"].sha256)
    monkeypatch.setenv("KVSIM_CACHE_DIR", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    path = fetch_trace(name, progress=False)
    assert path == tmp_path / "cache" / "copy.jsonl"
    assert len(read_trace(path)) == 3993

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert fetch_trace(name, progress=False) == path  # cached copy with the right hash
    assert sorted(p.name for p in path.parent.iterdir()) == ["copy.jsonl"]


def test_checksum_mismatch_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "served.jsonl"
    file.write_text('{"timestamp": 0, "input_length": 1, "output_length": 1, "hash_ids": [1]}\n')
    name = local_source(monkeypatch, file, "0" * 64)
    dest = tmp_path / "dest"
    with pytest.raises(KvsimError, match="SHA-256 mismatch") as info:
        fetch_trace(name, dest, progress=False)
    assert hashlib.sha256(file.read_bytes()).hexdigest() in str(info.value)
    assert list(dest.iterdir()) == []


def test_unverified_trace_downloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "served.jsonl"
    file.write_text('{"timestamp": 0, "input_length": 1, "output_length": 1, "hash_ids": [1]}\n')
    name = local_source(monkeypatch, file, None)
    assert kvsim(["trace", "fetch", name, "--dest", str(tmp_path / "d")]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tmp_path / "d" / "copy.jsonl")
    assert "not verified" in captured.err


def test_no_network_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_dns(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", no_dns)
    dest = tmp_path / "dest"
    with pytest.raises(KvsimError) as info:
        fetch_trace("azure2023-conv", dest, progress=False)
    message = str(info.value)
    assert TRACES["azure2023-conv"].url in message
    assert "name resolution" in message and "internet connection" in message
    assert list(dest.iterdir()) == []
    assert kvsim(["trace", "fetch", "azure2023-conv", "--dest", str(dest)]) == 2
    assert capsys.readouterr().err.startswith("kvsim: error: https://")


def test_unreachable_host_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = TraceSource(
        "closed-port", "http://127.0.0.1:9/trace.csv", "trace.csv", "azure", None, "-", "test"
    )
    monkeypatch.setitem(TRACES, source.name, source)
    with pytest.raises(KvsimError, match="download of 'closed-port' failed"):
        fetch_trace(source.name, tmp_path, progress=False, timeout_s=5)
    assert list(tmp_path.iterdir()) == []


def test_unknown_name() -> None:
    with pytest.raises(KvsimError, match="unknown trace"):
        fetch_trace("nope")


def test_cli_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert kvsim(["trace", "list"]) == 0
    out = capsys.readouterr().out
    for name in TRACES:
        assert name in out
