"""``kvsim quality``: perplexity, ΔNLL, KL divergence against the full cache and passkey
accuracy of a KV strategy on a real model (``sim/real/quality.py``; ``docs/real_mode.md``).

Each run writes its measured figures into the quality table the simulator reads
(``sim/policies/quality_table.toml``, or ``--table``) unless ``--no-write``: the perplexity and
full-cache perplexity, and with ``--passkey`` the passkey accuracy, for strategies with one
lossy policy (a table entry names one policy).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from hardware.errors import KvsimError
from sim.policies.compose import STRATEGY_KINDS, KvStrategy
from sim.policies.quality import TABLE_PATH, write_measured
from sim.policies.registry import list_policies

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEXT = Path("data") / "text" / "gpl-3.txt"
DEFAULT_MODEL_ID = "smollm2-135m"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quality",
        help="measure a KV strategy's perplexity, KL and passkey accuracy on a real model",
        description=__doc__.split("\n\n")[0],
    )
    what = parser.add_argument_group("strategy")
    what.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="NAME",
        help="a KV policy by name (repeat to compose one per kind: --policy snapkv --policy int4)",
    )
    what.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="[NAME.]KEY=VALUE",
        help='a policy parameter (TOML value: 256, 0.2, true, "max"); prefix NAME. when '
        "several policies have KEY",
    )
    what.add_argument("--sweep", action="store_true", help="run the default grid of policies")
    text = parser.add_argument_group("perplexity")
    text.add_argument(
        "--text", type=Path, help="UTF-8 text file (default ../shared/" + str(DEFAULT_TEXT) + ")"
    )
    text.add_argument("--tokens", type=int, help="use the first N tokens of the text (default all)")
    text.add_argument(
        "--prompt-tokens", type=int, default=None, help="prefilled prefix (default 1024)"
    )
    text.add_argument(
        "--chunk-tokens",
        type=int,
        default=None,
        help="decode chunk (default 64, 8 for h2o and tova; 1 = token by token)",
    )
    keys = parser.add_argument_group("passkey retrieval")
    keys.add_argument("--passkey", action="store_true", help="also measure passkey accuracy")
    keys.add_argument("--passkey-lengths", default="512,1024,2048", help="context lengths, tokens")
    keys.add_argument("--passkey-depths", default="0.1,0.5,0.9", help="depth fractions of the key")
    keys.add_argument("--seed", type=int, default=0, help="seed of the passkeys")
    run = parser.add_argument_group("model and output")
    run.add_argument("--model", help="GGUF file or Hugging Face directory (default SmolLM2-135M)")
    run.add_argument(
        "--model-id", help=f"model id in the quality table (default {DEFAULT_MODEL_ID})"
    )
    run.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    table = run.add_mutually_exclusive_group()
    table.add_argument(
        "--write-table",
        dest="write_table",
        action="store_true",
        default=True,
        help="write measured entries into the quality table (default)",
    )
    table.add_argument("--no-write", dest="write_table", action="store_false", help="do not write")
    run.add_argument("--table", type=Path, default=TABLE_PATH, help="quality table file to write")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run_quality)


# ---- arguments ---------------------------------------------------------------------------
def _kind_of(name: str) -> str:
    registered = list_policies()
    kinds = [k for k in STRATEGY_KINDS for n, _, _ in registered[k] if n == name]
    if not kinds:
        known = sorted(n for k in STRATEGY_KINDS for n, _, _ in registered[k])
        raise KvsimError(
            f"unknown policy {name!r}; expected one of {', '.join(known)}", field="policy"
        )
    return kinds[0]


def _value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def strategy_tables(names: list[str], params: list[str]) -> dict[str, dict[str, Any]]:
    """``--policy``/``--param`` arguments as scenario tables ``{kind: {"name": ..., ...}}``."""
    tables: dict[str, dict[str, Any]] = {}
    for name in names:
        kind = _kind_of(name)
        if kind in tables:
            raise KvsimError(
                f"two {kind} policies ({tables[kind]['name']}, {name}); compose one per kind",
                field="policy",
            )
        tables[kind] = {"name": name}
    registered = list_policies()
    defaults = {
        k: params for k in tables for n, _, params in registered[k] if n == tables[k]["name"]
    }
    for item in params:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise KvsimError(f"expected KEY=VALUE or NAME.KEY=VALUE, got {item!r}", field="param")
        owner, dot, key = key.rpartition(".")
        if dot:
            kinds = [k for k, t in tables.items() if t["name"] == owner]
            if not kinds:
                raise KvsimError(f"{owner!r} is not one of the --policy names", field="param")
        else:
            kinds = [k for k in tables if key in defaults[k]] or list(tables)[:1]
            if len(kinds) > 1:
                names_with = ", ".join(tables[k]["name"] for k in kinds)
                raise KvsimError(
                    f"{key!r} is a parameter of {names_with}; write NAME.{key}=...", field="param"
                )
        if not kinds:
            raise KvsimError("--param needs a --policy", field="param")
        tables[kinds[0]][key] = _value(raw)
    return tables


def _numbers(raw: str, kind: type, field: str) -> tuple[Any, ...]:
    try:
        return tuple(kind(x) for x in raw.split(",") if x.strip())
    except ValueError:
        raise KvsimError(f"expected comma-separated numbers, got {raw!r}", field=field) from None


def _text_path(given: Path | None) -> Path:
    if given is not None:
        if not given.is_file():
            raise KvsimError("no such text file", source=str(given), field="text")
        return given
    candidates = [os.environ.get("KVSIM_SHARED"), REPO_ROOT.parent / "shared", REPO_ROOT / "shared"]
    for candidate in candidates:
        if candidate and (Path(candidate) / DEFAULT_TEXT).is_file():
            return Path(candidate) / DEFAULT_TEXT
    raise KvsimError(
        f"no --text given and ../shared/{DEFAULT_TEXT} is not beside the checkout "
        "(set KVSIM_SHARED to the shared folder or pass --text FILE)",
        field="text",
    )


# ---- the command ---------------------------------------------------------------------------
def run_quality(args: argparse.Namespace) -> int:
    if not args.sweep and not args.policy:
        raise KvsimError("pass --policy NAME (repeatable) or --sweep", field="policy")
    if args.sweep and (args.policy or args.param):
        raise KvsimError("--sweep runs the default grid; drop --policy/--param", field="sweep")
    grid = _grid(args)
    text_path = _text_path(args.text)
    lengths = _numbers(args.passkey_lengths, int, "passkey_lengths")
    depths = _numbers(args.passkey_depths, float, "passkey_depths")
    import torch

    from sim.real import load_checkpoint, load_tokenizer
    from sim.real import quality as rq
    from sim.real.model import LlamaModel

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    model_id = args.model_id or (DEFAULT_MODEL_ID if args.model is None else Path(args.model).stem)
    tokenizer = load_tokenizer(args.model)
    checkpoint = load_checkpoint(args.model)
    model = LlamaModel.from_checkpoint(checkpoint)
    ids = tokenizer.encode(text_path.read_text(encoding="utf-8"))
    if args.tokens is not None:
        if args.tokens < 2:
            raise KvsimError(f"must be at least 2, got {args.tokens}", field="tokens")
        ids = ids[: args.tokens]
    prompt = rq.DEFAULT_PROMPT_TOKENS if args.prompt_tokens is None else args.prompt_tokens
    _say(f"{text_path.name}: {len(ids)} tokens; full-cache reference pass")
    reference = rq.full_reference(model, ids, progress=_bar(len(ids), "full cache"))
    baseline_keys = None
    if args.passkey:
        baseline_keys = rq.passkey(
            model,
            tokenizer,
            KvStrategy(),
            lengths=lengths,
            depths=depths,
            seed=args.seed,
            model_id=model_id,
            progress=_bar(len(lengths), "passkey, full cache", "length"),
        )
    rows = []
    for tables in grid:
        strategy = KvStrategy.from_tables(tables)
        result = rq.evaluate(
            model,
            strategy,
            reference,
            prompt_tokens=prompt,
            chunk_tokens=args.chunk_tokens,
            model_id=model_id,
            progress=_bar(len(ids), strategy.label()),
        )
        keys = None
        if args.passkey:
            keys = rq.passkey(
                model,
                tokenizer,
                strategy,
                lengths=lengths,
                depths=depths,
                seed=args.seed,
                model_id=model_id,
                progress=_bar(len(lengths), "passkey", "length"),
            )
        source = rq.run_id(text_path.name, result) + f", weights {Path(checkpoint.source).name}"
        entries = rq.table_entries(strategy, model_id, result, source, keys, baseline_keys)
        if args.write_table and entries:
            write_measured(entries, args.table)
        rows.append((result, keys, len(entries) if args.write_table else 0))
        if not args.json:
            _print_row(result, keys)
    if args.json:
        print(json.dumps(_json(rows, reference, baseline_keys, args.sweep)))
    elif args.write_table:
        written = sum(n for _, _, n in rows)
        _say(f"wrote {written} measured entries to {args.table}")
    return 0


def _grid(args: argparse.Namespace) -> list[dict[str, dict[str, Any]]]:
    from sim.real import quality as rq

    if args.sweep:
        return rq.default_grid()
    tables = strategy_tables(args.policy, args.param)
    KvStrategy.from_tables(tables)  # validate before loading the model
    return [tables]


def _bar(total: int, label: str, unit: str = "tok") -> Any:
    """A progress callback: a tqdm bar on stderr advanced by ``n`` per call."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=label, unit=unit, file=sys.stderr, leave=False)

    def advance(n: int) -> None:
        bar.update(n)
        if bar.n >= total:
            bar.close()

    return advance


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _print_row(result: Any, keys: Any) -> None:
    line = (
        f"{result.label:<48} ppl {result.perplexity:8.3f} (full {result.full_perplexity:.3f})  "
        f"dNLL {result.delta_nll:+.5f}  KL {result.kl_divergence:.5f}  "
        f"{result.stored_bytes / 2**20:7.1f} MiB  {result.wall_s:6.1f} s"
    )
    if keys is not None:
        line += f"  passkey {keys.accuracy:.2f}"
    print(line)


def _json(rows: list[Any], reference: Any, baseline_keys: Any, sweep: bool) -> dict[str, Any]:
    def one(result: Any, keys: Any, written: int) -> dict[str, Any]:
        out = result.as_dict() | {"table_entries_written": written}
        if keys is not None:
            out["passkey"] = keys.as_dict()
        return out

    common: dict[str, Any] = {
        "full_perplexity": reference.perplexity,
        "reference_wall_s": reference.wall_s,
    }
    if baseline_keys is not None:
        common["full_passkey"] = baseline_keys.as_dict()
    if sweep:
        return common | {"results": [one(*row) for row in rows]}
    return common | one(*rows[0])
