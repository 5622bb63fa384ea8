"""The model catalog: :class:`ModelSpec` from a catalog id, a catalog TOML, or a Hugging Face
``config.json``.

Built-in entries are ``workloads/catalog/<id>.toml``, one per model, whose keys are
:class:`ModelSpec` fields (MoE in a ``[moe]`` table of :class:`MoeSpec` fields); each number
carries a ``# source`` comment. The file stem is the id, matched case-insensitively. As in the
hardware catalog, the built-ins are searched first, then every directory named in
``KVSIM_MODEL_PATH`` (``os.pathsep``-separated); a later file with the same id replaces an
earlier one, so users override built-ins by id.

``model_from_hf_config`` reads the architecture fields of the transformers configs of Llama,
Mistral, Mixtral, Qwen2, Gemma-2, Phi-3, DeepSeek-V2/V3 (MLA and MoE), BLOOM and
GPT-NeoX/GPT-2 style models; field meanings follow the transformers ``*Config`` classes.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from hardware.errors import KvsimError
from workloads.model import ModelSpec, MoeSpec

CATALOG_DIR = Path(__file__).resolve().parent / "catalog"
MODEL_PATH_ENV = "KVSIM_MODEL_PATH"

_SPEC_TYPES: dict[str, str] = {f.name: str(f.type) for f in fields(ModelSpec)}
_MOE_TYPES: dict[str, str] = {f.name: str(f.type) for f in fields(MoeSpec)}
_REQUIRED = tuple(f.name for f in fields(ModelSpec) if f.default is MISSING)
_MOE_REQUIRED = tuple(f.name for f in fields(MoeSpec) if f.default is MISSING)

#: transformers model types whose MLP is a plain two-matrix (non-gated) FFN.
_NON_GATED_TYPES = frozenset({"bloom", "gpt2", "gpt_neox", "gptj", "gpt_bigcode", "opt"})
#: transformers model types whose config class defaults ``tie_word_embeddings`` to true.
_TIED_BY_DEFAULT = frozenset({"bloom", "gemma", "gemma2", "gpt2", "gptj", "gpt_bigcode", "opt"})
#: transformers model types that use ALiBi (no rotary embedding: ``rope_theta`` 0).
_ALIBI_TYPES = frozenset({"bloom"})
#: BLOOM's configs name no context length; 2048 is its training sequence length (BLOOM paper,
#: arXiv:2211.05100 §3.5). ALiBi sets no hard limit.
_BLOOM_TRAINING_TOKENS = 2048
#: transformers Gemma2Config default window, used when a Gemma-2 config omits it.
_GEMMA2_DEFAULT_WINDOW = 4096
_SLIDING, _FULL = "sliding_attention", "full_attention"


# ---- lookup --------------------------------------------------------------------------------
def catalog_dirs() -> list[Path]:
    """The built-in catalog followed by the ``KVSIM_MODEL_PATH`` directories, in order."""
    dirs = [CATALOG_DIR]
    for raw in os.environ.get(MODEL_PATH_ENV, "").split(os.pathsep):
        if not raw.strip():
            continue
        path = Path(raw).expanduser()
        if not path.is_dir():
            raise KvsimError(f"{MODEL_PATH_ENV} entry is not a directory", source=str(path))
        dirs.append(path)
    return dirs


def _catalog_files() -> dict[str, Path]:
    """Every catalog id (lower case) and the file that defines it, overrides applied."""
    found: dict[str, Path] = {}
    for directory in catalog_dirs():
        in_dir: dict[str, Path] = {}
        for path in sorted(directory.glob("*.toml")):
            key = path.stem.lower()
            if key in in_dir:
                raise KvsimError(
                    f"duplicate model id {key!r} (also defined in {in_dir[key]})",
                    source=str(path),
                    field="id",
                )
            in_dir[key] = path
        found.update(in_dir)
    return found


def _looks_like_path(text: str) -> bool:
    return text.endswith((".toml", ".json")) or os.sep in text or Path(text).exists()


def get_model(id_or_path: str) -> ModelSpec:
    """A catalog id (case-insensitive), a catalog-style ``.toml``, a Hugging Face
    ``config.json``, or a directory holding one."""
    if _looks_like_path(id_or_path):
        path = Path(id_or_path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise KvsimError("no such file", source=str(path), field="model")
        if path.suffix == ".toml":
            return load_model_toml(path)
        return model_from_hf_config(path)
    files = _catalog_files()
    key = id_or_path.strip().lower()
    if key not in files:
        close = difflib.get_close_matches(key, sorted(files), n=4, cutoff=0.5)
        hint = (
            f"close matches: {', '.join(close)}" if close else f"known: {', '.join(sorted(files))}"
        )
        raise KvsimError(
            f"unknown model id {id_or_path!r} ({hint}; see `kvsim models list`)",
            source=id_or_path,
        )
    return load_model_toml(files[key])


def list_models() -> list[ModelSpec]:
    """Every catalog model (built-ins and ``KVSIM_MODEL_PATH`` entries), sorted by id."""
    return [load_model_toml(path) for _, path in sorted(_catalog_files().items())]


# ---- building and validating -----------------------------------------------------------
def _check_value(value: Any, kind: str, name: str, fail: Callable[[str, str], KvsimError]) -> Any:
    """Type-check one field against its dataclass annotation; sizes may not be negative."""
    base = kind.removesuffix(" | None")
    if value is None and kind.endswith("| None"):
        return None
    if base == "bool":
        if not isinstance(value, bool):
            raise fail(name, f"expected true or false, got {value!r}")
        return value
    if base == "str":
        if not isinstance(value, str):
            raise fail(name, f"expected a string, got {value!r}")
        return value
    if base in ("int", "float"):
        numeric = (int, float) if base == "float" else (int,)
        if isinstance(value, bool) or not isinstance(value, numeric):
            expected = "a number" if base == "float" else "an integer"
            raise fail(name, f"expected {expected}, got {value!r}")
        if not math.isfinite(value) or value < 0:
            expected = "a finite number >= 0" if base == "float" else ">= 0"
            raise fail(name, f"must be {expected}, got {value!r}")
        return float(value) if base == "float" else value
    raise fail(name, f"cannot be set here (type {kind})")


def _build(
    values: Mapping[str, Any],
    moe: Mapping[str, Any] | None,
    fail: Callable[[str, str], KvsimError],
) -> ModelSpec:
    """Validate ``values`` (ModelSpec fields) and ``moe`` (MoeSpec fields) and build the spec;
    ``fail(field, message)`` makes the error that names the offending place."""
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name not in _SPEC_TYPES or name == "moe":
            close = difflib.get_close_matches(name, list(_SPEC_TYPES), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise fail(name, f"unknown field{hint}")
        kwargs[name] = _check_value(value, _SPEC_TYPES[name], name, fail)
    for name in _REQUIRED:
        if name not in kwargs:
            raise fail(name, "missing required field")
    if moe is not None:
        moe_kwargs: dict[str, Any] = {}
        for name, value in moe.items():
            if name not in _MOE_TYPES:
                raise fail(f"moe.{name}", f"unknown field; expected one of {', '.join(_MOE_TYPES)}")
            moe_kwargs[name] = _check_value(value, _MOE_TYPES[name], f"moe.{name}", fail)
        for name in _MOE_REQUIRED:
            if name not in moe_kwargs:
                raise fail(f"moe.{name}", "missing required field")
        try:
            kwargs["moe"] = MoeSpec(**moe_kwargs)
        except KvsimError as err:
            raise fail(f"moe.{err.field}", err.message) from None
    try:
        return ModelSpec(**kwargs)
    except KvsimError as err:
        raise fail(err.field or "model", err.message) from None


# ---- catalog TOML ----------------------------------------------------------------------------
def _toml_line(text: str, dotted: str) -> int | None:
    """1-based line of key ``dotted`` (``field`` or ``moe.field``) in a flat TOML file."""
    table, _, key = dotted.rpartition(".")
    current = ""
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for number, raw in enumerate(text.splitlines(), start=1):
        header = re.match(r"^\s*\[([^\]]+)\]", raw)
        if header:
            current = header.group(1).strip()
        elif current == table and pattern.match(raw):
            return number
    return None


def load_model_toml(path: str | Path) -> ModelSpec:
    """Read one catalog-style TOML file. The id is the file stem unless the file sets ``id``
    to the same (case-insensitive) name."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise KvsimError(f"cannot read: {err.strerror}", source=source) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        where = re.search(r"\s*\(at line (\d+), column \d+\)$", message)
        line = int(where.group(1)) if where else None
        if where:
            message = message[: where.start()]
        elif message.endswith("(at end of document)"):
            message = message.removesuffix("(at end of document)").rstrip()
            line = max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
        raise KvsimError(f"malformed TOML: {message}", source=source, line=line) from None

    def fail(name: str, message: str) -> KvsimError:
        return KvsimError(message, source=source, line=_toml_line(text, name), field=name)

    moe = data.pop("moe", None)
    if moe is not None and not isinstance(moe, dict):
        raise fail("moe", "expected a [moe] table")
    file_id = data.setdefault("id", path.stem)
    if not isinstance(file_id, str) or file_id.lower() != path.stem.lower():
        raise fail("id", f"expected the file stem {path.stem!r}, got {file_id!r}")
    data["id"] = file_id.lower()
    return _build(data, moe, fail)


