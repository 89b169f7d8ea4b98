"""The Helm chart: lints, renders, and what it renders is accepted by the real API server."""
from __future__ import annotations

import json
import subprocess

import yaml

from tests.fixtures.cluster import ROOT

CHART = ROOT / "charts" / "modelloop"


def helm(cluster, *args: str) -> str:
    proc = subprocess.run([str(cluster.bin / "helm"), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def render(cluster, *sets: str) -> str:
    version = cluster.state["versions"]["K8S_VERSION"].lstrip("v")
    return helm(cluster, "template", "modelloop", str(CHART), "--namespace", "modelloop-system",
                "--kube-version", version, *[f"--set={s}" for s in sets])


def test_chart_lints(cluster):
    helm(cluster, "lint", str(CHART), "--strict")


def test_rendered_chart_is_accepted_by_the_api_server(crds, namespace):
    for sets in ((), (f"watchNamespaces={{{namespace}}}",), ("admissionPolicy.enabled=true",)):
        text = render(crds, *sets)
        docs = [d for d in yaml.safe_load_all(text) if d]
        for d in docs:
            if d["metadata"].get("namespace") == "modelloop-system":
                d["metadata"]["namespace"] = namespace
        proc = crds.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs))
        assert "deployment.apps/modelloop" in proc.stdout


def test_operator_pod_is_non_root_with_a_read_only_root_filesystem(cluster):
    docs = [d for d in yaml.safe_load_all(render(cluster)) if d]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_rbac_is_least_privilege(cluster):
    docs = [d for d in yaml.safe_load_all(render(cluster)) if d]
    rules = [r for d in docs if d["kind"] == "ClusterRole" for r in d["rules"]]
    for r in rules:
        assert "*" not in r["verbs"] and "*" not in r["resources"]
    secrets = [r for r in rules if "secrets" in r["resources"]]
    assert secrets and all(r["verbs"] == ["get"] for r in secrets)
    for r in rules:
        if any(res.startswith("model") and "/" not in res for res in r["resources"]):
            assert not {"create", "update", "delete"} & set(r["verbs"])  # never writes users' specs


def test_chart_crds_are_the_generated_ones():
    for path in (ROOT / "crds").glob("*.yaml"):
        assert (CHART / "crds" / path.name).read_text() == path.read_text()


def test_alert_rules_are_valid_prometheus_rules(cluster):
    docs = [d for d in yaml.safe_load_all(render(cluster, "metrics.prometheusRule.enabled=true")) if d]
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    names = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert {"ModelDriftDetected", "ModelTrainingFailed", "ModelDeploymentRolledBack"} <= set(names)
    metric_names = (ROOT / "operator" / "modelloop" / "metrics.py").read_text()
    for g in rule["spec"]["groups"]:
        for r in g["rules"]:
            for token in r["expr"].replace("(", " ").replace(")", " ").replace("{", " ").replace("[", " ").split():
                if token.startswith("modelloop_"):
                    assert f'"{token}"' in metric_names, f"alert {r['alert']} uses unknown metric {token}"


ALERTS = CHART / "files" / "alerts.yaml"
ALERT_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'modelloop_drift_dataset_drift{{namespace="ml",monitor="churn"}}'
        values: '0 0 1x20'
      - series: 'modelloop_training_runs_total{{namespace="ml",training="churn",result="Failed"}}'
        values: '0 0 1 1 1'
      - series: 'modelloop_deployment_rollbacks_total{{namespace="ml",deployment="churn"}}'
        values: '0 0 0 0 0'
      - series: 'modelloop_model_performance_dropped{{namespace="ml",monitor="churn"}}'
        values: '0 0 1x15'
    alert_rule_test:
      - eval_time: 8m
        alertname: ModelPerformanceDropped
        exp_alerts: []
      - eval_time: 14m
        alertname: ModelPerformanceDropped
        exp_alerts:
          - exp_labels: {{severity: warning, namespace: ml, monitor: churn}}
            exp_annotations:
              summary: "Live performance of ml/churn's model dropped"
              description: "Predictions joined with their fed-back labels score significantly below the version's hold-out value; see kubectl describe dmon churn -n ml."
      - eval_time: 10m
        alertname: ModelDriftDetected
        exp_alerts: []
      - eval_time: 20m
        alertname: ModelDriftDetected
        exp_alerts:
          - exp_labels: {{severity: warning, namespace: ml, monitor: churn}}
            exp_annotations:
              summary: "Data drift on ml/churn"
              description: "The live inputs keep drifting from the training reference; see kubectl describe dmon churn -n ml."
      - eval_time: 4m
        alertname: ModelTrainingFailed
        exp_alerts:
          - exp_labels: {{severity: warning, namespace: ml, training: churn, result: Failed}}
            exp_annotations:
              summary: "Training ml/churn failed"
              description: "A training run failed in the last hour; the last good version keeps serving. See status.runs[0].message."
      - eval_time: 4m
        alertname: ModelDeploymentRolledBack
        exp_alerts: []
