"""README.md and docs/*.md: they render as intended, their links resolve, and every command they show exists.

Markdown is parsed with markdown-it-py, a CommonMark parser (what GitHub renders is CommonMark plus tables).
No model is loaded: the CLI parser is built from ``longseq.cli.build_parser``, which imports no torch.
"""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200

EXPECTED_HEADINGS: dict[str, list[str]] = {
    "README.md": ["longseq", "Quick start", "Commands", "Python", "Results", "Development"],
    "docs/rope.md": ["Models and RoPE context extension", "Model specs", "Extending the context without training",
                     "Methods", "Python API"],
    "docs/eval.md": ["Long-context evaluation", "Tasks", "Outputs", "Prompt format", "Engines",
                     "Serving a local model", "Python API", "Measured"],
    "docs/train.md": ["Training: LongLoRA, LoRA, full fine-tuning and ABF continual pre-training", "Methods",
                      "Outputs", "Data", "Training details", "Many GPUs", "Recipes", "Python API",
                      "Shifted sparse attention (S²-Attn)", "Measured cost"],
    "docs/lengthgen.md": ["Length generalization: randomized positional encodings", "Usage", "Outputs",
                          "Python API", "Tasks", "Model", "Measured"],
    "docs/memory.md": ["Memory beyond the window: Self-Controlled Memory (SCM)", "How it works", "Commands",
                       "Python API", "Reliability", "Measured"],
    "docs/lab.md": ["Lab: the context-extension findings at small scale", "Command", "Python API", "Stages",
                    "Results"],
    "docs/runtime.md": ["Runtime settings", "OpenMP wait policy", "glibc malloc", "Measured"],
    "docs/benchmarks.md": ["Benchmarks", "Machine", "bench/eval_throughput.py", "bench/prefix_cache.py",
                           "bench/s2attn.py",
                           "bench/lengthgen_throughput.py", "bench/memory.py"],
    "docs/fidelity.md": ["Fidelity to the reference protocols", "RULER", "LongEval", "Needle in a haystack",
                         "Chomsky hierarchy tasks", "Self-Controlled Memory (SCM)", "LongLoRA"],
    "docs/lab-results.md": ["longseq lab: results of one default run", "Training cost", "Plots"],
    "docs/tune-rope.md": ["Tuning the RoPE rescaling for a model: tune-rope", "Command", "How the search works",
                          "Outputs", "Python API", "Measured"],
}
"""Page -> its title (first) and main sections, in order. A new docs page must be listed here."""

DENIED = re.compile(r"\bissues?\b|\bthe brief\b|\bbrief's\b|\bgoals?\b|\bthe lead\b|\bengineers?\b", re.IGNORECASE)
"""Words about how the work is organized, which user-facing text never needs."""

FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
SUBHEADING_LINE = re.compile(r"^ {0,3}#{2,6}\s")
# `longseq <word>` as a shell command: not `longseq.x`, not `from longseq import`, not `longseq:`.
COMMAND = re.compile(r"(?<![\w./-])longseq[ \t]+(.*)")
NOT_A_COMMAND_BEFORE = re.compile(r"\b(from|import)\s+$")
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
DOTTED = re.compile(r"(?<![\w./])(longseq(?:\.[A-Za-z_]\w*)+)")
FROM_IMPORT = re.compile(r"^\s*from\s+(longseq[\w.]*)\s+import\s+([\w, ]+)")
SOURCE_PATH = re.compile(r"(?<![\w./-])((?:src/)?longseq/[\w/]+\.py)\b")
SRC = ROOT / "src"
RECORDED_REPORTS = {"lab-results.md"}
"""Reports kept as a run at a given commit wrote them: their Python names are that commit's."""


def _rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@lru_cache(maxsize=None)
def _tokens(page: Path) -> tuple[Token, ...]:
    return tuple(MarkdownIt("commonmark").enable("table").parse(page.read_text(encoding="utf-8")))


def _walk(tokens: tuple[Token, ...]) -> Iterator[Token]:
    for tok in tokens:
        yield tok
        yield from tok.children or ()


def _headings(page: Path) -> list[tuple[int, str, int]]:
    """(level, plain text, first source line) of every heading."""
    toks = _tokens(page)
    out = []
    for tok, inline in zip(toks, toks[1:]):
        if tok.type == "heading_open":
            text = "".join(c.content for c in inline.children or () if c.type in ("text", "code_inline"))
            out.append((int(tok.tag[1]), text, tok.map[0]))
    return out


