"""No function in src/negalign is longer than about a screen: long ones get split into named steps."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "negalign"
MAX_LINES = 80  # from `def` to the last line, docstring and nested functions included


def long_functions(limit: int = MAX_LINES) -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: {n} lines")
    return found


def test_no_function_over_the_limit():
    offenders = long_functions()
    assert not offenders, f"functions over {MAX_LINES} lines; split them:\n" + "\n".join(offenders)