"""


def test_alert_rules_pass_promtool_check_and_their_unit_tests(cluster, tmp_path):
    promtool = str(cluster.bin / "promtool")
    check = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = tmp_path / "alerts_test.yaml"
    tests.write_text(ALERT_TESTS.format(rules=ALERTS))
    run = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_operator_tells_its_network_identity_and_local_storage_is_off_by_default(cluster):
    docs = [d for d in yaml.safe_load_all(render(cluster)) if d]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert env["MODELLOOP_OPERATOR_POD_LABELS"]["value"] == ",".join(f"{k}={v}" for k, v in labels.items())
    assert env["MODELLOOP_OPERATOR_NAMESPACE"]["valueFrom"] == {"fieldRef": {"apiVersion": "v1",
                                                                       "fieldPath": "metadata.namespace"}}
    assert "MODELLOOP_OPERATOR_LOCAL_STORAGE" not in env
    assert not [d for d in docs if d["kind"].startswith("ValidatingAdmissionPolicy")]
    docs = [d for d in yaml.safe_load_all(render(cluster, "operator.localStorage=true")) if d]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODELLOOP_OPERATOR_LOCAL_STORAGE"]["value"] == "true"


def test_network_policies_are_applied_with_the_fewest_verbs(cluster):
    docs = [d for d in yaml.safe_load_all(render(cluster)) if d]
    rules = [r for d in docs if d["kind"] == "ClusterRole" for r in d["rules"]]
    netpol = [r for r in rules if "networkpolicies" in r["resources"]]
    assert netpol == [{"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
                       "verbs": ["create", "patch", "delete"]}]  # server-side apply (create when new); a
    # challenger's is deleted with it


def test_http_routes_are_applied_and_deleted_with_the_fewest_verbs(cluster):
    docs = [d for d in yaml.safe_load_all(render(cluster)) if d]
    rules = [r for d in docs if d["kind"] == "ClusterRole" for r in d["rules"]]
    routes = [r for r in rules if "gateway.networking.k8s.io" in r["apiGroups"]]
    # server-side apply (create when new), a leftover found by one list and deleted; nothing else of the Gateway API
    assert routes == [{"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"],
                       "verbs": ["list", "create", "patch", "delete"]}]


def _policy_docs(cluster, *sets: str) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(render(cluster, "admissionPolicy.enabled=true", *sets)) if d]
    return [d for d in docs if d["kind"].startswith("ValidatingAdmissionPolicy")]


def test_admission_policy_renders_the_allow_list_and_its_binding(cluster):
    policy, binding = _policy_docs(cluster)
    assert policy["kind"] == "ValidatingAdmissionPolicy" and binding["kind"] == "ValidatingAdmissionPolicyBinding"
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert policy["spec"]["matchConstraints"]["objectSelector"] == {
        "matchLabels": {"app.kubernetes.io/managed-by": "modelloop"}}
    allowed = next(v["expression"] for v in policy["spec"]["variables"] if v["name"] == "allowed")
    assert allowed == '["ghcr.io/modelloop/runtime:","ghcr.io/modelloop/runtime@"]'
    policy, _ = _policy_docs(cluster, "admissionPolicy.allowedImages={registry.example.com/ml/}")
    assert next(v["expression"] for v in policy["spec"]["variables"] if v["name"] == "allowed") == (
        '["registry.example.com/ml/"]')


def _pod(namespace: str, name: str, **spec) -> dict:
    """A pod that the namespace's restricted Pod Security admits, so that only the policy can refuse it."""
    from tests.fixtures.cluster import RESTRICTED_CONTAINER, RESTRICTED_POD

    base = {"securityContext": RESTRICTED_POD,
            "containers": [{"name": "c", "image": "ghcr.io/modelloop/runtime:0.1.0"}]}
    base.update(spec)
    for c in base["containers"] + base.get("initContainers", []):
        c.setdefault("securityContext", RESTRICTED_CONTAINER)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "modelloop"}},
            "spec": base}


