"""Score extraction: the rules of parse.py, adversarial cases, and a 10k-example hypothesis fuzz."""
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spct_jax.grm.parse import ERROR_CODES, MAX_TOKEN_CHARS, parse_scores, split_sections

# The shape of a real output (App. F case study).
CASE_STUDY = """Specific Criteria:
1. **Depth of Analogies and Metaphors** (Weight: 30%): how vivid the analogies are.
2. **Clarity and Organization** (Weight: 20%): structure.
Analysis:
- **Response 1**: uses one analogy; the result \\boxed{3} is wrong.
- **Response 2**: richer.
Scores: \\boxed{8, 9}"""


def test_case_study_output():
    r = parse_scores(CASE_STUDY, 2)
    assert r.ok and r.scores == (8, 9) and r.error is None and r.code is None


def test_box_quoted_in_the_analysis_is_not_the_scores():
    r = parse_scores("Analysis: response 1 says \\boxed{7}.\nScores: 8, 9", 1)
    assert not r.ok and r.code == "no_boxed"


def test_last_box_after_scores_wins():
    assert parse_scores("Scores: \\boxed{1, 2}\nOn reflection:\n\\boxed{3, 4}", 2).scores == (3, 4)
    assert parse_scores("Scores: \\boxed{1, 2} and Final Scores: \\boxed{5,6}", 2).scores == (5, 6)


def test_without_a_scores_line_no_box_counts():
    # A truncated single-response trajectory quoting the judged response's own box: with the old fallback (last
    # box anywhere) it parsed as \boxed{1} and earned RL's +1 (Eq. 11): a reward-hacking path.
    truncated = "Analysis: The response concludes that x = 4, i.e. \\boxed{1}. However, step 3 divides by"
    r = parse_scores(truncated, 1, low=0, high=1)
    assert not r.ok and r.code == "no_scores_line"
    # The paper's Table 17 output without the App. G "Scores:" line fails too (the rule is strict by design).
    assert parse_scores("### Analysis: ...\n### Output: \\boxed{10, 7}", 2).code == "no_scores_line"


def test_a_later_mention_of_scores_does_not_hide_the_box():
    text = "Analysis: fine.\nScores: \\boxed{8, 9}\nThese Scores: reflect the criteria above."
    assert parse_scores(text, 2).scores == (8, 9)
    assert split_sections("Specific Criteria: p\n" + text) == ("p", "fine.")
    # An anchor inside the analysis and the real one: the box after them both is the scores.
    assert parse_scores("Analysis: Scores: are hard \\boxed{3}.\nScores: \\boxed{8, 9}", 2).scores == (8, 9)


@pytest.mark.parametrize("text,code", [
    ("Scores: <... e.g., \\boxed{x, x} if there exists 2 responeses>.", "template_echo"),
    ("Scores: \\boxed{x}", "template_echo"),
    ("Scores: \\boxed{X,x,x}", "template_echo"),
    ("Scores: \\boxed{8}", "wrong_count"),
    ("Scores: \\boxed{8, 9, 10}", "wrong_count"),
    ("Scores: \\boxed{8, 9,}", "wrong_count"),
    ("Scores: \\boxed{}", "wrong_count"),
    ("Scores: \\boxed{٣, 5}", "not_integer"),          # Arabic-Indic three: int() would accept it
    ("Scores: \\boxed{８, 5}", "not_integer"),          # full-width eight
    ("Scores: \\boxed{𝟠, 5}", "not_integer"),          # mathematical bold eight
    ("Scores: \\boxed{8.5, 5}", "not_integer"),
    ("Scores: \\boxed{**8**, 5}", "not_integer"),
    ("Scores: \\boxed{8/10, 5/10}", "not_integer"),
    ("Scores: \\boxed{1 0, 5}", "not_integer"),
    ("Scores: \\boxed{+8, 5}", "not_integer"),
    ("Scores: \\boxed{\\frac{1}{2}, 5}", "not_integer"),
    ("Scores: \\boxed{{8}, 5}", "not_integer"),
    ("Scores: \\boxed{11, 5}", "out_of_range"),
    ("Scores: \\boxed{0, 5}", "out_of_range"),
    ("Scores: \\boxed{-3, 5}", "out_of_range"),
    ("Scores: \\boxed{" + "9" * 100_000 + ", 5}", "out_of_range"),
    ("Scores: \\boxed{8, 9", "unclosed_boxed"),
    ("Scores: \\boxed{{8, 9}", "unclosed_boxed"),
    ("", "no_scores_line"),
    ("Analysis: \\boxed{8, 9}", "no_scores_line"),
    ("Scores:", "no_boxed"),
    ("Specific Criteria: ... Analysis: ... Scores: 8, 9", "no_boxed"),
])
def test_failures_have_reasons(text, code):
    r = parse_scores(text, 2)
    assert not r.ok and r.scores is None
    assert r.code == code, r.error
    assert len(r.error) < 200


