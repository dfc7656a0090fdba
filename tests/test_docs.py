"""The docs stay true: the notebook runs, the docs' CPU commands run, and every relative link resolves.

Marking convention (README.md and docs/*.md). A fenced code block whose previous non-blank line is

    <!-- runnable-on-cpu -->

holds commands that finish in seconds on a CPU with the tiny configs. Every command line in such a block must be
an `spct ...` command (a leading `$ ` prompt is allowed; `\\` continues a line; `#` starts a comment); anything
else in a marked block is an error, so a marked block cannot quietly stop being run. The blocks of one file run
in order, in one scratch folder, so a later block may use what an earlier one wrote (e.g. `spct rft` writes
runs/tiny_cpu/rft/model, `spct score --model runs/tiny_cpu/rft/model` reads it). The scratch folder links every
top-level entry of the repository (so `configs/...` and `tests/fixtures/...` resolve) and `../shared/data` points
at $SPCT_SHARED_DATA (default <repo>/../shared/data); a command that names ../shared/ is skipped without it.
Each command must exit 0. Output blocks pasted after a command are documentation, not assertions.

Unmarked commands are not run, but every `spct X` in any code block must name a real subcommand.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
NOTEBOOK = DOCS / "prototyping.ipynb"
MARK = "<!-- runnable-on-cpu -->"
SHARED_DATA = Path(os.environ.get("SPCT_SHARED_DATA", REPO.parent / "shared" / "data"))
COMMAND_TIMEOUT_S = 240


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


# -- markdown parsing -------------------------------------------------------------------------------------------
FENCE = re.compile(r"^\s*(```|~~~)")


def fenced_blocks(text: str) -> list[tuple[int, str, str, list[str]]]:
    """(line of the opening fence, the non-blank line before it, the fence's language tag, the block's lines)."""
    lines = text.splitlines()
    blocks, i, previous = [], 0, ""
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        lang = lines[i].strip()[3:].strip().lower()
        start, body, i = i + 1, [], i + 1
        while i < len(lines) and not lines[i].lstrip().startswith(m.group(1)):
            body.append(lines[i])
            i += 1
        blocks.append((start, previous, lang, body))
        previous, i = "", i + 1
    return blocks


INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+\1", re.S)


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where link syntax is not a link."""
    kept, fence = [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            continue
        if fence is not None:
            if line.lstrip().startswith(fence):
                fence = None
            continue
        kept.append(line)
    return INLINE_CODE.sub("", "\n".join(kept))


def logical_lines(body: list[str]) -> list[str]:
    """Lines with backslash continuations joined; blank lines and whole-line comments dropped."""
    out, current = [], ""
    for line in body:
        stripped = line.strip()
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current and not current.startswith("#"):
            out.append(current)
        current = ""
    if current.strip():
        out.append(current.strip())
    return out


def commands_in(lang: str, body: list[str], *, marked: bool = False) -> list[str]:
    """The command lines of a block: in a console transcript (lines starting `$ `) only the prompted lines, else
    every line of a shell block (bash, sh, shell, console) or of a marked block; none in other blocks (output)."""
    lines = logical_lines(body)
    if any(line.startswith("$ ") for line in lines):
        return [line[2:] for line in lines if line.startswith("$ ")]
    return lines if marked or lang in ("bash", "sh", "shell", "console") else []


def runnable_blocks(path: Path) -> list[tuple[int, list[list[str]]]]:
    """[(line, [argv, ...])] of the marked blocks of one file; ValueError for a bad marked block."""
    text = path.read_text(encoding="utf-8")
    found = []
    for line, before, lang, body in fenced_blocks(text):
        if before != MARK:
            continue
        commands = []
        for cmd in commands_in(lang, body, marked=True):
            argv = shlex.split(cmd, comments=True)
            if not argv:
                continue
            if argv[0] != "spct":
                raise ValueError(f"{rel(path)}:{line}: a block marked {MARK} may only hold spct commands, got {cmd!r}")
            commands.append(argv)
        if not commands:
            raise ValueError(f"{rel(path)}:{line}: a block marked {MARK} holds no command")
        found.append((line, commands))
    marks = sum(line.strip() == MARK for line in prose(text).splitlines())
    if marks != len(found):
        raise ValueError(f"{rel(path)}: {marks} {MARK} markers but {len(found)} marked code blocks "
                         "(a marker must be the line before a fenced block)")
    return found


def all_runnable() -> dict[Path, list[tuple[int, list[list[str]]]]]:
    return {p: blocks for p in doc_files() if (blocks := runnable_blocks(p))}


# -- (b) the docs' commands --------------------------------------------------------------------------------------
def spct_argv0() -> list[str]:
    """The venv's `spct` entry point next to this interpreter, else `python -m spct_jax.cli`."""
    exe = Path(sys.executable).with_name("spct")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "spct_jax.cli"]


