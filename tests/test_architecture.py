"""The package layout rules: capability layers (import-linter), no import cycles, CLI code only in cli.py."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "longseq"
MAX_LINES = 500


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_import_linter_contracts_hold():
    """`.importlinter`: core < models < (eval | train | lengthgen | memory) < lab < cli."""
    proc = subprocess.run([sys.executable, "-m", "importlinter.cli", "--config", str(ROOT / ".importlinter")],
                          cwd=ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; returns the components with more than one module (the import cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_function_level_included():
    g = grimp.build_graph("longseq", include_external_packages=False)
    graph = {m: set(g.find_modules_directly_imported_by(m)) for m in g.modules}
    assert _strongly_connected(graph) == []


def test_tarjan_finds_a_cycle():
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_over_the_line_limit():
    long = {str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_cli_modules_import_argparse():
    users = {str(p.relative_to(PACKAGE)) for p in _modules() if "argparse" in _imports(p)}
    assert users and all(Path(u).name == "cli.py" for u in users), sorted(users)


def test_every_capability_has_a_cli_module():
    for pkg in ("models", "eval", "train", "lengthgen", "memory", "lab"):
        assert (PACKAGE / pkg / "cli.py").is_file(), pkg


def test_tests_share_fixtures_through_conftest_only():
    """One tiny-model factory (conftest fixtures); no test edits sys.path to import helpers."""
    others = [p for p in Path(__file__).parent.glob("*.py") if p.name != Path(__file__).name]
    assert [p.name for p in others if "sys.path" in p.read_text()] == []
    assert [p.name for p in others if "LlamaConfig(" in p.read_text()] == ["conftest.py"]


def test_public_api_names_are_unique_and_all_resolve():
    """``longseq.X`` for every exported name (each defined once: the table is a dict literal)."""
    import longseq

    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    table = next(n.value for n in ast.walk(tree) if isinstance(n, ast.AnnAssign) and n.target.id == "_EXPORTS")
    keys = [k.value for k in table.keys]
    assert len(keys) == len(set(keys)) and sorted(keys) == longseq.__all__
    for name in longseq.__all__:
        assert getattr(longseq, name) is not None, name
    assert "TASKS" not in longseq.__all__ and len(longseq.EVAL_TASKS) > 0 and len(longseq.CHOMSKY_TASKS) == 15