def test_whitespace_and_leading_zeros_are_tolerated():
    assert parse_scores("Scores: \\boxed{ 8 ,\n 09 }", 2).scores == (8, 9)
    assert parse_scores("Scores : \\boxed {7,7}", 2).scores == (7, 7)


def test_single_response_range():
    assert parse_scores("Scores: \\boxed{1}", 1, low=0, high=1).scores == (1,)
    assert parse_scores("Scores: \\boxed{0}", 1, low=0, high=1).scores == (0,)
    assert parse_scores("Scores: \\boxed{7}", 1, low=0, high=1).code == "out_of_range"


def test_non_text_and_bad_arguments():
    assert parse_scores(None, 2).code == "not_text"  # type: ignore[arg-type]
    assert parse_scores(b"Scores: \\boxed{8, 9}", 2).code == "not_text"  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        parse_scores("x", 0)
    with pytest.raises(ValueError):
        parse_scores("x", 2, low=5, high=4)


def test_huge_inputs_are_cheap():
    junk = "{" * 2_000_000 + "\\boxed{" * 200_000 + "Scores:" * 200_000 + "*" * 1_000_000
    start = time.perf_counter()
    assert not parse_scores(junk, 2).ok
    assert split_sections(junk) == ("", "")
    assert parse_scores("Scores: \\boxed{" + "{}" * 500_000 + "{", 2).code == "unclosed_boxed"
    ok = parse_scores("a" * 5_000_000 + "Scores: \\boxed{3, 4}", 2)
    assert ok.scores == (3, 4)
    assert time.perf_counter() - start < 5.0


def test_split_sections():
    principles, critique = split_sections(CASE_STUDY)
    assert principles.startswith("1. **Depth of Analogies") and principles.endswith("structure.")
    assert critique.startswith("- **Response 1**") and critique.endswith("richer.")
    assert split_sections("**Specific Criteria:** p\n**Analysis:** c\n**Scores:** \\boxed{1}") == ("p", "c")
    assert split_sections("### Specific Criteria:\np\n### Analysis:\nc\n### Scores: \\boxed{1}") == ("p", "c")
    # The no_principles template's output, and garbage.
    assert split_sections("Analysis: only critique\nScores: \\boxed{3, 4}") == ("", "only critique")
    assert split_sections("Specific Criteria: p only") == ("p only", "")
    assert split_sections("nothing here") == ("", "")
    assert split_sections(None) == ("", "")  # type: ignore[arg-type]
    # A 'Scores:' inside the analysis does not cut the critique short: the last one ends it.
    assert split_sections("Analysis: R1 Scores: high.\nScores: \\boxed{2}")[1] == "R1 Scores: high."


# ---- property-based fuzz -------------------------------------------------------------------------------------

