"""The chart as GitOps tools and `kubectl apply` users meet it, without a cluster: `helm lint --strict`,
values.schema.json (a bad value fails with the field named), deploy/install.yaml and the docs' Argo CD
snippets in sync with their sources, and manifests Argo CD syncs without a perpetual diff."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from tests.fixtures.gitops import HEALTH_SCRIPTS, KINDS, ROOT, binary

CHART = ROOT / "charts" / "modelloop"
K8S_VERSION = re.search(r"^K8S_VERSION=v(\S+)", (ROOT / "hack" / "versions.env").read_text(), re.M).group(1)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(binary("helm")), *args], capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def render(*sets: str) -> list[dict]:
    out = helm("template", "modelloop", str(CHART), "--namespace", "modelloop-system", "--kube-version", K8S_VERSION,
               *[f"--set={s}" for s in sets]).stdout
    return [d for d in yaml.safe_load_all(out) if d]


ALL_ON = ("admissionPolicy.enabled=true", "metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true")


@pytest.mark.parametrize("sets", [(), ALL_ON, ("watchNamespaces={ml,team-a}", "grafanaDashboard.enabled=false")])
def test_chart_lints_strict(sets):
    proc = helm("lint", str(CHART), "--strict", "--kube-version", K8S_VERSION, *[f"--set={s}" for s in sets])
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


# (--set of a bad value, text the error must contain: the field's path)
BAD_VALUES = [
    ("replicaCount=2,leaderElection.enabled=false", "/leaderElection/enabled"),  # standbys need leader election
    ("leaderElection.retryPeriodSeconds=0", "/leaderElection/retryPeriodSeconds"),
    ("replicaCount=-1", "/replicaCount"),
    ("replicaCount=two", "/replicaCount"),
    ("logLevel=verbose", "/logLevel"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("metrics.port=8081", "/metrics/port"),
    ("metrics.port=70000", "/metrics/port"),
    ("metrics.serviceMonitor.interval=soon", "/metrics/serviceMonitor/interval"),
    ("watchNamespaces={Team_A}", "/watchNamespaces/0"),
    ("resyncSeconds=0", "/resyncSeconds"),
    ("grafanaDashboard.enabled=yes", "/grafanaDashboard/enabled"),
    ("admissionPolicy.validationActions={Block}", "/admissionPolicy/validationActions/0"),
    ("resources.limits.memory=lots", "/resources/limits/memory"),
    ("replicas=2", "'replicas' not allowed"),                     # a typo of replicaCount
    ("metrics.serviceMonitor.enable=true", "'enable' not allowed"),  # a typo of enabled
    ("metrics.prometheusRule.for.ModelDriftDetected=soon", "/metrics/prometheusRule/for/ModelDriftDetected"),
    ("metrics.prometheusRule.for.ModelDrift=5m", "'ModelDrift' not allowed"),  # not an alert of the chart
]


@pytest.mark.parametrize("value,field", BAD_VALUES, ids=[v for v, _ in BAD_VALUES])
def test_a_bad_value_fails_template_and_lint_naming_the_field(value, field):
    for args in (("template", "x", str(CHART), "--kube-version", K8S_VERSION),
                 ("lint", str(CHART), "--strict", "--kube-version", K8S_VERSION)):
        proc = helm(*args, f"--set={value}", check=False)
        assert proc.returncode != 0, f"helm {args[0]} accepted {value}"
        assert field in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_every_value_is_described_by_the_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value, node, path):
        assert "description" in node, f"{path or '(root)'} has no description in values.schema.json"
        if isinstance(value, dict) and "properties" in node:
            for k, v in value.items():
                assert k in node["properties"], f"{path}.{k} is not in values.schema.json"
                walk(v, node["properties"][k], f"{path}.{k}")

    walk(values, schema, "")


def test_install_yaml_and_the_docs_argocd_snippets_are_generated_from_their_sources():
    proc = subprocess.run([sys.executable, str(ROOT / "hack" / "generate-gitops.py"), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr + "\nrun `make gitops` and commit the result"


def test_install_yaml_is_the_namespace_the_crds_and_the_default_chart():
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "install.yaml").read_text()) if d]
    assert docs[0]["kind"] == "Namespace" and docs[0]["metadata"]["name"] == "modelloop-system"
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert docs[1:1 + len(crds)] == crds  # before anything that could use them
    assert sorted(c["metadata"]["name"] for c in crds) == [f"{p}.modelloop.dev" for p in
                                                           ("driftmonitors", "modeldeployments", "modeltrainings")]
    for crd in crds:
        generated = yaml.safe_load((ROOT / "crds" / f"modelloop.dev_{crd['metadata']['name'].split('.')[0]}.yaml")
                                   .read_text())
        assert crd == generated
    rest = docs[1 + len(crds):]
    assert rest == render()
    assert all(d["metadata"].get("namespace") == "modelloop-system" for d in rest if not d["kind"].startswith("Cluster"))


def _nulls(node, path=""):
    if node is None:
        yield path
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _nulls(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _nulls(v, f"{path}[{i}]")


@pytest.mark.parametrize("sets", [(), ALL_ON])
def test_manifests_hold_nothing_the_api_server_would_drop_or_rewrite(sets):
    """What Argo CD would show as a diff forever: a status, creationTimestamp: null, null values."""
    docs = render(*sets) + [yaml.safe_load(p.read_text()) for p in (ROOT / "crds").glob("*.yaml")]
    for d in docs:
        where = f"{d['kind']}/{d['metadata']['name']}"
        assert "status" not in d, where
        assert "creationTimestamp" not in d["metadata"], where
        assert not list(_nulls(d)), f"{where} has null values at {list(_nulls(d))}"


def test_workloads_write_the_api_servers_defaults():
    docs = render()
    dep = next(d for d in docs if d["kind"] == "Deployment")
    spec = dep["spec"]
    assert spec["revisionHistoryLimit"] == 10 and spec["progressDeadlineSeconds"] == 600
    # Leader election (the default): a new replica starts as a standby before an old one stops.
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    alone = next(d for d in render("replicaCount=1", "leaderElection.enabled=false") if d["kind"] == "Deployment")
    assert alone["spec"]["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert (pod["restartPolicy"], pod["dnsPolicy"], pod["schedulerName"], pod["terminationGracePeriodSeconds"]) == (
        "Always", "ClusterFirst", "default-scheduler", 30)
    c = pod["containers"][0]
    assert (c["terminationMessagePath"], c["terminationMessagePolicy"], c["imagePullPolicy"]) == (
        "/dev/termination-log", "File", "IfNotPresent")
    assert all(p["protocol"] == "TCP" for p in c["ports"])
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        assert probe["httpGet"]["scheme"] == "HTTP"
        assert (probe["timeoutSeconds"], probe["successThreshold"], probe["failureThreshold"]) == (1, 1, 3)
    assert all("apiVersion" in e["valueFrom"]["fieldRef"] for e in c["env"] if "fieldRef" in e.get("valueFrom", {}))
    svc = next(d for d in docs if d["kind"] == "Service")
    assert (svc["spec"]["type"], svc["spec"]["sessionAffinity"], svc["spec"]["internalTrafficPolicy"]) == (
        "ClusterIP", "None", "Cluster")
    assert all(p["protocol"] == "TCP" for p in svc["spec"]["ports"])


def test_dashboard_is_a_configmap_for_the_grafana_sidecar_by_default():
    cm = next(d for d in render() if d["kind"] == "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["modelloop.json"]) == json.loads((CHART / "files" / "dashboard.json").read_text())
    cm = next(d for d in render("grafanaDashboard.namespace=monitoring", "grafanaDashboard.annotations.grafana_folder=ML")
              if d["kind"] == "ConfigMap")
    assert cm["metadata"]["namespace"] == "monitoring" and cm["metadata"]["annotations"] == {"grafana_folder": "ML"}
    assert not [d for d in render("grafanaDashboard.enabled=false") if d["kind"] == "ConfigMap"]


def test_operator_service_monitor_keeps_the_resources_namespace_label():
    monitors = {d["metadata"]["name"]: d for d in render("metrics.serviceMonitor.enabled=true")
                if d["kind"] == "ServiceMonitor"}
    assert monitors["modelloop"]["spec"]["endpoints"][0]["honorLabels"] is True


@pytest.mark.parametrize("doc", ["docs/gitops.md", "charts/modelloop/README.md"])
def test_argocd_snippet_in_the_docs_is_the_scripts(doc):
    text = (ROOT / doc).read_text()
    block = re.search(r"```yaml\n(# argocd-cm.*?)```", text, re.S)
    assert block, f"{doc} has no argocd-cm block"
    data = yaml.safe_load(block.group(1))["data"]
    assert data == {f"resource.customizations.health.modelloop.dev_{k}": (HEALTH_SCRIPTS / f"{k}.lua").read_text()
                    for k in KINDS}


def test_the_schema_offers_a_for_override_for_exactly_the_charts_alerts():
    schema = json.loads((CHART / "values.schema.json").read_text())
    overridable = schema["properties"]["metrics"]["properties"]["prometheusRule"]["properties"]["for"]["properties"]
    alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert set(overridable) == {r["alert"] for g in alerts["groups"] for r in g["rules"]}
