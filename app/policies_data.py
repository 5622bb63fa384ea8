"""Tables behind the Policies page: several KV strategies run on one workload, compared on
memory, throughput, latency, cost and quality.

A strategy is a set of ``[policies.<kind>]`` tables (kinds ``selection``, ``quantization``,
``low_rank``, ``merging``; :class:`sim.policies.KvStrategy`). Each strategy's scenario is
the base scenario with exactly those tables (a kind left out is the full fp16 cache, and the
prefix-cache table is kept), so the runs differ only in the strategy and share the
dashboard's run cache with the What-if page.

Two kinds of numbers per strategy:

- **analytic KV bytes** (:meth:`KvStrategy.kv_bytes`, block granularity): the mean over the
  workload's requests of the KV one request holds at its final context (prompt + output − 1
  tokens: the last generated token's KV is never written, as in the engine's summary), and
  its ratio to the full fp16 cache of the same requests; independent of the simulation;
- **simulated** (``kvsim run``'s summary keys): the KV memory saved against the fp16 cache
  (``kv_physical_savings``, whole blocks at each finished request's final context) and what
  the method drops from the model's view (``kv_logical_savings``; more than the memory saved
  for masking-only methods such as Quest), KV peak, output throughput, TTFT/TPOT/E2E p90,
  goodput and USD per million output tokens.

Quality is looked up, never estimated (:meth:`KvStrategy.quality`, ``docs/policies.md``): a
strategy whose every component is lossless (full cache, fp16/bf16) is ``lossless`` with
retained fraction 1; one lossy component with a table entry for this model takes that
entry's figure (retained = value / full-KV baseline); anything else is ``unknown`` — two
lossy components each with a published figure are still unknown together, since their
combined effect is not what either paper measured.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from hardware.errors import KvsimError
from sim.policies import KvStrategy, QualityTable
from sim.policies.compose import STRATEGY_KINDS
from workloads.model import ModelSpec
from workloads.workload import Workload

#: Strategy tables: ``{kind: {"name": ..., <param>: ...}}``.
Tables = Mapping[str, Mapping[str, Any]]

#: Strategies offered on the page, each at its paper's default parameters.
PRESETS: tuple[dict[str, dict[str, Any]], ...] = (
    {"quantization": {"name": "fp16"}},
    {"quantization": {"name": "fp8"}},
    {"quantization": {"name": "int8"}},
    {"quantization": {"name": "int4"}},
    {"quantization": {"name": "kivi"}},
    {"selection": {"name": "streaming_llm"}},
    {"selection": {"name": "h2o"}},
    {"selection": {"name": "snapkv"}},
    {"selection": {"name": "snapkv"}, "quantization": {"name": "fp8"}},
    {"selection": {"name": "quest"}},
    {"low_rank": {"name": "palu"}},
    {"merging": {"name": "minicache"}},
)
#: Labels of the presets selected when the page opens.
DEFAULT_PRESETS = ("fp16", "fp8", "int8", "int4")
LOSSLESS = "lossless"
UNKNOWN = "unknown"
MB = 1e6

#: Columns of :func:`comparison_frame`; the Pareto chart's x axes: (column, lower is better).
X_AXES: dict[str, tuple[str, bool]] = {
    "cost (USD per 1M output tokens)": ("USD per 1M output tokens", True),
    "KV per request (MB)": ("KV per request (MB)", True),
    "output throughput (tokens/s)": ("output tokens/s", False),
}


def label(tables: Tables) -> str:
    """A strategy's name: its policies in acting order, each with the parameters its table
    sets, e.g. ``snapkv(budget_tokens=1024) + fp8``; the full fp16 cache is ``fp16``."""
    parts = []
    for kind in STRATEGY_KINDS:
        table = tables.get(kind)
        if table is None:
            continue
        params = ", ".join(f"{k}={v}" for k, v in table.items() if k != "name")
        parts.append(str(table["name"]) + (f"({params})" if params else ""))
    return " + ".join(parts) or "fp16"


def parse_params(text: str, kind: str) -> dict[str, Any]:
    """``"budget_fraction = 0.2, recent_fraction = 0.5"`` (the body of a TOML inline
    table) as a dict; empty text is no parameters."""
    if not text.strip():
        return {}
    try:
        return tomllib.loads(f"v = {{ {text} }}")["v"]
    except tomllib.TOMLDecodeError as err:
        raise KvsimError(
            f"expected TOML key = value pairs separated by commas, got {text!r} ({err})",
            field=f"policies.{kind}",
        ) from None


def strategy_scenario(base: Mapping[str, Any], tables: Tables) -> dict[str, Any]:
    """``base`` with its strategy tables replaced by ``tables`` (other policy tables kept);
    the quantization table is always written (``fp16`` when ``tables`` has none), as the
    What-if page writes it, so the same scenario has the same hash on both pages."""
    data = copy.deepcopy(dict(base))
    policies = {k: v for k, v in data.get("policies", {}).items() if k not in STRATEGY_KINDS}
    for kind in STRATEGY_KINDS:
        if kind in tables:
            policies[kind] = copy.deepcopy(dict(tables[kind]))
    policies.setdefault("quantization", {"name": "fp16"})
    data["policies"] = policies
    return data


def kv_memory(
    strategy: KvStrategy, model: ModelSpec, workload: Workload, block_tokens: int
) -> dict[str, float]:
    """Mean KV bytes per request at its final context (prompt + output − 1 tokens) under
    ``strategy`` and under the full fp16 cache, both at ``block_tokens`` block granularity,
    and their ratio (of the sums, so long requests weigh by their bytes)."""
    prompt = workload.prompt_tokens
    context = prompt + workload.output_tokens - 1
    kv = strategy.kv_bytes(model, context, prompt, block_tokens)
    physical = float(np.mean(kv.physical_bytes))
    full = float(np.mean(kv.full_physical_bytes))
    return {
        "kv_bytes_per_request": physical,
        "full_bytes_per_request": full,
        "ratio": physical / full,
    }


def quality(
    strategy: KvStrategy, model_id: str, table: QualityTable | None = None
) -> tuple[str, float | None]:
    """``(label, retained fraction)`` of ``strategy`` on ``model_id`` (module docstring)."""
    entries = strategy.quality(model_id, table)
    if not entries:
        return LOSSLESS, 1.0
    if len(entries) == 1:
        (entry,) = entries.values()
        if entry is not None and entry.baseline:
            return entry.label(), entry.value / entry.baseline
    return UNKNOWN, None


def strategy_row(
    name: str,
    memory: Mapping[str, float] | None,
    quality_of: tuple[str, float | None],
    summary: Mapping[str, Any] | None,
    error: str | None = None,
) -> dict[str, Any]:
    """One row of :func:`comparison_frame`; ``memory`` or ``summary`` is None when that
    part failed (``error`` says why)."""
    got = summary or {}
    return {
        "strategy": name,
        "status": "ok" if error is None else error,
        "KV per request (MB)": None if memory is None else memory["kv_bytes_per_request"] / MB,
        "KV vs full fp16": None if memory is None else memory["ratio"],
        "KV memory saved": got.get("kv_physical_savings"),
        "KV dropped from view": got.get("kv_logical_savings"),
        "KV peak (GB)": _scaled(got.get("kv_peak_bytes"), 1e9),
        "output tokens/s": got.get("throughput_tok_per_s"),
        "TTFT p90 (s)": got.get("ttft_p90_s"),
        "TPOT p90 (s)": got.get("tpot_p90_s"),
        "E2E p90 (s)": got.get("e2e_p90_s"),
        "goodput (req/s)": got.get("goodput_req_per_s"),
        "USD per 1M output tokens": got.get("usd_per_m_output_tokens"),
        "SLO attainment": got.get("slo_attainment"),
        "quality": quality_of[0],
        "quality retained": quality_of[1],
    }


def _scaled(value: Any, scale: float) -> float | None:
    return None if value is None else float(value) / scale


def comparison_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The rows of :func:`strategy_row`, one per strategy, in the order given."""
    return pd.DataFrame(list(rows))


def pareto_flags(x: np.ndarray, y: np.ndarray, x_lower_is_better: bool) -> np.ndarray:
    """Per point: no other point is at least as good in ``x`` and in ``y`` (higher is
    better) and strictly better in one. Points with a NaN coordinate are never flagged."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    gx = -x if x_lower_is_better else x  # "goodness": higher is better on both axes
    valid = np.isfinite(gx) & np.isfinite(y)
    flags = np.zeros(x.size, dtype=bool)
    for i in np.flatnonzero(valid):
        others = valid.copy()
        others[i] = False
        dominated = others & (gx >= gx[i]) & (y >= y[i]) & ((gx > gx[i]) | (y > y[i]))
        flags[i] = not dominated.any()
    return flags


def with_pareto(frame: pd.DataFrame, axis: str) -> pd.DataFrame:
    """``frame`` with a ``Pareto`` column over (``axis`` of :data:`X_AXES`, quality
    retained); strategies of unknown quality are never in the set."""
    column, lower = X_AXES[axis]
    flags = pareto_flags(
        frame[column].to_numpy(float), frame["quality retained"].to_numpy(float), lower
    )
    return frame.assign(Pareto=flags)
