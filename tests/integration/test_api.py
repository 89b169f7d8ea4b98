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
    """`doc` with the field at `path` (dots, and [i] for list items) set to `value` or deleted."""
    doc = copy.deepcopy(doc)
    steps: list = []
    for part in path.split("."):
        name, _, index = part.partition("[")
        steps.append(name)
        if index:
            steps.append(int(index.rstrip("]")))
    *parents, leaf = steps
    node = doc
    for p in parents:
        node = node[p] if isinstance(p, int) else node.setdefault(p, {})
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
    (M, "spec.thresholds.missing", 4, "spec.thresholds.missing"),
    (M, "spec.tests.numerical", "chi2", "spec.tests.numerical"),
    (M, "spec.consecutive", 0, "spec.consecutive"),
    (M, "spec.action.type", "page-someone", "spec.action.type"),
    (M, "spec.action.cooldown", "soon", "spec.action.cooldown"),
    # What passed admission before, and failed later, at run time or never (issue 11).
    (M, "spec.interval", "0s", "spec.interval"),            # a hot loop against the API server
    (M, "spec.interval", "9s", "spec.interval"),
    (M, "spec.interval", "999999h", "spec.interval"),
    (M, "spec.action.cooldown", "9999h", "spec.action.cooldown"),
    (M, "spec.minSamples", 10**12, "spec.minSamples"),
    (M, "spec.thresholds.features", {"plan": -1}, "spec.thresholds.features"),
    (T, "spec.dataset.features", ["tenure_months", ""], "spec.dataset.features"),
    (T, "spec.output.keepVersions", 0, "spec.output.keepVersions"),
    (T, "spec.output.keepVersions", 1001, "spec.output.keepVersions"),
    (T, "spec.dataset.uri", "s3://modelloop-demo/churn.csv?versionId=1", "spec.dataset.uri"),
    (T, "spec.dataset.uri", "s3://modelloop-demo/churn\t.csv", "spec.dataset.uri"),
    (T, "spec.resources.requests", {"cpus": "1"}, "spec.resources.requests"),
    (T, "spec.resources", {"requests": {"memory": "4Gi"}, "limits": {"memory": "1Gi"}}, "spec.resources.requests"),
    (T, "spec.resources.limits.memory", -1, "spec.resources.limits.memory"),
    (T, "spec.podTemplate", {"env": [{"name": "MODELLOOP_TRAINING_SPEC", "value": "{}"}]}, "spec.podTemplate.env[0].name"),
    (T, "spec.podTemplate", {"env": [{"name": "has space", "value": "x"}]}, "spec.podTemplate.env[0].name"),
    (T, "spec.podTemplate", {"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}, "spec.podTemplate.env"),
    (T, "spec.podTemplate", {"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "Bad Name", "key": "k"}}}]},
     "spec.podTemplate.env[0].valueFrom.secretKeyRef.name"),
    (T, "spec.podTemplate", {"env": [{"name": "A", "valueFrom": {}}]}, "spec.podTemplate.env[0].valueFrom"),
    (T, "spec.podTemplate", {"env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]},
     "spec.podTemplate.env[0].valueFrom"),
    (T, "spec.podTemplate", {"labels": {"bad key!": "x"}}, "spec.podTemplate.labels"),
    (T, "spec.podTemplate", {"labels": {"team": "x" * 64}}, "spec.podTemplate.labels"),
    (T, "spec.podTemplate", {"annotations": {"/no-name": "x"}}, "spec.podTemplate.annotations"),
    (T, "spec.podTemplate", {"nodeSelector": {"disk": "fast ssd"}}, "spec.podTemplate.nodeSelector"),
    (T, "spec.podTemplate", {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]},
     "spec.podTemplate.tolerations[0].value"),
    (T, "spec.podTemplate", {"tolerations": [{"key": "k", "tolerationSeconds": 5}]},
     "spec.podTemplate.tolerations[0].tolerationSeconds"),
    (T, "spec.podTemplate", {"tolerations": [{"value": "v"}]}, "spec.podTemplate.tolerations[0].operator"),
    (T, "spec.podTemplate", {"serviceAccountName": "Admin_SA"}, "spec.podTemplate.serviceAccountName"),
    (T, "spec.podTemplate", {"priorityClassName": "high priority"}, "spec.podTemplate.priorityClassName"),
    (T, "spec.podTemplate", {"image": "evil image"}, "spec.podTemplate.image"),
    (T, "spec.retrain", {"monitorSelector": {"matchExpressions": [{"key": "team", "operator": "In"}]}},
     "spec.retrain.monitorSelector.matchExpressions[0].values"),
    (T, "spec.retrain", {"monitorSelector": {"matchExpressions": [{"key": "team", "operator": "Near",
                                                                   "values": ["x"]}]}},
     "spec.retrain.monitorSelector.matchExpressions[0].operator"),
    (D, "spec.model", {"uri": "s3://modelloop-demo/models/churn"}, "spec.model.uri"),    # not a version
    (D, "spec.rollout.maxSurge", 0, "spec.rollout.maxSurge"),          # with maxUnavailable 0: a stuck rollout
    (D, "spec.rollout.maxSurge", "lots", "spec.rollout.maxSurge"),
    (D, "spec.rollout.maxSurge", "0%", "spec.rollout.maxSurge"),
    (D, "spec.resources.requests.cpu", "1 core", "spec.resources.requests.cpu"),
    (D, "spec.podTemplate", {"env": [{"name": "MODELLOOP_SKETCH_PORT", "value": "8080"}]},
     "spec.podTemplate.env[0].name"),
    # Outcomes (docs/outcomes.md).
    (D, "spec.feedback", {"maxDelay": "24h"}, "spec.feedback.uri"),
    (D, "spec.feedback.retention", "1h", "spec.feedback.retention"),     # shorter than maxDelay (168h)
    (D, "spec.feedback.maxDelay", "forever", "spec.feedback.maxDelay"),
    (D, "spec.feedback.maxDelay", "10s", "spec.feedback.maxDelay"),
    (M, "spec.retrainOn", "accuracy", "spec.retrainOn"),
    (M, "spec.performance.metric", "log_loss", "spec.performance.metric"),  # not measurable from the records
    (M, "spec.performance.maxDrop", -0.1, "spec.performance.maxDrop"),
    (M, "spec.performance.minLabels", 0, "spec.performance.minLabels"),
    (M, "spec.performance.window", "30s", "spec.performance.window"),
]

# Every field of a kind of value, in every example, gets each of these values (the kinds are found in
# the generated schema, so a new field of a known kind is covered without listing it here).
BAD_VALUES = {
    "uri": ["s3://modelloop-demo/../other-team/data.csv", "s3://modelloop-demo/a//b.csv", "file:///data/./x.csv",
            "pvc://claim/..", "ftp://modelloop-demo/x.csv", "pvc://Claim_1/x.csv"],
    "quantity": ["lots", "-1", "1.5.5", "10 Gi"],
    "name": ["Bad_Name", "-leading-dash", "dots..twice", "x" * 254],
}


def _kind_of(schema: dict) -> str | None:
    from modelloop.api.common import OBJECT_NAME_PATTERN, QUANTITY_PATTERN, URI_PATTERN

    return {URI_PATTERN: "uri", QUANTITY_PATTERN: "quantity", OBJECT_NAME_PATTERN: "name"}.get(schema.get("pattern"))


def _field_cases() -> list[tuple[str, str, object, str]]:
    crds = {c["spec"]["names"]["kind"]: c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            for c in render_all().values()}
    cases = []

    def walk(kind: str, value, schema: dict, path: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                props = schema.get("properties", {})
                child = props[k] if k in props else schema.get("additionalProperties", {})
                walk(kind, v, child, f"{path}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(kind, v, schema.get("items", {}), f"{path}[{i}]")
        elif _kind_of(schema):
            cases.extend((kind, path, bad, path) for bad in BAD_VALUES[_kind_of(schema)])

    for kind, doc in EXAMPLES.items():
        walk(kind, doc["spec"], crds[kind]["properties"]["spec"], "spec")
    return cases


FIELD_CASES = _field_cases()


def test_there_are_at_least_fifty_malformed_cases_and_every_kind_of_value_is_mutated():
    assert len(MALFORMED) + len(FIELD_CASES) >= 50
    mutated = {(k, p) for k, p, _, _ in FIELD_CASES}
    assert {(T, "spec.dataset.uri"), (T, "spec.output.uri"), (T, "spec.storage.secretRef.name"),
            (T, "spec.resources.requests.cpu"), (T, "spec.retrain.allowedMonitors[0]"),
            (D, "spec.model.fromTraining"), (D, "spec.resources.limits.memory"), (M, "spec.deploymentRef.name"),
            (M, "spec.action.datasetUri"), (M, "spec.action.trainingRef.name")} <= mutated


@pytest.mark.parametrize("kind,path,value,field", MALFORMED + FIELD_CASES,
                         ids=[f"{k}:{p}={'<deleted>' if v is DELETE else str(v)[:60]}"
                              for k, p, v, _ in MALFORMED + FIELD_CASES])
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
        {"status": {"phase": "Succeeded", "latestVersion": 3,
                    "metric": {"name": "roc_auc", "value": 0.8712345678, "display": "0.8712"}, "conditions": [ready]}}))
    crds.kubectl("patch", "mdep", "churn", "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps(
        {"status": {"phase": "Available", "modelVersion": 3, "readyReplicas": 2, "replicas": 2,
                    "metric": {"name": "roc_auc", "value": 0.8712345678, "display": "0.8712"},
                    "conditions": [ready]}}))
    out = crds.kubectl("get", "modelloop", "-n", namespace).stdout
    assert "modeltraining.modelloop.dev/churn" in out
    assert "modeldeployment.modelloop.dev/churn" in out
    assert "driftmonitor.modelloop.dev/churn" in out
    row = crds.kubectl("get", "mtrain", "churn", "-n", namespace, "--no-headers").stdout.split()
    # The metric as the operator writes it for reading (status.metric.display), not the 17 digits of value.
    assert row[:6] == ["churn", "Succeeded", "3", "roc_auc", "0.8712", "True"]
    row = crds.kubectl("get", "mdep", "churn", "-n", namespace, "--no-headers").stdout.split()
    assert row[:6] == ["churn", "True", "Available", "3", "2", "0.8712"]


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
