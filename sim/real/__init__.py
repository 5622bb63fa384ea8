"""The real execution mode: a Llama-family model in PyTorch over a paged KV cache.

Optional: it needs the ``real`` extra (torch, gguf, tokenizers, safetensors). Importing this
package without them raises :class:`MissingExtraError`, which is both a ``KvsimError`` (the CLI
prints it in one line) and an ``ImportError`` (``pytest.importorskip`` and ``except
ImportError`` treat it as a missing module). Submodules load on first attribute access.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from hardware.errors import KvsimError

EXTRA_MODULES = ("torch", "gguf", "tokenizers", "safetensors")
INSTALL_HINT = "pip install 'kvsim[real]'"


class MissingExtraError(KvsimError, ImportError):
    """A module of the ``real`` extra is not installed."""


_missing = [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]
if _missing:
    raise MissingExtraError(
        f"the real execution mode needs {', '.join(_missing)}: {INSTALL_HINT}",
        source="sim.real",
    )

_EXPORTS = {
    "Checkpoint": "weights",
    "LlamaConfig": "weights",
    "load_checkpoint": "weights",
    "load_gguf": "weights",
    "load_hf_checkpoint": "weights",
    "smollm2_gguf_path": "weights",
    "TextTokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "PagedKVCache": "kv_cache",
    "block_table_tensor": "kv_cache",
    "AttentionObserver": "model",
    "LlamaModel": "model",
    "StepBatch": "model",
    "greedy_generate": "model",
    "KvBackend": "backend",
    "SeqWork": "backend",
    "PagedKvBackend": "paged_backend",
    "FileTier": "offload",
    "PinnedHostTier": "offload",
    "TorchExecutor": "executor",
    "build_torch_executor": "executor",
    "PromptSource": "executor",
    "StepMeasurement": "executor",
}
__all__ = ["EXTRA_MODULES", "INSTALL_HINT", "MissingExtraError", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sim.real' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sim.real.{_EXPORTS[name]}"), name)
