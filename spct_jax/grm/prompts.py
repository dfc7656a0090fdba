"""The GRM's prompts: the paper's App. G templates, kept as data in `templates/*.txt`.

Every template file cites its source in a `%%` header; the text itself is the paper's, typos included
("The Begin of", "responeses"), because the released checkpoints were trained on exactly these strings.
Some pieces are OUR wording, documented as such in their files: the reference-answer section
(`reference.txt`, the paper does not print it), the `no_principles` ablation (`no_principles.txt`) and the two
short templates of the embedded CPU demo (`toy.txt`, `toy_no_principles.txt`).

Template names accepted by `build_prompt`:

  "default"        App. G (a): n >= 1 responses, integer scores 1..10 (also used for single responses at eval,
                   App. D.1: ReaLMistake is rated "in the same range ... as other benchmarks").
  "single"         App. G (b): exactly 1 response, score 0 or 1 (single-response RM training data, App. C.1).
  "judge"          App. G (d): LLM-as-a-Judge baseline, n >= 2, outputs the 1-based index of the best response.
  "no_principles"  ours: the default template without principle generation (the 'w/o Principle Generation' ablation).
  "toy"            ours: "default" with its instruction block cut to one line and one line per response. Written
                   for the CPU demo's synthetic task (spct_jax/demo/toy.py), where the ~600-token block would
                   dominate a tiny model's compute; generic text, so tests and smoke runs use it for short prompts.
  "toy_no_principles"  ours: "toy" without principle generation (the demo's ablation).

The meta-RM template (App. G (c)) has two turns and its own builder, `build_metarm_prompt`.
The model's chat template is applied by the caller (tokenizer), not here.

Responses are numbered in the order given: to shuffle, permute the list first (see `voting.permute`).

Context rendering (our choice; the paper shows only "{conversation context & query}"):
  * a string is inserted as is;
  * a list holding a single user turn renders as that turn's content alone, so the string and list forms of a
    single-turn query give the same prompt;
  * any other list renders EVERY turn, in order, as "<Role>: <content>" with Role in {System, User, Assistant},
    turns separated by a blank line. The template says "the last round is the User's query", so we do not drop
    or reorder turns.
"""
from __future__ import annotations

import functools
import importlib.resources
import numbers
import re
import types
from collections.abc import Mapping, Sequence
from typing import Union

CITATION = ('Liu, Wang, Xu, Ma, Ruan, Li, Liu, Wu. "Inference-Time Scaling for Generalist Reward Modeling". '
            "arXiv 2504.02495 (v3, 2025), Appendix G (prompt templates).")

TEMPLATES = ("default", "single", "judge", "no_principles", "toy", "toy_no_principles")

# Score range printed in each pointwise template: App. G (a) "an integer between 1 and 10",
# App. G (b) "The score is 0 or 1". The judge template outputs an index, so it has no score range.
_SCORE_RANGES: dict[str, tuple[int, int]] = {
    "default": (1, 10),
    "no_principles": (1, 10),
    "toy": (1, 10),
    "toy_no_principles": (1, 10),
    "single": (0, 1),
}

_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")

Context = Union[str, Sequence[Mapping[str, str]]]


@functools.lru_cache(maxsize=None)
def load_template(name: str) -> Mapping[str, str]:
    """Sections of `templates/<name>.txt` ("prompt", optionally "response"), `%%` comments removed.

    A section is the text between its `@@ <section>` line and the next one; trailing newlines are dropped.
    """
    path = importlib.resources.files("spct_jax.grm").joinpath("templates", f"{name}.txt")
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.startswith("%%"):
            continue
        if line.startswith("@@ "):
            current = sections.setdefault(line[3:].strip(), [])
            continue
        if current is not None:
            current.append(line)
    if "prompt" not in sections:
        raise ValueError(f"template file {name}.txt has no '@@ prompt' section")
    # Read-only: the result is cached and shared by every caller.
    return types.MappingProxyType({key: "\n".join(lines).rstrip("\n") for key, lines in sections.items()})


