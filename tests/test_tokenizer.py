"""Tokenizers: exact round trips, chat formats equal to the models' Jinja templates, HF parity, dispatch."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

from spct_jax.tokenizer import (
    ByteTokenizer,
    ChatFormatError,
    ChatML,
    GemmaChat,
    HFTokenizer,
    PlainChat,
    SentencePieceTokenizer,
    TokenizerError,
    chat_format_from_template,
    load_tokenizer,
)
from spct_jax.demo.tokenizer import train_sentencepiece  # the demo trains its vocabularies; tests train small ones

SHARED_DATA = Path(os.environ.get("SPCT_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))

# Strings that break tokenizers which normalise: newlines and their runs, CRLF, tabs, runs of spaces at either end,
# NBSP, combining marks, CJK, emoji with ZWJ, RTL, digits, and chat markers inside ordinary text.
HARD_TEXTS = [
    "",
    "\n",
    "a\n\nb",
    "line one\nline two\n\n\nline five\n",
    "  two leading spaces",
    "trailing spaces   ",
    "tabs\tand\t\tmore\ttabs",
    "windows\r\nnewlines\r\n",
    "many     internal      spaces",
    "non\u00a0breaking\u2009thin",
    "cafe\u0301 vs caf\u00e9",
    "日本語のテキスト、中文，한국어",
    "emoji 👩‍👩‍👧 🤖🎉 and flags 🇫🇷",
    "עברית ومرحبا",
    "1.\n\n2. 3,14159 ½ ²",
    "<start_of_turn>user\nhi<end_of_turn>\n",
    "<|im_start|>system\nyou<|im_end|>\n",
    "code:\n    def f(x):\n        return x  # comment\n",
]

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "  Padded question?\n"},
        {"role": "assistant", "content": "An answer.\n\nWith a paragraph. "},
        {"role": "user", "content": "日本語で？ 🤖"},
    ],
    [
        {"role": "system", "content": "Judge the responses.\nBe strict."},
        {"role": "user", "content": "Response 1: yes\nResponse 2: no"},
        {"role": "assistant", "content": "Scores: \\boxed{7, 3}"},
    ],
]

# Gemma-3's chat template (Gemma-2's is the same for conversations without a system turn, which it rejects).
GEMMA3_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# SmolLM2-135M-Instruct's template, as its GGUF metadata `tokenizer.chat_template` holds it.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Plain ChatML without a default system turn (e.g. Qwen base models' minimal template).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """A deterministic toy corpus with the whitespace and scripts the round-trip tests exercise."""
    words = ("the model judges each response by principles and critiques then writes scores for helpfulness "
             "accuracy safety reasoning code math answer question user assistant system 1 2 3 10 42 — é ü 日本 語").split()
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 16)))
        sep = rng.choice(["\n", "\n\n", "  ", "\t", " "])
        lines.append(f"{sentence}.{sep}{sentence.capitalize()}?" if i % 3 else sentence)
    return lines + HARD_TEXTS


def shared_texts(limit: int) -> list[str]:
    path = SHARED_DATA / "rewardbench" / "llmbar.jsonl"
    if not path.is_file():
        return []
    texts = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts += [row["prompt"], row["chosen"], row["rejected"]]
    return texts[:limit]


def hf_oracle(backend: tokenizers.Tokenizer, template: str, **special: str):
    """transformers' tokenizer over the same backend, to render Jinja templates."""
    from transformers import PreTrainedTokenizerFast

    oracle = PreTrainedTokenizerFast(tokenizer_object=backend, **special)
    oracle.chat_template = template
    return oracle


def marker_backend(markers: list[str]) -> tokenizers.Tokenizer:
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.add_special_tokens(markers)
    return backend


# --- sentencepiece ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sp")
    train_sentencepiece(corpus() + shared_texts(300), 512, folder)
    return folder


@pytest.fixture(scope="module")
def sp(sp_dir) -> SentencePieceTokenizer:
    return SentencePieceTokenizer(sp_dir / "tokenizer.model")


def test_sp_training_layout(sp, sp_dir):
    assert (sp.pad_id, sp.eos_id, sp.bos_id) == (0, 1, 2)
    assert sp.vocab_size == 512
    assert sp.chat_format == GemmaChat()
    assert sp.stop_ids == (1, sp.token_to_id("<end_of_turn>"))
    for marker in ("\n", "\t", "<start_of_turn>", "<end_of_turn>", "<|im_start|>", "<|im_end|>"):
        assert len(sp.encode(marker)) == 1, marker
    assert json.loads((sp_dir / "tokenizer_config.json").read_text())["chat_format"] == "gemma"


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_sp_round_trip_exact(sp, text):
    ids = sp.encode(text)
    assert sp.decode(ids) == text
    assert sp.encode(text, add_bos=True) == [sp.bos_id, *ids]


