"""`HFTokenizer` over a Hugging Face `tokenizers.Tokenizer` (tokenizer.json: Llama-3, Qwen, SmolLM2, Gemma)."""
from __future__ import annotations

import os
from collections.abc import Sequence

import tokenizers

from spct_jax.tokenizers.base import Tokenizer, TokenizerError
from spct_jax.tokenizers.chat import ChatFormat


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` with its special ids. The tokenizer's own post-processor (e.g. Llama-3's automatic
    `<|begin_of_text|>`) is bypassed: bos comes only from `add_bos`, so every backend behaves the same.
    Added special tokens in text (chat markers, `<|endoftext|>`) encode to their single ids, as in transformers."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        eos_id: int,
        bos_id: int | None = None,
        pad_id: int | None = None,
        chat_format: str | ChatFormat | None = None,
    ):
        self._tok = tokenizer
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        for name, token_id in (("eos_id", eos_id), ("bos_id", bos_id), ("pad_id", pad_id)):
            if token_id is not None and not 0 <= token_id < size:
                raise TokenizerError(f"{name}={token_id} is outside the vocabulary [0, {size})")
        self._eos_id, self._bos_id = eos_id, bos_id
        # Llama-3 and others ship no pad token; padding is masked out, so eos serves.
        self._pad_id = eos_id if pad_id is None else pad_id
        self.chat_format = chat_format

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        eos_token: str,
        bos_token: str | None = None,
        pad_token: str | None = None,
        chat_format: str | ChatFormat | None = None,
    ) -> HFTokenizer:
        """Load a tokenizer.json and name the special tokens by their text."""
        tok = tokenizers.Tokenizer.from_file(os.fspath(path))

        def id_of(token: str | None, what: str) -> int | None:
            if token is None:
                return None
            token_id = tok.token_to_id(token)
            if token_id is None:
                raise TokenizerError(f"{what} {token!r} is not in the vocabulary of {path}")
            return token_id

        return cls(
            tok,
            eos_id=id_of(eos_token, "eos_token"),
            bos_id=id_of(bos_token, "bos_token"),
            pad_id=id_of(pad_token, "pad_token"),
            chat_format=chat_format,
        )

    @property
    def backend(self) -> tokenizers.Tokenizer:
        return self._tok

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        if add_bos and self._bos_id is None:
            raise TokenizerError("add_bos=True, but this tokenizer has no bos token")
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [self._bos_id, *ids] if add_bos else ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
