"""Tokenizer files next to a written model, so that the folder loads with `load_tokenizer` (and `--model` works):
a source folder's files are copied, an in-memory tokenizer (the byte tokenizer of tiny-random, an HF tokenizer
built from GGUF metadata) is exported as tokenizer.json."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from spct_jax import paths
from spct_jax.tokenizers.base import TokenizerError

# What a checkpoint folder's tokenizer is made of (HF `tokenizers`, sentencepiece, chat template).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json")


def save_tokenizer(tokenizer, source: str, dest: Path) -> list[str]:
    """Make `dest` loadable by `load_tokenizer`: copy a source folder's tokenizer files, or export the tokenizer
    (byte tokenizer of tiny-random, or an HF tokenizer built from GGUF metadata) as tokenizer.json. -> files."""
    from spct_jax.tokenizers.byte import ByteTokenizer
    from spct_jax.tokenizers.hf import HFTokenizer

    src = Path(source)
    if src.is_dir():
        copied = [f for f in TOKENIZER_FILES if (src / f).is_file()]
        for f in copied:
            shutil.copy2(src / f, dest / f)
        return copied
    if isinstance(tokenizer, ByteTokenizer):
        backend = byte_tokenizer_json()
    elif isinstance(tokenizer, HFTokenizer):
        backend = tokenizer.backend
    else:
        raise TokenizerError(f"cannot save a {type(tokenizer).__name__} from {source!r}")
    backend.save(str(dest / "tokenizer.json"))

    def name(token_id: int | None) -> str | None:
        return None if token_id is None else backend.id_to_token(token_id)

    fmt = tokenizer.chat_format
    (dest / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": name(tokenizer.bos_id),
         "eos_token": name(tokenizer.eos_id), "pad_token": name(tokenizer.pad_id),
         "chat_format": None if fmt is None else fmt.name}, indent=1))
    return ["tokenizer.json", "tokenizer_config.json"]


def byte_tokenizer_json():
    """`ByteTokenizer` as an HF `tokenizers` byte-level BPE without merges: the same ids for every text (byte b ->
    b + BYTE_OFFSET, chat markers -> their single ids; "<pad>"/"<bos>"/"<eos>" in text stay bytes because they are
    plain vocabulary entries, not added tokens) and the same decoding. transformers' AutoTokenizer loads it too."""
    import tokenizers
    from tokenizers import AddedToken, decoders, models, pre_tokenizers

    from spct_jax.tokenizers.byte import _FIRST_MARKER, BYTE_OFFSET, SPECIAL_TOKENS
    from spct_jax.tokenizers.gguf_tokenizer import _byte_alphabet

    alphabet = _byte_alphabet()  # GPT-2's byte -> printable character map, how byte-level vocabularies spell bytes
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)} | {alphabet[b]: b + BYTE_OFFSET for b in range(256)}
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS[_FIRST_MARKER:]])
    return tok


def tokenizer_writer(tokenizer, source: str):
    """extra_files for weights.write_checkpoint: the tokenizer files `--model` needs next to the weights (copied
    from a folder checkpoint, or exported: save_tokenizer), written locally and copied to a remote folder."""

    def write(folder) -> None:
        if not paths.is_remote(folder):
            save_tokenizer(tokenizer, source, Path(folder))
            return
        import tempfile

        with tempfile.TemporaryDirectory() as local:
            for name in save_tokenizer(tokenizer, source, Path(local)):
                paths.copy_file(Path(local) / name, folder / name)

    return write
