"""The scenario: one validated, frozen description of a simulation run.

A :class:`Scenario` names the model, the hardware (accelerator, TP/PP, replicas, memory
tiers), the workload (a trace file or a synthetic spec), the scheduler limits, the KV
policies, the router, optional prefill/decode disaggregation, the SLOs, the seed and the
duration. It is loaded from TOML (:func:`load_scenario`), built from a dict
(:meth:`Scenario.from_dict`) or from the section dataclasses directly, and overridden with
``--set a.b=c`` (:func:`apply_overrides`). Every key is checked: an unknown key or section is a
:class:`~hardware.errors.KvsimError` naming the file, line and dotted key path with the closest
valid key, e.g. ``scenario.toml:9: scheduler.max_num_seq: unknown key (did you mean
max_num_seqs?)``. The schema, with a complete example, is documented in ``docs/scenario.md``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hardware.errors import KvsimError
from sim.metrics import SloClass
from sim.policies.compose import STRATEGY_KINDS, KvStrategy
from sim.policies.registry import policy_class, policy_from_table
from sim.router import ROUTER_PARAMS, RouterSpec, router_spec
from sim.router import ROUTERS as _ROUTER_SPECS
from sim.scheduling import ADMISSION_MODES, QueuePolicy, queue_policy
from workloads.model import ModelSpec
from workloads.workload import Workload

#: Router names :mod:`sim.router` implements.
ROUTERS = tuple(_ROUTER_SPECS)
#: Preemption modes of the scheduler: vLLM's recompute and swap, and the cheaper of the two
#: per victim (:mod:`sim.scheduling`).
PREEMPTION_MODES = ("recompute", "swap", "cost")
#: ``[scheduler]`` keys that set a queue policy's parameter: key -> (policy, parameter).
QUEUE_POLICY_KEYS = {
    "length_predictor": ("sjf", "predictor"),
    "predictor_sigma": ("sjf", "sigma"),
    "lpm_fcfs_threshold": ("lpm", "fcfs_threshold"),
    "fair_input_weight": ("fair", "input_weight"),
    "fair_output_weight": ("fair", "output_weight"),
}
#: Prefix-cache index kinds: vLLM's block-hash table, SGLang's radix tree.
PREFIX_CACHE_KINDS = ("hash", "radix")
#: Plain KV storage dtypes among the quantization policies (no parameters needed).
KV_DTYPE_QUANTIZATIONS = ("fp16", "bf16", "fp8", "int8", "int4")
#: Policy kinds whose tables a scenario may hold: the prefix cache, the kinds of a
#: :class:`~sim.policies.KvStrategy`, and where KV lives below HBM (``offload``).
POLICY_KINDS = ("prefix_cache", "selection", "quantization", "low_rank", "merging", "offload")
#: Keys whose values are file paths, resolved against the scenario file's folder.
PATH_KEYS = ("model.config", "workload.trace")


# ---- sections --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: a catalog id (``name``) or a Hugging Face ``config.json`` path
    (``config``), the dtypes of weights and tensor-core compute, and an optional
    ``architecture`` transform ("what if this model used GQA-2 / MLA / CLA-2":
    ``gqa<g>``, ``mqa``, ``mla[<rank>]``, ``cla<f>``, chained with ``+``;
    :func:`sim.policies.transform_model`)."""

    name: str | None = None
    config: str | None = None
    weight_dtype: str = "bf16"
    compute_dtype: str = "bf16"
    architecture: str | None = None

    def __post_init__(self) -> None:
        if (self.name is None) == (self.config is None):
            raise KvsimError("give exactly one of model.name or model.config", field="model")

    def spec(self) -> ModelSpec:
        """The catalog (or config.json) model with the ``architecture`` transform applied."""
        from sim.policies.architecture import transform_model
        from workloads.model_catalog import get_model

        model = get_model(self.ref)
        if self.architecture is None:
            return model
        try:
            return transform_model(model, self.architecture)
        except KvsimError as err:
            raise KvsimError(
                f"{err.message} (transform {self.architecture!r} of {model.id})"
            ) from None

    @property
    def ref(self) -> str:
        """What :func:`workloads.model_catalog.get_model` takes: the id or the path."""
        return self.name if self.name is not None else str(self.config)


