"""The generative reward model of SPCT (DeepSeek-GRM, arXiv 2504.02495): prompts, parsing, rules and voting.

Data flows one way through these modules:
    prompts (App. G templates) -> [sampler] -> parse (f_extract, Eq. 7) -> rules (Eq. 10/11) | voting (Eq. 14)

Only the light, model-free modules are imported here; the scorer (which needs a model) is imported explicitly.
"""
from spct_jax.grm.parse import ParseResult, parse_scores, split_sections
from spct_jax.grm.prompts import CITATION, TEMPLATES, build_metarm_prompt, build_prompt, render_context, score_range
from spct_jax.grm.rules import is_correct, rule_reward
from spct_jax.grm.voting import Vote, permute, sample_permutations, seeded_argmax, unpermute, vote

__all__ = [
    "CITATION", "TEMPLATES", "ParseResult", "Vote", "build_metarm_prompt", "build_prompt", "is_correct",
    "parse_scores", "permute", "render_context", "rule_reward", "sample_permutations", "score_range",
    "seeded_argmax", "split_sections", "unpermute", "vote",
]
