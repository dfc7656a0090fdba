"""`load_tokenizer(path)`: pick the implementation from what a path holds."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from spct_jax.tokenizers.base import Tokenizer, TokenizerError
from spct_jax.tokenizers.chat import ChatFormat, chat_format_from_template
from spct_jax.tokenizers.gguf_tokenizer import tokenizer_from_gguf
from spct_jax.tokenizers.hf import HFTokenizer
from spct_jax.tokenizers.sp import SentencePieceTokenizer


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "tokenizer_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json writes a special token as its text or as a serialised AddedToken.
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise TokenizerError(f"cannot read a special token from {value!r}")


def _chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    # transformers >= 4.43 may save the template as its own file; older configs hold a string or a list of
    # {"name", "template"} of which "default" is the chat one.
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template


def _chat_format(folder: Path, config: dict[str, Any], given: str | ChatFormat | None) -> str | ChatFormat | None:
    if given is not None:
        return given
    if "chat_format" in config:  # written by train_sentencepiece
        return config["chat_format"]
    template = _chat_template(folder, config)
    return chat_format_from_template(template) if template else None


def load_tokenizer(path: str | os.PathLike[str], *, chat_format: str | ChatFormat | None = None) -> Tokenizer:
    """Load the tokenizer at `path`:

    - a `.gguf` file: built from its metadata (`tokenizer_from_gguf`);
    - a folder with `tokenizer.json` (or that file): `HFTokenizer`, special tokens from `tokenizer_config.json`;
    - a folder with `tokenizer.model` (or a `.model` file): `SentencePieceTokenizer`.

    The chat format is `chat_format` if given, else the one `tokenizer_config.json` names (`chat_format`, or the
    family of its `chat_template`), else for sentencepiece the one its vocabulary has markers for. A tokenizer
    whose template family is unknown loads without a chat format.
    """
    path = Path(path)
    if not path.exists():
        raise TokenizerError(f"no tokenizer at {path}")
    if path.is_file() and path.suffix == ".gguf":
        return tokenizer_from_gguf(path, chat_format=chat_format)
    if path.is_file():
        folder, json_file, sp_file = path.parent, path, path
        if path.suffix not in (".json", ".model"):
            raise TokenizerError(f"{path}: expected a .gguf, tokenizer .json or sentencepiece .model file")
    else:
        folder, json_file, sp_file = path, path / "tokenizer.json", path / "tokenizer.model"
    config = _read_config(folder)
    fmt = _chat_format(folder, config, chat_format)
    if json_file.suffix == ".json" and json_file.is_file():
        eos = _token_text(config.get("eos_token"))
        if eos is None:
            raise TokenizerError(f"{folder / 'tokenizer_config.json'} names no eos_token")
        return HFTokenizer.from_file(
            json_file,
            eos_token=eos,
            bos_token=_token_text(config.get("bos_token")),
            pad_token=_token_text(config.get("pad_token")),
            chat_format=fmt,
        )
    if sp_file.suffix == ".model" and sp_file.is_file():
        return SentencePieceTokenizer(sp_file, chat_format=fmt)
    raise TokenizerError(f"{path}: neither tokenizer.json nor tokenizer.model found")