@dataclass(frozen=True)
class HardwareConfig:
    """``[hardware]``: ``replicas`` copies of a ``tp × pp`` group of ``accelerator``, using
    ``gpu_memory_fraction`` of each GPU (vLLM's ``gpu_memory_utilization``); optional host and
    disk KV tiers (catalog ids) used by ``[policies.offload]``, with the bytes of each one
    replica may fill (``*_capacity_bytes``, default the catalog capacity);
    ``price_usd_per_hour`` overrides the catalog price per GPU."""

    accelerator: str
    tp: int = 1
    pp: int = 1
    replicas: int = 1
    gpu_memory_fraction: float = 0.9
    host_memory_tier: str | None = None
    disk_tier: str | None = None
    host_memory_capacity_bytes: int | None = None
    disk_capacity_bytes: int | None = None
    price_usd_per_hour: float | None = None

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "replicas"):
            _positive(getattr(self, name), f"hardware.{name}")
        for name, tier in (
            ("host_memory_capacity_bytes", "host_memory_tier"),
            ("disk_capacity_bytes", "disk_tier"),
        ):
            if getattr(self, name) is not None:
                _positive(getattr(self, name), f"hardware.{name}")
                if getattr(self, tier) is None:
                    raise KvsimError(f"needs hardware.{tier}", field=f"hardware.{name}")
        if not 0.0 < self.gpu_memory_fraction <= 1.0:
            raise KvsimError(
                f"must be in (0, 1], got {self.gpu_memory_fraction}",
                field="hardware.gpu_memory_fraction",
            )
        if self.price_usd_per_hour is not None and not self.price_usd_per_hour >= 0:
            raise KvsimError(
                f"must be >= 0, got {self.price_usd_per_hour}", field="hardware.price_usd_per_hour"
            )

    @property
    def gpus_per_replica(self) -> int:
        return self.tp * self.pp


@dataclass(frozen=True)
class WorkloadConfig:
    """``[workload]``: a trace file (``trace``, ``format``, ``time_scale``) or a synthetic spec
    (``synthetic``, the ``[workload.synthetic]`` table as given), or, from Python only, the
    requests themselves (``inline``)."""

    trace: str | None = None
    format: str | None = None
    time_scale: float = 1.0
    synthetic: tuple[tuple[str, Any], ...] | None = None
    inline: Workload | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        given = [self.trace is not None, self.synthetic is not None, self.inline is not None]
        if sum(given) != 1:
            raise KvsimError(
                "give exactly one of workload.trace or [workload.synthetic]", field="workload"
            )
        if not (self.time_scale > 0 and math.isfinite(self.time_scale)):
            raise KvsimError(f"must be > 0, got {self.time_scale}", field="workload.time_scale")
        if self.synthetic is not None and isinstance(self.synthetic, Mapping):
            object.__setattr__(self, "synthetic", _freeze_table(self.synthetic))

    @property
    def synthetic_spec(self) -> dict[str, Any] | None:
        """The synthetic table as a plain (nested) dict."""
        return None if self.synthetic is None else _thaw_table(self.synthetic)


