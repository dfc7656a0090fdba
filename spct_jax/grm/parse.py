"""f_extract of Eq. 7: pull the integer scores (and the principle / critique text) out of a GRM generation.

The paper gives no regex; the App. G output format is
    Specific Criteria: ...
    Analysis: ...
    Scores: \\boxed{s_1, ..., s_n}
so the rule here is (our choice, kept strict because a wrong parse silently corrupts rewards):

1. Anchor: a "Scores:" line (case-sensitive, optional spaces before the colon; "Final Scores:" also matches)
   must come before the box. Only text after the FIRST anchor is searched, so a \\boxed{} quoted from a math
   response inside the analysis is never mistaken for the scores, and a later line that mentions "Scores:"
   again does not hide the box before it. With no anchor the parse FAILS (`no_scores_line`): a truncated
   generation such as "Analysis: the response concludes \\boxed{1}. However, step 3 divides by" must not earn
   RL's +1 (Eq. 11) for a box it only quoted. (The paper's Table 17 shows one output ending "### Output:
   \\boxed{10, 7}" without the App. G "Scores:" line; the App. G template asks for the line, and a stricter
   rule costs a failed sample where a looser one would hand a reward-hacking path to RL.)
2. Take the last \\boxed{ in that region and its matching } (nested braces counted). Unclosed -> failure.
3. Split the contents on ASCII commas. Each piece, stripped of whitespace, must be an optionally negative run
   of ASCII digits 0-9 (so Arabic-Indic '٣', full-width '３', '8.5', '**8**' are rejected; Python's int()
   would accept the first two). Pieces longer than `MAX_TOKEN_CHARS` are rejected without conversion, so
   huge numbers cost nothing and never hit Python's int-string limit.
4. Exactly `num_responses` pieces, each in [low, high] (the template's range, `prompts.score_range`).
5. A box whose pieces are all "x" is the template's own example (\\boxed{x, x}) echoed back: a failure.

Parsing never raises on any text: failures are values (`ParseResult.error`), whose prefix before ': ' is one of
`ERROR_CODES`, so reports can count failures by kind.
"""
from __future__ import annotations

import dataclasses
import numbers
import re

# Longest accepted score token: enough for any sane range, small enough that int() is trivially cheap.
MAX_TOKEN_CHARS = 12

ERROR_CODES = (
    "not_text",          # the input is not a str
    "no_scores_line",    # no "Scores:" anchor anywhere: a box without one is not trusted (rule 1)
    "no_boxed",          # no \boxed{ after the first "Scores:"
    "unclosed_boxed",    # the last \boxed{ has no matching }
    "template_echo",     # \boxed{x, x}: the template's example, not scores
    "wrong_count",       # not exactly num_responses comma-separated pieces
    "not_integer",       # a piece is not an ASCII integer
    "out_of_range",      # an integer outside [low, high]
)

_ANCHOR = re.compile(r"Scores[ \t]*:")
_BOXED = re.compile(r"\\boxed[ \t]*\{")
_INTEGER = re.compile(r"-?[0-9]+")  # explicit [0-9]: `\d` would match any Unicode decimal digit
# Section headers start with a literal so a search stays linear (a leading `\**` would rescan runs of '*').
_PRINCIPLES = re.compile(r"Specific Criteria[ \t]*\**[ \t]*:\**")
_CRITIQUE = re.compile(r"Analysis[ \t]*\**[ \t]*:\**")
_BRACE = re.compile(r"[{}]")
_SHOW = 40  # characters of offending text quoted in an error message


@dataclasses.dataclass(frozen=True)
class ParseResult:
    """Scores in the order the responses were presented, or the reason there are none."""

    scores: tuple[int, ...] | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.scores is not None

    @property
    def code(self) -> str | None:
        """The error kind (one of ERROR_CODES), or None when the parse succeeded."""
        return None if self.error is None else self.error.split(":", 1)[0]


def _fail(code: str, detail: str) -> ParseResult:
    return ParseResult(scores=None, error=f"{code}: {detail}")


def _show(s: str) -> str:
    return repr(s if len(s) <= _SHOW else s[:_SHOW] + "...")


def _last_match(pattern: re.Pattern[str], text: str, start: int = 0) -> re.Match[str] | None:
    last = None
    for last in pattern.finditer(text, start):
        pass
    return last


def _matching_brace(text: str, open_at: int) -> int:
    """Index of the } closing the { at `open_at`, or -1. Linear in the distance scanned."""
    depth = 0
    for m in _BRACE.finditer(text, open_at):
        depth += 1 if m.group() == "{" else -1
        if depth == 0:
            return m.start()
    return -1


