"""The ModelDeployment controller against the real API server, with the real operator process.

Artifacts are real (trained by `modelloop.training.train` into the S3 test server); server pods run
on kwok nodes here (ready on demand), and on the local node in tests/e2e.
"""
from __future__ import annotations

import json


from tests.fixtures.cluster import wait_for
from tests.integration.test_training_controller import KWOK

def deployment(namespace: str, **spec) -> dict:
    base = {"replicas": 2, "storage": {"secretRef": {"name": "s3"}}, "podTemplate": KWOK,
            "rollout": {"progressDeadlineSeconds": 30}}
    base.update(spec)
    return {"apiVersion": "modelloop.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "churn", "namespace": namespace}, "spec": base}


def mdep(cluster, namespace) -> dict:
    return cluster.get("mdep", "churn", "-n", namespace)


def st(cluster, namespace) -> dict:
    return mdep(cluster, namespace).get("status") or {}


def absent(cluster, kind: str, namespace: str) -> bool:
    """`kind/churn` is NotFound (not merely a failed kubectl: a misspelt kind or a refused call is no absence)."""
    return "NotFound" in cluster.kubectl("get", kind, "churn", "-n", namespace, check=False).stderr


def cond(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions") or () if c["type"] == type_), {})


def suspended_training(cluster, namespace, store) -> None:
    """A ModelTraining that runs nothing; the test moves status.latestVersion as runs would."""
    cluster.apply({"apiVersion": "modelloop.dev/v1alpha1", "kind": "ModelTraining",
                   "metadata": {"name": "churn", "namespace": namespace},
                   "spec": {**store.spec, "storage": {"secretRef": {"name": "s3"}}, "suspend": True}})
    publish(cluster, namespace, store, 1)


def publish(cluster, namespace, store, version: int) -> None:
    meta = store.read_metadata(version)
    cluster.kubectl("patch", "mtrain", "churn", "-n", namespace, "--subresource=status", "--type=merge", "-p",
                    json.dumps({"status": {"latestVersion": version, "latestArtifact": store.version_uri(version),
                                           "metric": meta["metric"], "metrics": meta["metrics"]}}))


def test_children_are_created_owned_and_shaped_for_safe_rollouts(operator, cluster, namespace, store):
    cluster.apply(deployment(namespace, model={"uri": store.version_uri(1)}))
    cluster.kubectl("wait", "mdep/churn", "-n", namespace, "--for=condition=Ready", "--timeout=90s")
    status = st(cluster, namespace)
    assert status["modelVersion"] == 1 and status["readyReplicas"] == 2 and status["phase"] == "Available"
    assert status["url"] == f"http://churn.{namespace}.svc.cluster.local:8080/v2/models/churn"
    uid = mdep(cluster, namespace)["metadata"]["uid"]
    dep = cluster.get("deployment", "churn", "-n", namespace)
    svc = cluster.get("service", "churn", "-n", namespace)
    pdb = cluster.get("pdb", "churn", "-n", namespace)
    netpol = cluster.get("networkpolicy", "churn", "-n", namespace)
    for child in (dep, svc, pdb, netpol):
        assert child["metadata"]["ownerReferences"][0]["uid"] == uid
    sketch_rule = next(r for r in netpol["spec"]["ingress"] if r["ports"][0]["port"] == 8081)
    assert sketch_rule["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "modelloop-operator"}
    assert [p["port"] for p in svc["spec"]["ports"]] == [8080]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert "envFrom" not in container and {p["containerPort"] for p in container["ports"]} == {8080, 8081}
    assert {"name": "MODELLOOP_RUNTIME", "value": "auto"} in container["env"]
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert dep["spec"]["progressDeadlineSeconds"] == 30
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    meta = store.read_metadata(1)
    assert ann["modelloop.dev/model-sha256"] == meta["model"]["sha256"] and ann["modelloop.dev/model-version"] == "1"
    assert svc["spec"]["ports"][0]["port"] == 8080
    assert absent(cluster, "hpa", namespace)
    assert cond(status, "Available")["status"] == "True" and cond(status, "Stalled")["status"] == "False"


def test_autoscaling_renders_an_hpa_instead_of_fixed_replicas(operator, cluster, namespace, store):
    spec = deployment(namespace, model={"uri": store.version_uri(1)}, autoscaling={"minReplicas": 1, "maxReplicas": 4})
    del spec["spec"]["replicas"]
    cluster.apply(spec)
    hpa = wait_for(lambda: cluster.get("hpa", "churn", "-n", namespace), timeout=60, message="the HPA")
    assert hpa["spec"]["maxReplicas"] == 4 and hpa["spec"]["scaleTargetRef"]["name"] == "churn"
    # The PDB is applied after the HPA: wait for it too before it may be asserted gone.
    pdb = wait_for(lambda: cluster.get("pdb", "churn", "-n", namespace), timeout=30, message="the PDB")
    assert pdb["spec"]["maxUnavailable"] == 1

    # Autoscaling off, one replica: neither the HPA nor the PDB is wanted any more, and both go.
    cluster.kubectl("patch", "mdep/churn", "-n", namespace, "--type=json", "-p", json.dumps(
        [{"op": "remove", "path": "/spec/autoscaling"}, {"op": "add", "path": "/spec/replicas", "value": 1}]))
    wait_for(lambda: not cluster.get("hpa,pdb", "-n", namespace)["items"], timeout=60,
             message="the HPA and the PDB deleted")
    assert cluster.get("deployment", "churn", "-n", namespace)["spec"]["replicas"] == 1


def test_new_training_version_is_promoted_and_a_worse_one_is_held_back_with_the_reason(
        operator, cluster, namespace, store):
    suspended_training(cluster, namespace, store)
    cluster.apply(deployment(namespace, model={"fromTraining": "churn"},
                             promotion={"minMetric": 0.5, "maxRegression": 0.02}))
    wait_for(lambda: st(cluster, namespace).get("modelVersion") == 1, timeout=60, message="version 1 served")
    v1 = store.read_metadata(1)["metric"]["value"]
    store.add(2, v1 + 0.01)
    publish(cluster, namespace, store, 2)
    wait_for(lambda: st(cluster, namespace).get("modelVersion") == 2, timeout=60, message="version 2 promoted")
    cluster.kubectl("wait", "mdep/churn", "-n", namespace, "--for=condition=Ready", "--timeout=60s")
    status = st(cluster, namespace)
    assert status["previousVersion"] == 1 and status["lastAvailableVersion"] == 2
    dep = cluster.get("deployment", "churn", "-n", namespace)
    assert dep["spec"]["template"]["metadata"]["annotations"]["modelloop.dev/model-version"] == "2"

    store.add(3, v1 - 0.2)  # regresses by ~0.19 > maxRegression 0.02
    publish(cluster, namespace, store, 3)
    wait_for(lambda: st(cluster, namespace).get("candidateVersion") == 3, timeout=60, message="version 3 held")
    status = st(cluster, namespace)
    assert status["modelVersion"] == 2
    assert "maxRegression" in status["promotionMessage"] and "worse" in status["promotionMessage"]
    reasons = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", "involvedObject.kind=ModelDeployment",
                              "-o", "jsonpath={.items[*].reason}").stdout.split()
    assert {"Promoted", "PromotionHeld", "RolloutComplete"} <= set(reasons)


def test_scale_subresource_scales_the_server(operator, cluster, namespace, store):
    cluster.apply(deployment(namespace, model={"uri": store.version_uri(1)}))
    cluster.kubectl("wait", "mdep/churn", "-n", namespace, "--for=condition=Ready", "--timeout=90s")
    cluster.kubectl("scale", "mdep/churn", "-n", namespace, "--replicas=3")
    wait_for(lambda: cluster.get("deployment", "churn", "-n", namespace)["spec"]["replicas"] == 3, timeout=30,
             message="Deployment scaled to 3")
    wait_for(lambda: st(cluster, namespace).get("readyReplicas") == 3, timeout=60, message="3 ready replicas")
    scale = json.loads(cluster.kubectl("get", "--raw",
                                       f"/apis/modelloop.dev/v1alpha1/namespaces/{namespace}/modeldeployments/churn/scale").stdout)
    assert scale["status"]["replicas"] == 3 and "modelloop.dev/deployment=churn" in scale["status"]["selector"]


def test_deleting_the_resource_deletes_its_children(operator, cluster, namespace, store):
    cluster.apply(deployment(namespace, model={"uri": store.version_uri(1)}))
    children = ("deployment", "service", "pdb", "networkpolicy")
    for kind in children:  # each seen first, so that its absence afterwards means it was deleted
        wait_for(lambda: cluster.get(kind, "churn", "-n", namespace), timeout=60, message=f"the {kind}")
    cluster.kubectl("delete", "mdep", "churn", "-n", namespace)
    for kind in children:
        wait_for(lambda: absent(cluster, kind, namespace), timeout=60, message=f"the {kind} to be garbage-collected")


def test_tampered_artifact_is_never_rolled_out(operator, cluster, namespace, store, s3):
    key = "models/churn/v1/" + store.read_metadata(1)["model"]["file"]
    s3.put(key, s3.get(key) + b"tampered")
    cluster.apply(deployment(namespace, model={"uri": store.version_uri(1)}))
    wait_for(lambda: cond(st(cluster, namespace), "Ready").get("reason") == "ArtifactUnavailable", timeout=60,
             message="ArtifactUnavailable")
    assert "sha256" in cond(st(cluster, namespace), "Ready")["message"]
    assert absent(cluster, "deployment", namespace)


def test_the_runtime_of_the_spec_reaches_the_server_pods_and_an_unknown_one_is_refused(operator, cluster, namespace,
                                                                                        store):
    cluster.apply(deployment(namespace, model={"uri": store.version_uri(1)}, server={"runtime": "sklearn"}))
    wait_for(lambda: cluster.kubectl("get", "deployment", "churn", "-n", namespace, check=False).returncode == 0,
             timeout=60, message="the Deployment")
    env = cluster.get("deployment", "churn", "-n", namespace)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "MODELLOOP_RUNTIME", "value": "sklearn"} in env
    refused = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(
        deployment(namespace, model={"uri": store.version_uri(1)}, server={"runtime": "tensorflow"})), check=False)
    assert refused.returncode != 0 and "spec.server.runtime" in refused.stderr and "Unsupported value" in refused.stderr