@dataclass(frozen=True)
class SchedulerSection:
    """``[scheduler]``: vLLM's iteration-level limits. ``max_model_len`` defaults to the
    model's context length. ``policy`` orders the waiting queue (a registered ``scheduler``
    policy of :mod:`sim.scheduling`; its parameters are the keys of :data:`QUEUE_POLICY_KEYS`, each allowed only with its
    policy), ``admission`` is ``none`` or ``reject`` (refuse requests whose TTFT SLO cannot
    be met), ``preemption`` one of :data:`PREEMPTION_MODES` (``docs/scheduling.md``);
    ``swap_space_bytes`` bounds the host memory that swapped-out KV may use per replica
    (vLLM's ``swap_space``; unbounded when absent)."""

    max_num_seqs: int = 256
    max_batched_tokens: int = 8192
    chunked_prefill: bool = True
    block_tokens: int = 16
    preemption: str = "recompute"
    max_model_len: int | None = None
    policy: str = "fcfs"
    length_predictor: str | None = None
    predictor_sigma: float | None = None
    lpm_fcfs_threshold: int | None = None
    fair_input_weight: float | None = None
    fair_output_weight: float | None = None
    admission: str = "none"
    swap_space_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_batched_tokens", "block_tokens"):
            _positive(getattr(self, name), f"scheduler.{name}")
        if self.swap_space_bytes is not None:
            _positive(self.swap_space_bytes, "scheduler.swap_space_bytes")
        if self.max_model_len is not None:
            _positive(self.max_model_len, "scheduler.max_model_len")
        for name, options in (
            ("preemption", PREEMPTION_MODES),
            ("admission", ADMISSION_MODES),
        ):
            if getattr(self, name) not in options:
                raise KvsimError(
                    f"must be one of {', '.join(options)}, got {getattr(self, name)!r}",
                    field=f"scheduler.{name}",
                )
        self.queue_policy()

    def queue_policy(self) -> QueuePolicy:
        """The ``policy`` with its parameters; a parameter key of another policy is an
        error naming it."""
        try:
            policy_class("scheduler", self.policy)
        except KvsimError as err:
            raise KvsimError(err.message, field="scheduler.policy") from None
        params = {}
        for key, (policy, param) in QUEUE_POLICY_KEYS.items():
            value = getattr(self, key)
            if value is None:
                continue
            if policy != self.policy:
                raise KvsimError(
                    f"applies to policy = {policy!r}, not {self.policy!r}",
                    field=f"scheduler.{key}",
                )
            params[param] = value
        try:
            return queue_policy(self.policy, **params)
        except KvsimError as err:
            keys = {param: key for key, (_, param) in QUEUE_POLICY_KEYS.items()}
            field = err.field.rpartition(".")[2] if err.field else ""
            raise KvsimError(err.message, field=f"scheduler.{keys.get(field, 'policy')}") from None


@dataclass(frozen=True)
class PolicyTable:
    """One ``[policies.<kind>]`` table: the policy ``name`` and its other keys as ``params``
    (sorted ``(key, value)`` pairs, so the scenario stays hashable and picklable)."""

    kind: str
    name: str
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, key: str, default: Any = None) -> Any:
        return dict(self.params).get(key, default)