# ---- Hugging Face config.json ---------------------------------------------------------------
def _read_json(path: Path) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise KvsimError(f"cannot read: {err.strerror}", source=str(path)) from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise KvsimError(f"malformed JSON: {err.msg}", source=str(path), line=err.lineno) from None
    if not isinstance(config, dict):
        raise KvsimError("expected a JSON object at the top level", source=str(path), line=1)
    return config, text


def _default_id(path: Path | None, config: Mapping[str, Any]) -> str:
    if path is not None:
        return (path.parent.name if path.name == "config.json" else path.stem).lower() or "model"
    name = config.get("_name_or_path") or config.get("model_type") or "model"
    return str(name).rstrip("/").rsplit("/", 1)[-1].lower()


class _HfReader:
    """Picks fields from a transformers config, remembering which key fed which spec field so
    errors name the key the user wrote."""

    def __init__(self, config: Mapping[str, Any], source: str, text: str | None) -> None:
        self.config = config
        self.source = source
        self.text = text
        self.key_of: dict[str, str] = {}

    def line_of(self, key: str) -> int | None:
        if self.text is None:
            return None
        pattern = re.compile(rf'"{re.escape(key)}"\s*:')
        for number, raw in enumerate(self.text.splitlines(), start=1):
            if pattern.search(raw):
                return number
        return None

    def error(self, key: str, message: str) -> KvsimError:
        key = self.key_of.get(key, key)
        return KvsimError(message, source=self.source, line=self.line_of(key), field=key)

    def get(self, spec_field: str, *keys: str) -> Any:
        """The first of ``keys`` present and not null, or None."""
        for key in keys:
            if self.config.get(key) is not None:
                self.key_of[spec_field] = key
                return self.config[key]
        return None

    def need(self, spec_field: str, *keys: str) -> Any:
        value = self.get(spec_field, *keys)
        if value is None:
            also = f" (or {', '.join(keys[1:])})" if len(keys) > 1 else ""
            raise KvsimError(f"missing required field{also}", source=self.source, field=keys[0])
        return value


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _sliding(reader: _HfReader, model_type: str, layers: int, context: int) -> dict[str, Any]:
    """Map a config's window fields to ``sliding_window_tokens`` and a layer pattern."""
    window = reader.get("sliding_window_tokens", "sliding_window")
    if window is not None:
        _check_value(window, "int", "sliding_window_tokens", reader.error)
    layer_types = reader.config.get("layer_types")
    if layer_types is not None:
        reader.key_of["sliding_window_pattern"] = "layer_types"
        if not isinstance(layer_types, list) or len(layer_types) != layers:
            raise reader.error("layer_types", f"expected a list of {layers} layer types")
        sliding = [kind == _SLIDING for kind in layer_types]
        unknown = [kind for kind in layer_types if kind not in (_SLIDING, _FULL)]
        if unknown:
            raise reader.error("layer_types", f"unsupported layer type {unknown[0]!r}")
        if not any(sliding):
            return {}
        if all(sliding):
            pattern = "all"
        elif sliding == [i % 2 == 0 for i in range(layers)]:
            pattern = "alternate"
        else:
            raise reader.error(
                "layer_types", "only all-sliding or alternate (sliding first) patterns are modelled"
            )
        if window is None and model_type == "gemma2":
            window = _GEMMA2_DEFAULT_WINDOW
        if window is None:
            raise reader.error("sliding_window", "sliding layers need a sliding_window")
        return {"sliding_window_tokens": window, "sliding_window_pattern": pattern}
    if model_type == "gemma2":
        # transformers Gemma2Config: layer i slides when (i + 1) is odd.
        return {
            "sliding_window_tokens": _GEMMA2_DEFAULT_WINDOW if window is None else window,
            "sliding_window_pattern": "alternate",
        }
    if window is None or reader.config.get("use_sliding_window") is False:
        return {}
    if model_type in ("qwen2", "qwen2_moe"):
        # transformers Qwen2: layers at index >= max_window_layers slide.
        first = _or(reader.config.get("max_window_layers"), layers)
        _check_value(first, "int", "max_window_layers", reader.error)
        if first >= layers:
            return {}
        if first != 0:
            raise reader.error("max_window_layers", "only 0 (all layers slide) is modelled")
    if window >= context:
        return {}  # a window no shorter than the context never binds (Phi-3-128k: 262144)
    return {"sliding_window_tokens": window, "sliding_window_pattern": "all"}


