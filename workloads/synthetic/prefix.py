"""Prefix structure of synthetic prompts: which leading tokens requests share.

Every prompt is modelled as the beginning of a *content stream*; two prompts share KV exactly
where their streams agree. The kinds:

- ``none``: every prompt is unique content.
- ``system_prompt``: a fraction ``share`` of requests start with one of ``num_prompts``
  system prompts (lengths drawn once each from ``prompt_tokens``; which one by Zipf
  popularity ``zipf_s``, 0 = uniform), followed by the request's own tokens.
- ``rag``: every request starts with an optional shared system prompt of
  ``system_prompt_tokens``, then one of ``documents`` documents (lengths drawn once each from
  ``document_tokens``) chosen by Zipf popularity ``zipf_s`` (Breslau et al. 1999 for web
  objects; the usual assumption for RAG corpora), then its own question tokens.
- ``multi_turn``: sessions of ``turns`` requests. Turn k's prompt is turn k-1's prompt plus
  its output plus the new user message (the top-level ``prompt_tokens``), so the context grows
  turn by turn; turn k arrives ``think_time_s`` after turn k-1 *arrived* (the response time is
  not added: it is unknown before simulation, so fold its expected value into
  ``think_time_s``). The arrival process gives the session starts.
- ``agent``: an agent loop of ``steps`` LLM calls per task: step 1's prompt is the shared tool
  description (``system_prompt_tokens``) plus the task (top-level ``prompt_tokens``); each later
  step appends the previous step's output (the action) and the tool's result
  (``tool_output_tokens``), and arrives ``tool_time_s`` after the previous step arrived.

``block_tokens`` (default 512, Mooncake's block) sets the granularity of the prefix block ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workloads.synthetic.distributions import Distribution, Fixed, parse_distribution
from workloads.synthetic.fields import Fields

PREFIX_KINDS = ("none", "system_prompt", "rag", "multi_turn", "agent")


@dataclass(frozen=True)
class NoPrefix:
    block_tokens: int = 512


@dataclass(frozen=True)
class SystemPromptPrefix:
    prompt_tokens: Distribution
    share: float = 1.0
    num_prompts: int = 1
    zipf_s: float = 0.0
    block_tokens: int = 512


@dataclass(frozen=True)
class RagPrefix:
    documents: int
    document_tokens: Distribution
    zipf_s: float = 1.0
    system_prompt_tokens: int = 0
    block_tokens: int = 512


@dataclass(frozen=True)
class MultiTurnPrefix:
    turns: Distribution
    think_time_s: Distribution
    system_prompt_tokens: int = 0
    block_tokens: int = 512


@dataclass(frozen=True)
class AgentPrefix:
    steps: Distribution
    tool_output_tokens: Distribution
    tool_time_s: Distribution = Fixed(1.0)
    system_prompt_tokens: int = 0
    block_tokens: int = 512


PrefixSpec = NoPrefix | SystemPromptPrefix | RagPrefix | MultiTurnPrefix | AgentPrefix
SessionPrefix = MultiTurnPrefix | AgentPrefix


def parse_prefix(value: object, path: str, *, base_dir: Path | None = None) -> PrefixSpec:
    """A prefix spec from the ``prefix`` table (``kind`` and that kind's keys)."""
    fields = Fields(value, path, base_dir=base_dir)
    kind = fields.string("kind", PREFIX_KINDS, "none")
    block = fields.integer("block_tokens", 512, ge=1)

    def tokens(key: str, default: object = None) -> Distribution:
        raw = fields.raw(key) if default is None else fields.raw(key, default)
        return parse_distribution(raw, fields.child(key), tokens=True, base_dir=base_dir)

    def seconds(key: str, default: object = None) -> Distribution:
        raw = fields.raw(key) if default is None else fields.raw(key, default)
        return parse_distribution(raw, fields.child(key), tokens=False, base_dir=base_dir)

    spec: PrefixSpec
    if kind == "none":
        spec = NoPrefix(block)
    elif kind == "system_prompt":
        spec = SystemPromptPrefix(
            prompt_tokens=tokens("prompt_tokens"),
            share=fields.number("share", 1.0, ge=0, le=1),
            num_prompts=fields.integer("num_prompts", 1, ge=1),
            zipf_s=fields.number("zipf_s", 0.0, ge=0),
            block_tokens=block,
        )
    elif kind == "rag":
        spec = RagPrefix(
            documents=fields.integer("documents", ge=1),
            document_tokens=tokens("document_tokens"),
            zipf_s=fields.number("zipf_s", 1.0, ge=0),
            system_prompt_tokens=fields.integer("system_prompt_tokens", 0, ge=0),
            block_tokens=block,
        )
    elif kind == "multi_turn":
        spec = MultiTurnPrefix(
            turns=tokens("turns"),
            think_time_s=seconds("think_time_s"),
            system_prompt_tokens=fields.integer("system_prompt_tokens", 0, ge=0),
            block_tokens=block,
        )
    else:
        spec = AgentPrefix(
            steps=tokens("steps"),
            tool_output_tokens=tokens("tool_output_tokens"),
            tool_time_s=seconds("tool_time_s", 1.0),
            system_prompt_tokens=fields.integer("system_prompt_tokens", 0, ge=0),
            block_tokens=block,
        )
    fields.done()
    return spec
