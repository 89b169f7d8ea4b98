"""The embedded control plane is a real Kubernetes: the foundation every controller test stands on."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.fixtures.cluster import RESTRICTED_CONTAINER, RESTRICTED_POD, ROOT, wait_for

K8S_VERSION = next(l.split("=", 1)[1] for l in (ROOT / "hack" / "versions.env").read_text().splitlines()
                   if l.startswith("K8S_VERSION="))
KWOK_TOLERATION = [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]
KWOK_NODE = {"type": "kwok"}


def test_apiserver_is_ready_and_reports_the_version_that_was_built(cluster):
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == K8S_VERSION
    assert version["clientVersion"]["gitVersion"] == K8S_VERSION


def test_two_kwok_nodes_are_ready(cluster):
    nodes = cluster.get("nodes", "-l", "type=kwok")["items"]
    assert len(nodes) >= 2
    for n in nodes:
        ready = {c["type"]: c["status"] for c in n["status"]["conditions"]}["Ready"]
        assert ready == "True"


def test_deployment_of_two_replicas_becomes_available_on_kwok_nodes(cluster, namespace):
    cluster.apply({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": namespace},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"nodeSelector": KWOK_NODE, "tolerations": KWOK_TOLERATION,
                                       "securityContext": RESTRICTED_POD,
                                       "containers": [{"name": "web", "image": "example.invalid/web:1",
                                                       "securityContext": RESTRICTED_CONTAINER}]}}},
    })
    cluster.kubectl("wait", "-n", namespace, "deployment/web", "--for=condition=Available", "--timeout=60s")
    rs = cluster.get("replicasets", "-n", namespace, "-l", "app=web")["items"]
    pods = cluster.get("pods", "-n", namespace, "-l", "app=web")["items"]
    assert len(rs) == 1
    assert len(pods) == 2
    assert all(p["spec"]["nodeName"].startswith("kwok-node-") for p in pods)
    assert all(p["status"]["phase"] == "Running" for p in pods)


def _job(name: str, namespace: str, fail: bool) -> dict:
    labels = {"pod-container-running-failed.stage.kwok.x-k8s.io": "true"} if fail else {}
    annotations = {"pod-container-running-failed.stage.kwok.x-k8s.io/exit-code": "3",
                   "pod-container-running-failed.stage.kwok.x-k8s.io/reason": "Error",
                   "pod-container-running-failed.stage.kwok.x-k8s.io/message": "dataset unreadable"} if fail else {}
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": namespace},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"labels": labels, "annotations": annotations},
            "spec": {"restartPolicy": "Never", "nodeSelector": KWOK_NODE, "tolerations": KWOK_TOLERATION,
                     "securityContext": RESTRICTED_POD,
                     "containers": [{"name": "train", "image": "example.invalid/train:1",
                                     "securityContext": RESTRICTED_CONTAINER}]}}},
    }


def test_job_completes_on_a_kwok_node(cluster, namespace):
    cluster.apply(_job("ok", namespace, fail=False))
    cluster.kubectl("wait", "-n", namespace, "job/ok", "--for=condition=Complete", "--timeout=60s")


def test_job_labelled_for_failure_fails_with_the_reason_in_its_status(cluster, namespace):
    cluster.apply(_job("bad", namespace, fail=True))
    cluster.kubectl("wait", "-n", namespace, "job/bad", "--for=condition=Failed", "--timeout=60s")
    job = cluster.get("job", "bad", "-n", namespace)
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    pod = cluster.get("pods", "-n", namespace, "-l", "job-name=bad")["items"][0]
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3
    assert terminated["message"] == "dataset unreadable"


def test_hpa_and_crd_can_be_created_and_garbage_collector_follows_owner_references(cluster, namespace):
    cluster.apply({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                 "minReplicas": 1, "maxReplicas": 3,
                 "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                                                               "target": {"type": "Utilization", "averageUtilization": 70}}}]},
    })
    assert cluster.get("hpa", "web", "-n", namespace)["spec"]["maxReplicas"] == 3
    plural = f"widgets{namespace.replace('-', '')}"[:50]
    crd_name = f"{plural}.test.modelloop.dev"
    cluster.apply({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": crd_name},
        "spec": {"group": "test.modelloop.dev", "scope": "Namespaced",
                 "names": {"kind": "Widget", "plural": plural, "singular": plural[:-1] if plural.endswith("s") else plural + "x"},
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
    })
    try:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd_name}", "--timeout=30s")
        cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner", "namespace": namespace}})
        uid = cluster.get("configmap", "owner", "-n", namespace)["metadata"]["uid"]
        cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
            "name": "child", "namespace": namespace,
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]}})
        cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
        wait_for(lambda: cluster.kubectl("get", "configmap", "child", "-n", namespace, check=False).returncode != 0,
                 timeout=60, message="the garbage collector to delete the child")
    finally:
        cluster.kubectl("delete", "crd", crd_name, "--wait=false", check=False)


def _processes_under(path: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(path) in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def test_make_cluster_twice_leaves_one_set_of_processes_and_cluster_down_leaves_none(tmp_path):
    # A second control plane beside the session's, without a real node (the node's addresses are machine-wide).
    env = {**os.environ, "MODELLOOP_CLUSTER_DIR": str(tmp_path / "c"), "MODELLOOP_NODE": "0"}
    make = ["make", "-s", "-C", str(ROOT)]
    subprocess.run([*make, "cluster"], env=env, check=True, capture_output=True, timeout=300)
    first = sorted(_processes_under(tmp_path / "c"))
    subprocess.run([*make, "cluster"], env=env, check=True, capture_output=True, timeout=300)
    second = sorted(_processes_under(tmp_path / "c"))
    try:
        assert len(first) >= 5  # etcd, apiserver, controller-manager, scheduler, kwok
        assert second == first
        state = json.loads((tmp_path / "c" / "state.json").read_text())
        assert sorted(state["pids"].values()) == first
    finally:
        subprocess.run([*make, "cluster-down"], env=env, check=True, capture_output=True, timeout=120)
    assert _processes_under(tmp_path / "c") == []
    assert not (tmp_path / "c").exists()
