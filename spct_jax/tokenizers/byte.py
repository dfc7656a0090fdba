"""`ByteTokenizer`: UTF-8 bytes plus a few special tokens, for tiny random models that need no trained vocabulary."""
from __future__ import annotations

import re
from collections.abc import Sequence

from spct_jax.tokenizers.base import Tokenizer, TokenizerError
from spct_jax.tokenizers.chat import ChatFormat

# Fixed, so a tiny model's embedding table never depends on which chat format it was built for. Control tokens
# come first, then every chat marker of every format, then the 256 bytes.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<pad>", "<bos>", "<eos>",
    "<start_of_turn>", "<end_of_turn>", "<|im_start|>", "<|im_end|>",
)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
_FIRST_MARKER = 3
BYTE_OFFSET = len(SPECIAL_TOKENS)


class ByteTokenizer(Tokenizer):
    """Deterministic byte-level tokenizer: id = byte + `BYTE_OFFSET`; round-trips any UTF-8 string exactly.

    Chat markers in text become their single ids; `<pad>`, `<bos>` and `<eos>` in text stay bytes, as in
    sentencepiece, so user text cannot forge a control token.
    """

    def __init__(self, chat_format: str | ChatFormat | None = "gemma"):
        markers = SPECIAL_TOKENS[_FIRST_MARKER:]
        self._marker_ids = {token: _FIRST_MARKER + i for i, token in enumerate(markers)}
        # Longest first, so a marker that prefixes another can never win.
        self._marker_re = re.compile("|".join(re.escape(m) for m in sorted(markers, key=len, reverse=True)))
        self.chat_format = chat_format

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def vocab_size(self) -> int:
        return BYTE_OFFSET + 256

    def token_to_id(self, token: str) -> int | None:
        if token in SPECIAL_TOKENS:
            return SPECIAL_TOKENS.index(token)
        raw = token.encode("utf-8")
        return raw[0] + BYTE_OFFSET if len(raw) == 1 else None

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        ids = [BOS_ID] if add_bos else []
        start = 0
        for match in self._marker_re.finditer(text):
            ids.extend(b + BYTE_OFFSET for b in text[start:match.start()].encode("utf-8"))
            ids.append(self._marker_ids[match.group()])
            start = match.end()
        ids.extend(b + BYTE_OFFSET for b in text[start:].encode("utf-8"))
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        pieces: list[str] = []
        pending = bytearray()
        for token_id in ids:
            token_id = int(token_id)
            if not 0 <= token_id < self.vocab_size:
                raise TokenizerError(f"id {token_id} is outside the byte vocabulary [0, {self.vocab_size})")
            if token_id >= BYTE_OFFSET:
                pending.append(token_id - BYTE_OFFSET)
                continue
            # A special token ends a byte run; decode the run first so that a truncated multi-byte character
            # becomes U+FFFD in place instead of swallowing the token after it.
            pieces.append(pending.decode("utf-8", errors="replace"))
            pending.clear()
            if not skip_special_tokens:
                pieces.append(SPECIAL_TOKENS[token_id])
        pieces.append(pending.decode("utf-8", errors="replace"))
        return "".join(pieces)
