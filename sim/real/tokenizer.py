"""A byte-level BPE tokenizer built from GGUF metadata (or a Hugging Face ``tokenizer.json``).

The GGUF file carries the vocabulary (``tokenizer.ggml.tokens``), the merge ranks
(``tokenizer.ggml.merges``), token types and the pre-tokenizer name ``tokenizer.ggml.pre``.
llama.cpp (``llama-vocab.cpp``) maps the pre-tokenizer name to a list of regexes that are
applied one after another, each splitting the pieces left by the previous one and keeping the
unmatched gaps as pieces; ``tokenizers``' ``Split(..., behavior="isolated")`` does exactly
that. For ``smollm`` the list is ``\\p{N}`` (every digit alone) followed by the GPT-2 regex, so
``" 2024"`` becomes ``" "``, ``"2"``, ``"0"``, ``"2"``, ``"4"``. The pieces are then mapped to
GPT-2's byte alphabet (``ByteLevel`` without its own regex) and merged by rank; control tokens
(``<|im_start|>`` ...) are matched whole before any of this, as llama.cpp does with
``parse_special``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from hardware.errors import KvsimError
from sim.real.weights import gguf_metadata, smollm2_gguf_path

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
PRE_TOKENIZER_REGEXES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("gpt-2", "mpt", "olmo", "jais"), (GPT2_REGEX,)),
    **dict.fromkeys(
        ("smollm", "starcoder", "refact", "command-r", "codeshell"), (r"\p{N}", GPT2_REGEX)
    ),
}
"""llama.cpp's regex lists per ``tokenizer.ggml.pre`` (``llama_vocab::impl::load``)."""

TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4


class TextTokenizer:
    """Text to token ids and back, plus the model's chat template."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        bos_id: int | None,
        eos_id: int,
        add_bos: bool,
        chat_template: str | None,
        source: str,
    ) -> None:
        self.tokenizer = tokenizer
        self._missing_bytes = bytes(
            b for b, char in enumerate(gpt2_byte_chars()) if tokenizer.token_to_id(char) is None
        )
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.add_bos = add_bos
        self.chat_template = chat_template
        self.source = source

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text``; special tokens written in the text become their ids.

        A character whose UTF-8 bytes have no token in the vocabulary is an error (llama.cpp
        fails on it too): BPE would silently drop it and break the round trip.
        """
        if self._missing_bytes:
            data = text.encode("utf-8")
            if len(data.translate(None, self._missing_bytes)) != len(data):
                bad = next(c for c in text if set(c.encode("utf-8")) & set(self._missing_bytes))
                raise KvsimError(
                    f"character {bad!r} (U+{ord(bad):04X}) has a UTF-8 byte with no token in "
                    "the vocabulary",
                    source=self.source,
                    field="text",
                )
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            return [self.bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special)

    def render_chat(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        """Render ``messages`` (``{"role": ..., "content": ...}``) with the model's Jinja chat
        template in a sandbox, with the options Hugging Face uses (trim and lstrip blocks)."""
        if self.chat_template is None:
            raise KvsimError("this model has no chat template", source=self.source)
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        template = env.from_string(self.chat_template)
        return template.render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=self._token_text(self.bos_id),
            eos_token=self._token_text(self.eos_id),
        )

    def _token_text(self, token_id: int | None) -> str:
        return "" if token_id is None else (self.tokenizer.id_to_token(token_id) or "")


