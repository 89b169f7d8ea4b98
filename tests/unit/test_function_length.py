"""No function in operator/ is longer than MAX_LINES: a reconcile that grows past it reads as a procedure again
(docs/architecture.md, "One reconcile shape": observe, plan, act). Length is counted as the parser sees it, from
the `def` line to the function's last line (decorators excluded, nested functions counted on their own too)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 60


def function_lengths(path: Path) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function and method of a Python file."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((f"{prefix}{child.name}", child.end_lineno - child.lineno + 1))  # type: ignore[operator]
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), filename=str(path)), "")
    return found


def too_long(root: Path, limit: int) -> list[str]:
    return [f"{path.relative_to(ROOT)}::{name} is {lines} lines"
            for path in sorted(root.rglob("*.py")) for name, lines in function_lengths(path) if lines > limit]


def test_no_function_in_the_operator_is_longer_than_sixty_lines():
    offenders = too_long(ROOT / "operator", MAX_LINES)
    assert not offenders, f"longer than {MAX_LINES} lines (split by what each part does):\n" + "\n".join(offenders)


def test_the_check_names_a_long_function_with_its_file_and_length(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "long.py").write_text(f"class K:\n    def method(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n"
                                      f"def short():\n    return 1\n")
    lengths = dict(function_lengths(tmp_path / "long.py"))
    assert lengths == {"K.method": MAX_LINES + 1, "short": 2}
