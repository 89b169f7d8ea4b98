"""The Helm chart: lints, renders, and what it renders is accepted by the real API server."""
from __future__ import annotations

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
    for sets in ((), (f"watchNamespaces={{{namespace}}}",)):
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
    alert_rule_test:
      - eval_time: 10m
        alertname: ModelDriftDetected
        exp_alerts: []
      - eval_time: 20m
        alertname: ModelDriftDetected
        exp_alerts:
          - exp_labels: {{severity: warning, namespace: ml, monitor: churn}}
            exp_annotations:
              summary: "Data drift on ml/churn"
              description: "The live inputs drifted from the training reference for 15 minutes; see kubectl describe dmon churn -n ml."
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
