"""The critique viewer (spct_jax/eval/report.py): escaped, self-contained, and rendered by a real headless browser."""
from __future__ import annotations

import html.parser
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from spct_jax.eval.report import main as report_main
from spct_jax.eval.report import render_report, write_report

FIRST_CRITIQUE = "Response 1 states the correct sum; Response 2 claims 2 + 2 = 5, which is false."
INJECTION = '<script>document.body.dataset.pwned = "1"</script><img src=x onerror="alert(1)">'


def _sample(perm, scores, critique, *, meta=None, kept=True, error=None):
    return {"permutation": perm, "text": f"Specific Criteria: ...\nAnalysis: {critique}\nScores: ...",
            "principles": "Correctness (weight 60%): the arithmetic must be right.", "critique": critique,
            "scores": scores, "error": error, "meta_score": meta, "kept": kept}


ROWS = [
    {"uid": "11", "source": "rewardbench", "meta": {"subset": "math-prm"},
     "context": [{"role": "user", "content": "What is 2 + 2?"}], "responses": ["2 + 2 = 4.", "2 + 2 = 5."],
     "rewards": None, "best": 0,
     "samples": [_sample([1, 0], [9, 2], FIRST_CRITIQUE, meta=0.8),
                 _sample([0, 1], None, "", meta=-0.3, kept=False, error="no_boxed: no \\boxed{...} anywhere"),
                 _sample([0, 1], [7, 6], INJECTION, meta=0.1, kept=False)],
     "votes": [{"method": "voting", "k": 3, "k_meta": None, "totals": [16, 8], "best": 0, "kept": [0, 2],
                "num_valid": 2, "num_failed": 1},
               {"method": "metarm", "k": 3, "k_meta": 1, "totals": [9, 2], "best": 0, "kept": [0],
                "num_valid": 2, "num_failed": 1}]},
    {"uid": 'q"<b>', "source": "rewardbench", "meta": {"subset": "mt-bench-hard"},
     "context": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7."},
                 {"role": "user", "content": "A larger one & <why>?"}],
     "responses": ["11", "9"], "rewards": None, "best": 0,
     "samples": [_sample([0, 1], [3, 8], "9 is prime.", meta=0.5)],
     "votes": [{"method": "voting", "k": 1, "k_meta": None, "totals": [3, 8], "best": 1, "kept": [0],
                "num_valid": 1, "num_failed": 0}]},
]
RUNS = [{"method": "voting", "k": 3, "k_meta": None, "scores": {"Chat Hard": 0.5, "RewardBench": 0.5}}]


class _Collect(html.parser.HTMLParser):
    """Element ids / classes and the text of every element with an id, from the static page."""

    def __init__(self):
        super().__init__()
        self.stack: list[tuple[str, str | None]] = []
        self.text: dict[str, str] = {}
        self.classes: dict[str, str] = {}
        self.attrs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.attrs += [(tag, k, v or "") for k, v in attrs]
        if a.get("id"):
            self.text[a["id"]] = ""
            self.classes[a["id"]] = a.get("class") or ""
        if tag not in ("meta", "input", "br", "img"):
            self.stack.append((tag, a.get("id")))

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1][0] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data):
        for _, ident in self.stack:
            if ident:
                self.text[ident] += data


def _parse(page: str) -> _Collect:
    p = _Collect()
    p.feed(page)
    p.close()
    assert p.stack == [], f"unclosed elements {p.stack}"
    return p


def test_model_output_is_escaped_and_the_page_is_self_contained():
    page = render_report(ROWS, title="t <i>", runs=RUNS)
    assert page.count("<script") == 1  # only the viewer's own script; the critique's is text
    assert "&lt;script&gt;document.body.dataset.pwned" in page and "<img" not in page
    assert "t &lt;i&gt;" in page and 'data-uid="q&quot;&lt;b&gt;"' in page
    assert "A larger one &amp; &lt;why&gt;?" in page
    # Nothing is fetched: no URL scheme anywhere, no external stylesheet/script, every link is in-page.
    assert not re.search(r"(?i)\b(?:https?|ftp|file|data):|//[a-z0-9]", page)
    assert not re.search(r"(?i)<link\b|@import|url\(", page)
    for tag, attr, value in _parse(page).attrs:
        if attr in ("src", "href", "action", "srcset"):
            assert value.startswith("#"), (tag, attr, value)


def test_stable_hooks_hold_the_critiques_marks_and_votes():
    p = _parse(render_report(ROWS, runs=RUNS))
    assert p.classes["item-0-sample-0-critique"] == "critique"
    assert p.text["item-0-sample-0-critique"] == FIRST_CRITIQUE
    assert p.text["item-0-sample-0-principles"].startswith("Correctness (weight 60%)")
    assert p.classes["item-0-sample-0"] == "sample kept"
    assert p.classes["item-0-sample-1"] == "sample failed" and "no_boxed" in p.text["item-0-sample-1"]
    assert p.classes["item-0-sample-2"] == "sample dropped" and "meta score 0.1" in p.text["item-0-sample-2"]
    assert "shown in order [2, 1]" in p.text["item-0-sample-0"]  # 1-based, presented order
    assert "scores (original order) [9, 2]" in p.text["item-0-sample-0"]
    item0 = p.text["item-0"]
    assert "MetaRM@3 (k_meta=1): right" in item0 and "What is 2 + 2?" in item0
    assert "Voting@1: wrong (voted 2, ground truth 1)" in p.text["item-1"]
    assert "userName a prime.assistant7.user" in p.text["item-1"]  # the full context, every turn with its role
    assert p.text["item-0-response-0"].endswith("2 + 2 = 4.")


def test_write_report_and_cli_regenerate_the_viewer_from_items_jsonl(tmp_path):
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "results.json").write_text(json.dumps({"benchmark": "rewardbench", "model": "m", "runs": RUNS}))
    assert report_main([str(tmp_path / "items.jsonl"), "--limit", "1"]) == 0
    page = (tmp_path / "viewer.html").read_text()
    assert "the first 1 of 2 items" in page and "item-1" not in page
    write_report(tmp_path / "v2.html", ROWS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.jsonl", "results.json", "v2.html", "viewer.html"]


def _chromium() -> str | None:
    return shutil.which("chromium") or (str(Path("/usr/bin/chromium")) if Path("/usr/bin/chromium").exists() else None)


def test_viewer_renders_in_headless_chromium(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium); the viewer's browser test "
                    "needs a real browser")
    page = tmp_path / "viewer.html"
    write_report(page, ROWS, runs=RUNS)
    # Flags from ../shared/MACHINE-NOTES.md: without the background-networking ones chromium floods the closed
    # network; a fresh profile keeps runs independent.
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    assert FIRST_CRITIQUE in dom
    # The viewer's script ran to its end (it fills #shown and marks the body) ...
    assert 'data-ready="1"' in dom and "2 of 2 items shown" in dom
    # ... and the critique's script did not run: it stayed text.
    assert "data-pwned" not in dom and "&lt;script&gt;document.body.dataset.pwned" in dom