@dataclass(frozen=True)
class SloConfig:
    """``[slo]``: per-request latency targets in seconds, named after the percentile they
    bound (DistServe, Zhong et al. OSDI 2024): a run meets the SLO when the p90 of each
    metric is within its target; a request counts toward goodput when each of its own
    metrics is."""

    ttft_p90_s: float | None = None
    tpot_p90_s: float | None = None
    e2e_p90_s: float | None = None
    #: Priority classes with their own targets (``[slo.classes.<name>]`` tables with a
    #: ``priority`` and any of the three targets); per-class metrics, admission control.
    classes: tuple[SloClass, ...] = ()

    def __post_init__(self) -> None:
        for name in ("ttft_p90_s", "tpot_p90_s", "e2e_p90_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise KvsimError(f"must be > 0, got {value}", field=f"slo.{name}")
        seen: dict[int, str] = {}
        for item in self.classes:
            if item.priority in seen:
                raise KvsimError(
                    f"priority {item.priority} is already class {seen[item.priority]!r}",
                    field=f"slo.classes.{item.name}.priority",
                )
            seen[item.priority] = item.name

    def ttft_targets_s(self) -> dict[int, float]:
        """Each class's TTFT target by priority (classes without one left out)."""
        return {c.priority: c.ttft_p90_s for c in self.classes if c.ttft_p90_s is not None}


@dataclass(frozen=True)
class RouterConfig:
    """``[router]``: how the cluster picks a replica for each request (:mod:`sim.router`);
    ``balance_abs_threshold`` / ``balance_rel_threshold`` tune ``session_affinity``'s
    overload test (only with that router)."""

    name: str = "round_robin"
    balance_abs_threshold: int | None = None
    balance_rel_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.name not in ROUTERS:
            raise KvsimError(
                f"unknown router {self.name!r}; expected one of {', '.join(ROUTERS)}",
                field="router.name",
            )
        self.spec()

    def spec(self) -> RouterSpec:
        """The router with its parameters (:func:`sim.router.router_spec`)."""
        params = {
            key: getattr(self, key)
            for key in ("balance_abs_threshold", "balance_rel_threshold")
            if getattr(self, key) is not None
        }
        for key in params:
            if key not in ROUTER_PARAMS.get(self.name, ()):
                raise KvsimError(
                    f"applies to name = 'session_affinity', not {self.name!r}",
                    field=f"router.{key}",
                )
        return router_spec(self.name, **params)


@dataclass(frozen=True)
class DisaggregationConfig:
    """``[disaggregation]``: separate prefill and decode pools (DistServe, Splitwise); each
    request's KV moves from its prefill replica to a decode replica over ``link`` (a catalog
    link id), one link per prefill replica, shared by its concurrent transfers."""

    prefill_replicas: int
    decode_replicas: int
    link: str = "rdma-400g"

    def __post_init__(self) -> None:
        _positive(self.prefill_replicas, "disaggregation.prefill_replicas")
        _positive(self.decode_replicas, "disaggregation.decode_replicas")


@dataclass(frozen=True)
class Scenario:
    """Everything one simulation run needs. ``duration_s`` stops arrivals after that many
    simulated seconds (requests already admitted still finish); ``source`` is the file it was
    loaded from, if any, for error messages."""

    model: ModelConfig
    hardware: HardwareConfig
    workload: WorkloadConfig
    seed: int = 0
    name: str = "scenario"
    duration_s: float | None = None
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    policies: tuple[PolicyTable, ...] = ()
    slo: SloConfig = field(default_factory=SloConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    disaggregation: DisaggregationConfig | None = None
    source: str | None = field(default=None, compare=False)
    base_dir: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise KvsimError(f"must be an integer >= 0, got {self.seed!r}", field="seed")
        if self.duration_s is not None and not self.duration_s > 0:
            raise KvsimError(f"must be > 0, got {self.duration_s}", field="duration_s")
        kinds = [p.kind for p in self.policies]
        if len(set(kinds)) != len(kinds):
            raise KvsimError("a policy kind appears twice", field="policies")
        for policy in self.policies:
            _check_policy(policy)
        _strategy(self.policies)
        self._check_offload()
        split = self.disaggregation
        if split is not None:
            total = split.prefill_replicas + split.decode_replicas
            if self.hardware.replicas not in (1, total):
                raise KvsimError(
                    f"hardware.replicas = {self.hardware.replicas} but disaggregation has "
                    f"{split.prefill_replicas} + {split.decode_replicas} replicas",
                    field="hardware.replicas",
                )

    def _check_offload(self) -> None:
        """An offload policy needs the tiers it uses; the prefix store needs hash prefix
        caching; neither runs under disaggregation."""
        offload = self.offload_policy()
        if offload is None:
            return
        offload.check_tiers(self.hardware.host_memory_tier, self.hardware.disk_tier)
        if offload.name == "prefix_store" and self.prefix_caching != "hash":
            raise KvsimError(
                "prefix_store extends the hash prefix cache: set [policies.prefix_cache] "
                'enabled = true, kind = "hash"',
                field="policies.offload.name",
            )
        if self.disaggregation is not None:
            raise KvsimError(
                "offload policies are not supported with disaggregation",
                field="policies.offload.name",
            )

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], base_dir: str | Path | None = None, source: str | None = None
    ) -> Scenario:
        """Validate a (TOML-shaped) dict; relative paths resolve against ``base_dir``."""
        return _build(data, Path(base_dir) if base_dir is not None else None, source, None)

    def to_dict(self) -> dict[str, Any]:
        """The TOML-shaped dict this scenario round-trips through (``inline`` requests are
        not representable and are left out)."""
        out: dict[str, Any] = {"seed": self.seed, "name": self.name}
        if self.duration_s is not None:
            out["duration_s"] = self.duration_s
        for key in ("model", "hardware", "scheduler", "slo", "router", "disaggregation"):
            section = getattr(self, key)
            if section is not None:
                out[key] = _section_dict(section)
        classes = out["slo"].pop("classes", ())
        if classes:
            out["slo"]["classes"] = {
                c.name: {k: v for k, v in _section_dict(c).items() if k != "name"} for c in classes
            }
        workload = _section_dict(self.workload)
        workload.pop("inline", None)
        if self.workload.synthetic is not None:
            workload["synthetic"] = self.workload.synthetic_spec
        out["workload"] = workload
        if self.policies:
            out["policies"] = {
                p.kind: ({} if p.kind == "prefix_cache" else {"name": p.name})
                | _thaw_table(p.params)
                for p in self.policies
            }
        return out

    def with_overrides(self, overrides: Iterable[str]) -> Scenario:
        """A copy with ``a.b=c`` overrides applied and re-validated."""
        overrides = list(overrides)
        data = apply_overrides(self.to_dict(), overrides)
        keys = [item.partition("=")[0].strip() for item in overrides]
        base_dir = Path(self.base_dir) if self.base_dir else None
        return _build(data, base_dir, self.source, None, keys, inline=self.workload.inline)

    # ---- derived settings ----------------------------------------------------------------
    def policy(self, kind: str) -> PolicyTable | None:
        for item in self.policies:
            if item.kind == kind:
                return item
        return None

    def offload_policy(self) -> Any:
        """The ``[policies.offload]`` policy object (:mod:`sim.policies.offload`), or None."""
        table = self.policy("offload")
        if table is None:
            return None
        return policy_from_table("offload", {"name": table.name, **_thaw_table(table.params)})

    @property
    def kv_dtype(self) -> str:
        """Name of the ``[policies.quantization]`` policy (``fp16`` when there is none)."""
        quant = self.policy("quantization")
        return quant.name if quant is not None else "fp16"

    def kv_strategy(self) -> KvStrategy:
        """The ``[policies.selection|quantization|low_rank|merging]`` tables as one
        :class:`~sim.policies.KvStrategy` (full fp16 cache where a kind is absent)."""
        return _strategy(self.policies)

    @property
    def prefix_caching(self) -> str:
        """``"none"``, or the index kind (``"hash"`` default, ``"radix"``) when
        ``[policies.prefix_cache] enabled = true``."""
        table = self.policy("prefix_cache")
        if table is None or not table.param("enabled", True):
            return "none"
        return str(table.param("kind", "hash"))

    @property
    def num_replicas(self) -> int:
        split = self.disaggregation
        if split is not None:
            return split.prefill_replicas + split.decode_replicas
        return self.hardware.replicas

    @property
    def num_gpus(self) -> int:
        return self.num_replicas * self.hardware.gpus_per_replica


