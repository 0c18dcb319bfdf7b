"""Code-shape rules of the architecture issue: no function in tgrowth/ or data_modules/ longer than 80 lines."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tgrowth", "data_modules")
MAX_LINES = 80


def body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Source lines of a function's body from its first statement after the docstring to its last statement."""
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
        body = body[1:]
    if not body:
        return 0
    return body[-1].end_lineno - body[0].lineno + 1


def long_functions(source: str, name: str, limit: int = MAX_LINES) -> list[str]:
    """``path:line name (n lines)`` of every function or method (nested ones too) in ``source`` longer than ``limit``."""
    found = []
    for node in ast.walk(ast.parse(source, filename=name)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = body_lines(node)
            if n > limit:
                found.append(f"{name}:{node.lineno} {node.name} ({n} lines)")
    return found


def _function(n_statements: int, docstring: bool = True) -> str:
    doc = '    """Doc\n    string."""\n' if docstring else ""
    return "def f(x):\n" + doc + "".join(f"    x = x + {i}\n" for i in range(n_statements - 1)) + "    return x\n"


def test_line_count_excludes_the_docstring_and_includes_nested_functions():
    assert long_functions(_function(80), "a.py") == []
    assert long_functions(_function(81), "a.py") == ["a.py:1 f (81 lines)"]
    assert long_functions(_function(81, docstring=False), "a.py") == ["a.py:1 f (81 lines)"]
    nested = "class C:\n    def m(self):\n" + "\n".join("        " + line for line in _function(81).splitlines()) + "\n"
    assert long_functions(nested, "b.py") == ["b.py:2 m (84 lines)", "b.py:3 f (81 lines)"]


def test_no_function_is_longer_than_80_lines():
    files = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))
    assert len(files) > 20, f"found only {len(files)} source files under {PACKAGES}"
    offenders = [f for p in files for f in long_functions(p.read_text(), str(p.relative_to(REPO)))]
    assert not offenders, (f"{len(offenders)} function(s) longer than {MAX_LINES} lines (excluding the docstring); "
                           "split them into named helpers:\n" + "\n".join(offenders))
