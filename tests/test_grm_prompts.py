"""The App. G templates: the paper's lines verbatim, numbering, hint, reference, context rendering."""
import importlib.resources

import pytest

from spct_jax.grm import prompts
from spct_jax.grm.prompts import build_metarm_prompt, build_prompt, render_context, score_range

# Lines of App. G (a) as printed in arXiv 2504.02495 v3 (typos included: they are what the checkpoints saw).
DEFAULT_KEY_LINES = [
    "You are a skilled little expert at scoring responses. You should evaluate given responses based on the given "
    "judging criteria.",
    "Given the context of the conversation (the last round is the User's query) and multiple responses from the "
    "Assistant, you need to refer to the [General Evaluation Criteria] to score the responses. Based on the general "
    "evaluation criteria, state potential other specific criteria to the query, the weights of different criteria, "
    "and then provide an overall comprehensive score upon them.",
    "Each score is an integer between 1 and 10, with a higher score indicating that the response meets the relevant "
    "criteria more closely. For example, a score of 1 means the response does not meet the criteria at all, a score "
    "of 6 means the response meets only some parts, and a score of 10 means the response perfectly meets the "
    "evaluation criteria.",
    "Before scoring, please analyze step by step. Your scoring needs to be as strict as possible.",
    "#### Evaluation Criteria ####",
    "1. Instruction Adherence:",
    "- Fully Adhered (9-10 points): The response fully complies with all instructions and requirements of the "
    "question.",
    "2. Usefulness:",
    "3. Level of Detail:",
    "4. Relevance:",
    "- Not Relevant (1-2 points): The response is completely irrelevant.",
    "#### Conversation Context ####",
    "#### Responses to be Scored ####",
    "#### Output Format Requirements ####",
    "Output with three lines",
    "Specific Criteria: <Other potential criteria specific to the query and the context, and the weights of each "
    "criteria>.",
    "Analysis: <Compare different responses based on given Criteria>.",
    "Scores: <the overall comprehensive score of all responses in order, separate by comma in the boxed, e.g., "
    "\\boxed{x, x} if there exists 2 responeses>.",
]


def test_default_template_has_the_papers_lines_verbatim():
    text = build_prompt("What is 2+2?", ["4", "5"])
    for line in DEFAULT_KEY_LINES:
        assert line in text, line
    assert text.splitlines()[0] == DEFAULT_KEY_LINES[0]
    assert "%%" not in text and "{{" not in text and "@@" not in text


def test_responses_numbered_in_presented_order():
    responses = [f"answer number {i}" for i in range(5)]
    text = build_prompt("q", responses)
    positions = []
    for i, r in enumerate(responses, start=1):
        block = f"[The Begin of Response {i}]\n{r}\n[The End of Response {i}]"
        assert text.count(block) == 1
        positions.append(text.index(block))
    assert positions == sorted(positions)
    assert text.index("#### Conversation Context ####\nq\n") < positions[0]


def test_hint_is_appended_one_based():
    text = build_prompt("q", ["a", "b", "c"], hint_best=2)
    assert text.endswith("\nThe best response is: Response 3")
    assert build_prompt("q", ["a", "b"]).endswith("responeses>.")
    for bad in (3, -1, True, 1.0):
        with pytest.raises(ValueError):
            build_prompt("q", ["a", "b", "c"], hint_best=bad)
    with pytest.raises(ValueError):
        build_prompt("q", ["a"], template="single", hint_best=0)


def test_multi_turn_context_keeps_every_turn_in_order():
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
             {"role": "assistant", "content": "Hello!\nHow can I help?"}, {"role": "user", "content": "Final query"}]
    rendered = render_context(turns)
    assert rendered == "System: Be brief.\n\nUser: Hi there\n\nAssistant: Hello!\nHow can I help?\n\nUser: Final query"
    text = build_prompt(turns, ["r1", "r2"])
    assert f"#### Conversation Context ####\n{rendered}\n\n#### Responses to be Scored ####" in text


def test_single_user_turn_renders_like_a_string():
    assert build_prompt([{"role": "user", "content": "q?"}], ["a"]) == build_prompt("q?", ["a"])


@pytest.mark.parametrize("turns", [[], [{"role": "robot", "content": "x"}], [{"role": "user"}], ["user: x"]])
def test_bad_context_raises(turns):
    with pytest.raises(ValueError):
        render_context(turns)


