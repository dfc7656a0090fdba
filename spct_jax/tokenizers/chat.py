"""Chat formats: how a list of `{"role", "content"}` messages becomes one prompt string.

They are written here, not rendered by a Jinja engine, so that a prompt is the same string whichever tokenizer
library is underneath. Each format is checked against the model's own Jinja template in the tests.

A rendered prompt never contains the bos token as text: `Tokenizer.encode_chat` adds the bos *id* when the
format asks for it (`ChatFormat.add_bos`). sentencepiece cannot read a control token back out of text, so keeping
bos out of the string is the only way every backend encodes a prompt the same.
"""
from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import ClassVar

Message = Mapping[str, str]


class ChatFormatError(ValueError):
    """A conversation the chat format cannot render (bad roles, order or types)."""


def _checked(messages: Sequence[Message]) -> list[tuple[str, str]]:
    pairs = []
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise ChatFormatError(f"message {index} needs string 'role' and 'content', got {dict(message)!r}")
        pairs.append((role, content))
    return pairs


class ChatFormat(abc.ABC):
    """One model family's conversation layout."""

    name: ClassVar[str]
    # Whether an encoded conversation starts with the bos id.
    add_bos: ClassVar[bool]
    # Markers the layout writes; each must encode to exactly one token, or the model sees a spelling it never saw.
    special_tokens: ClassVar[tuple[str, ...]]
    # Tokens that end an assistant turn, besides eos; those missing from a vocabulary are ignored.
    stop_tokens: ClassVar[tuple[str, ...]]

    @abc.abstractmethod
    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The prompt string, without bos."""


@dataclasses.dataclass(frozen=True)
class GemmaChat(ChatFormat):
    """Gemma's turns: `<start_of_turn>user\\n...<end_of_turn>\\n`, the assistant called `model`.

    Gemma has no system role; as Gemma-3's template does, a leading system message is folded into the first user
    turn as `system + "\\n\\n" + user`. Contents are stripped (the template's `| trim`) and roles must alternate
    user/assistant starting with user, as the template enforces.
    """

    name: ClassVar[str] = "gemma"
    add_bos: ClassVar[bool] = True
    special_tokens: ClassVar[tuple[str, ...]] = ("<start_of_turn>", "<end_of_turn>")
    stop_tokens: ClassVar[tuple[str, ...]] = ("<end_of_turn>",)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        turns = _checked(messages)
        prefix = ""
        if turns and turns[0][0] == "system":
            if len(turns) == 1:
                raise ChatFormatError("gemma: a system message must be followed by a user message to fold into")
            prefix = turns[0][1] + "\n\n"
            turns = turns[1:]
        parts = []
        for index, (role, content) in enumerate(turns):
            expected = "user" if index % 2 == 0 else "assistant"
            if role != expected:
                raise ChatFormatError(
                    f"gemma: roles must alternate user/assistant (after an optional leading system); "
                    f"turn {index} is {role!r}, expected {expected!r}"
                )
            speaker = "model" if role == "assistant" else role
            parts.append(f"<start_of_turn>{speaker}\n{prefix if index == 0 else ''}{content.strip()}<end_of_turn>\n")
        if add_generation_prompt:
            parts.append("<start_of_turn>model\n")
        return "".join(parts)


@dataclasses.dataclass(frozen=True)
class ChatML(ChatFormat):
    """ChatML (Qwen, SmolLM2): `<|im_start|>role\\ncontent<|im_end|>\\n`, contents verbatim.

    `default_system` is written as a system turn when the conversation does not start with one, as SmolLM2's
    ("You are a helpful AI assistant named SmolLM, trained by Hugging Face") and Qwen2.5's templates do.
    """

    default_system: str | None = None

    name: ClassVar[str] = "chatml"
    add_bos: ClassVar[bool] = False
    special_tokens: ClassVar[tuple[str, ...]] = ("<|im_start|>", "<|im_end|>")
    # Qwen's generation config also stops on <|endoftext|>, the base model's document end.
    stop_tokens: ClassVar[tuple[str, ...]] = ("<|im_end|>", "<|endoftext|>")

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        turns = _checked(messages)
        if self.default_system is not None and (not turns or turns[0][0] != "system"):
            turns = [("system", self.default_system), *turns]
        parts = [f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns]
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)


@dataclasses.dataclass(frozen=True)
class PlainChat(ChatFormat):
    """A marker-free layout for tiny demo models and vocabularies without chat tokens: `### User\\n...\\n\\n`.

    Headers sit on their own line so the generation prompt ends in a newline rather than a space, which
    subword vocabularies would otherwise glue to the first word of the answer.
    """

    name: ClassVar[str] = "plain"
    add_bos: ClassVar[bool] = True
    special_tokens: ClassVar[tuple[str, ...]] = ()
    stop_tokens: ClassVar[tuple[str, ...]] = ()

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        parts = [f"### {role.capitalize()}\n{content}\n\n" for role, content in _checked(messages)]
        if add_generation_prompt:
            parts.append("### Assistant\n")
        return "".join(parts)


CHAT_FORMATS: dict[str, type[ChatFormat]] = {cls.name: cls for cls in (GemmaChat, ChatML, PlainChat)}


def get_chat_format(spec: str | ChatFormat) -> ChatFormat:
    """A format by name ('gemma', 'chatml', 'plain') or the instance itself."""
    if isinstance(spec, ChatFormat):
        return spec
    if spec not in CHAT_FORMATS:
        raise ChatFormatError(f"unknown chat format {spec!r}; known: {sorted(CHAT_FORMATS)}")
    return CHAT_FORMATS[spec]()


# The literal system turn a ChatML template writes when the conversation has none. Quotes and braces are excluded
# so that a turn built from `messages[0]['content']` is never mistaken for a literal. Jinja sources spell the
# newline either as a real one or as the two characters backslash-n.
_CHATML_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system(?:\n|\\n)([^'\"{}]+?)<\|im_end\|>")


def chat_format_from_template(template: str) -> ChatFormat | None:
    """Recognise the family of a Jinja chat template (tokenizer_config.json, GGUF `tokenizer.chat_template`).

    Only the family is read from the template; the layout itself is ours. Returns None for an unknown family.
    """
    if "<start_of_turn>" in template:
        return GemmaChat()
    if "<|im_start|>" in template:
        found = _CHATML_DEFAULT_SYSTEM.search(template)
        return ChatML(default_system=found.group(1).replace("\\n", "\n") if found else None)
    return None
