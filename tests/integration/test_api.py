"""The API as users meet it: applied, rejected, explained and listed by a real kube-apiserver."""
from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from modelloop.api.crd import render_all

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {doc["kind"]: doc for p in sorted((ROOT / "examples").glob("*.yaml"))
            for doc in yaml.safe_load_all(p.read_text()) if doc and doc["apiVersion"].startswith("modelloop.dev")}


def _subset(want, have, path="spec") -> None:
    if isinstance(want, dict):
        for k, v in want.items():
            assert k in have, f"{path}.{k} missing after apply"
            _subset(v, have[k], f"{path}.{k}")
    else:
        assert want == have, f"{path}: applied {want!r}, read back {have!r}"


@pytest.mark.parametrize("kind", ["ModelTraining", "ModelDeployment", "DriftMonitor"])
def test_every_example_applies_server_side_and_reads_back_unchanged(crds, namespace, kind):
    doc = EXAMPLES[kind]
    crds.apply(doc, "-n", namespace)
    back = crds.get(kind.lower(), doc["metadata"]["name"], "-n", namespace)
    _subset(doc["spec"], back["spec"])


def _set(doc: dict, path: str, value) -> dict:
    doc = copy.deepcopy(doc)
    *parents, leaf = path.split(".")
    node = doc
    for p in parents:
        node = node.setdefault(p, {})
    if value is DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return doc


DELETE = object()
T, D, M = "ModelTraining", "ModelDeployment", "DriftMonitor"

# (kind, path, value, text the rejection must contain: the offending field)
MALFORMED = [
    (T, "spec.dataset.uri", "ftp://host/data.csv", "spec.dataset.uri"),
    (T, "spec.dataset.uri", DELETE, "spec.dataset.uri"),
    (T, "spec.dataset.target", DELETE, "spec.dataset.target"),
    (T, "spec.dataset.format", "excel", "spec.dataset.format"),
    (T, "spec.dataset.features", ["tenure_months", "churned"], "spec.dataset.target"),
    (T, "spec.estimator.class", "os.system", "spec.estimator.class"),
    (T, "spec.estimator.class", "sklearn.tree._classes.DecisionTreeClassifier", "spec.estimator.class"),
    (T, "spec.estimator.params", "n_estimators=10", "spec.estimator.params"),
    (T, "spec.validation.testSize", 1.5, "spec.validation.testSize"),
    (T, "spec.validation.testSize", "a quarter", "spec.validation.testSize"),
    (T, "spec.validation.metric", "auc", "spec.validation.metric"),
    (T, "spec.output.uri", "/models/churn", "spec.output.uri"),
    (T, "spec.backoffLimit", -1, "spec.backoffLimit"),
    (T, "spec.historyLimit", 0, "spec.historyLimit"),
    (T, "spec.unknownField", 1, "unknownField"),
    (D, "spec.model.uri", "s3://modelloop-demo/models/churn/v1", "spec.model"),
    (D, "spec.model", {}, "spec.model"),
    (D, "spec.model.version", "newest", "spec.model.version"),
    (D, "spec.replicas", -2, "spec.replicas"),
    (D, "spec.autoscaling", {"minReplicas": 5, "maxReplicas": 2}, "spec.autoscaling.minReplicas"),
    (D, "spec.autoscaling", {"minReplicas": 1, "maxReplicas": 3}, "spec.replicas"),
    (D, "spec.promotion.policy", "yolo", "spec.promotion.policy"),
    (D, "spec.promotion.maxRegression", -0.1, "spec.promotion.maxRegression"),
    (D, "spec.server.maxBatchSize", 0, "spec.server.maxBatchSize"),
    (M, "spec.deploymentRef", DELETE, "spec.deploymentRef"),
    (M, "spec.interval", "every minute", "spec.interval"),
    (M, "spec.thresholds.driftShare", 1.5, "spec.thresholds.driftShare"),
    (M, "spec.thresholds.pValue", 0, "spec.thresholds.pValue"),
    (M, "spec.tests.numerical", "chi2", "spec.tests.numerical"),
    (M, "spec.consecutive", 0, "spec.consecutive"),
    (M, "spec.action.type", "page-someone", "spec.action.type"),
    (M, "spec.action.cooldown", "soon", "spec.action.cooldown"),
]


def test_there_are_at_least_twenty_malformed_cases():
    assert len(MALFORMED) >= 20


@pytest.mark.parametrize("kind,path,value,field", MALFORMED,
                         ids=[f"{k}:{p}={'<deleted>' if v is DELETE else v}" for k, p, v, _ in MALFORMED])