def _fill(text: str, values: Mapping[str, str]) -> str:
    # One pass, so placeholder-like text inside a response or the context is never expanded.
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def score_range(template: str) -> tuple[int, int]:
    """(low, high) of the integer scores a pointwise template asks for: default 1..10, single 0..1."""
    if template not in _SCORE_RANGES:
        raise ValueError(f"template {template!r} has no pointwise score range (pointwise: {sorted(_SCORE_RANGES)})")
    return _SCORE_RANGES[template]


def render_context(context: Context) -> str:
    """The conversation as it appears under '#### Conversation Context ####' (rules in the module docstring)."""
    if isinstance(context, str):
        return context
    turns = list(context)
    if not turns:
        raise ValueError("context is an empty list of turns")
    for turn in turns:
        well_formed = isinstance(turn, Mapping) and turn.get("role") in _ROLE_NAMES
        if not well_formed or not isinstance(turn.get("content"), str):
            raise ValueError(f"bad context turn {turn!r}: need role in {sorted(_ROLE_NAMES)} and str content")
    if len(turns) == 1 and turns[0]["role"] == "user":
        return turns[0]["content"]
    return "\n\n".join(f"{_ROLE_NAMES[t['role']]}: {t['content']}" for t in turns)


def _render_responses(block: str, responses: Sequence[str]) -> str:
    for r in responses:
        if not isinstance(r, str):
            raise ValueError(f"responses must be strings, got {type(r).__name__}")
    return "\n".join(_fill(block, {"i": str(i), "response": r}) for i, r in enumerate(responses, start=1))


def hint_suffix(hint_best: int, num_responses: int) -> str:
    """'The best response is: Response {j}' (§3.2), j = hint_best + 1; hint_best is 0-based in presented order."""
    if isinstance(hint_best, bool) or not isinstance(hint_best, numbers.Integral) or not 0 <= hint_best < num_responses:
        raise ValueError(f"hint_best={hint_best!r} is not a 0-based index into {num_responses} responses")
    return _fill(load_template("hint")["prompt"], {"j": str(int(hint_best) + 1)})


def reference_section(reference: str) -> str:
    """Our reference-answer section (the paper's wording is not printed; see templates/reference.txt)."""
    if not isinstance(reference, str):
        raise ValueError(f"reference must be a string, got {type(reference).__name__}")
    return _fill(load_template("reference")["prompt"], {"reference": reference})


def build_prompt(context: Context, responses: Sequence[str], *, template: str = "default",
                 hint_best: int | None = None, reference: str | None = None) -> str:
    """The user-turn text asking the GRM to judge `responses` (numbered 1..n in the order given).

    hint_best: 0-based index, in the presented order, of the ground-truth best response; appends the
        hinted-sampling suffix on its own line (RFT only, §3.2). Not allowed for "single" (nothing to rank).
    reference: optional reference answer, inserted as its own section before the responses (our wording).
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose one of {TEMPLATES}")
    responses = list(responses)
    n = len(responses)
    if template == "single" and n != 1:
        raise ValueError(f"template 'single' rates exactly 1 response, got {n}")
    if template == "judge" and n < 2:
        raise ValueError(f"template 'judge' selects among >= 2 responses, got {n}")
    if n < 1:
        raise ValueError("no responses to score")
    if template == "single" and hint_best is not None:
        raise ValueError("hint_best names the best of several responses; template 'single' has one")
    parts = load_template(template)
    text = _fill(parts["prompt"], {
        "context": render_context(context),
        "reference": "" if reference is None else reference_section(reference) + "\n\n",
        "responses": _render_responses(parts["response"], responses),
    })
    if hint_best is not None:
        text += "\n" + hint_suffix(hint_best, n)
    return text


def build_metarm_prompt(context: Context, responses: Sequence[str], trajectory: str) -> tuple[str, str]:
    """(user text, assistant text) for the meta RM (App. G (c)); the assistant text is the GRM trajectory as is.

    `responses` must be in the order the trajectory saw them, since its scores refer to those positions.
    """
    responses = list(responses)
    if not responses:
        raise ValueError("no responses")
    if not isinstance(trajectory, str):
        raise ValueError(f"trajectory must be a string, got {type(trajectory).__name__}")
    parts = load_template("metarm")
    user = _fill(parts["prompt"], {
        "context": render_context(context),
        "responses": _render_responses(parts["response"], responses),
    })
    return user, trajectory