def test_single_response_training_template():
    text = build_prompt("Is 7 prime?", ["Yes."], template="single")
    assert ("and then provide an overall comprehensive score upon them. The score is 0 or 1, with 1 indicating that "
            "the response is correct.\nBefore scoring, please analyze step by step.") in text
    for line in ["2. Clarity:", "3. Accuracy:",
                 "- Very Clear: The response is fluent, well-structured, and logically clear.",
                 "- Mostly Incorrect: There are numerous errors seriously affecting the credibility of the "
                 "information.",
                 "[The Begin of Response]\nYes.\n[The End of Response]",
                 "Scores: <the overall comprehensive score of the response, e.g., \\boxed{x}>."]:
        assert line in text, line
    assert "points)" not in text and "Usefulness" not in text and "Response 1" not in text
    with pytest.raises(ValueError):
        build_prompt("q", ["a", "b"], template="single")


def test_judge_template():
    text = build_prompt("q", ["a", "b"], template="judge")
    assert "and then select the best response among all candidates.\nBefore judging, please analyze step by step. " \
           "Your judgement needs to be as strict as possible." in text
    assert "Scores: <the index of the best response based on the judgement, in the format of \\boxed{x}>." in text
    assert "4. Relevance:" in text and "points)" not in text and "Each score is an integer" not in text
    with pytest.raises(ValueError):
        build_prompt("q", ["a"], template="judge")


def test_no_principles_variant_drops_only_principle_generation():
    text = build_prompt("q", ["a", "b"], template="no_principles")
    default = build_prompt("q", ["a", "b"])
    assert "Specific Criteria" not in text and "weights of different criteria" not in text
    assert "Output with two lines\nAnalysis: <Compare different responses based on given Criteria>.\nScores: <" in text
    assert "Each score is an integer between 1 and 10" in text and "4. Relevance:" in text
    assert text.split("#### Evaluation Criteria ####")[1].split("#### Output")[0] == \
        default.split("#### Evaluation Criteria ####")[1].split("#### Output")[0]


def test_reference_is_its_own_section_before_the_responses():
    text = build_prompt("What is 6*7?", ["42", "41"], reference="6*7 = 42")
    ref = text.index("#### Reference Answer ####")
    assert text.index("#### Conversation Context ####") < ref < text.index("#### Responses to be Scored ####")
    assert "\n6*7 = 42\n\n#### Responses to be Scored ####" in text
    assert "Reference Answer" not in build_prompt("What is 6*7?", ["42", "41"])
    single = build_prompt("q", ["a"], template="single", reference="r")
    assert "#### Reference Answer ####" in single


def test_placeholders_in_user_text_are_not_expanded():
    text = build_prompt("{{responses}} {{context}}", ["{{i}} {{response}}", "{{reference}}"])
    assert "{{responses}} {{context}}" in text
    assert "[The Begin of Response 1]\n{{i}} {{response}}\n[The End of Response 1]" in text
    assert "[The Begin of Response 2]\n{{reference}}\n" in text


def test_unknown_template_and_bad_responses():
    with pytest.raises(ValueError):
        build_prompt("q", ["a"], template="nope")
    with pytest.raises(ValueError):
        build_prompt("q", [])
    with pytest.raises(ValueError):
        build_prompt("q", ["a", 3])


def test_metarm_prompt_is_two_turns():
    user, assistant = build_metarm_prompt([{"role": "user", "content": "q"}], ["a", "b"], "Scores: \\boxed{3, 9}")
    assert user.startswith("Please score the responses.\n#### Conversation Context ####\nq\n")
    assert "[The Begin of Response 2]\nb\n[The End of Response 2]" in user
    assert assistant == "Scores: \\boxed{3, 9}"


def test_score_ranges():
    assert score_range("default") == (1, 10)
    assert score_range("no_principles") == (1, 10)
    assert score_range("single") == (0, 1)
    with pytest.raises(ValueError):
        score_range("judge")


def test_every_template_file_cites_the_paper():
    assert "2504.02495" in prompts.CITATION and "Appendix G" in prompts.CITATION
    folder = importlib.resources.files("spct_jax.grm").joinpath("templates")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".txt"))
    assert names == ["default.txt", "hint.txt", "judge.txt", "metarm.txt", "no_principles.txt", "reference.txt",
                     "single.txt", "toy.txt", "toy_no_principles.txt"]
    for name in names:
        lines = folder.joinpath(name).read_text(encoding="utf-8").splitlines()
        header = [line for line in lines if line.startswith("%%")]
        assert any("2504.02495" in line for line in header), name
    for ours in ("no_principles.txt", "reference.txt", "toy.txt", "toy_no_principles.txt"):
        assert "OUR wording" in folder.joinpath(ours).read_text(encoding="utf-8")
