"""modelloop installed the way a user installs it: `helm install` from the images built from this checkout,
the operator in a pod on the real node under the chart's ServiceAccount, the examples applied as written,
in namespaces that enforce the restricted Pod Security Standard."""
from __future__ import annotations

import json
import time

from tests.e2e.helpers import CHURN, DRIFTED, cond, examples, status
from tests.fixtures.cluster import wait_for
from tests.fixtures.operator import helm_values, install_chart

INSIDE = ("import os; print(os.getuid()); "
          "exec(\"try:\\n open('/probe', 'w')\\n print('writable')\\nexcept OSError as e:\\n print(e.strerror)\")")


def inside(cluster, namespace: str, pod: str, container: str) -> list[str]:
    """uid and the outcome of writing to / as seen from inside a running container."""
    out = cluster.kubectl("exec", pod, "-n", namespace, "-c", container, "--", "python3", "-c", INSIDE).stdout
    return out.split("\n", 1)[0:1] + [out.split("\n", 1)[1].strip()]


def test_helm_installed_operator_runs_the_three_examples_to_ready_under_its_own_rbac(
        cluster, helm_operator, e2e_namespace, s3):
    s3.put("churn.csv", open(CHURN, "rb").read())
    s3.put("churn-fresh.csv", open(DRIFTED, "rb").read())
    for doc in examples(e2e_namespace, s3):
        cluster.apply(doc)
    cluster.kubectl("wait", "mtrain/churn", "-n", e2e_namespace, "--for=condition=Ready", "--timeout=300s")
    cluster.kubectl("wait", "mdep/churn", "-n", e2e_namespace, "--for=condition=Ready", "--timeout=300s")
    cluster.kubectl("wait", "dmon/churn", "-n", e2e_namespace, "--for=condition=Ready", "--timeout=120s")
    assert status(cluster, "mtrain", e2e_namespace)["latestVersion"] == 1
    assert status(cluster, "mdep", e2e_namespace)["modelVersion"] == 1
    assert not helm_operator.forbidden(), helm_operator.forbidden()[:5]

    # The operator, trainer and servers all ran in containers of the images built from this checkout.
    op = helm_operator.pod()
    assert op["spec"]["containers"][0]["image"] == helm_operator.images["OPERATOR_IMAGE"]
    assert op["spec"]["serviceAccountName"] == helm_operator.release
    pods = cluster.get("pods", "-n", e2e_namespace)["items"]
    trainer = [p for p in pods if p["metadata"]["labels"].get("job-name") == "churn-v1"]
    servers = [p for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/name") == "modelloop-server"]
    assert trainer and trainer[0]["status"]["phase"] == "Succeeded"
    assert len(servers) == 2
    for p in trainer + servers:
        assert p["spec"]["nodeName"] == "modelloop-node"
        assert p["spec"]["containers"][0]["image"] == helm_operator.images["RUNTIME_IMAGE"]
        image_id = p["status"]["containerStatuses"][0]["imageID"]
        assert image_id.endswith(helm_operator.images["RUNTIME_ID"].split(":", 1)[1]), image_id

    # Checked from inside the containers: a non-root uid and a read-only root filesystem.
    uid, write = inside(cluster, helm_operator.namespace, op["metadata"]["name"], "operator")
    assert uid != "0" and write == "Read-only file system", (uid, write)
    for p in servers:
        uid, write = inside(cluster, e2e_namespace, p["metadata"]["name"], "server")
        assert uid != "0" and write == "Read-only file system", (uid, write)
    # The trainer has exited; its pod was admitted by the restricted policy and ran with this context.
    ctx = trainer[0]["spec"]["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] != 0
    assert trainer[0]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_namespace_with_all_three_kinds_is_deleted_within_60s_after_helm_uninstall(cluster, crds, request, s3):
    """With the operator gone, nothing may hold the objects: no finalizer of ours, children by owner refs."""
    # Not e2e-*: only this test's release watches it.
    ns = cluster.create_namespace(f"uninstall-{int(time.time()) % 100000}")
    release, release_ns = "modelloop-uninstall", "modelloop-uninstall"
    images = cluster.images()
    try:
        install_chart(cluster, release, release_ns, helm_values(images, watchNamespaces=[ns]))
        s3.put("churn.csv", open(CHURN, "rb").read())
        for doc in examples(ns, s3):
            cluster.apply(doc)
        cluster.kubectl("wait", "mtrain/churn", "-n", ns, "--for=condition=Ready", "--timeout=300s")
        wait_for(lambda: cluster.get("deployments", "churn", "-n", ns), timeout=60, message="the server Deployment")
        wait_for(lambda: status(cluster, "dmon", ns).get("conditions"), timeout=60, message="the monitor's status")
        for kind in ("mtrain", "mdep", "dmon"):
            assert not cluster.get(kind, "churn", "-n", ns)["metadata"].get("finalizers"), kind
    finally:
        cluster.helm("uninstall", release, "-n", release_ns, "--wait", "--timeout", "2m")
    started = time.monotonic()
    cluster.kubectl("delete", "namespace", ns, "--wait=false")
    wait_for(lambda: cluster.kubectl("get", "namespace", ns, check=False).returncode != 0, timeout=60,
             interval=0.5, message=f"namespace {ns} to be deleted after helm uninstall")
    print(f"namespace with a ModelTraining, ModelDeployment, DriftMonitor and their children deleted in "
          f"{time.monotonic() - started:.1f}s after helm uninstall")
    cluster.kubectl("delete", "namespace", release_ns, "--wait=false", check=False)


def test_every_rendered_pod_is_admitted_by_restricted_pod_security(cluster, helm_operator, e2e_namespace):
    """The namespace enforces `restricted`; a pod the policy refuses would leave its ReplicaSet with a
    FailedCreate event. The operator's own namespace enforces it too."""
    labels = json.loads(cluster.kubectl("get", "namespace", helm_operator.namespace, "-o",
                                        "jsonpath={.metadata.labels}").stdout)
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    bad = cluster.kubectl("run", "root-probe", "-n", e2e_namespace, "--image", helm_operator.images["RUNTIME_IMAGE"],
                          "--restart=Never", "--overrides",
                          json.dumps({"spec": {"securityContext": {"runAsUser": 0}}}), check=False)
    assert bad.returncode != 0 and "violates PodSecurity" in bad.stderr, bad.stderr