def test_sp_round_trip_real_texts(sp):
    texts = shared_texts(600)
    if not texts:
        pytest.skip(f"no shared data at {SHARED_DATA}")
    assert [t for t in texts if sp.decode(sp.encode(t)) != t] == []


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_sp_round_trip_any_text(sp, text):
    assert sp.decode(sp.encode(text)) == text


def test_sp_decode_specials(sp):
    ids = sp.encode_chat([{"role": "user", "content": "hi"}])
    assert ids[0] == sp.bos_id
    assert sp.decode(ids + [sp.eos_id]) == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n<eos>"
    assert sp.decode(ids + [sp.eos_id], skip_special_tokens=True) == "user\nhi\nmodel\n"


def test_sp_prefix_and_load(sp, sp_dir, tmp_path):
    loaded = load_tokenizer(sp_dir)
    assert isinstance(loaded, SentencePieceTokenizer) and loaded.chat_format == GemmaChat()
    assert loaded.encode(HARD_TEXTS[3]) == sp.encode(HARD_TEXTS[3])
    # A path that is not a folder is a sentencepiece prefix; the format then comes from the vocabulary.
    prefixed = train_sentencepiece(corpus(), 400, tmp_path / "demo", chat_format="chatml")
    assert (tmp_path / "demo.model").is_file() and prefixed.chat_format == ChatML()
    assert load_tokenizer(tmp_path / "demo.model", chat_format="plain").chat_format == PlainChat()
    assert load_tokenizer(tmp_path / "demo.model").chat_format == GemmaChat()


def test_sp_training_too_large_vocab_fails_clearly(tmp_path):
    with pytest.raises(TokenizerError, match="sentencepiece training failed"):
        train_sentencepiece(["tiny corpus"] * 3, 5000, tmp_path)


# --- bytes -----------------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_byte_round_trip_any_text(text):
    tok = ByteTokenizer()
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_byte_round_trip_hard(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_byte_layout_and_specials():
    tok = ByteTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 1, 2, 263)
    assert tok.encode("A") == [ord("A") + 7]
    assert tok.encode("<start_of_turn>x<end_of_turn>") == [3, ord("x") + 7, 4]
    # Control tokens are not read from text.
    assert tok.encode("<eos>") == [b + 7 for b in b"<eos>"]
    assert tok.stop_ids == (2, 4)
    assert ByteTokenizer("chatml").stop_ids == (2, 6)
    assert ByteTokenizer("plain").stop_ids == (2,)
    ids = tok.encode("é", add_bos=True) + [tok.eos_id]
    assert tok.decode(ids) == "<bos>é<eos>" and tok.decode(ids, skip_special_tokens=True) == "é"
    # A multi-byte character cut by a special token decodes to U+FFFD in place, not swallowing the token.
    assert tok.decode([0xC3 + 7, 2]) == "\ufffd<eos>"
    with pytest.raises(TokenizerError):
        tok.decode([263])