def _moe(reader: _HfReader, hidden_ffn: int) -> dict[str, Any] | None:
    experts = reader.get("moe.num_experts", "n_routed_experts", "num_local_experts", "num_experts")
    if experts is None:
        return None
    moe: dict[str, Any] = {
        "num_experts": experts,
        "active_experts": reader.need("moe.active_experts", "num_experts_per_tok"),
        "expert_ffn_size": _or(
            reader.get("moe.expert_ffn_size", "moe_intermediate_size"), hidden_ffn
        ),
        "shared_experts": _or(reader.get("moe.shared_experts", "n_shared_experts"), 0),
        "dense_layers": _or(reader.get("moe.dense_layers", "first_k_dense_replace"), 0),
    }
    if reader.config.get("moe_layer_freq", 1) != 1:
        raise reader.error(
            "moe_layer_freq", "only 1 (every layer after the dense ones) is modelled"
        )
    if reader.config.get("shared_expert_intermediate_size") not in (None, 0):
        raise reader.error(
            "shared_expert_intermediate_size",
            "shared experts of a different width than routed ones are not modelled",
        )
    return moe


def model_from_hf_config(
    config: Mapping[str, Any] | str | Path, id: str | None = None
) -> ModelSpec:
    """Build a :class:`ModelSpec` from a transformers ``config.json`` (a path or the parsed
    dict). ``id`` defaults to the folder holding ``config.json`` (or the file stem)."""
    path: Path | None = None
    text: str | None = None
    if isinstance(config, str | Path):
        path = Path(config)
        config, text = _read_json(path)
    model_id = (id or _default_id(path, config)).lower()
    source = str(path) if path is not None else model_id
    reader = _HfReader(config, source, text)
    model_type = str(config.get("model_type", "")).lower()

    layers = reader.need("num_layers", "num_hidden_layers", "n_layer", "num_layers")
    hidden = reader.need("hidden_size", "hidden_size", "n_embd", "n_embed", "d_model")
    heads = reader.need("num_heads", "num_attention_heads", "n_head", "num_heads")
    for name, value in (("num_layers", layers), ("hidden_size", hidden), ("num_heads", heads)):
        if _check_value(value, "int", name, reader.error) == 0:
            raise reader.error(name, "must be > 0, got 0")
    kv_heads = 1 if config.get("multi_query") is True else heads
    kv_heads = _or(reader.get("num_kv_heads", "num_key_value_heads", "num_kv_heads"), kv_heads)
    gated = model_type not in _NON_GATED_TYPES
    ffn = reader.get("ffn_size", "intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size")
    if ffn is None:
        if gated:
            reader.need("ffn_size", "intermediate_size")
        ffn = 4 * hidden  # GPT-2/BLOOM: n_inner null means 4 × hidden
    context = reader.get(
        "max_context_tokens",
        "max_position_embeddings",
        "n_positions",
        "seq_length",
        "max_sequence_length",
    )
    if context is None:
        if model_type != "bloom":
            reader.need("max_context_tokens", "max_position_embeddings", "n_positions")
        context = _BLOOM_TRAINING_TOKENS
    _check_value(context, "int", "max_context_tokens", reader.error)
    values: dict[str, Any] = {
        "id": model_id,
        "name": str(config.get("_name_or_path") or model_id),
        "num_layers": layers,
        "hidden_size": hidden,
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "ffn_size": ffn,
        "vocab_size": reader.need("vocab_size", "vocab_size"),
        "max_context_tokens": context,
        "gated_ffn": gated,
        "tied_embeddings": bool(config.get("tie_word_embeddings", model_type in _TIED_BY_DEFAULT)),
        "source": f"Hugging Face config.json ({source})",
    }
    if model_type in _ALIBI_TYPES:
        values["rope_theta"] = 0.0
    else:
        theta = reader.get("rope_theta", "rope_theta", "rotary_emb_base")
        values["rope_theta"] = _or(theta, 10000.0)

    if config.get("kv_lora_rank") is not None:
        mla = {
            name: _check_value(reader.need(name, name), "int", name, reader.error)
            for name in ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
        }
        values.update(mla)
        values["q_lora_rank"] = _or(reader.get("q_lora_rank", "q_lora_rank"), 0)
        values["attention"] = "mla"
        values["head_dim"] = mla["qk_nope_head_dim"] + mla["qk_rope_head_dim"]
    else:
        head_dim = reader.get("head_dim", "head_dim")
        if head_dim is None:
            if hidden % heads:
                raise reader.error(
                    "num_heads", f"hidden size {hidden} is not a multiple of {heads} heads"
                )
            head_dim = hidden // heads
        values["head_dim"] = head_dim
        if kv_heads == heads:
            values["attention"] = "mha"
        elif kv_heads == 1:
            values["attention"] = "mqa"
        else:
            values["attention"] = "gqa"
    values.update(_sliding(reader, model_type, layers, context))
    return _build(values, _moe(reader, ffn), reader.error)