def gpt2_byte_chars() -> list[str]:
    """GPT-2's printable stand-in for each byte 0..255 (``bytes_to_unicode`` in OpenAI's
    ``encoder.py``): printable Latin-1 bytes map to themselves, the rest to U+0100 onwards."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    chars = dict(zip(printable, printable, strict=True))
    chars.update({b: 0x100 + i for i, b in enumerate(others)})
    return [chr(chars[b]) for b in range(256)]


def load_tokenizer(source: str | Path | None = None) -> TextTokenizer:
    """The tokenizer matching :func:`sim.real.weights.load_checkpoint` for the same source."""
    if source is None:
        return tokenizer_from_gguf(smollm2_gguf_path())
    path = Path(source)
    if path.is_dir():
        return tokenizer_from_hf(path)
    if path.is_file() and path.suffix == ".gguf":
        return tokenizer_from_gguf(path)
    raise KvsimError(
        "expected a .gguf file or a Hugging Face checkpoint directory", source=str(path)
    )


def tokenizer_from_gguf(path: str | Path) -> TextTokenizer:
    """Build the byte-level BPE tokenizer described by a GGUF file's metadata."""
    from gguf import GGUFReader

    path = Path(path)
    reader = GGUFReader(path)
    meta = gguf_metadata(reader)
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise KvsimError(
            f"only byte-level BPE ('gpt2') tokenizers are supported, got "
            f"{meta.get('tokenizer.ggml.model')!r}",
            source=str(path),
            field="tokenizer.ggml.model",
        )
    pre = meta.get("tokenizer.ggml.pre", "gpt-2")
    if pre not in PRE_TOKENIZER_REGEXES:
        raise KvsimError(
            f"unsupported pre-tokenizer {pre!r}; supported: {sorted(PRE_TOKENIZER_REGEXES)}",
            source=str(path),
            field="tokenizer.ggml.pre",
        )
    tokens: list[str] = _array(reader, "tokenizer.ggml.tokens", path)
    merges = [_merge_pair(m, path) for m in _array(reader, "tokenizer.ggml.merges", path)]
    types: list[int] = (
        _array(reader, "tokenizer.ggml.token_type", path)
        if "tokenizer.ggml.token_type" in reader.fields
        else []
    )
    tokenizer = Tokenizer(
        models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False)
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZER_REGEXES[pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [
            AddedToken(tokens[i], special=True, normalized=False)
            for i, kind in enumerate(types)
            if kind == TOKEN_TYPE_CONTROL
        ]
    )
    tokenizer.add_tokens(
        [
            AddedToken(tokens[i], special=False, normalized=False)
            for i, kind in enumerate(types)
            if kind == TOKEN_TYPE_USER_DEFINED
        ]
    )
    bos = meta.get("tokenizer.ggml.bos_token_id")
    return TextTokenizer(
        tokenizer,
        bos_id=None if bos is None else int(bos),
        eos_id=int(meta["tokenizer.ggml.eos_token_id"]),
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        chat_template=meta.get("tokenizer.chat_template"),
        source=str(path),
    )


def tokenizer_from_hf(directory: str | Path) -> TextTokenizer:
    """Load ``tokenizer.json`` and read ids and chat template from ``tokenizer_config.json``."""
    directory = Path(directory)
    file = directory / "tokenizer.json"
    if not file.is_file():
        raise KvsimError("tokenizer.json not found", source=str(directory))
    tokenizer = Tokenizer.from_file(str(file))
    settings: dict[str, Any] = {}
    config_file = directory / "tokenizer_config.json"
    if config_file.is_file():
        settings = json.loads(config_file.read_text())

    def token_id(key: str) -> int | None:
        token = settings.get(key)
        if isinstance(token, dict):
            token = token.get("content")
        return None if token is None else tokenizer.token_to_id(token)

    eos = token_id("eos_token")
    if eos is None:
        raise KvsimError("eos_token missing or not in the vocabulary", source=str(config_file))
    return TextTokenizer(
        tokenizer,
        bos_id=token_id("bos_token"),
        eos_id=eos,
        add_bos=bool(settings.get("add_bos_token", False)),
        chat_template=settings.get("chat_template"),
        source=str(directory),
    )


def _array(reader: Any, key: str, path: Path) -> list[Any]:
    if key not in reader.fields:
        raise KvsimError("missing metadata key", source=str(path), field=key)
    return list(reader.fields[key].contents())


def _merge_pair(merge: str, path: Path) -> tuple[str, str]:
    parts = merge.split(" ")
    if len(parts) != 2:
        raise KvsimError(
            f"a merge must be two tokens separated by one space, got {merge!r}",
            source=str(path),
            field="tokenizer.ggml.merges",
        )
    return parts[0], parts[1]
