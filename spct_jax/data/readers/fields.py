"""Typed field access on one decoded row, so every reader's error names `file:line` and the field.

Readers never index a raw dict directly: a KeyError or TypeError deep inside a converter would lose the row's
location, and the issue asks that every bad row be reported as `file:line` plus the offending field.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, NoReturn

from spct_jax.data.schema import DataError, PreferenceItem, Turn


@dataclasses.dataclass(frozen=True)
class Drop:
    """A row that is well formed but deliberately not turned into an item (e.g. a tie); counted, never silent."""

    reason: str


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


class Row:
    """A decoded JSON object with its location; `prefix` names nested objects (e.g. `chosen.answer`)."""

    def __init__(self, value: Mapping[str, Any], loc: str, prefix: str = ""):
        self.value = value
        self.loc = loc
        self.prefix = prefix

    def fail(self, field: str, problem: str) -> NoReturn:
        raise DataError(f"{self.loc}: field '{self.prefix}{field}': {problem}")

    def has(self, name: str) -> bool:
        return self.value.get(name) is not None

    def raw(self, name: str) -> Any:
        if name not in self.value:
            self.fail(name, "missing")
        return self.value[name]

    def text(self, name: str) -> str:
        v = self.raw(name)
        if not isinstance(v, str):
            self.fail(name, f"expected a string, got {_type_name(v)}")
        return v

    def opt_text(self, name: str) -> str | None:
        v = self.value.get(name)
        if v is None:
            return None
        if not isinstance(v, str):
            self.fail(name, f"expected a string, got {_type_name(v)}")
        return v

    def ident(self, name: str) -> str:
        """An id field: a string or an integer (bools and floats are rejected, they are never real ids)."""
        v = self.raw(name)
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            self.fail(name, f"expected a string or integer id, got {_type_name(v)}")
        if isinstance(v, str) and not v.strip():
            self.fail(name, "empty id")
        return str(v)

    def number(self, name: str) -> float:
        return self.as_number(name, self.raw(name))

    def as_number(self, name: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            self.fail(name, f"expected a finite number, got {v!r}")
        return float(v)

    def seq(self, name: str, *, nonempty: bool = True) -> list[Any]:
        v = self.raw(name)
        if not isinstance(v, list):
            self.fail(name, f"expected a list, got {_type_name(v)}")
        if nonempty and not v:
            self.fail(name, "empty list")
        return v

    def sub(self, name: str) -> "Row":
        v = self.raw(name)
        if not isinstance(v, Mapping):
            self.fail(name, f"expected an object, got {_type_name(v)}")
        return Row(v, self.loc, f"{self.prefix}{name}.")

    def element(self, name: str, i: int, v: Any) -> "Row":
        if not isinstance(v, Mapping):
            self.fail(f"{name}[{i}]", f"expected an object, got {_type_name(v)}")
        return Row(v, self.loc, f"{self.prefix}{name}[{i}].")


# Role spellings seen in the real formats, mapped onto the schema's three roles.
ROLE_ALIASES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


def turns(row: Row, name: str, *, role_key: str = "role", content_key: str = "content") -> list[Turn]:
    """A list of chat messages (any role spelling in ROLE_ALIASES) as schema Turns."""
    out: list[Turn] = []
    for i, t in enumerate(row.seq(name)):
        msg = row.element(name, i, t)
        role = msg.text(role_key)
        if role.lower() not in ROLE_ALIASES:
            msg.fail(role_key, f"unknown role {role!r} (expected one of {sorted(ROLE_ALIASES)})")
        out.append(Turn(role=ROLE_ALIASES[role.lower()], content=msg.text(content_key)))
    return out


def prompt_context(row: Row, name: str) -> list[Turn]:
    """A `prompt` that is either the user's query as a string or a list of {role, content} turns."""
    v = row.raw(name)
    if isinstance(v, str):
        return [Turn(role="user", content=v)]
    if isinstance(v, list):
        return turns(row, name)
    row.fail(name, f"expected a string or a list of turns, got {_type_name(v)}")


def make_item(row: Row, field: str, *, require_query: bool = True, **kwargs: Any) -> PreferenceItem:
    """Build a PreferenceItem; schema errors get the row's location, and the context must end on the query.

    `field` names where the context came from, so a conversation that does not end with a user turn (the paper:
    'the last round is the User's query') is reported against the input field, not an internal name.
    """
    context = kwargs["context"]
    if require_query and (not context or context[-1]["role"] != "user"):
        last = context[-1]["role"] if context else "nothing"
        row.fail(field, f"the conversation must end with a user turn, it ends with {last}")
    try:
        return PreferenceItem(**kwargs)
    except DataError as e:
        raise DataError(f"{row.loc}: {e}") from None
