"""The synthetic-workload spec and the generator that turns it into a :class:`Workload`.

A spec is the ``[workload.synthetic]`` table of a scenario (or the same dict from Python)::

    arrival = "gamma"          # poisson | gamma | weibull | mmpp | diurnal | rate_table
    rate_per_s = 4.0
    cv = 2.0
    requests = 2000            # and/or duration_s; generation stops at whichever comes first
    prompt_tokens = { dist = "lognormal", median = 1000, sigma = 0.8 }
    output_tokens = { dist = "lognormal", median = 150, sigma = 0.8 }
    max_context_tokens = 8192  # optional: prompt + output <= this

    [workload.synthetic.prefix]
    kind = "system_prompt"     # none | system_prompt | rag | multi_turn | agent
    prompt_tokens = 2048
    share = 0.5

Everything random comes from the one ``np.random.Generator`` passed to :func:`generate`, so
the same seed gives the same workload. See ``docs/workloads_synthetic.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hardware.errors import KvsimError
from workloads.synthetic.arrivals import ArrivalProcess, RateTableArrivals, parse_arrival
from workloads.synthetic.blocks import block_ids
from workloads.synthetic.distributions import Distribution, parse_distribution
from workloads.synthetic.fields import Fields, fail
from workloads.synthetic.layout import clip_to_context, request_layout, session_layout
from workloads.synthetic.prefix import (
    AgentPrefix,
    MultiTurnPrefix,
    NoPrefix,
    PrefixSpec,
    parse_prefix,
)
from workloads.workload import Workload


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. ``requests`` and/or ``duration_s`` bound it (whichever is reached
    first); with sessions (``multi_turn``, ``agent``) the arrival process gives session starts
    and ``requests`` counts all turns. ``prompt_tokens`` is each request's own new tokens;
    prefix kinds put shared or history tokens in front of them."""

    arrival: ArrivalProcess
    prompt_tokens: Distribution
    output_tokens: Distribution
    requests: int | None = None
    duration_s: float | None = None
    prefix: PrefixSpec = field(default_factory=NoPrefix)
    max_context_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.requests is None and self.duration_s is None:
            raise KvsimError("a synthetic workload needs requests or duration_s", field="requests")

    @classmethod
    def from_dict(
        cls,
        d: dict[str, Any],
        *,
        source: str = "workload.synthetic",
        base_dir: Path | None = None,
    ) -> SyntheticSpec:
        """Parse and validate a spec table; ``source`` is its dotted path, used in errors;
        ``base_dir`` resolves relative trace paths of empirical distributions."""
        fields = Fields(d, source, base_dir=base_dir)
        arrival = parse_arrival(fields)
        requests = fields.optional_integer("requests", ge=1)
        duration_s = fields.optional_number("duration_s", gt=0)
        if requests is None and duration_s is None:
            raise fail(fields.child("requests"), "give requests, duration_s or both")
        if (
            isinstance(arrival, RateTableArrivals)
            and duration_s is None
            and arrival.rates_per_s[-1] == 0
        ):
            raise fail(fields.child("duration_s"), "is required when the rate table ends at rate 0")

        def tokens(key: str) -> Distribution:
            return parse_distribution(
                fields.raw(key), fields.child(key), tokens=True, base_dir=base_dir
            )

        spec = cls(
            arrival=arrival,
            prompt_tokens=tokens("prompt_tokens"),
            output_tokens=tokens("output_tokens"),
            requests=requests,
            duration_s=duration_s,
            prefix=parse_prefix(
                fields.raw("prefix", {}), fields.child("prefix"), base_dir=base_dir
            ),
            max_context_tokens=fields.optional_integer("max_context_tokens", ge=2),
        )
        fields.done()
        return spec

    def scaled(self, factor: float) -> SyntheticSpec:
        """The same spec at ``factor`` times the arrival rate (session starts, for sessions)."""
        return replace(self, arrival=self.arrival.scaled(factor))


def generate(
    spec: SyntheticSpec,
    rng: np.random.Generator,
    *,
    max_context_tokens: int | None = None,
) -> Workload:
    """A workload drawn from ``spec``; ``max_context_tokens`` (the model's context) tightens
    the spec's own limit. Requests over the limit are clipped (prompt to ``context - 1``, then
    output to the rest); sessions end before the first later turn that would not fit."""
    limits = [c for c in (spec.max_context_tokens, max_context_tokens) if c is not None]
    context = min(limits) if limits else None
    if context is not None and context < 2:
        raise KvsimError(f"must be >= 2, got {context}", field="max_context_tokens")
    prefix = spec.prefix
    if isinstance(prefix, MultiTurnPrefix | AgentPrefix):
        layout = session_layout(
            prefix,
            spec.arrival,
            spec.prompt_tokens,
            spec.output_tokens,
            spec.requests,
            spec.duration_s,
            context,
            rng,
        )
    else:
        arrival_s = spec.arrival.sample(rng, spec.requests, spec.duration_s)
        own = spec.prompt_tokens.sample_tokens(rng, len(arrival_s))
        output = spec.output_tokens.sample_tokens(rng, len(arrival_s))
        layout = request_layout(prefix, arrival_s, own, output, rng)
    if context is not None:
        prompt, output = clip_to_context(layout.prompt_tokens, layout.output_tokens, context)
        layout = replace(layout, prompt_tokens=prompt, output_tokens=output)
    layout = layout.take(np.argsort(layout.arrival_s, kind="stable"))
    offsets, hashes = block_ids(layout, prefix.block_tokens)
    return Workload(
        arrival_s=layout.arrival_s,
        prompt_tokens=layout.prompt_tokens,
        output_tokens=layout.output_tokens,
        session_id=layout.session_id,
        prefix_offsets=offsets,
        prefix_hashes=hashes,
        prefix_block_tokens=prefix.block_tokens,
        name="synthetic",
        meta={"generator": "kvsim.synthetic"},
    )


def generate_workload(
    d: dict[str, Any],
    seed: int,
    *,
    max_context_tokens: int | None = None,
    base_dir: Path | None = None,
) -> Workload:
    """Parse ``d`` (a ``[workload.synthetic]`` table) and generate it with ``seed``."""
    spec = SyntheticSpec.from_dict(d, base_dir=base_dir)
    return generate(spec, np.random.default_rng(seed), max_context_tokens=max_context_tokens)