FRAGMENTS = [
    "Scores:", "Scores :", "Final Scores:", "scores:", "Specific Criteria:", "Analysis:", "**", "###",
    "\\boxed{", "\\boxed {", "\\boxed", "{", "}", "{{", "}}", ",", ", ", " ", "\n", "\t", "x", "X",
    "\\boxed{x, x}", "\\boxed{x}", "e.g., \\boxed{x, x} if there exists 2 responeses", "\\frac{1}{2}",
    "٣", "８", "𝟠", "¹", "Ⅷ", "-", "+", ".", "0", "1", "8", "10", "11", "007",
    "9" * MAX_TOKEN_CHARS, "9" * (MAX_TOKEN_CHARS + 1), "9" * 5000, "1e3", "0x10", "nan", "inf",
    "\x00", "\ud800", "\u200b", "\u00a0", "\\", "\\\\boxed{",
]


_ODD_SEPARATORS = [",", ", ", ",", " ,", "，", ";"]
_PREFIXES = ["", "Specific Criteria: a\nAnalysis: b\n", "Analysis: \\boxed{3}\n"]
_SUFFIXES = ["", "", "}", "\n", "\\boxed{", " Scores:", "{"]


def _random_piece(rnd) -> str:
    roll = rnd.random()
    if roll < 0.6:
        return str(rnd.randint(0, 11))
    if roll < 0.85:
        return rnd.choice(FRAGMENTS)
    return "".join(chr(rnd.randint(0, 0x2FFFF)) for _ in range(rnd.randint(0, 4)))


@st.composite
def adversarial_case(draw):
    """(text, num_responses): random unicode, a soup of the parser's own tokens, or a near-valid Scores line.

    The soups come from a Random seeded by one hypothesis draw: drawing every piece through hypothesis costs
    ~20x more per example (10k examples must stay well under 30 s); a failure still reproduces from the seed.
    """
    n = draw(st.integers(1, 6))
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.text(max_size=60)), n
    rnd = random.Random(draw(st.integers(0, 2**64 - 1)))
    if kind == 1:
        return "".join(_random_piece(rnd) for _ in range(rnd.randint(0, 40))), n
    # Near-valid: usually n pieces, mostly in-range integers, sometimes corrupted, odd separators or trailers.
    count = rnd.choice([n, n, n, n - 1, n + 1])
    body = rnd.choice(_ODD_SEPARATORS).join(_random_piece(rnd) if rnd.random() < 0.2 else str(rnd.randint(1, 10))
                                            for _ in range(count))
    return f"{rnd.choice(_PREFIXES)}Scores: \\boxed{{{body}}}{rnd.choice(_SUFFIXES)}", n


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=adversarial_case(), rng=st.sampled_from([(1, 10), (0, 1)]))
def test_fuzz_never_raises_and_every_failure_has_a_reason(case, rng):
    text, n = case
    low, high = rng
    r = parse_scores(text, n, low=low, high=high)
    if r.ok:
        assert r.error is None
        assert len(r.scores) == n and all(type(s) is int and low <= s <= high for s in r.scores)
        assert all(str(abs(s)) in text for s in r.scores)  # every score was written in ASCII digits
    else:
        assert r.scores is None and r.code in ERROR_CODES and len(r.error) > len(r.code) + 2
    principles, critique = split_sections(text)
    assert isinstance(principles, str) and isinstance(critique, str)


@settings(max_examples=500, deadline=None)
@given(scores=st.lists(st.integers(1, 10), min_size=1, max_size=8), junk=st.text(max_size=100),
       space=st.sampled_from(["", " ", "  ", "\n"]))
def test_fuzz_well_formed_outputs_round_trip(scores, junk, space):
    body = f",{space}".join(map(str, scores))
    text = f"Specific Criteria: {junk}\nAnalysis: {junk}\nScores: \\boxed{{{space}{body}{space}}}"
    assert parse_scores(text, len(scores)).scores == tuple(scores)
