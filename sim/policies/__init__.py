"""Token-level and model-level KV-cache policies: registry, simulation faces, tensor faces,
composition, quality table and architecture transforms (``docs/policies.md``)."""

from sim.policies.architecture import as_cla, as_gqa, as_mla, transform_model
from sim.policies.base import (
    KvLayout,
    LowRankPolicy,
    MergingPolicy,
    QuantizationPolicy,
    SelectionPolicy,
)
from sim.policies.compose import KvBytes, KvStrategy
from sim.policies.low_rank import Palu
from sim.policies.merging import MiniCache, SimilarityMerge
from sim.policies.quality import QualityEntry, QualityTable, default_quality_table, quality_label
from sim.policies.quantization import Bf16, Fp8, Fp16, Int2, Int4, Int8, Kivi
from sim.policies.registry import (
    ENTRY_POINT_GROUP,
    KINDS,
    get_policy,
    list_policies,
    load_plugins,
    policy_class,
    policy_from_table,
    register,
)
from sim.policies.selection import (
    H2O,
    TOVA,
    AdaKV,
    DuoAttention,
    FullCache,
    KNorm,
    PyramidKV,
    Quest,
    SnapKV,
    StreamingLLM,
    pyramid_layer_budgets,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "H2O",
    "KINDS",
    "TOVA",
    "AdaKV",
    "Bf16",
    "DuoAttention",
    "Fp8",
    "Fp16",
    "FullCache",
    "Int2",
    "Int4",
    "Int8",
    "KNorm",
    "Kivi",
    "KvBytes",
    "KvLayout",
    "KvStrategy",
    "LowRankPolicy",
    "MergingPolicy",
    "MiniCache",
    "Palu",
    "PyramidKV",
    "QualityEntry",
    "QualityTable",
    "QuantizationPolicy",
    "Quest",
    "SelectionPolicy",
    "SimilarityMerge",
    "SnapKV",
    "StreamingLLM",
    "as_cla",
    "as_gqa",
    "as_mla",
    "default_quality_table",
    "get_policy",
    "list_policies",
    "load_plugins",
    "policy_class",
    "policy_from_table",
    "pyramid_layer_budgets",
    "quality_label",
    "register",
    "transform_model",
]