def scratch_workspace(tmp: Path) -> Path:
    """tmp/work: links to the repository's top-level entries (not runs/ or dot-folders); tmp/shared/data."""
    work = tmp / "work"
    work.mkdir()
    for entry in REPO.iterdir():
        if entry.name.startswith(".") or entry.name in ("runs", "__pycache__"):
            continue
        (work / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    if SHARED_DATA.is_dir():
        (tmp / "shared").mkdir()
        (tmp / "shared" / "data").symlink_to(SHARED_DATA.resolve(), target_is_directory=True)
    return work


def test_docs_mark_runnable_commands():
    """The convention is in use: the docs mark CPU commands, and every marked block parses."""
    found = all_runnable()
    commands = [argv[1] for blocks in found.values() for _, cmds in blocks for argv in cmds]
    assert len(commands) >= 4, f"only {commands} are marked {MARK} in {[rel(p) for p in found]}"
    assert {"plan", "rft", "score", "data"} <= set(commands), commands


@pytest.mark.timeout(600)
@pytest.mark.parametrize("doc", sorted(rel(p) for p in all_runnable()))
def test_runnable_commands_exit_zero(doc, tmp_path):
    work = scratch_workspace(tmp_path)
    env = {**os.environ, "SPCT_SHARED_DATA": str(tmp_path / "shared" / "data"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    ran = 0
    for line, commands in runnable_blocks(REPO / doc):
        for argv in commands:
            shown = shlex.join(argv)
            if any("../shared/" in a for a in argv) and not SHARED_DATA.is_dir():
                print(f"skipped (no {SHARED_DATA}): {shown}")
                continue
            proc = subprocess.run(spct_argv0() + argv[1:], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT_S)
            assert proc.returncode == 0, (
                f"{doc}:{line}: `{shown}` exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n"
                f"--- stderr\n{proc.stderr[-3000:]}")
            ran += 1
    if ran == 0:
        pytest.skip(f"every marked command of {doc} needs {SHARED_DATA}")


def test_every_spct_command_in_the_docs_exists():
    from spct_jax.cli import COMMANDS

    bad = []
    for path in doc_files():
        for line, _, lang, body in fenced_blocks(path.read_text(encoding="utf-8")):
            for cmd in commands_in(lang, body):
                words = cmd.split()
                if len(words) >= 2 and words[0] == "spct" and words[1] not in COMMANDS:
                    bad.append(f"{rel(path)}:{line}: {cmd}")
    assert not bad, "unknown spct subcommands:\n" + "\n".join(bad)


# -- (c) links ---------------------------------------------------------------------------------------------------
MD_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"""<(?:a|img)\s[^>]*?(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def markdown_of(path: Path) -> str:
    if path.suffix == ".ipynb":
        nb = json.loads(path.read_text(encoding="utf-8"))
        return "\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    return path.read_text(encoding="utf-8")


def anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation other than - and _ dropped, spaces to -, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose(markdown_of(path)).splitlines():
        m = HEADING.match(line)
        if not m:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(2))  # a link in a heading keeps its text
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def link_files() -> list[Path]:
    return [*doc_files(), *sorted(DOCS.glob("*.ipynb"))]


@pytest.mark.parametrize("doc", [rel(p) for p in link_files()])
def test_relative_links_resolve(doc):
    path = REPO / doc
    text = prose(markdown_of(path))
    targets = MD_LINK.findall(text) + HTML_LINK.findall(text)
    problems = []
    for target in targets:
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto:, ...
            continue
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if REPO.resolve() not in (dest, *dest.parents):
            problems.append(f"{target}: points outside the repository")
        elif not dest.exists():
            problems.append(f"{target}: {dest.relative_to(REPO.resolve())} does not exist")
        elif fragment and dest.suffix in (".md", ".ipynb") and fragment not in anchors(dest):
            problems.append(f"{target}: no heading #{fragment} in {dest.relative_to(REPO.resolve())}")
    assert not problems, f"{doc}: broken links:\n" + "\n".join(problems)


# -- (a) the notebook --------------------------------------------------------------------------------------------
def test_committed_notebook_has_outputs():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c.get("execution_count") for c in code), "run the notebook before committing it"
    assert not [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]


@pytest.mark.timeout(420)
def test_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's scratch folder (tempfile.mkdtemp) lands here
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    copy = tmp_path / NOTEBOOK.name
    shutil.copy(NOTEBOOK, copy)
    nb = nbformat.read(copy, as_version=4)
    for cell in nb.cells:  # start from a clean copy: what runs is the source, not the committed outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(DOCS)}})
    try:
        client.execute()  # raises CellExecutionError naming the cell on any error
    finally:
        nbformat.write(nb, copy)  # what ran, for a look after a failure
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the accuracy-vs-k plot was not drawn"
