"""Model-level "what if" transforms: the same model with GQA-g, MQA, MLA or CLA attention.

Each returns a new validated :class:`ModelSpec` (``dataclasses.replace``) whose id records
the change (``llama-3.1-8b+gqa2``), so users compare architectures on one workload. KV bytes
then follow ``ModelSpec``'s formulas (reference §1.6): GQA-g stores ``2·L·g·d`` elements per
token, MQA ``2·L·d``, MLA ``L·(d_c + d_R)``, CLA-f ``1/f`` of the layers.
"""

from __future__ import annotations

import dataclasses
import re

from hardware.errors import KvsimError
from workloads.model import ModelSpec


def _derived(model: ModelSpec, suffix: str, **changes: object) -> ModelSpec:
    return dataclasses.replace(
        model, id=f"{model.id}+{suffix}", name=f"{model.name} ({suffix})", **changes
    )


def as_gqa(model: ModelSpec, groups: int) -> ModelSpec:
    """``groups`` KV heads shared by ``num_heads / groups`` query heads each (GQA, Ainslie
    et al. 2023); 1 group is MQA, ``num_heads`` groups MHA."""
    if model.attention == "mla":
        raise KvsimError("an MLA model has no KV heads to regroup", source=model.id, field="groups")
    if (
        isinstance(groups, bool)
        or not isinstance(groups, int)
        or groups < 1
        or model.num_heads % groups
    ):
        raise KvsimError(
            f"must be a positive divisor of num_heads {model.num_heads}, got {groups!r}",
            source=model.id,
            field="groups",
        )
    kind = "mqa" if groups == 1 else "mha" if groups == model.num_heads else "gqa"
    return _derived(model, f"gqa{groups}", num_kv_heads=groups, attention=kind)


def as_mla(
    model: ModelSpec, kv_lora_rank: int | None = None, qk_rope_head_dim: int | None = None
) -> ModelSpec:
    """Multi-head latent attention (DeepSeek-V2): cache a ``kv_lora_rank`` latent plus a
    ``qk_rope_head_dim`` RoPE key per token and layer. Defaults follow DeepSeek-V2's ratios to
    the head dim ``d_h = 128``: ``d_c = 4·d_h`` (512) and ``d_R = d_h/2`` (64); the per-head
    no-RoPE query/key and value dims stay ``d_h``."""
    if model.attention == "mla":
        raise KvsimError("already MLA", source=model.id, field="attention")
    rank = 4 * model.head_dim if kv_lora_rank is None else kv_lora_rank
    rope = model.head_dim // 2 if qk_rope_head_dim is None else qk_rope_head_dim
    for name, value in (("kv_lora_rank", rank), ("qk_rope_head_dim", rope)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise KvsimError(
                f"must be a positive integer, got {value!r}", source=model.id, field=name
            )
    return _derived(
        model,
        f"mla{rank}",
        attention="mla",
        num_kv_heads=model.num_heads,
        head_dim=model.head_dim + rope,
        kv_lora_rank=rank,
        qk_rope_head_dim=rope,
        qk_nope_head_dim=model.head_dim,
        v_head_dim=model.head_dim,
    )


def as_cla(model: ModelSpec, factor: int) -> ModelSpec:
    """Cross-layer attention (Brandon et al., 2024): ``factor`` adjacent layers share one KV
    (CLA-2 halves the KV layers), on top of any sharing the model already has."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise KvsimError(
            f"must be a positive integer, got {factor!r}", source=model.id, field="factor"
        )
    share = model.kv_share_factor * factor
    if share > model.num_layers:
        raise KvsimError(
            f"sharing factor {share} exceeds {model.num_layers} layers",
            source=model.id,
            field="factor",
        )
    return _derived(model, f"cla{factor}", kv_share_factor=share)


_SPEC = re.compile(r"^(gqa|mqa|mla|cla)-?(\d*)$")


def transform_model(model: ModelSpec, spec: str) -> ModelSpec:
    """Apply a transform named like ``gqa2``/``gqa-2``, ``mqa``, ``mla``/``mla512``, ``cla2``;
    several may be chained with ``+`` (``gqa2+cla2``)."""
    for part in spec.lower().split("+"):
        match = _SPEC.match(part.strip())
        if match is None:
            raise KvsimError(
                f"unknown architecture transform {part!r}; expected gqa<g>, mqa, mla[<rank>] or cla<f>",
                source=model.id,
                field="architecture",
            )
        kind, number = match.group(1), match.group(2)
        if kind in ("gqa", "cla") and not number:
            raise KvsimError(
                f"{kind} needs a number, e.g. {kind}2", source=model.id, field="architecture"
            )
        if kind == "gqa":
            model = as_gqa(model, int(number))
        elif kind == "mqa":
            model = as_gqa(model, 1)
        elif kind == "mla":
            model = as_mla(model, int(number) if number else None)
        else:
            model = as_cla(model, int(number))
    return model
