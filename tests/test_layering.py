"""The package is layered without import cycles: every ``pairfree`` import (function-local ones included) points
down the layers, so no module needs another that needs it back."""

import ast
from pathlib import Path

import pairfree

ROOT = Path(pairfree.__file__).parent


def import_graph() -> dict[str, set[str]]:
    mods = {}
    for f in ROOT.rglob("*.py"):
        name = ".".join(f.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = f

    def owner(name: str) -> str | None:  # the module an imported name lives in
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for n in names:
                dep = owner(n) if n.startswith("pairfree") else None
                is_own_submodule = f.name == "__init__.py" and dep and dep.startswith(m + ".")
                if dep and dep != m and not is_own_submodule:
                    graph[m].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_inside_pairfree():
    graph = import_graph()
    assert "pairfree.models.bundle" in graph and "pairfree.flow" in graph["pairfree.models.bundle"]
    assert cycles(graph) == []


# where a function-local import of the package is allowed, and why
LAZY_OK = {
    "pairfree/cli.py": "each subcommand imports what it runs: `pairfree --help` stays fast",
    "pairfree/__init__.py": "`import pairfree.kernels` must not load the world, the models and transformers",
    "pairfree/kernels/dispatch.py": "the compiled extension `_C` is optional (pure-Python installs run without it)",
}


def test_package_imports_sit_at_module_top():
    """Function-local imports hide the layering; within ``pairfree`` they are kept only where LAZY_OK says why."""
    local = []
    for f in ROOT.rglob("*.py"):
        rel = f.relative_to(ROOT.parent).as_posix()
        if rel in LAZY_OK:
            continue
        for fn in ast.walk(ast.parse(f.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    mod = node.module if isinstance(node, ast.ImportFrom) and node.level == 0 else None
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [mod or ""]
                    if any(n.startswith("pairfree") for n in names):
                        local.append(f"{rel}:{node.lineno}")
    assert local == []
