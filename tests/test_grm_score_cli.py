"""`spct score` failure modes (issue 34): each is one line on stderr naming the file, line, field or value, with
the documented exit status (2: command line / settings; 1: unreadable input or checkpoint), found before the
model loads when it can be, and leaves nothing behind: no output, no `.partial` file, no `.judging` folder.

Items follow `spct serve`'s rules (grm/judge.py): a string where a list of responses belongs is refused, not
judged one character at a time, and a prompt longer than the model's positions less --max-new-tokens is refused.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from spct_jax.cli import main as spct

ITEM = {"context": "What is 2+2?", "responses": ["4", "5"]}
FAST = ["--template", "toy", "--max-new-tokens", "4"]


def write_lines(path: Path, *rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    """Everything under `folder` but the files the test made itself."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name not in keep)


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model is loaded: the refusals below must come first."""
    import spct_jax.grm.judge as judge

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the failure was found")

    monkeypatch.setattr(judge, "load_judge", refuse)


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_string_of_responses_is_refused_not_split_into_characters(tmp_path, capsys, no_model):
    src = write_lines(tmp_path / "items.jsonl", ITEM, {"context": "hi", "responses": "abc"})
    assert spct(["score", "--model", "tiny-random", "--input", str(src), "--output", str(tmp_path / "o.jsonl")]) == 1
    line = one_line(capsys)
    assert "items.jsonl:2: responses: must be a list of strings, got str" in line, line
    assert leftovers(tmp_path, {"items.jsonl"}) == []


@pytest.mark.parametrize("row,field", [
    ({"context": "q", "responses": ["a", 3]}, "responses[1]: must be a string, got int"),
    ({"context": [{"role": "bot", "content": "x"}], "responses": ["a"]}, "context[0]: must be"),
    ({"context": "q", "responses": []}, "responses: must not be empty"),
    ('{"context": "q", "responses": ["a"', "invalid JSON"),
])
def test_bad_lines_name_the_line_and_field_as_the_server_does(tmp_path, capsys, no_model, row, field):
    src = write_lines(tmp_path / "items.jsonl", ITEM, ITEM, row)
    assert spct(["score", "--model", "tiny-random", "--input", str(src), "--output", str(tmp_path / "o.jsonl")]) == 1
    line = one_line(capsys)
    assert "items.jsonl:3: " in line and field in line, line
    assert leftovers(tmp_path, {"items.jsonl"}) == []


def test_non_utf8_input_is_one_line_as_data_check_says_it(tmp_path, capsys, no_model):
    src = tmp_path / "items.jsonl"
    src.write_bytes(json.dumps(ITEM).encode() + b'\n{"context": "h\xff\xfei", "responses": ["a", "b"]}\n')
    assert spct(["score", "--model", "tiny-random", "--input", str(src), "--output", str(tmp_path / "o.jsonl")]) == 1
    line = one_line(capsys)
    assert "items.jsonl:2: not valid UTF-8 (byte 0xff at column 15)" in line, line
    assert spct(["data", "check", str(src)]) == 1
    assert "items.jsonl:2: not valid UTF-8 (byte 0xff at column 15)" in capsys.readouterr().out
    assert leftovers(tmp_path, {"items.jsonl"}) == []


def test_a_prompt_too_long_for_the_model_is_refused_before_it_loads(tmp_path, capsys, no_model):
    """~15k tokens of context on tiny-random's 8,192 positions: the red team's 103 s of judging, exit 0."""
    src = write_lines(tmp_path / "items.jsonl", ITEM, {"context": "x" * 15000, "responses": ["a", "b"]})
    assert spct(["score", "--model", "tiny-random", "--input", str(src), "--output", str(tmp_path / "o.jsonl")]) == 1
    line = one_line(capsys)
    assert "items.jsonl:2: the GRM prompt has 18900 tokens, over the 7680 a prompt may have (the model's 8192 " \
           "positions less --max-new-tokens 512)" in line, line
    assert leftovers(tmp_path, {"items.jsonl"}) == []


@pytest.mark.parametrize("flags,message", [
    (["--k", "0"], "--k must be >= 1, got 0"),
    (["--batch-items", "0"], "--batch-items must be >= 1, got 0"),
    (["--max-new-tokens", "5000"], "template 'default' alone takes 3847 tokens"),
    (["--template", "nope"], "--template 'nope': unknown template"),
])
def test_bad_settings_exit_2_with_one_line_and_leave_nothing(tmp_path, capsys, no_model, flags, message):
    src = write_lines(tmp_path / "items.jsonl", ITEM)
    out = tmp_path / "out" / "o.jsonl"
    assert spct(["score", "--model", "tiny-random", "--input", str(src), "--output", str(out), *flags]) == 2
    assert message in one_line(capsys)
    assert leftovers(tmp_path, {"items.jsonl"}) == []  # not even the output folder


def test_output_equal_to_input_is_refused_and_the_input_kept(tmp_path, capsys, no_model, monkeypatch):
    src = write_lines(tmp_path / "items.jsonl", ITEM, ITEM)
    before = src.read_bytes()
    (tmp_path / "link.jsonl").symlink_to(src)
    monkeypatch.chdir(tmp_path)
    for out in (str(src), "./items.jsonl", "sub/../items.jsonl", "link.jsonl"):
        assert spct(["score", "--model", "tiny-random", "--input", "items.jsonl", "--output", out]) == 2, out
        assert "is the --input file" in one_line(capsys)
    assert src.read_bytes() == before
    assert leftovers(tmp_path, {"items.jsonl", "link.jsonl"}) == []


def test_output_paths_are_checked_before_the_model_loads(tmp_path, capsys, no_model):
    src = write_lines(tmp_path / "items.jsonl", ITEM)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for out, message in [(a_file / "o.jsonl", f"{a_file} is a file, not a folder"),
                         (a_file / "deeper" / "o.jsonl", f"{a_file} is a file, not a folder"),
                         (tmp_path, "is a folder; give a file name")]:
        assert spct(["score", "--model", "tiny-random", "--input", str(src), "--output", str(out)]) == 2
        assert message in one_line(capsys)
    assert leftovers(tmp_path, {"items.jsonl", "a-file"}) == []


def test_an_output_in_a_missing_folder_is_written(tmp_path, capsys):
    src = write_lines(tmp_path / "items.jsonl", ITEM)
    out = tmp_path / "new" / "deeper" / "j.jsonl"
    assert spct(["score", "--model", "tiny-random", "--input", str(src), "--output", str(out), *FAST]) == 0
    assert len(out.read_text().splitlines()) == 1
    assert leftovers(tmp_path, {"items.jsonl"}) == ["new", "new/deeper", "new/deeper/j.jsonl"]


def test_an_empty_input_is_refused(tmp_path, capsys, no_model):
    src = tmp_path / "items.jsonl"
    src.write_text("\n\n")
    assert spct(["score", "--model", "tiny-random", "--input", str(src), "--output", str(tmp_path / "o.jsonl")]) == 1
    assert "items.jsonl: no items" in one_line(capsys)
    assert spct(["data", "check", str(src)]) == 1  # was: exit 0 with "0 items"
    assert f"BAD {src}: no rows (an empty file)" in capsys.readouterr().out


def test_a_truncated_safetensors_names_the_file(tmp_path, capsys):
    from spct_jax.models.registry import load_model
    from spct_jax.models.weights import save_pretrained
    from spct_jax.tokenizers.save import save_tokenizer

    model_dir = tmp_path / "model"
    model, tok = load_model("tiny-random")
    save_pretrained(model, model_dir)
    save_tokenizer(tok, "tiny-random", model_dir)
    weights = model_dir / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 3)
    src = write_lines(tmp_path / "items.jsonl", ITEM)
    capsys.readouterr()
    argv = ["score", "--model", str(model_dir), "--input", str(src), "--output", str(tmp_path / "o.jsonl"), *FAST]
    assert spct(argv) == 1
    line = one_line(capsys)
    assert f"{weights}: truncated: tensor" in line and "download or export the file again" in line, line
    assert leftovers(tmp_path, {"items.jsonl", "model"}) == sorted(
        f"model/{p.name}" for p in model_dir.iterdir())
