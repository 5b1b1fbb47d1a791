"""The import contract of src/negalign: layered packages, imports only downward, no cycles.

    cli | api > recipes > training | evaluation > config > generation > modeling | objectives > data > base

A module may import its own package and any lower layer; packages on one row (training and
evaluation, modeling and objectives) stay independent of each other. Every import counts, also
the ones inside functions (they run later, but they are dependencies all the same). The source is
read with `ast`, nothing is imported, so the test takes well under a second.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "negalign"

# Top to bottom. A row holds packages (or top-level modules) of one layer.
LAYERS: list[tuple[str, ...]] = [
    ("__main__",),  # `python -m negalign`
    ("cli", "api"),  # the command line and the Python API: two front doors, independent
    ("recipes",),
    ("training", "evaluation"),
    ("config",),
    ("generation",),
    ("modeling", "objectives"),
    ("data",),
    ("base",),
]
RANK = {name: i for i, row in enumerate(LAYERS) for name in row}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every import statement, at any depth, except under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def negalign_imports(path: Path, name: str) -> list[tuple[int, str]]:
    """(line, imported negalign module) for each import in `path`, in line order; `from pkg import sub`
    names the submodule."""
    is_package = path.name == "__init__.py"
    out = []
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "negalign"]
            continue
        base = node.module or ""
        if node.level:  # relative: resolve against this module's package
            anchor = name.split(".") if is_package else name.split(".")[:-1]
            anchor = anchor[:len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        if base.split(".")[0] != "negalign":
            continue
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            out.append((node.lineno, sub if sub in MODULES else base))
    return sorted(out)


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # `negalign` itself (the version) has no layer


def graph() -> dict[str, list[tuple[int, str]]]:
    return {name: negalign_imports(path, name) for name, path in MODULES.items()}


def test_every_module_has_a_layer():
    missing = sorted({layer_of(m) for m in MODULES if layer_of(m) is not None and layer_of(m) not in RANK})
    assert not missing, f"put these top-level packages or modules into LAYERS: {missing}"


def test_every_negalign_import_names_a_module():
    stale = [f"{MODULES[m].relative_to(ROOT)}:{line}: {target}"
             for m, imports in graph().items() for line, target in imports if target not in MODULES]
    assert not stale, "imports of modules that do not exist:\n" + "\n".join(stale)


def test_imports_point_only_downward():
    bad = []
    for module, imports in graph().items():
        own = layer_of(module)
        for line, target in imports:
            other = layer_of(target)
            if own is None or other is None or other == own:
                continue
            if RANK[other] < RANK[own]:
                bad.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {module} ({own}) imports upward: {target} ({other})")
            elif RANK[other] == RANK[own]:
                bad.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {module} ({own}) imports its sibling layer: "
                           f"{target} ({other})")
    assert not bad, "layer contract broken (cli > recipes > training | evaluation > config > generation > " \
                    "modeling | objectives > data > base):\n" + "\n".join(bad)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles():
    edges = {m: {t for _, t in imports if t in MODULES and t != m} for m, imports in graph().items()}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_upward_imports_and_cycles(tmp_path):
    """The contract test itself: a planted upward import and a planted cycle are found."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    planted = tmp_path / "negalign" / "base" / "bad.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("def f():\n    from negalign.recipes import d2o\n    from negalign.base import io\n")
    got = negalign_imports(planted, "negalign.base.bad")
    assert got == [(2, "negalign.recipes.d2o"), (3, "negalign.base.io")]
    assert RANK[layer_of(got[0][1])] < RANK["base"]


@pytest.mark.parametrize("heavy", ["torch", "transformers"])
def test_config_and_parser_modules_import_nothing_heavy_at_module_level(heavy):
    """Config mistakes are reported before torch loads: the modules the CLI needs to build its
    parser and read a config import torch and transformers only inside functions."""
    light = ["negalign.config", "negalign.cli.main", "negalign.cli.flags", "negalign.cli.evaluate",
             "negalign.cli.rdpo", "negalign.recipes.rdpo", "negalign.recipes.critique", "negalign.modeling.lora",
             "negalign.objectives.names", "negalign.base.errors", "negalign.base.io", "negalign.base.rundir",
             "negalign.base.fingerprint", "negalign.data.records", "negalign.generation.base"]
    seen, todo, loaded = set(), list(light), []
    while todo:
        module = todo.pop()
        if module in seen or module not in MODULES:
            continue
        seen.add(module)
        tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
        for node in tree.body:  # module level only
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for n in names:
                if n.split(".")[0] == heavy:
                    loaded.append(f"{module} imports {n}")
                if n.startswith("negalign."):
                    todo.append(n)
                    todo += [f"{n}.{a.name}" for a in getattr(node, "names", [])]
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(2, len(parts))]  # parent packages run first
    assert not loaded, f"{heavy} at import time of the CLI's light modules:\n" + "\n".join(loaded)


def test_every_package_has_an_init():
    """setuptools' find_packages skips folders without __init__.py: an installed wheel would miss them."""
    missing = sorted(str(d.relative_to(ROOT)) for d in PACKAGE.rglob("*")
                     if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))
                     and not (d / "__init__.py").exists())
    assert not missing, f"packages without __init__.py: {missing}"


def _top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def test_benchmarks_and_examples_import_public_names_that_exist():
    """Benchmarks are not run by the tests: their imports of negalign are checked here, and they may
    use public names only (a private helper they need is made public, not reached into)."""
    bad = []
    for path in sorted([*(ROOT / "benchmarks").rglob("*.py"), *(ROOT / "examples").rglob("*.py")]):
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("negalign"):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if node.module not in MODULES:
                bad.append(f"{where}: no module {node.module}")
                continue
            names = _top_level_names(MODULES[node.module])
            for alias in node.names:
                if alias.name.startswith("_"):
                    bad.append(f"{where}: private name {node.module}.{alias.name}")
                elif alias.name not in names and f"{node.module}.{alias.name}" not in MODULES:
                    bad.append(f"{where}: {node.module} has no {alias.name}")
    assert not bad, "\n".join(bad)