# ---- loading ---------------------------------------------------------------------------------
def load_scenario(path: str | Path, overrides: Iterable[str] = ()) -> Scenario:
    """Read a scenario TOML file, apply ``overrides`` (``a.b=c``) and validate it. Relative
    paths in the file resolve against its folder; relative paths given as overrides resolve
    against the current directory, where the user typed them."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KvsimError("scenario file not found", source=source) from None
    except OSError as err:
        raise KvsimError(f"cannot read scenario file: {err.strerror}", source=source) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message, line = _toml_error(err)
        raise KvsimError(f"malformed TOML: {message}", source=source, line=line) from None
    overrides = list(overrides)
    data = apply_overrides(data, overrides)
    for item in overrides:
        key, _, _ = item.partition("=")
        key = key.strip()
        if key in PATH_KEYS and _get_path(data, key) is not None:
            value = Path(str(_get_path(data, key)))
            if not value.is_absolute():
                _set_path(data, key, str(Path.cwd() / value))
    keys = [item.partition("=")[0].strip() for item in overrides]
    return _build(data, path.resolve().parent, source, _key_lines(text), keys)


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A deep copy of ``data`` with each ``a.b.c=value`` set. ``value`` is parsed as a TOML
    literal (``4``, ``0.5``, ``true``, ``"x"``, ``[1, 2]``, ``{ dist = "fixed", value = 8 }``)
    and taken as a plain string when it is not one (``hardware.accelerator=h100-sxm``)."""
    out = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise KvsimError(f"expected KEY=VALUE with a dotted key, got {item!r}", field="--set")
        _set_path(out, key, _parse_literal(raw.strip()))
    return out