def test_malformed_resource_is_rejected_with_a_message_naming_the_field(crds, namespace, kind, path, value, field):
    doc = _set(EXAMPLES[kind], path, value)
    doc["metadata"]["name"] = "malformed"
    proc = crds.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=json.dumps(doc), check=False)
    assert proc.returncode != 0, f"accepted: {json.dumps(doc['spec'])}"
    assert field in proc.stderr, proc.stderr
    assert crds.kubectl("get", kind.lower(), "malformed", "-n", namespace, check=False).returncode != 0


def test_name_too_long_for_job_names_is_rejected(crds, namespace):
    doc = copy.deepcopy(EXAMPLES[T])
    doc["metadata"]["name"] = "x" * 49
    proc = crds.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=json.dumps(doc), check=False)
    assert proc.returncode != 0
    assert "metadata.name must be at most 48 characters" in proc.stderr


def _schema_paths(node: dict, prefix: str) -> set[str]:
    out = set()
    for name, prop in node.get("properties", {}).items():
        out.add(f"{prefix}.{name}")
        out |= _schema_paths(prop, f"{prefix}.{name}")
    if "items" in node:
        out |= _schema_paths(node["items"], prefix)
    return out


@pytest.mark.parametrize("kind", ["modeltraining", "modeldeployment", "driftmonitor"])
def test_kubectl_explain_recursive_lists_every_spec_field(crds, kind):
    crd = next(c for c in render_all().values() if c["spec"]["names"]["singular"] == kind)
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    text = crds.kubectl("explain", f"{kind}.spec", "--recursive").stdout
    fields = text.split("FIELDS:", 1)[1]
    listed = {line.split()[0] for line in fields.splitlines() if "\t<" in line}
    leaf_names = {p.rsplit(".", 1)[-1] for p in _schema_paths(spec, "spec")}
    assert leaf_names <= listed, f"missing from kubectl explain: {sorted(leaf_names - listed)}"


def test_kubectl_explain_of_a_leaf_shows_its_description(crds):
    text = crds.kubectl("explain", "modeldeployment.spec.promotion.maxRegression").stdout
    assert "Largest allowed worsening of the primary metric" in text
    text = crds.kubectl("explain", "driftmonitor.spec.consecutive").stdout
    assert "Drifted windows in a row before acting" in text


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def paused(doc: dict) -> dict:
    """The example with reconciliation disabled: the test writes its status, not the operator."""
    doc = copy.deepcopy(doc)
    doc["metadata"].setdefault("annotations", {})["modelloop.dev/reconcile"] = "disabled"
    return doc


def test_kubectl_get_modelloop_lists_all_three_kinds_with_useful_columns(crds, namespace):
    for kind in (T, D, M):
        crds.apply(paused(EXAMPLES[kind]), "-n", namespace)
    ready = {"type": "Ready", "status": "True", "reason": "Succeeded", "message": "v3 trained",
             "lastTransitionTime": _now(), "observedGeneration": 1}
    crds.kubectl("patch", "mtrain", "churn", "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps(
        {"status": {"phase": "Succeeded", "latestVersion": 3, "metric": {"name": "roc_auc", "value": 0.87},
                    "conditions": [ready]}}))
    crds.kubectl("patch", "mdep", "churn", "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps(
        {"status": {"phase": "Available", "modelVersion": 3, "readyReplicas": 2, "replicas": 2,
                    "metric": {"name": "roc_auc", "value": 0.87}, "conditions": [ready]}}))
    out = crds.kubectl("get", "modelloop", "-n", namespace).stdout
    assert "modeltraining.modelloop.dev/churn" in out
    assert "modeldeployment.modelloop.dev/churn" in out
    assert "driftmonitor.modelloop.dev/churn" in out
    row = crds.kubectl("get", "mtrain", "churn", "-n", namespace, "--no-headers").stdout.split()
    assert row[:6] == ["churn", "Succeeded", "3", "roc_auc", "0.87", "True"]
    row = crds.kubectl("get", "mdep", "churn", "-n", namespace, "--no-headers").stdout.split()
    assert row[:6] == ["churn", "True", "Available", "3", "2", "0.87"]


def test_kubectl_wait_for_ready_condition_works(crds, namespace):
    crds.apply(paused(EXAMPLES[M]), "-n", namespace)
    ready = {"type": "Ready", "status": "True", "reason": "Checked", "message": "no drift",
             "lastTransitionTime": _now(), "observedGeneration": 1}
    crds.kubectl("patch", "dmon", "churn", "-n", namespace, "--subresource=status", "--type=merge",
                 "-p", json.dumps({"status": {"conditions": [ready]}}))
    crds.kubectl("wait", "dmon/churn", "-n", namespace, "--for=condition=Ready", "--timeout=20s")


def test_scale_subresource_of_model_deployment(crds, namespace):
    crds.apply(paused(EXAMPLES[D]), "-n", namespace)
    crds.kubectl("scale", "mdep/churn", "-n", namespace, "--replicas=3")
    assert crds.get("mdep", "churn", "-n", namespace)["spec"]["replicas"] == 3