def _slug(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped (``_`` and ``-`` kept), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def _code_lines(page: Path) -> list[str]:
    """Every inline code span, and every line of every code block with backslash continuations joined."""
    lines: list[str] = []
    for tok in _walk(_tokens(page)):
        if tok.type == "code_inline":
            lines.append(tok.content)
        elif tok.type in ("fence", "code_block"):
            lines.extend(tok.content.replace("\\\n", " ").splitlines())
    return lines


@lru_cache(maxsize=None)
def _parser() -> argparse.ArgumentParser:
    from longseq.cli import build_parser

    return build_parser()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _check_command(words: list[str], rest: str) -> list[str]:
    """Problems with ``longseq <words...>`` followed by ``rest``: unknown (sub)commands or options."""
    parser, path = _parser(), ["longseq"]
    for word in words:
        choices = _subparsers(parser)
        if not choices:
            break
        if word not in choices:
            return [f"`{' '.join(path)} {word}`: no such command (choices: {', '.join(choices)})"]
        parser = choices[word]
        path.append(word)
    if _subparsers(parser):
        return []  # `longseq memory` alone, as a name: its actions are checked where they are used
    known = parser._option_string_actions
    return [f"`{' '.join(path)}` has no option {opt}" for opt in OPTION.findall(rest) if opt not in known]


def _commands(line: str) -> list[tuple[list[str], str]]:
    """(command words, the rest of the line) for each `longseq ...` invocation in a line of code."""
    found = []
    for match in COMMAND.finditer(line):
        if NOT_A_COMMAND_BEFORE.search(line[: match.start()]):
            continue
        rest = match.group(1).split(" #", 1)[0]  # drop a shell comment
        words = re.match(r"((?:[a-z][a-z0-9_-]*[ \t]*)*)", rest).group(1).split()
        if words:
            found.append((words, rest))
    return found


@lru_cache(maxsize=None)
def _module_names(path: Path) -> frozenset[str]:
    """Names a module defines or imports at top level (read with ast: nothing is imported)."""
    if path == SRC / "longseq" / "__init__.py":
        import longseq

        return frozenset(longseq.__all__)
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names)