def _parse_literal(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _set_path(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise KvsimError(
                f"cannot set {key}: {'.'.join(parts[: depth + 1])} is not a table", field="--set"
            )
        node = child
    node[parts[-1]] = value


def _get_path(data: Mapping[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


# ---- validation ------------------------------------------------------------------------------
_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "hardware": HardwareConfig,
    "workload": WorkloadConfig,
    "scheduler": SchedulerSection,
    "slo": SloConfig,
    "router": RouterConfig,
    "disaggregation": DisaggregationConfig,
}
_TOP_KEYS = ("seed", "name", "duration_s", "policies", *_SECTIONS)
_REQUIRED_SECTIONS = ("model", "hardware", "workload")
#: Keys the TOML form may not set (Python-only fields).
_HIDDEN_KEYS = {"workload": {"inline"}}


class _Context:
    """Where errors point: the source file and the line of each dotted key."""

    def __init__(
        self,
        source: str | None,
        lines: Mapping[str, int] | None,
        overridden: Iterable[str] = (),
    ) -> None:
        self.source = source
        self.lines = lines or {}
        self.overridden = tuple(overridden)

    def error(self, key: str, message: str) -> KvsimError:
        if any(key == o or key.startswith(f"{o}.") for o in self.overridden):
            return KvsimError(message, source=f"{self.source or 'scenario'} --set", field=key)
        line = None
        probe = key
        while probe and line is None:
            line = self.lines.get(probe)
            probe = probe.rpartition(".")[0]
        return KvsimError(message, source=self.source, line=line, field=key)

    def unknown(self, key: str, valid: Iterable[str]) -> KvsimError:
        name = key.rpartition(".")[2]
        close = difflib.get_close_matches(name, list(valid), n=1)
        hint = f" (did you mean {close[0]}?)" if close else f"; expected one of {', '.join(valid)}"
        return self.error(key, f"unknown key{hint}")


def _build(
    data: Mapping[str, Any],
    base_dir: Path | None,
    source: str | None,
    lines: Mapping[str, int] | None,
    overridden: Iterable[str] = (),
    inline: Workload | None = None,
) -> Scenario:
    ctx = _Context(source, lines, overridden)
    if not isinstance(data, Mapping):
        raise ctx.error("", "a scenario must be a table")
    for key in data:
        if key not in _TOP_KEYS:
            raise ctx.unknown(str(key), _TOP_KEYS)
    for key in _REQUIRED_SECTIONS:
        if key not in data:
            raise ctx.error(key, f"missing required section [{key}]")
    values: dict[str, Any] = {}
    for key in ("seed", "name", "duration_s"):
        if key in data:
            values[key] = _check_type(ctx, key, data[key], Scenario)
    sections: dict[str, Any] = {}
    for key, cls in _SECTIONS.items():
        if key in data:
            table = _resolve_paths(data[key], key, base_dir, ctx)
            if (
                key == "workload"
                and inline is not None
                and not {"trace", "synthetic"} & table.keys()
            ):
                table["inline"] = inline
            sections[key] = _section(ctx, key, table, cls)
    policies = _policies(ctx, data.get("policies", {}))
    try:
        scenario = Scenario(
            **values,
            **sections,
            policies=policies,
            source=source,
            base_dir=str(base_dir) if base_dir is not None else None,
        )
    except KvsimError as err:
        raise ctx.error(err.field or "", err.message) from None
    _check_catalog(ctx, scenario)
    return scenario


def _resolve_paths(table: Any, section: str, base_dir: Path | None, ctx: _Context) -> Any:
    if not isinstance(table, Mapping):
        raise ctx.error(section, f"must be a table, got {type(table).__name__}")
    table = dict(table)
    for dotted in PATH_KEYS:
        head, _, key = dotted.partition(".")
        if head == section and isinstance(table.get(key), str) and base_dir is not None:
            path = Path(table[key]).expanduser()
            if not path.is_absolute():
                path = base_dir / path
            table[key] = str(path)
    return table


def _section(ctx: _Context, key: str, table: Mapping[str, Any], cls: type) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in _HIDDEN_KEYS.get(key, ())]
    kwargs: dict[str, Any] = {}
    for name, value in table.items():
        dotted = f"{key}.{name}"
        if key == "workload" and name == "inline" and isinstance(value, Workload):
            kwargs[name] = value
            continue
        if name not in names:
            raise ctx.unknown(dotted, names)
        if key == "workload" and name == "synthetic":
            if not isinstance(value, Mapping):
                raise ctx.error(dotted, f"must be a table, got {type(value).__name__}")
            kwargs[name] = _freeze_table(value)
            continue
        if key == "slo" and name == "classes":
            kwargs[name] = _slo_classes(ctx, value)
            continue
        kwargs[name] = _check_type(ctx, dotted, value, cls, hints[name])
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in kwargs
    ]
    if missing:
        raise ctx.error(f"{key}.{missing[0]}", "is required")
    try:
        return cls(**kwargs)
    except KvsimError as err:
        raise ctx.error(err.field or key, err.message) from None


def _slo_classes(ctx: _Context, table: Any) -> tuple[SloClass, ...]:
    """``[slo.classes.<name>]`` tables -> :class:`~sim.metrics.SloClass` objects, sorted by
    priority (most important first)."""
    if not isinstance(table, Mapping):
        raise ctx.error("slo.classes", f"must be a table of tables, got {type(table).__name__}")
    out = []
    for name, body in table.items():
        dotted = f"slo.classes.{name}"
        if not isinstance(body, Mapping):
            raise ctx.error(dotted, f"must be a table, got {type(body).__name__}")
        keys = [f.name for f in dataclasses.fields(SloClass) if f.name != "name"]
        hints = typing.get_type_hints(SloClass)
        kwargs: dict[str, Any] = {"name": str(name)}
        for key, value in body.items():
            if key not in keys:
                raise ctx.unknown(f"{dotted}.{key}", keys)
            kwargs[key] = _check_type(ctx, f"{dotted}.{key}", value, SloClass, hints[key])
        if "priority" not in kwargs:
            raise ctx.error(f"{dotted}.priority", "is required: the workload priority it covers")
        try:
            out.append(SloClass(**kwargs))
        except KvsimError as err:
            raise ctx.error(f"{dotted}.{err.field}", err.message) from None
    return tuple(sorted(out, key=lambda c: -c.priority))


def _check_type(ctx: _Context, dotted: str, value: Any, cls: type, hint: Any = None) -> Any:
    if hint is None:
        hint = typing.get_type_hints(cls)[dotted.rpartition(".")[2]]
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ctx.error(dotted, f"must be a finite number, got {value}")
            return float(value)
        if option is str and isinstance(value, str):
            return value
    expected = " or ".join(_type_name(o) for o in options if o is not type(None))
    raise ctx.error(dotted, f"must be {expected}, got {type(value).__name__} {value!r}")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _type_name(option: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        option, getattr(option, "__name__", str(option))
    )


def _policies(ctx: _Context, table: Any) -> tuple[PolicyTable, ...]:
    if not isinstance(table, Mapping):
        raise ctx.error("policies", f"must be a table of tables, got {type(table).__name__}")
    out = []
    for kind in sorted(table):
        body = table[kind]
        dotted = f"policies.{kind}"
        if kind not in POLICY_KINDS:
            raise ctx.unknown(dotted, POLICY_KINDS)
        if not isinstance(body, Mapping):
            raise ctx.error(dotted, f"must be a table, got {type(body).__name__}")
        body = dict(body)
        if kind == "prefix_cache":
            name = "prefix_cache"
            for key in body:
                if key not in ("enabled", "kind"):
                    raise ctx.unknown(f"{dotted}.{key}", ("enabled", "kind"))
            if not isinstance(body.get("enabled", True), bool):
                raise ctx.error(f"{dotted}.enabled", "must be true or false")
            if body.get("kind", "hash") not in PREFIX_CACHE_KINDS:
                raise ctx.error(
                    f"{dotted}.kind",
                    f"must be one of {', '.join(PREFIX_CACHE_KINDS)}, got {body['kind']!r}",
                )
        else:
            name = body.pop("name", None)
            if not isinstance(name, str):
                raise ctx.error(f"{dotted}.name", "is required: the policy's registered name")
        policy = PolicyTable(kind=kind, name=name, params=_freeze_table(body))
        try:
            _check_policy(policy)
        except KvsimError as err:
            raise ctx.error(err.field or dotted, err.message) from None
        out.append(policy)
    return tuple(out)


def _strategy(policies: tuple[PolicyTable, ...]) -> KvStrategy:
    tables = {
        p.kind: {"name": p.name, **dict(p.params)} for p in policies if p.kind in STRATEGY_KINDS
    }
    return KvStrategy.from_tables(tables)


def _check_policy(policy: PolicyTable) -> None:
    """Build the policy from the registry now, so an unknown name or parameter is reported
    against the scenario (the registry's error names the parameter)."""
    if policy.kind in STRATEGY_KINDS or policy.kind == "offload":
        try:
            policy_from_table(policy.kind, {"name": policy.name, **dict(policy.params)})
        except KvsimError as err:
            field = err.field or "name"
            if not field.startswith("policies."):
                field = f"policies.{policy.kind}.{field}"
            raise KvsimError(err.message, field=field) from None


def _check_catalog(ctx: _Context, scenario: Scenario) -> None:
    """Resolve every catalog id now, so a typo is reported against the scenario file."""
    from hardware.catalog import get_accelerator, get_link, get_tier
    from workloads.model_catalog import get_model

    checks = [
        ("model.config" if scenario.model.config else "model.name", get_model, scenario.model.ref),
        ("model.architecture", lambda _: scenario.model.spec(), None),
        ("hardware.accelerator", get_accelerator, scenario.hardware.accelerator),
    ]
    for key, getter in (("host_memory_tier", get_tier), ("disk_tier", get_tier)):
        value = getattr(scenario.hardware, key)
        if value is not None:
            checks.append((f"hardware.{key}", getter, value))
    if scenario.disaggregation is not None:
        checks.append(("disaggregation.link", get_link, scenario.disaggregation.link))
    for key, getter, value in checks:
        try:
            getter(value)
        except KvsimError as err:
            raise ctx.error(key, str(err)) from None
    if scenario.workload.trace is not None and not Path(scenario.workload.trace).is_file():
        raise ctx.error("workload.trace", f"trace file not found: {scenario.workload.trace}")


# ---- helpers ---------------------------------------------------------------------------------
def _positive(value: Any, key: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise KvsimError(f"must be a positive integer, got {value!r}", field=key)


def _freeze_table(table: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((str(k), _freeze_value(v)) for k, v in table.items()))


def _freeze_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return ("__table__", _freeze_table(value))
    if isinstance(value, list):
        return ("__array__", tuple(_freeze_value(v) for v in value))
    return value


def _thaw_table(items: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    return {k: _thaw_value(v) for k, v in items}


def _thaw_value(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__table__":
        return _thaw_table(value[1])
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__array__":
        return [_thaw_value(v) for v in value[1]]
    return value


def _section_dict(section: Any) -> dict[str, Any]:
    return {
        f.name: getattr(section, f.name)
        for f in dataclasses.fields(section)
        if getattr(section, f.name) is not None and f.name != "synthetic"
    }


_TABLE_RE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\s*(#.*)?$")
_KEY_RE = re.compile(r"^\s*([A-Za-z0-9_\-.]+)\s*=")


def _key_lines(text: str) -> dict[str, int]:
    """1-based line of each ``[table]`` header and ``key =`` line, by dotted path. Inline
    tables are attributed to the line of their key."""
    lines: dict[str, int] = {}
    table = ""
    for number, line in enumerate(text.splitlines(), start=1):
        header = _TABLE_RE.match(line)
        if header:
            table = header.group(1).replace('"', "").replace(" ", "")
            lines.setdefault(table, number)
            continue
        key = _KEY_RE.match(line)
        if key:
            dotted = f"{table}.{key.group(1)}" if table else key.group(1)
            lines.setdefault(dotted, number)
    return lines


def _toml_error(err: tomllib.TOMLDecodeError) -> tuple[str, int | None]:
    text = str(err)
    match = re.search(r"\s*\(at line (\d+), column \d+\)$", text)
    if match:
        return text[: match.start()], int(match.group(1))
    return text, None
