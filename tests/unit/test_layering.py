"""The import layering, proved: protocols/ imports nothing of ours, inspector/ nothing of tui/
(nor Textual), and no module imports itself back through others.

The first two import every module for real, in a fresh interpreter, and look
at sys.modules (harlequin's tests/unit_tests/test_import_hygiene.py). The
cycle check reads the source: every ``import`` and ``from ... import`` of
every module under inspector/, protocols/ and tui/, at module level and
inside functions alike (a lazy import still closes a cycle), relative
imports resolved; only imports under ``if TYPE_CHECKING:`` are left out,
since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.fresh_python import fresh_python

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "inspector": "kinspect.inspector",
    "protocols": "kinspect.protocols",
    "tui": "kinspect.tui",
}

#: What the pure decoders (inspector/x86/) may import of ours besides each other.
X86_MAY_IMPORT = {"kinspect.inspector.errors", "kinspect.inspector.numbers"}


def loaded_after_importing_all(package: str) -> set[str]:
    """sys.modules after importing every module of ``package`` (pkgutil.walk_packages)."""
    code = (
        "import importlib, pkgutil, sys\n"
        f"package = importlib.import_module({package!r})\n"
        "for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "    importlib.import_module(info.name)\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    result = fresh_python(code, timeout=120)
    return set(result.stdout.split())


def test_protocols_import_nothing_of_ours():
    loaded = loaded_after_importing_all("kinspect.protocols")
    assert "kinspect.protocols.agent_wire" in loaded  # it did import them
    assert sorted(m for m in loaded if m.startswith(("kinspect.inspector", "kinspect.tui"))) == []


def test_inspector_imports_nothing_of_the_tui_nor_textual():
    loaded = loaded_after_importing_all("kinspect.inspector")
    assert "kinspect.inspector.commands.remap" in loaded  # it did import them
    assert sorted(m for m in loaded if m == "kinspect.tui" or m.startswith("kinspect.tui.")) == []
    assert sorted(m for m in loaded if m == "textual" or m.startswith("textual.")) == []


def module_files() -> dict[str, Path]:
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that ``name`` imports (any depth in the file, TYPE_CHECKING aside)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from . import paging` imports a module; `from .x import name` imports x
            targets = [
                f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of ours, or a package
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first repeated last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 50 and "kinspect.inspector.commands" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_check_sees_a_cycle_and_relative_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    graph = import_graph()
    assert "kinspect.inspector.commands" in graph["kinspect.inspector.commands.paging"]
    assert "kinspect.inspector.numbers" in graph["kinspect.inspector.session"]
    # lazy (function-level) imports count: the demo command imports api inside a function
    assert "kinspect.inspector.api" in graph["kinspect.inspector.commands.demo"]
    # and the layering holds in the source too
    for name, targets in graph.items():
        if name.startswith("kinspect.protocols"):
            assert not {t for t in targets if not t.startswith("kinspect.protocols")}, name
        if name.startswith("kinspect.inspector"):
            assert not {t for t in targets if t.startswith("kinspect.tui")}, name


def test_the_decoders_import_no_formatting_nor_analysis():
    """x86/ is the floor of inspector/: formatting may import it, never the reverse."""
    wrong = {
        (name, target)
        for name, targets in import_graph().items()
        if name.startswith("kinspect.inspector.x86")
        for target in targets
        if not target.startswith("kinspect.inspector.x86") and target not in X86_MAY_IMPORT
    }
    assert wrong == set()
