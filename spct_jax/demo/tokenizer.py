"""The demo's tokenizer: a sentencepiece vocabulary trained in-process (about a second) on the toy task's texts.

`train_sentencepiece` trains any sentencepiece model so that encode/decode is an exact round trip and the ids follow
Gemma's layout; `train_toy_tokenizer` fits one to the toy task (`spct_jax.demo.toy`). Released checkpoints bring
their own tokenizers: this exists so the demo's ~0.2M-parameter model need not carry a 256k-entry vocabulary.
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from spct_jax.demo.toy import SPLITS, ToyConfig, teacher_trajectory, toy_prompt, toy_splits
from spct_jax.grm.prompts import build_metarm_prompt
from spct_jax.grm.voting import permute
from spct_jax.tokenizers.base import TokenizerError
from spct_jax.tokenizers.chat import CHAT_FORMATS
from spct_jax.tokenizers.sp import CHAT_MARKERS, SentencePieceTokenizer

# Enough pieces for nearly every word of the toy texts to be one token (the texts support ~950 at most; the
# limit is soft, so a narrower ToyConfig just gets fewer). Digits are always single pieces (train_sentencepiece
# sets split_digits), so a number is spelled digit by digit, as arithmetic needs.
TOY_VOCAB_SIZE = 768


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


def toy_tokenizer_texts(seed: int = 0, *, num_items: int = 300, config: ToyConfig = ToyConfig(),
                        chat_format: str = "gemma") -> list[str]:
    """Texts for the demo tokenizer: chat-rendered GRM conversations (both toy templates, some hinted; teacher
    trajectories with and without principles, some with mistakes) and meta-RM prompts.

    Items come from the "sft" split only, so the vocabulary is fitted without looking at held-out queries.
    """
    chat = CHAT_FORMATS[chat_format]()
    items = toy_splits(seed, {"sft": num_items}, config)["sft"]
    rng = np.random.default_rng([seed, len(SPLITS)])  # a stream that no split draws from
    texts = []
    for item in items:
        perm = [int(i) for i in rng.permutation(item.num_responses)]
        for principles in (True, False):
            prompt = toy_prompt(item, perm, principles=principles, hint=bool(rng.random() < 0.2))
            trajectory = teacher_trajectory(item, perm, rng, error_rate=0.3, principles=principles)
            turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": trajectory}]
            texts.append(chat.render(turns, add_generation_prompt=False))
        texts.append(build_metarm_prompt(item.context, permute(item.responses, perm), trajectory)[0])
    return texts


def train_toy_tokenizer(directory: str | Path, seed: int = 0, *, vocab_size: int = TOY_VOCAB_SIZE,
                        config: ToyConfig = ToyConfig(), chat_format: str = "gemma") -> SentencePieceTokenizer:
    """Train the demo's sentencepiece tokenizer in-process (about a second) into `directory` and return it.

    Digits are single pieces (train_sentencepiece's split_digits), so the model reads and writes numbers digit by
    digit. vocab_size is an upper bound: the result has at most that many pieces (read `.vocab_size`).
    `load_tokenizer(directory)` restores it later.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    texts = toy_tokenizer_texts(seed, config=config, chat_format=chat_format)
    # split_by_unicode_script=False lets punctuation join letters ("[The", "Scores:"): ~12% fewer tokens on
    # trajectories and ~20 fewer per prompt, which is CPU time on every training and sampling step.
    return train_sentencepiece(texts, vocab_size, path, chat_format=chat_format, split_by_unicode_script=False,
                               hard_vocab_limit=False)


__all__ = ["TOY_VOCAB_SIZE", "toy_tokenizer_texts", "train_sentencepiece", "train_toy_tokenizer"]
