"""KV-strategy presets of the planner: named scenario overrides, in one table.

A preset fixes every KV axis the scenario layer accepts today, so a candidate does not
inherit a setting from the base scenario by accident: the KV storage dtype
(``[policies.quantization] name``, a plain dtype for now) and prefix caching
(``[policies.prefix_cache] enabled``, vLLM's automatic prefix caching). New policies
(selection at a quality floor, host-DRAM offload) add rows here once the scenario accepts
them.

Quality is looked up, never estimated (:mod:`sim.policies.quality`): a preset whose KV is
stored in full precision and whose prefix reuse is exact is ``lossless``; a lossy one takes
the published or measured entry for that exact policy and model, else ``unknown``.
"""

from __future__ import annotations

from dataclasses import dataclass

from hardware.errors import KvsimError

#: KV dtypes stored without loss relative to the model's 16-bit activations.
LOSSLESS_DTYPES = ("fp16", "bf16")
LOSSLESS = "lossless"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class StrategyPreset:
    """One preset: its name, the KV dtype, whether prefix caching is on, and a one-line
    description for tables."""

    name: str
    kv_dtype: str
    prefix_caching: bool
    description: str

    @property
    def overrides(self) -> tuple[str, ...]:
        """The ``a.b=c`` scenario overrides this preset applies."""
        return (
            f'policies.quantization.name="{self.kv_dtype}"',
            f"policies.prefix_cache.enabled={'true' if self.prefix_caching else 'false'}",
        )


KV_STRATEGIES: dict[str, StrategyPreset] = {
    s.name: s
    for s in (
        StrategyPreset("fp16", "fp16", False, "16-bit KV, no prefix caching"),
        StrategyPreset("fp8", "fp8", False, "FP8 (e4m3) KV, no prefix caching"),
        StrategyPreset("int8", "int8", False, "INT8 KV, no prefix caching"),
        StrategyPreset("fp16+prefix", "fp16", True, "16-bit KV, prefix caching"),
        StrategyPreset("fp8+prefix", "fp8", True, "FP8 (e4m3) KV, prefix caching"),
        StrategyPreset("int8+prefix", "int8", True, "INT8 KV, prefix caching"),
    )
}


def get_strategy(name: str) -> StrategyPreset:
    try:
        return KV_STRATEGIES[name]
    except KeyError:
        raise KvsimError(
            f"unknown KV strategy {name!r}; expected one of {', '.join(KV_STRATEGIES)}",
            field="kv_strategies",
        ) from None


def quality(model_id: str, strategy: StrategyPreset) -> tuple[str, float | None]:
    """``(label, retained)``: ``lossless`` and 1.0 for full-precision KV; for a lossy dtype
    the quality table's entry for that policy on ``model_id`` (its label and
    value / baseline), else ``unknown`` and ``None``."""
    if strategy.kv_dtype in LOSSLESS_DTYPES:
        return LOSSLESS, 1.0
    from sim.policies.quality import default_quality_table
    from sim.policies.registry import get_policy

    entry = default_quality_table().lookup(model_id, get_policy("quantization", strategy.kv_dtype))
    if entry is None or not entry.baseline:
        return UNKNOWN, None
    return entry.label(), entry.value / entry.baseline
