"""hack/run-tests.sh: in the sessions against the cluster a skipped test fails, unless it is marked optional.

Each test runs a throwaway test module through `hack/run-tests.sh --session NAME`, the environment and options
the script gives that session, with tests/conftest.py loaded as a plugin (the module lives outside tests/)."""
from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.fixtures.cluster import ROOT

SKIPPING_TESTS = '''
import pytest


@pytest.fixture
def audit_log():
    pytest.skip("no audit log")


def test_skipped_in_its_body():
    pytest.skip("no operator call audited")


def test_skipped_by_its_fixture(audit_log):
    pass


@pytest.mark.optional(reason="the cluster has no real node (MODELLOOP_NODE=0)")
def test_optional():
    pytest.skip("no real node")
'''


def run_session(name: str, tmp_path: Path) -> tuple[int, str, dict[str, tuple[str, str]]]:
    """Exit status, output and {test: (outcome, message)} of session `name` on SKIPPING_TESTS."""
    (tmp_path / "test_skipping.py").write_text(SKIPPING_TESTS)
    junit = tmp_path / "junit.xml"
    env = {k: v for k, v in os.environ.items() if k not in ("MODELLOOP_SKIPS_FAIL", "PYTEST_ADDOPTS")}
    proc = subprocess.run(["bash", str(ROOT / "hack" / "run-tests.sh"), "--session", name, "-p", "tests.conftest",
                           "--rootdir", str(tmp_path), f"--junitxml={junit}", str(tmp_path / "test_skipping.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert junit.exists(), output
    outcomes = {}
    for case in ET.parse(junit).iter("testcase"):
        child = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        outcomes[case.get("name")] = ("passed", "") if child is None else (
            child.tag, f"{child.get('message', '')}\n{child.text or ''}")
    return proc.returncode, output, outcomes


def test_a_skip_fails_the_rbac_session_unless_the_test_is_marked_optional(tmp_path):
    status, output, outcomes = run_session("rbac", tmp_path)
    assert status == 1, output
    body, fixture, optional = (outcomes[t] for t in ("test_skipped_in_its_body", "test_skipped_by_its_fixture",
                                                      "test_optional"))
    assert body[0] == "failure" and "skipped, and skips fail in this session: no operator call audited" in body[1], \
        output
    assert fixture[0] == "error" and "skipped, and skips fail in this session: no audit log" in fixture[1], output
    assert optional[0] == "skipped" and "no real node" in optional[1], output


def test_the_unit_session_keeps_ordinary_skips(tmp_path):
    status, output, outcomes = run_session("unit", tmp_path)
    assert status == 0, output
    assert {outcome for outcome, _ in outcomes.values()} == {"skipped"} and len(outcomes) == 3, output
