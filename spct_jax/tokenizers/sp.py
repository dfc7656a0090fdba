"""`SentencePieceTokenizer` over a `tokenizer.model` (Gemma style), and `train_sentencepiece` for demo vocabularies."""
from __future__ import annotations

import functools
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from spct_jax.tokenizers.base import Tokenizer, TokenizerError
from spct_jax.tokenizers.chat import CHAT_FORMATS, ChatFormat

# Every chat marker of every format is reserved when training, so one vocabulary serves any chat format.
CHAT_MARKERS: tuple[str, ...] = tuple(dict.fromkeys(m for cls in CHAT_FORMATS.values() for m in cls.special_tokens))


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model. `chat_format=None` picks Gemma's format when the vocabulary has its markers, then
    ChatML's, else the plain one. A model without a pad piece pads with eos."""

    def __init__(self, model: str | os.PathLike[str] | bytes, chat_format: str | ChatFormat | None = None):
        if isinstance(model, bytes):
            self._sp = spm.SentencePieceProcessor(model_proto=model)
        else:
            if not Path(model).is_file():
                raise TokenizerError(f"no sentencepiece model at {model}")
            self._sp = spm.SentencePieceProcessor(model_file=os.fspath(model))
        if self._sp.eos_id() < 0:
            raise TokenizerError("the sentencepiece model has no eos piece")
        if chat_format is None:
            chat_format = next(
                (name for name, cls in CHAT_FORMATS.items()
                 if cls.special_tokens and all(self.token_to_id(t) is not None for t in cls.special_tokens)),
                "plain",
            )
        self.chat_format = chat_format

    @property
    def processor(self) -> spm.SentencePieceProcessor:
        return self._sp

    @property
    def bos_id(self) -> int | None:
        return self._sp.bos_id() if self._sp.bos_id() >= 0 else None

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def pad_id(self) -> int:
        return self._sp.pad_id() if self._sp.pad_id() >= 0 else self.eos_id

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def token_to_id(self, token: str) -> int | None:
        # piece_to_id answers unk for an unknown piece, so check the spelling back. Pieces spell a space as U+2581.
        token_id = self._sp.piece_to_id(token.replace(" ", "\u2581"))
        return token_id if self._sp.id_to_piece(token_id) == token.replace(" ", "\u2581") else None

    @functools.cached_property
    def _control_ids(self) -> frozenset[int]:
        return frozenset(i for i in range(self.vocab_size) if self._sp.is_control(i))

    @functools.cached_property
    def _marker_ids(self) -> frozenset[int]:
        ids = (self.token_to_id(m) for m in CHAT_MARKERS)
        return frozenset(i for i in ids if i is not None)

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        if add_bos and self.bos_id is None:
            raise TokenizerError("add_bos=True, but the sentencepiece model has no bos piece")
        ids = self._sp.encode(text, out_type=int)
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            return self._sp.decode([i for i in ids if i not in self._control_ids and i not in self._marker_ids])
        # sentencepiece drops control pieces when decoding; write them out so a decoded prompt shows its bos/eos.
        pieces: list[str] = []
        run: list[int] = []
        for token_id in ids:
            if token_id in self._control_ids:
                pieces.append(self._sp.decode(run))
                pieces.append(self._sp.id_to_piece(token_id))
                run = []
            else:
                run.append(token_id)
        pieces.append(self._sp.decode(run))
        return "".join(pieces)


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    model_prefix_or_dir: str | os.PathLike[str],
    *,
    chat_format: str = "gemma",
    model_type: str = "bpe",
    **trainer_options: Any,
) -> SentencePieceTokenizer:
    """Train a sentencepiece model in-process on `texts` and return it loaded.

    The settings make encode/decode an exact round trip of any text, newlines and runs of spaces included:
    identity normalisation, no whitespace collapsing, whitespace-only pieces allowed, "\\n" and "\\t" as their own
    pieces, and byte fallback for characters never seen (which needs vocab_size >= ~400). Special ids follow
    Gemma's layout: pad 0, eos 1, bos 2, unk 3, then the chat markers of every format.

    Where it writes: an existing directory gets `tokenizer.model` plus a `tokenizer_config.json` naming the chat
    format (so `load_tokenizer(dir)` restores it); any other path is a sentencepiece prefix, `<prefix>.model`.
    `trainer_options` pass through to `SentencePieceTrainer.train` and override the defaults here.
    """
    target = Path(model_prefix_or_dir)
    as_dir = target.is_dir()
    model_path = target / "tokenizer.model" if as_dir else target.with_name(target.name + ".model")
    options: dict[str, Any] = dict(
        vocab_size=vocab_size,
        model_type=model_type,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        # Like Gemma: no leading-space marker, so encode(a) + encode(b) == encode(a + b) at line starts.
        add_dummy_prefix=False,
        split_digits=True,
        byte_fallback=True,
        character_coverage=1.0,
        user_defined_symbols=["\n", "\t", *CHAT_MARKERS],
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        # Long documents are one "sentence" each; the default 4192-byte limit would silently drop them.
        max_sentence_length=1 << 20,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
    options.update(trainer_options)
    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=proto, **options)
    except RuntimeError as err:
        raise TokenizerError(f"sentencepiece training failed: {err}") from err
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model_path.write_bytes(proto.getvalue())
    tokenizer = SentencePieceTokenizer(model_path, chat_format=chat_format)
    if as_dir:
        config = {"chat_format": chat_format, "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}
        (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return tokenizer