def _module_file(parts: list[str]) -> Path | None:
    base = SRC.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _resolves(dotted: str) -> bool:
    """``longseq.pkg.module[.Name[.attr]]``: the longest module prefix exists and defines ``Name``."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = _module_file(parts[:cut])
        if module is not None:
            return cut == len(parts) or parts[cut] in _module_names(module)
    return False


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_code_fences_are_balanced(page: Path) -> None:
    lines = page.read_text(encoding="utf-8").splitlines()
    fences = [t for t in _tokens(page) if t.type == "fence"]
    for fence in fences:
        start, end = fence.map
        assert end - 1 > start and FENCE_LINE.match(lines[end - 1]), \
            f"{_rel(page)}:{start + 1}: code fence never closed (runs to line {end})"
        assert not any(FENCE_LINE.match(x) for x in fence.content.splitlines()), \
            f"{_rel(page)}:{start + 1}: a code block contains a fence line"
    raw = sum(1 for line in lines if FENCE_LINE.match(line))
    assert raw == 2 * len(fences), f"{_rel(page)}: {raw} fence lines for {len(fences)} code blocks"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_heading_line_renders_as_a_heading(page: Path) -> None:
    """A `## ...` line swallowed by a stray fence or an indented block would render as code."""
    starts = {line for _, _, line in _headings(page)}
    lines = page.read_text(encoding="utf-8").splitlines()
    lost = [f"{i + 1}: {x}" for i, x in enumerate(lines) if SUBHEADING_LINE.match(x) and i not in starts]
    assert not lost, f"{_rel(page)}: heading lines that do not render as headings: {lost}"


def test_readme_sections_render_as_h2() -> None:
    text = README.read_text(encoding="utf-8")
    html = MarkdownIt("commonmark").enable("table").render(text)
    wanted = [x[3:].strip() for x in text.splitlines() if x.startswith("## ")]
    rendered = [re.sub(r"<[^>]+>", "", h) for h in re.findall(r"<h2>(.*?)</h2>", html)]
    assert rendered == wanted
    for pre in re.findall(r"<pre>.*?</pre>", html, flags=re.DOTALL):
        assert not re.search(r"^#{2,6} ", pre, flags=re.MULTILINE), f"a heading rendered inside a code block: {pre}"


def test_every_page_has_expected_headings() -> None:
    assert {_rel(p) for p in PAGES} == set(EXPECTED_HEADINGS), "list each docs page and its sections here"
    for page in PAGES:
        heads = _headings(page)
        expected = EXPECTED_HEADINGS[_rel(page)]
        assert heads and heads[0][:2] == (1, expected[0]), f"{_rel(page)}: title is not '# {expected[0]}'"
        h1 = [text for level, text, _ in heads if level == 1]
        assert len(h1) == 1, f"{_rel(page)}: one title expected, found {h1}"
        sections = [text for level, text, _ in heads if level == 2]
        assert [s for s in sections if s in expected] == expected[1:], \
            f"{_rel(page)}: sections {expected[1:]} expected in this order, found {sections}"


def test_readme_is_short_and_keeps_the_quick_start() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "make demo" in text and "make test" in text
    quick = [t for t in _tokens(README) if t.type == "fence"][0].content.splitlines()
    assert [x.split()[:2] for x in quick] == [["make", "demo"], ["make", "test"]], "the quick start is two commands"


def test_every_command_is_documented_in_the_readme() -> None:
    shown = {words[0] for line in _code_lines(README) for words, _ in _commands(line)}
    missing = set(_subparsers(_parser())) - shown
    assert not missing, f"README shows no example for {sorted(missing)}"
    memory_shown = {words[1] for line in _code_lines(README) for words, _ in _commands(line)
                    if words[0] == "memory" and len(words) > 1}
    assert set(_subparsers(_subparsers(_parser())["memory"])) <= memory_shown


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_shown_commands_and_options_exist(page: Path) -> None:
    problems = [p for line in _code_lines(page) for words, rest in _commands(line) for p in _check_command(words, rest)]
    assert not problems, f"{_rel(page)}: " + "; ".join(problems)


@pytest.mark.parametrize("page", [p for p in PAGES if p.name not in RECORDED_REPORTS], ids=_rel)
def test_shown_python_names_and_source_paths_exist(page: Path) -> None:
    """`longseq.x.y.Name`, `from longseq.x import Name` and `longseq/x/y.py` follow the source layout."""
    missing = []
    for line in _code_lines(page):
        imported = FROM_IMPORT.match(line)
        if imported:
            module = imported.group(1)
            names = [n.strip() for n in imported.group(2).split(",") if n.strip()]
            missing += [f"{module}.{n}" for n in names if not _resolves(f"{module}.{n}")]
        missing += [d for d in DOTTED.findall(line) if not _resolves(d)]
        missing += [p for p in SOURCE_PATH.findall(line) if not (SRC / p.removeprefix("src/")).is_file()]
    assert not missing, f"{_rel(page)}: not in the source tree: {sorted(set(missing))}"


def test_the_name_checker_follows_the_layout() -> None:
    assert _resolves("longseq.models.rope.METHODS") and _resolves("longseq.apply_rope")
    assert not _resolves("longseq.rope.METHODS") and not _resolves("longseq.models.rope.NO_SUCH_NAME")


def test_the_command_finder_finds_commands() -> None:
    assert _commands("accelerate launch -m longseq train --config x.yaml") == [(["train"], "train --config x.yaml")]
    assert _commands("from longseq import run_eval") == []
    assert _commands("longseq.apply_rope(model)") == []
    assert _check_command(["memory", "frobnicate"], "memory frobnicate")
    assert _check_command(["eval"], "eval --no-such-flag")
    assert not _check_command(["memory", "search"], 'memory search --db x.db "q" -k 5')


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for tok in _walk(_tokens(page)):
        target = tok.attrs.get("href") if tok.type == "link_open" else tok.attrs.get("src") if tok.type == "image" else None
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", str(target)):
            continue  # absolute URL (https:, mailto:)
        path, _, anchor = str(target).partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no file)")
        elif anchor and dest.suffix == ".md" and anchor not in {_slug(t) for _, t, _ in _headings(dest)}:
            broken.append(f"{target} (no heading with this anchor)")
    assert not broken, f"{_rel(page)}: broken links {broken}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_no_words_about_how_the_work_is_organized(page: Path) -> None:
    hits = [f"{i + 1}: {m.group(0)}" for i, line in enumerate(page.read_text(encoding="utf-8").splitlines())
            for m in DENIED.finditer(line)]
    assert not hits, f"{_rel(page)}: {hits}"
