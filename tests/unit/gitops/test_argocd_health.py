"""The Argo CD health checks (charts/modelloop/argocd/<Kind>.lua), run the way Argo CD runs them (gopher-lua,
no string library, `obj` decoded as Argo CD decodes it) against status objects shaped exactly as the
controllers write them (tests/fixtures/argocd/<Kind>/<case>.yaml; their conditions come from the controllers'
own pure functions)."""
from __future__ import annotations

import itertools
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from modelloop import reasons
from modelloop.api import DriftMonitor, ModelDeployment, ModelTraining
from modelloop.rollout import ModelUnavailable, deployment_conditions
from modelloop.runs import training_conditions
from tests.fixtures.gitops import HEALTH_SCRIPTS, KINDS, ROOT, binary

FIXTURES = ROOT / "tests" / "fixtures" / "argocd"

# (kind, fixture, Argo CD health status, text the message must contain)
CASES = [
    ("ModelTraining", "ready", "Healthy", "VersionAvailable: version 1 is the latest good version"),
    ("ModelTraining", "first-run-in-progress", "Progressing", "RunInProgress: run churn-v1 is training version 1"),
    ("ModelTraining", "retrain-in-progress", "Progressing", "RunInProgress: run churn-v2"),
    ("ModelTraining", "first-run-failed", "Degraded", "RunFailed: exit code 3: DatasetUnreadable"),
    ("ModelTraining", "later-run-failed", "Degraded", "the last run failed: exit code 2: DatasetInvalid"),
    ("ModelTraining", "invalid-spec", "Degraded", "InvalidSpec: spec.estimator.params"),
    ("ModelTraining", "stale-generation", "Progressing", "observe generation 2 (observed 1)"),
    ("ModelTraining", "no-status", "Progressing", "waiting for the operator"),
    ("ModelTraining", "paused", "Suspended", "modelloop.dev/reconcile: disabled"),
    ("ModelTraining", "suspended", "Suspended", "spec.suspend"),
    ("ModelTraining", "storage-unavailable", "Progressing", "StorageUnavailable: no run can start until the store"),
    ("ModelDeployment", "ready", "Healthy", "Serving: version 1 is serving"),
    ("ModelDeployment", "rolling-out", "Progressing", "RollingOut: rolling out version 1"),
    ("ModelDeployment", "waiting-for-training", "Progressing", "WaitingForTraining"),
    ("ModelDeployment", "rollout-failed", "Degraded", "ProgressDeadlineExceeded: version 1 did not become Available"),
    ("ModelDeployment", "rolled-back", "Degraded", "RolledBack: version 2 failed its rollout; serving version 1"),
    ("ModelDeployment", "candidate-held", "Healthy", "maxRegression is 0.02"),
    ("ModelDeployment", "training-not-found", "Degraded", "TrainingNotFound: spec.model.fromTraining"),
    ("ModelDeployment", "stale-generation", "Progressing", "observe generation 3 (observed 2)"),
    ("ModelDeployment", "no-status", "Progressing", "waiting for the operator"),
    ("ModelDeployment", "paused", "Suspended", "modelloop.dev/reconcile: disabled"),
    ("ModelDeployment", "storage-unavailable", "Progressing", "StorageUnavailable: the model store cannot be read"),
    ("ModelDeployment", "analysing", "Progressing", "Analysing: analysing: 240 of 500 requests"),
    ("ModelDeployment", "challenger-rejected", "Degraded",
     "ChallengerRejected: version 2 was rejected on live traffic; serving version 1: performance: McNemar"),
    ("DriftMonitor", "ready", "Healthy", "Checked: checked 1200 rows against version 1"),
    ("DriftMonitor", "drift-detected", "Healthy", "DatasetDrift: 2 of 3 features drifted"),
    ("DriftMonitor", "insufficient-samples", "Healthy", "InsufficientSamples"),
    ("DriftMonitor", "sketch-unavailable", "Degraded", "SketchUnavailable: no pod answered"),
    ("DriftMonitor", "deployment-not-found", "Degraded", "DeploymentNotFound"),
    ("DriftMonitor", "stale-generation", "Progressing", "check of generation 2 (observed 1)"),
    ("DriftMonitor", "no-status", "Progressing", "waiting for the first check"),
    ("DriftMonitor", "paused", "Suspended", "modelloop.dev/reconcile: disabled"),
]


def fixture(kind: str, case: str) -> dict:
    return yaml.safe_load((FIXTURES / kind / f"{case}.yaml").read_text())


@pytest.mark.parametrize("kind,case,status,message", CASES, ids=[f"{k}/{c}" for k, c, _, _ in CASES])
def test_health_of_each_status_the_operator_writes(argocd_health, kind, case, status, message):
    verdict = argocd_health(fixture(kind, case))
    assert verdict["status"] == status, verdict
    assert message in verdict["message"], verdict