def _scores_box(text: str) -> tuple[re.Match[str] | None, re.Match[str] | None]:
    """(the anchor that introduces the scores box, the box's opening match): the last \\boxed{ after the FIRST
    "Scores:", and the last "Scores:" before that box (which ends the critique). Either may be None."""
    first = _ANCHOR.search(text)
    if first is None:
        return None, None
    box = _last_match(_BOXED, text, first.end())
    if box is None:
        return first, None
    anchor = first
    for m in _ANCHOR.finditer(text, first.end(), box.start()):
        anchor = m
    return anchor, box


def last_boxed(text: str) -> tuple[str | None, str | None]:
    """(contents of the box holding the scores, None) or (None, error) following rules 1-2 above."""
    anchor, box = _scores_box(text)
    if anchor is None:
        return None, "no_scores_line: no 'Scores:' line, so no \\boxed{...} is taken as the scores"
    if box is None:
        return None, "no_boxed: no \\boxed{...} after 'Scores:'"
    close = _matching_brace(text, box.end() - 1)
    if close < 0:
        return None, f"unclosed_boxed: the last \\boxed{{ is never closed: {_show(text[box.end():])}"
    return text[box.end():close], None


def parse_scores(text: str, num_responses: int, *, low: int = 1, high: int = 10) -> ParseResult:
    """Exactly `num_responses` integers in [low, high] from the last \\boxed{} after 'Scores:' (module docstring).

    Defaults are the default template's range (App. G (a): 1..10); use `prompts.score_range(template)`.
    Raises ValueError only for bad arguments (num_responses < 1, low > high), never because of `text`.
    """
    if isinstance(num_responses, bool) or not isinstance(num_responses, numbers.Integral) or num_responses < 1:
        raise ValueError(f"num_responses must be a positive int, got {num_responses!r}")
    if low > high:
        raise ValueError(f"empty score range [{low}, {high}]")
    if not isinstance(text, str):
        return _fail("not_text", f"expected str, got {type(text).__name__}")
    contents, error = last_boxed(text)
    if contents is None:
        return ParseResult(scores=None, error=error)
    pieces = [p.strip() for p in contents.split(",")]
    if all(p in ("x", "X") for p in pieces):
        return _fail("template_echo", f"box contents {_show(contents)} repeat the template's example")
    if len(pieces) != num_responses:
        return _fail("wrong_count", f"expected {num_responses} scores, got {len(pieces)} in {_show(contents)}")
    scores = []
    for i, piece in enumerate(pieces, start=1):
        if len(piece) > MAX_TOKEN_CHARS:
            return _fail("out_of_range", f"score {i} has {len(piece)} characters: {_show(piece)}")
        if not _INTEGER.fullmatch(piece):
            return _fail("not_integer", f"score {i} is not an ASCII integer: {_show(piece)}")
        value = int(piece)
        if not low <= value <= high:
            return _fail("out_of_range", f"score {i} = {value} is outside [{low}, {high}]")
        scores.append(value)
    return ParseResult(scores=tuple(scores), error=None)


def _trim(section: str) -> str:
    # Markdown that opened the NEXT header ('**Analysis:**', '### Analysis:') is left at the end of a section.
    return section.strip().rstrip("*#").strip()


def split_sections(text: str) -> tuple[str, str]:
    """(principles, critique): the 'Specific Criteria:' and 'Analysis:' parts of a generation, stripped.

    Principles run from the first 'Specific Criteria:' to the next 'Analysis:' (or 'Scores:', or the end);
    the critique from the first 'Analysis:' after that to the 'Scores:' that introduces the scores box (or the
    last 'Scores:', or the end). Markdown bold
    around a header ('**Analysis:**') is allowed. A missing part is ''. Never raises.
    """
    if not isinstance(text, str):
        return "", ""
    principles, search_from = "", 0
    p_head = _PRINCIPLES.search(text)
    if p_head is not None:
        ends = [m.start() for m in (_CRITIQUE.search(text, p_head.end()), _ANCHOR.search(text, p_head.end())) if m]
        principles = _trim(text[p_head.end():min(ends, default=len(text))])
        search_from = p_head.end()
    critique = ""
    c_head = _CRITIQUE.search(text, search_from)
    if c_head is not None:
        # The 'Scores:' that introduces the scores box ends the critique (parse_scores' anchor): an earlier one
        # is prose inside the analysis, a later one prose after the scores. Without a box, the last one.
        anchor, box = _scores_box(text)
        if box is None or anchor.start() < c_head.end():
            anchor = _last_match(_ANCHOR, text, c_head.end())
        critique = _trim(text[c_head.end():len(text) if anchor is None else anchor.start()])
    return principles, critique
