"""`SentencePieceTokenizer` over a `tokenizer.model` (Gemma style).

Training one (for the demo's toy vocabulary) is `spct_jax.demo.tokenizer.train_sentencepiece`."""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

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
