"""Reasons have one home (modelloop.reasons): the controllers write none as a literal, and every reason is in the
documented tables (docs/api.md is generated from them; tests/unit/test_crds.py checks it is current)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from modelloop import reasons

CONTROLLERS = sorted((Path(reasons.__file__).parent / "controllers").glob("*.py"))
RAISERS = {"CheckError", "Waiting", "ModelUnavailable"}


def literal_reasons(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every reason written as a string literal: the third argument of Cond.of, the first of the
    controllers' error types, the second item of an ("Normal"/"Warning", reason, message) event tuple."""
    def literals(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.IfExp):
            return literals(node.body) + literals(node.orelse)
        return []

    found = []
    for node in ast.walk(tree):
        candidates: list[ast.AST] = []
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr == "of" and len(node.args) >= 3:
                candidates.append(node.args[2])
            if isinstance(f, ast.Name) and f.id in RAISERS and node.args:
                candidates.append(node.args[0])
        if (isinstance(node, ast.Tuple) and len(node.elts) == 3 and isinstance(node.elts[0], ast.Constant)
                and node.elts[0].value in ("Normal", "Warning")):
            candidates.append(node.elts[1])
        found += [(node.lineno, text) for c in candidates for text in literals(c)]
    return found


@pytest.mark.parametrize("path", CONTROLLERS, ids=lambda p: p.name)
def test_controllers_write_no_reason_as_a_literal(path):
    assert literal_reasons(ast.parse(path.read_text())) == [], f"use modelloop.reasons in {path.name}"


def test_the_scan_finds_literals():
    code = 'Cond.of("Ready", True, "Serving" if x else "Idle")\nraise CheckError("NoPods", "m")\ne = ("Normal", "X", "m")'
    assert [t for _, t in literal_reasons(ast.parse(code))] == ["Serving", "Idle", "NoPods", "X"]


@pytest.mark.parametrize("kind, enum", [("ModelTraining", reasons.TrainingReason),
                                        ("ModelDeployment", reasons.DeploymentReason),
                                        ("DriftMonitor", reasons.DriftReason)])
def test_every_condition_reason_is_in_its_kinds_table(kind, enum):
    documented = {r for row in reasons.ROWS[kind] for r in row.reasons}
    assert set(enum) - documented == set()
    assert all(isinstance(r, enum) for r in documented)


def test_the_tables_render_as_markdown():
    text = reasons.table("DriftMonitor")
    assert text.splitlines()[0] == "| condition | status | reasons | meaning |"
    assert "`SketchUnavailable`" in text
    assert reasons.events_line("ModelDeployment").startswith("Events: `Promoted`")