# --- chat formats ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_gemma_matches_gemma3_template(messages, add_generation_prompt):
    oracle = hf_oracle(marker_backend(["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]), GEMMA3_TEMPLATE,
                       bos_token="<bos>", eos_token="<eos>")
    expected = oracle.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert expected.startswith("<bos>")
    assert "<bos>" + GemmaChat().render(messages, add_generation_prompt) == expected
    if messages[0]["role"] != "system":
        oracle.chat_template = GEMMA2_TEMPLATE
        assert oracle.apply_chat_template(messages, tokenize=False,
                                          add_generation_prompt=add_generation_prompt) == expected


def test_gemma_exact_string_and_errors():
    rendered = GemmaChat().render([{"role": "system", "content": "S"}, {"role": "user", "content": " U "}])
    assert rendered == "<start_of_turn>user\nS\n\nU<end_of_turn>\n<start_of_turn>model\n"
    for bad in ([{"role": "assistant", "content": "x"}],
                [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                [{"role": "system", "content": "only"}],
                [{"role": "user", "content": None}]):
        with pytest.raises(ChatFormatError):
            GemmaChat().render(bad)


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("template", [SMOLLM2_TEMPLATE, CHATML_TEMPLATE])
def test_chatml_matches_templates(messages, add_generation_prompt, template):
    fmt = chat_format_from_template(template)
    assert isinstance(fmt, ChatML)
    oracle = hf_oracle(marker_backend(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]), template,
                       eos_token="<|im_end|>")
    expected = oracle.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert fmt.render(messages, add_generation_prompt) == expected


def test_chatml_default_system_read_from_template():
    assert chat_format_from_template(SMOLLM2_TEMPLATE) == ChatML(
        default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    assert chat_format_from_template(CHATML_TEMPLATE) == ChatML()
    # Jinja sources that spell the newline as backslash-n.
    escaped = SMOLLM2_TEMPLATE.replace("\n", "\\n")
    assert chat_format_from_template(escaped) == chat_format_from_template(SMOLLM2_TEMPLATE)
    assert chat_format_from_template(GEMMA3_TEMPLATE) == GemmaChat()
    assert chat_format_from_template("{{ messages }}") is None


def test_plain_exact_string():
    rendered = PlainChat().render([{"role": "system", "content": "S"}, {"role": "user", "content": "U\n"},
                                   {"role": "assistant", "content": "A"}], add_generation_prompt=True)
    assert rendered == "### System\nS\n\n### User\nU\n\n\n### Assistant\nA\n\n### Assistant\n"


def test_chat_format_needs_single_token_markers():
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab={"<": 0, "e": 1}, merges=[]))
    with pytest.raises(TokenizerError, match="single"):
        HFTokenizer(backend, eos_id=1, chat_format="chatml")
    tok = HFTokenizer(backend, eos_id=1)
    with pytest.raises(TokenizerError, match="no chat format"):
        tok.apply_chat_template([{"role": "user", "content": "e"}])


# --- HF tokenizers ---------------------------------------------------------------------------------------------


def build_bytelevel_bpe(folder: Path, template: str, *, llama3_bos: bool = False) -> Path:
    """A small byte-level BPE tokenizer.json plus tokenizer_config.json, as a ChatML model ships them."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False)
    backend.train_from_iterator(corpus(), trainer)
    if llama3_bos:  # Llama-3 style: the post-processor adds a bos on every encode
        backend.post_processor = tokenizers.processors.TemplateProcessing(
            single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)])
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    config = {"bos_token": None, "eos_token": {"content": "<|im_end|>", "special": True},
              "pad_token": "<|endoftext|>", "chat_template": template}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return build_bytelevel_bpe(tmp_path_factory.mktemp("hf"), SMOLLM2_TEMPLATE)


def test_hf_load_and_special_ids(hf_dir):
    tok = load_tokenizer(hf_dir)
    assert isinstance(tok, HFTokenizer)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (None, 2, 0, 600)
    assert tok.chat_format == chat_format_from_template(SMOLLM2_TEMPLATE)
    assert tok.stop_ids == (2, 0)
    with pytest.raises(TokenizerError, match="no bos"):
        tok.encode("x", add_bos=True)


def test_hf_matches_transformers(hf_dir):
    from transformers import PreTrainedTokenizerFast

    ours = load_tokenizer(hf_dir)
    theirs = PreTrainedTokenizerFast(tokenizer_file=str(hf_dir / "tokenizer.json"), eos_token="<|im_end|>")
    theirs.chat_template = SMOLLM2_TEMPLATE
    for text in HARD_TEXTS + shared_texts(100):
        ids = ours.encode(text)
        assert ids == theirs(text, add_special_tokens=False)["input_ids"], text
        assert ours.decode(ids) == text == theirs.decode(ids)
    for messages in CONVERSATIONS:
        expected = theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)["input_ids"]
        assert ours.encode_chat(messages) == expected
        assert ours.decode(expected) == ours.apply_chat_template(messages)


def test_hf_post_processor_bos_is_ours_to_add(tmp_path):
    tok = load_tokenizer(build_bytelevel_bpe(tmp_path, CHATML_TEMPLATE, llama3_bos=True))
    plain = tok.encode("hello")
    assert plain and plain[0] != 0  # the tokenizer.json post-processor would have put <|endoftext|> first
    assert tok.decode([0, *plain]) == "<|endoftext|>hello"
    assert tok.decode([0, *plain], skip_special_tokens=True) == "hello"


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(TokenizerError, match="neither"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="no tokenizer"):
        load_tokenizer(tmp_path / "missing")
    folder = build_bytelevel_bpe(tmp_path / "noeos", CHATML_TEMPLATE)
    (folder / "tokenizer_config.json").write_text("{}")
    with pytest.raises(TokenizerError, match="eos_token"):
        load_tokenizer(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nope|>"}))
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        load_tokenizer(folder)
