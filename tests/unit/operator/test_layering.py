"""Decisions apart from I/O: the renderers, the status conventions, the names, the reasons and the pure decision
modules import neither kopf nor the Kubernetes client."""
from __future__ import annotations

import subprocess
import sys

import pytest

PURE = ["modelloop.render.deployment", "modelloop.render.training", "modelloop.status", "modelloop.names",
        "modelloop.reasons", "modelloop.meta", "modelloop.promotion", "modelloop.rollout", "modelloop.runs", "modelloop.retrain",
        "modelloop.performance", "modelloop.report", "modelloop.analysis", "modelloop.served",
        "modelloop.render.gateway", "modelloop.challenger", "modelloop.plans.training", "modelloop.plans.drift", "modelloop.plans.deployment"]


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_client(module):
    code = (f"import sys, {module}\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('kopf', 'kubernetes') or m == 'modelloop.kube')\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"{module} imports {out}"
