"""`Tokenizer`: the one interface the sampler, trainers and GRM code use, whatever library is underneath."""
from __future__ import annotations

import abc
from collections.abc import Sequence

from spct_jax.tokenizers.chat import ChatFormat, Message, get_chat_format


class TokenizerError(ValueError):
    """A tokenizer that cannot be built or used as asked (missing files, tokens or settings)."""


class Tokenizer(abc.ABC):
    """Text <-> ids, the special ids, and the model's chat format.

    Contract shared by every implementation:
    - `encode` never adds bos or eos on its own; `add_bos=True` prepends the bos id.
    - Chat markers in text (e.g. `<end_of_turn>`) encode to their single ids. Control tokens (pad, bos, eos) are
      only read from text where the underlying library does so (HF `tokenizers` does, sentencepiece does not), so
      prompts never carry them as text.
    - `decode(ids)` writes every token as its text, special tokens included, so a prompt round-trips;
      `skip_special_tokens=True` drops control tokens and chat markers.
    """

    _chat_format: ChatFormat | None = None

    @abc.abstractmethod
    def encode(self, text: str, *, add_bos: bool = False) -> list[int]: ...

    @abc.abstractmethod
    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str: ...

    @abc.abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry spelled `token` as text would spell it, or None."""

    @property
    @abc.abstractmethod
    def bos_id(self) -> int | None: ...

    @property
    @abc.abstractmethod
    def eos_id(self) -> int: ...

    @property
    @abc.abstractmethod
    def pad_id(self) -> int: ...

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, added tokens included: the smallest embedding table the model can have."""

    @property
    def chat_format(self) -> ChatFormat | None:
        return self._chat_format

    @chat_format.setter
    def chat_format(self, spec: str | ChatFormat | None) -> None:
        fmt = None if spec is None else get_chat_format(spec)
        if fmt is not None:
            for marker in fmt.special_tokens:
                ids = self.encode(marker)
                if len(ids) != 1:
                    raise TokenizerError(
                        f"chat format {fmt.name!r} writes {marker!r}, which this vocabulary encodes as {len(ids)} "
                        f"tokens {ids}; it must be a single (added or user-defined) token"
                    )
        self._chat_format = fmt

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Ids that end a generation: eos, then the chat format's end-of-turn tokens found in the vocabulary."""
        ids = [self.eos_id]
        for token in self.chat_format.stop_tokens if self.chat_format is not None else ():
            token_id = self.token_to_id(token)
            if token_id is not None and token_id not in ids:
                ids.append(token_id)
        return tuple(ids)

    def _require_chat_format(self) -> ChatFormat:
        if self.chat_format is None:
            raise TokenizerError(
                "this tokenizer has no chat format (its chat template is of an unknown family); "
                "set one with `tokenizer.chat_format = 'gemma' | 'chatml' | 'plain'`"
            )
        return self.chat_format

    def apply_chat_template(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The prompt string for `messages` ([{"role", "content"}]); bos is not part of it (see `encode_chat`)."""
        return self._require_chat_format().render(messages, add_generation_prompt)

    def encode_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        """Ids of the rendered conversation, starting with bos when the chat format asks for it."""
        fmt = self._require_chat_format()
        text = fmt.render(messages, add_generation_prompt)
        return self.encode(text, add_bos=fmt.add_bos and self.bos_id is not None)

    def __repr__(self) -> str:
        fmt = self.chat_format.name if self.chat_format is not None else None
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, bos_id={self.bos_id}, eos_id={self.eos_id}, "
            f"pad_id={self.pad_id}, chat_format={fmt!r})"
        )
