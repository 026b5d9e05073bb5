"""The package's imports run one way (DESIGN.md): no cycle, no import of a higher layer.

Reads every module's import statements (function-local ones too; `if TYPE_CHECKING:`
blocks excepted), so an import hidden inside a function still counts.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "replaygrpo"

# Top-level modules and subpackages, bottom (0) to top; a module may import its own
# package, the same layer or a lower one.
LAYERS = {
    0: {"records", "config", "validation", "registry", "jsonl"},
    1: {"grpo", "grading", "data", "distributed", "sampler", "offload"},
    2: {"forward", "model", "toymodel"},
    3: {"rollout", "replay", "update", "methods", "checkpoint", "rundir", "memplan", "heldout"},
    4: {"metrics", "variants"},
    5: {"train", "evaluate", "report"},
    6: {"cli", "cli_common", "cli_tools", "cli_after_train", "__main__"},
}
LEVEL = {name: level for level, names in LAYERS.items() for name in names}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules that `path` imports (`from a import b` counts a.b when b is a module)."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            test = node.test
            if getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)

    Visitor().visit(ast.parse(path.read_text()))
    return {m for m in found if m in known and m != "replaygrpo"}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, set(mods)) - {m} for m, p in mods.items()}


def top(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_every_module_has_a_layer():
    missing = {top(m) for m in graph() if m != "replaygrpo"} - set(LEVEL)
    assert not missing, f"add these to LAYERS (and DESIGN.md's picture): {sorted(missing)}"


def test_no_upward_import():
    upward = [f"{a} -> {b}" for a, targets in graph().items() for b in targets
              if a != "replaygrpo" and top(a) != top(b) and LEVEL[top(b)] > LEVEL[top(a)]]
    assert not upward, "imports of a higher layer:\n" + "\n".join(sorted(upward))


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, f"import cycles: {found}"


@pytest.mark.parametrize("edges,expected", [
    ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_the_cycle_finder(edges, expected):
    assert cycles(edges) == expected
