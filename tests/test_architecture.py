"""Layering of lowbit's subpackages: imports run downward only (function-level imports included).

    errors, reference  →  formats → kernels → schemes → simulate → optim, quant → storage
                       →  lowbit (the facade)  →  experiments → cli        (testing: test helpers)

A package may import its own modules and any package below it, never one above or a peer
(so no cycle between subpackages can form). Listed exceptions say why.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lowbit

PACKAGE = Path(lowbit.__file__).resolve().parent

#: rank of each top-level part of the package; imports must go to a strictly lower rank
RANK = {
    "errors": 0, "reference": 0, "_process": 0,  # the bottom: exceptions, and the exact pure-Python oracle
    "formats": 1,
    "kernels": 2,
    "schemes": 3,
    "simulate": 4,
    "optim": 5, "quant": 5,  # peers: neither may import the other
    "storage": 6,
    "lowbit": 7,  # the facade (lowbit/__init__.py): the public API
    "experiments": 8,
    "cli": 9,
    "testing": 10,  # test helpers: may import anything; nothing in the library imports them
    "__main__": 10,  # python -m lowbit
}

#: (importing part, imported module, name) allowed against the rule, with the reason
EXCEPTIONS = {
    ("storage", "lowbit", "__version__"): "the version string lives in the facade; read at call time",
    ("cli", "lowbit", "__version__"): "the version string lives in the facade; read at call time",
    ("experiments", "lowbit", "__version__"): "the version string lives in the facade; read at call time",
}


def _part(module: str) -> "str | None":
    parts = module.split(".")
    if parts[0] != "lowbit":
        return None
    return parts[1] if len(parts) > 1 else "lowbit"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, source: "str | None" = None) -> "list[tuple[str, str, int]]":
    """(imported module, imported name or '', line) for every import in the file, at any depth."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                # `from lowbit import quant` imports the subpackage quant
                sub = f"{target}.{a.name}" if target == "lowbit" and a.name in RANK else target
                out.append((sub, a.name, node.lineno))
    return out


def _edges() -> "list[tuple[str, str, str, str, int]]":
    """(from part, to part, imported module, name, 'file:line') of every cross-part import."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        src = _part(_module_name(path))
        for target, name, line in _imports(path):
            dst = _part(target)
            if dst is not None and dst != src:
                edges.append((src, dst, target, name, f"{path.relative_to(PACKAGE)}:{line}"))
    return edges


def test_every_part_of_the_package_has_a_rank() -> None:
    parts = {_part(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert parts <= set(RANK), f"give these a place in RANK: {sorted(parts - set(RANK))}"


def test_imports_only_go_down_the_layers() -> None:
    bad = [f"{where}: {src} imports {target} ({name})"
           for src, dst, target, name, where in _edges()
           if RANK[dst] >= RANK[src] and (src, target, name) not in EXCEPTIONS]
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_no_import_cycle_between_subpackages() -> None:
    graph: "dict[str, set[str]]" = {}
    for src, dst, target, name, _ in _edges():
        if (src, target, name) not in EXCEPTIONS:
            graph.setdefault(src, set()).add(dst)
    state: "dict[str, int]" = {}
    stack: "list[str]" = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_checker_sees_function_level_and_relative_imports() -> None:
    source = "def f():\n    from lowbit.quant.granularity import granule_amax\n    from . import layers\n"
    found = {(t, n) for t, n, _ in _imports(PACKAGE / "simulate" / "probe.py", source)}
    assert ("lowbit.quant.granularity", "granule_amax") in found and ("lowbit.simulate", "layers") in found