def test_every_fixture_has_a_case_and_every_kind_covers_the_required_states():
    on_disk = {(p.parent.name, p.stem) for p in FIXTURES.glob("*/*.yaml")}
    assert on_disk == {(k, c) for k, c, _, _ in CASES}
    for kind in KINDS:
        cases = {c for k, c, _, _ in CASES if k == kind}
        assert {"ready", "stale-generation", "no-status", "paused"} <= cases, kind
        assert {s for k, _, s, _ in CASES if k == kind} == {"Healthy", "Progressing", "Degraded", "Suspended"}


@pytest.mark.parametrize("kind,case", [(k, c) for k, c, _, _ in CASES])
def test_fixtures_are_valid_objects_of_their_kind(kind, case):
    obj = fixture(kind, case)
    model = {"ModelTraining": ModelTraining, "ModelDeployment": ModelDeployment, "DriftMonitor": DriftMonitor}[kind]
    model.model_validate({k: v for k, v in obj.items() if k in ("spec", "status")})
    assert obj["apiVersion"] == "modelloop.dev/v1alpha1" and obj["kind"] == kind


def _triples(conditions: list) -> set[tuple[str, str, str]]:
    return {(c.type, c.status, c.reason) for c in conditions}


def _training_triples() -> set[tuple[str, str, str]]:
    """Every (type, status, reason) the ModelTraining controller can write."""
    runs = [[], [{"result": "Running", "job": "j", "version": 1}], [{"result": "Succeeded", "version": 1}],
            [{"result": "Failed", "version": 1, "message": "m"}]]
    out = set()
    for r, latest, invalid, queued, store in itertools.product(runs, (None, 1), (None, "bad"), (False, True),
                                                               (None, "store down")):
        out |= _triples(training_conditions("", r, latest, invalid, queued, store))
    return out


def _deployment_triples() -> set[tuple[str, str, str]]:
    out = set()
    reasons = ("WaitingForTraining", "TrainingNotFound", "ArtifactUnavailable", "SecretNotFound", "StorageUnavailable")
    unavailable = [None] + [ModelUnavailable(r, "m", s) for r in reasons for s in (False, True)]
    deps = [None, {"spec": {"replicas": 1}, "status": {"conditions": [{"type": "Available", "status": "True"}]}}]
    for state, u, serving, dep in itertools.product(("Missing", "Progressing", "Available", "Failed"), unavailable,
                                                    (None, 1), deps):
        for analysing in (None, "analysing"):
            out |= _triples(deployment_conditions(state, u, None, serving, dep, analysing))
    return out


def test_fixture_conditions_are_ones_the_controllers_write():
    """When a controller changes a reason, the fixtures (and maybe the health checks) must follow."""
    possible = {"ModelTraining": _training_triples(), "ModelDeployment": _deployment_triples()}
    for path in FIXTURES.glob("*/*.yaml"):
        obj = yaml.safe_load(path.read_text())
        for c in (obj.get("status") or {}).get("conditions") or ():
            if obj["kind"] == "DriftMonitor":  # built inline in check(): any of the kind's documented reasons
                assert any(c["type"] == row.condition and c["reason"] in row.reasons
                           for row in reasons.ROWS["DriftMonitor"]), (path.name, c)
            else:
                assert (c["type"], c["status"], c["reason"]) in possible[obj["kind"]], (path.name, c)


def test_scripts_read_only_fields_the_api_has():
    """A typo in a field name would silently read nil: every status field a script reads exists."""
    from modelloop.api.crd import render_all

    for kind in KINDS:
        crd = next(c for c in render_all().values() if c["spec"]["names"]["kind"] == kind)
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
        script = (HEALTH_SCRIPTS / f"{kind}.lua").read_text()
        for section, field in re.findall(r"obj\.(status|spec)\.([A-Za-z]+)", script):
            assert field in schema[section]["properties"], f"{kind}.lua reads {section}.{field}"


def test_a_script_that_uses_the_string_library_fails_as_in_argo_cd(tmp_path: Path, argocd_health):
    """Argo CD runs argocd-cm scripts without Lua's string library: the harness must too, or a script
    that works here could fail there. An unknown status becomes Unknown, as in Argo CD."""
    script = tmp_path / "uses-string.lua"
    script.write_text('return {status = "Healthy", message = string.format("%d", 1)}')
    proc = subprocess.run([str(binary("argocd-health")), str(script)], input='{"metadata": {}}',
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "format" in proc.stderr
    script.write_text('return {status = "Fine"}')
    assert argocd_health({"kind": "x", "metadata": {}}, script) == {
        "status": "Unknown", "message": "Lua returned an invalid health status"}
