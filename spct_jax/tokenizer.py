"""One tokenizer interface over sentencepiece, HF `tokenizers`, GGUF metadata and raw bytes, with chat formats.

    from spct_jax.tokenizer import load_tokenizer
    tok = load_tokenizer("path/to/model")          # tokenizer.json, tokenizer.model or a .gguf file
    ids = tok.encode_chat([{"role": "user", "content": "Hi"}])
    tok.decode(ids), tok.stop_ids, tok.pad_id

The pieces live in `spct_jax.tokenizers`: `base` (the interface), `chat` (Gemma, ChatML and plain formats),
`byte`, `sp`, `hf` and `gguf_tokenizer` (implementations), `load` (dispatch).
"""
from spct_jax.tokenizers.base import Tokenizer, TokenizerError
from spct_jax.tokenizers.byte import ByteTokenizer
from spct_jax.tokenizers.chat import (
    CHAT_FORMATS,
    ChatFormat,
    ChatFormatError,
    ChatML,
    GemmaChat,
    Message,
    PlainChat,
    chat_format_from_template,
    get_chat_format,
)
from spct_jax.tokenizers.gguf_tokenizer import read_gguf_tokenizer_metadata, tokenizer_from_gguf
from spct_jax.tokenizers.hf import HFTokenizer
from spct_jax.tokenizers.load import load_tokenizer
from spct_jax.tokenizers.sp import SentencePieceTokenizer

__all__ = [
    "CHAT_FORMATS", "ByteTokenizer", "ChatFormat", "ChatFormatError", "ChatML", "GemmaChat", "HFTokenizer",
    "Message", "PlainChat", "SentencePieceTokenizer", "Tokenizer", "TokenizerError", "chat_format_from_template",
    "get_chat_format", "load_tokenizer", "read_gguf_tokenizer_metadata", "tokenizer_from_gguf",
]
