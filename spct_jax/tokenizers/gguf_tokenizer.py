"""Build an `HFTokenizer` from a GGUF file's metadata (byte-level BPE: `tokenizer.ggml.model == "gpt2"`).

A GGUF carries no tokenizer.json: it stores the vocabulary, merges, token types and special ids as metadata, and
names the way text is split before BPE in `tokenizer.ggml.pre`. We rebuild a `tokenizers` BPE from those, as
transformers' GGUF loader does (byte-level vocabulary, ByteLevel decoder, CONTROL tokens as special added tokens,
USER_DEFINED ones as plain added tokens).

One deliberate difference, `pre_tokenizer="gguf"` (the default): we split text the way `tokenizer.ggml.pre` says,
as llama.cpp does. transformers (5.x) knows a fixed list of pre-tokenizer names and falls back to plain GPT-2
splitting for the rest, which for SmolLM2 (`pre = "smollm"`) loses the split of every digit into its own
pre-token that SmolLM2's own tokenizer.json has (`Digits(individual_digits=True)` then `ByteLevel`). That changes
the ids of about one real text in ten (e.g. "\\n\\n1." gives `ĊĊ` + `1` instead of `Ċ` `Ċ` + `1`).
`pre_tokenizer="transformers"` reproduces transformers' choice exactly, for parity checks against it.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Literal

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer

from spct_jax.tokenizers.base import TokenizerError
from spct_jax.tokenizers.chat import ChatFormat, chat_format_from_template
from spct_jax.tokenizers.hf import HFTokenizer

# llama.cpp token types (gguf.TokenType).
_CONTROL, _USER_DEFINED = 3, 4

# Split regexes of the pre-tokenizers both llama.cpp and transformers know; they run before a regex-free ByteLevel.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_REGEX_SPLITS = {
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT,
    "dbrx": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}
# Plain GPT-2 splitting (ByteLevel's built-in regex).
_GPT2 = {None, "default", "gpt2"}
# llama.cpp splits every number character off (`\p{N}`) before the GPT-2 regex for these; their tokenizer.json
# files say the same with `Digits(individual_digits=True)`.
_DIGITS_THEN_GPT2 = {"smollm", "starcoder"}

PreTokenizerMode = Literal["gguf", "transformers"]


@functools.cache
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map, the spelling of every token in a byte-level vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _pre_tokenizer(pre: str | None, mode: PreTokenizerMode) -> pre_tokenizers.PreTokenizer:
    if pre in _REGEX_SPLITS:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_REGEX_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    if mode == "transformers" or pre in _GPT2:
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    if pre in _DIGITS_THEN_GPT2:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
    known = sorted({*_REGEX_SPLITS, *_DIGITS_THEN_GPT2, *(p for p in _GPT2 if p)})
    raise TokenizerError(
        f"GGUF pre-tokenizer {pre!r} is not known here (known: {known}); pass pre_tokenizer='transformers' to "
        "split with plain GPT-2 rules as transformers does"
    )


def read_gguf_tokenizer_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The `tokenizer.*` and `general.architecture` metadata of a GGUF file, as Python values."""
    from gguf import GGUFReader

    reader = GGUFReader(os.fspath(path))
    return {
        key: field.contents()
        for key, field in reader.fields.items()
        if key.startswith("tokenizer.") or key == "general.architecture"
    }


def tokenizer_from_gguf(
    path: str | os.PathLike[str],
    *,
    chat_format: str | ChatFormat | None = None,
    pre_tokenizer: PreTokenizerMode = "gguf",
) -> HFTokenizer:
    """The tokenizer a GGUF file describes. `chat_format=None` recognises the family of the file's
    `tokenizer.chat_template` (SmolLM2: ChatML with its default system prompt)."""
    if pre_tokenizer not in ("gguf", "transformers"):
        raise TokenizerError(f"pre_tokenizer must be 'gguf' or 'transformers', not {pre_tokenizer!r}")
    meta = read_gguf_tokenizer_metadata(path)
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise TokenizerError(f"{path}: tokenizer.ggml.model is {model!r}; only byte-level BPE ('gpt2') is supported")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if "tokenizer.ggml.merges" not in meta:
        raise TokenizerError(f"{path}: a byte-level BPE GGUF without tokenizer.ggml.merges")

    spelling = _byte_alphabet()
    alphabet = set(spelling.values())

    def spelled(token: str) -> str:
        # Real tokens are already written in the byte alphabet; anything else (a stray special) is re-spelled
        # byte by byte, as transformers does, so the BPE model accepts it.
        return token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8"))

    vocab = {spelled(token): index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise TokenizerError(f"{path}: the vocabulary spells {len(tokens) - len(vocab)} tokens twice")
    merges = [tuple(merge.split(" ")) for merge in meta["tokenizer.ggml.merges"]]
    backend = BackendTokenizer(models.BPE(
        vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="",
        fuse_unk=False, byte_fallback=False,
    ))
    backend.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre"), pre_tokenizer)
    backend.decoder = decoders.ByteLevel()
    # CONTROL tokens (<|im_start|>, <|endoftext|>) must stay whole in text. One spelled outside the byte alphabet
    # is a llama.cpp mislabel and is skipped, as transformers does.
    backend.add_special_tokens([
        AddedToken(token, normalized=False, special=True)
        for token, kind in zip(tokens, types)
        if kind == _CONTROL and set(token) <= alphabet
    ])
    backend.add_tokens([
        AddedToken(token, normalized=False, special=False)
        for token, kind in zip(tokens, types)
        if kind == _USER_DEFINED and token in vocab
    ])
    rebuilt = backend.get_vocab_size(with_added_tokens=True)
    if rebuilt != len(tokens):
        raise TokenizerError(f"{path}: the rebuilt vocabulary has {rebuilt} ids, the file lists {len(tokens)}")

    if chat_format is None and "tokenizer.chat_template" in meta:
        chat_format = chat_format_from_template(meta["tokenizer.chat_template"])
    eos_id = meta.get("tokenizer.ggml.eos_token_id")
    if eos_id is None:
        raise TokenizerError(f"{path}: no tokenizer.ggml.eos_token_id")
    return HFTokenizer(
        backend,
        eos_id=int(eos_id),
        bos_id=_optional_int(meta.get("tokenizer.ggml.bos_token_id")),
        pad_id=_optional_int(meta.get("tokenizer.ggml.padding_token_id")),
        chat_format=chat_format,
    )


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