def test_admission_policy_rejects_pods_that_break_out_of_a_modelloop_workload(crds, namespace):
    from tests.fixtures.cluster import RESTRICTED_CONTAINER, RESTRICTED_POD, wait_for

    docs = _policy_docs(crds, f"admissionPolicy.namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name={namespace}")
    for d in docs:  # cluster-scoped: named after the test's namespace so that nothing else is affected
        d["metadata"]["name"] = f"{namespace}-workloads"
    docs[1]["spec"]["policyName"] = f"{namespace}-workloads"
    crds.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    try:
        def dry_run(pod: dict):
            return crds.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)

        evil = _pod(namespace, "evil-image", containers=[{"name": "c", "image": "docker.io/attacker/miner:latest"}])
        wait_for(lambda: dry_run(evil).returncode != 0, timeout=30, message="the policy to be in force")
        assert "docker.io/attacker/miner:latest" in dry_run(evil).stderr
        init = _pod(namespace, "evil-init", initContainers=[{"name": "i", "image": "busybox"}])
        assert "allowed images only" in dry_run(init).stderr
        crds.kubectl("create", "serviceaccount", "admin", "-n", namespace)  # it exists; still not allowed
        sa = _pod(namespace, "other-sa", serviceAccountName="admin")
        assert "serviceAccountName is not allowed" in dry_run(sa).stderr
        host = _pod(namespace, "host-path", volumes=[{"name": "root", "hostPath": {"path": "/"}}])
        assert "hostPath" in dry_run(host).stderr
        job = {"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": "evil-job", "namespace": namespace,
                            "labels": {"app.kubernetes.io/managed-by": "modelloop"}},
               "spec": {"template": {"spec": {"restartPolicy": "Never", "securityContext": RESTRICTED_POD,
                                              "containers": [{"name": "c", "image": "attacker/x:1",
                                                              "securityContext": RESTRICTED_CONTAINER}]}}}}
        assert "allowed images only" in dry_run(job).stderr
        assert dry_run(_pod(namespace, "fine")).returncode == 0
        unmanaged = _pod(namespace, "not-ours", containers=[{"name": "c", "image": "busybox"}])
        unmanaged["metadata"]["labels"] = {}
        assert dry_run(unmanaged).returncode == 0  # other workloads are not modelloop's business
    finally:
        crds.kubectl("delete", "-f", "-", input=yaml.safe_dump_all(docs), check=False)


def test_operator_pod_gets_no_service_link_variables(cluster):
    """Released as `modelloop`, the chart's Service modelloop-metrics would otherwise inject
    MODELLOOP_METRICS_PORT=tcp://<ip>:9090 into the operator's environment, one of its own settings."""
    docs = [d for d in yaml.safe_load_all(render(cluster)) if d]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_alert_delays_can_be_overridden_by_alert_name(cluster):
    docs = [d for d in yaml.safe_load_all(render(cluster, "metrics.prometheusRule.enabled=true",
                                                 "metrics.prometheusRule.for.ModelDriftDetected=2m")) if d]
    rules = {r["alert"]: r for d in docs if d["kind"] == "PrometheusRule" for g in d["spec"]["groups"]
             for r in g["rules"]}
    assert rules["ModelDriftDetected"]["for"] == "2m"
    assert rules["DriftChecksFailing"]["for"] == "30m"  # the others keep files/alerts.yaml's
    assert "{{ $labels.monitor }}" in rules["ModelDriftDetected"]["annotations"]["summary"]  # Prometheus', untouched
