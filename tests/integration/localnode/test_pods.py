"""What a pod's process sees and how its status reads: env and volumes from Secrets, ConfigMaps,
emptyDir, claims and the service account; restart policies and probes; images it cannot run."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.fixtures.cluster import CLUSTER_DIR, wait_for
from tests.integration.localnode.helpers import container, pod, pod_processes, pod_spec, wait_phase, wait_ready

pytestmark = [pytest.mark.cluster, pytest.mark.localnode]

# Prints what the process sees as JSON, then exits. Like the trainer and the server, it takes every
# path from its arguments and environment (the agent maps container paths there; file contents are not rewritten).
REPORT = """
import json, os, sys
def read(path):
    return open(path).read() if os.path.exists(path) else None
scratch, secret, config, unlisted, model = sys.argv[1:6]
open(os.path.join(scratch, "note"), "w").write("written")
claim = os.path.join(os.environ["MODELLOOP_PVC_ROOT"], os.environ["CLAIM"], "v1.txt")
open(claim, "w").write("model")
mounts = json.loads(os.environ["MODELLOOP_MOUNTS"])
print(json.dumps({
    "env": {k: os.environ.get(k) for k in ("DB_PASSWORD", "GREETING", "FROM_ENVFROM", "CFG_color", "POD_NAME",
                                           "POD_NAMESPACE", "NODE", "MY_IP", "POD_IP", "MODELLOOP_POD_IP")},
    "files": {"secret": read(secret), "config": read(config), "unlisted": read(unlisted),
              "via_mounts": read(os.path.join(mounts["/etc/secret"], "password"))},
    "scratch": read(os.path.join(os.environ["SCRATCH"], "note")), "args": sys.argv[1:],
    "pvc": read(model),
}))
"""


def claim_manifest(namespace: str, name: str) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": namespace},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "modelloop-local",
                     "resources": {"requests": {"storage": "1Gi"}}}}


def test_secret_configmap_emptydir_and_claim_reach_the_process(cluster, namespace, local_node):
    claim = f"models-{uuid.uuid4().hex[:5]}"
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": namespace},
                   "stringData": {"password": "hunter2"}})
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": namespace},
                   "data": {"greeting": "hello", "color": "blue", "FROM_ENVFROM": "yes", "report.py": REPORT}})
    cluster.apply(claim_manifest(namespace, claim))
    try:
        main = container(
            "main", ["python", "/etc/config/report.py"],
            args=["/scratch", "/etc/secret/password", "/etc/config/renamed.txt", "/etc/config/color", "/models/v1.txt",
                  "$(GREETING)"],
            env=[{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                 {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
                 {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                 {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                 {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                 {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                 {"name": "SCRATCH", "value": "/scratch"}, {"name": "CLAIM", "value": claim}],
            envFrom=[{"configMapRef": {"name": "cfg"}}, {"prefix": "CFG_", "configMapRef": {"name": "cfg"}}],
            volumeMounts=[{"name": "secret", "mountPath": "/etc/secret", "readOnly": True},
                          {"name": "config", "mountPath": "/etc/config"},
                          {"name": "scratch", "mountPath": "/scratch"},
                          {"name": "models", "mountPath": "/models"}])
        volumes = [{"name": "secret", "secret": {"secretName": "db"}},
                   {"name": "config", "configMap": {"name": "cfg", "items": [{"key": "greeting", "path": "renamed.txt"},
                                                                             {"key": "report.py", "path": "report.py"}]}},
                   {"name": "scratch", "emptyDir": {}},
                   {"name": "models", "persistentVolumeClaim": {"claimName": claim}}]
        cluster.apply(pod("report", namespace, pod_spec(main, restartPolicy="Never", volumes=volumes)))
        done = wait_phase(cluster, namespace, "report", "Succeeded", "Failed", timeout=40)
        logs = sorted((CLUSTER_DIR / "localnode" / "logs").glob(f"{namespace}_report_*/main/0.log"))
        assert done["status"]["phase"] == "Succeeded", logs[0].read_text() if logs else done["status"]
        seen = json.loads(logs[0].read_text().strip().splitlines()[-1])
        ip = done["status"]["podIP"]
        assert seen["env"] == {"DB_PASSWORD": "hunter2", "GREETING": "hello", "FROM_ENVFROM": "yes", "CFG_color": "blue",
                               "POD_NAME": "report", "POD_NAMESPACE": namespace, "NODE": local_node, "MY_IP": ip,
                               "POD_IP": ip, "MODELLOOP_POD_IP": ip}
        assert seen["files"] == {"secret": "hunter2", "config": "hello", "unlisted": None, "via_mounts": "hunter2"}
        assert seen["scratch"] == "written", "the emptyDir is one directory, whether reached by argument or env"
        assert seen["args"][-1] == "hello" and seen["args"][0] != "/scratch"
        assert seen["pvc"] == "model", "pvc://<claim>/path and the claim's mount are the same directory"
        assert (CLUSTER_DIR / "pvc" / namespace / claim / "v1.txt").read_text() == "model"
    finally:
        cluster.kubectl("delete", "pod", "report", "-n", namespace, "--wait=true", check=False)
        cluster.kubectl("delete", "pvc", claim, "-n", namespace, "--wait=false", check=False)


def test_claims_of_local_pods_are_provisioned_as_host_directories_and_deleted_with_them(cluster, namespace, local_node):
    cluster.apply(claim_manifest(namespace, "data"))
    writer = container("main", ["python", "-c", "import sys; open(sys.argv[1], 'w').write('kept')", "/data/file"],
                       volumeMounts=[{"name": "data", "mountPath": "/data"}])
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
    cluster.apply(pod("writer", namespace, pod_spec(writer, restartPolicy="Never", volumes=volumes)))
    wait_phase(cluster, namespace, "writer", "Succeeded", timeout=40)
    claim = cluster.get("pvc", "data", "-n", namespace)
    volume = cluster.get("pv", claim["spec"]["volumeName"])
    directory = CLUSTER_DIR / "pvc" / namespace / "data"
    assert volume["spec"]["hostPath"]["path"] == str(directory)
    [term] = volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert term["matchExpressions"][0]["values"] == [local_node], "the data lives on this node"
    assert (directory / "file").read_text() == "kept"
    cluster.kubectl("delete", "pod", "writer", "-n", namespace)
    cluster.kubectl("delete", "pvc", "data", "-n", namespace)
    wait_for(lambda: cluster.kubectl("get", "pv", volume["metadata"]["name"], check=False).returncode != 0,
             timeout=30, message="the released volume to be deleted")
    assert not directory.exists()


def test_unrunnable_image_fails_the_pod_with_image_not_runnable(cluster, namespace, local_node):
    cluster.apply(pod("nginx", namespace, pod_spec({"name": "web", "image": "nginx:1.27"})))
    failed = wait_phase(cluster, namespace, "nginx", "Failed", timeout=20)
    assert failed["status"]["reason"] == "ImageNotRunnable"
    terminated = failed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "ImageNotRunnable"
    assert '"nginx:1.27"' in terminated["message"] and "ghcr.io/modelloop/runtime" in terminated["message"]


def test_command_outside_the_runtime_venv_is_a_start_error(cluster, namespace, local_node):
    cluster.apply(pod("shell", namespace, pod_spec(container("main", ["/bin/sh", "-c", "echo hi"]), restartPolicy="Never")))
    failed = wait_phase(cluster, namespace, "shell", "Failed", timeout=20)
    terminated = failed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "StartError" and "'/bin/sh'" in terminated["message"]


def test_on_failure_restarts_with_backoff_and_keeps_the_log_tail_as_message(cluster, namespace, local_node):
    crash = container("main", ["python", "-c", "import sys; print('loading'); print('boom', file=sys.stderr); sys.exit(2)"],
                      terminationMessagePolicy="FallbackToLogsOnError")
    cluster.apply(pod("crash", namespace, pod_spec(crash, restartPolicy="OnFailure")))

    def backing_off():
        status = cluster.get("pod", "crash", "-n", namespace)["status"]["containerStatuses"][0]
        return status if status["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff" else None
    status = wait_for(backing_off, timeout=20, message="CrashLoopBackOff after the immediate first restart")
    assert status["restartCount"] == 1
    last = status["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"], last["message"]) == (2, "Error", "loading\nboom")
    assert cluster.get("pod", "crash", "-n", namespace)["status"]["phase"] == "Running"


def test_liveness_probe_failure_restarts_the_process(cluster, namespace, local_node):
    # Nothing listens on the probed port: the liveness probe fails three times and the process is replaced.
    sleeper = container("main", ["python", "-c", "import time; time.sleep(3600)"],
                        livenessProbe={"tcpSocket": {"port": 9}, "periodSeconds": 1, "failureThreshold": 2})
    cluster.apply(pod("unhealthy", namespace, pod_spec(sleeper, terminationGracePeriodSeconds=1)))
    wait_phase(cluster, namespace, "unhealthy", "Running")
    first = set(wait_for(lambda: pod_processes(namespace), timeout=10, message="the first process"))

    def restarted():
        status = cluster.get("pod", "unhealthy", "-n", namespace)["status"]["containerStatuses"][0]
        return status if status["restartCount"] >= 1 and "running" in status["state"] else None
    status = wait_for(restarted, timeout=20, message="a restart after the liveness probe failed")
    assert status["lastState"]["terminated"]["exitCode"] == 143  # SIGTERM
    now = set(pod_processes(namespace))
    assert len(now) == 1 and not now & first


def test_service_account_token_identifies_the_pod_to_the_api(cluster, namespace, local_node):
    code = ("from kubernetes import client, config\n"
            "config.load_kube_config()\n"
            "try:\n"
            "    client.CoreV1Api().list_namespaced_secret('kube-system')\n"
            "except client.ApiException as e:\n"
            "    print(e.status, e.body)\n")
    cluster.apply(pod("whoami", namespace, pod_spec(container("main", ["python", "-c", code]), restartPolicy="Never")))
    wait_phase(cluster, namespace, "whoami", "Succeeded", timeout=40)
    [log] = (CLUSTER_DIR / "localnode" / "logs").glob(f"{namespace}_whoami_*/main/0.log")
    assert f"system:serviceaccount:{namespace}:default" in log.read_text()
    assert Path(log).read_text().startswith("403")


def test_init_containers_run_first_and_sidecars_serve_alongside(cluster, namespace, local_node):
    init = container("init", ["python", "-c", "import sys; open(sys.argv[1], 'w').write('1')", "/work/initialized"],
                     volumeMounts=[{"name": "work", "mountPath": "/work"}])
    sidecar = container("side", ["python", "-m", "http.server", "9000", "--bind", "0.0.0.0"], restartPolicy="Always",
                        startupProbe={"tcpSocket": {"port": 9000}, "periodSeconds": 1})
    main = container("main", ["python", "-c", "import os, time, urllib.request\n"
                              "print(urllib.request.urlopen(f'http://{os.environ[\"POD_IP\"]}:9000/').status, flush=True)\n"
                              "time.sleep(3600)"],
                     readinessProbe={"periodSeconds": 1, "exec": {"command": [
                         "python", "-c", "import os, sys; sys.exit(not os.path.exists('/work/initialized'))"]}},
                     volumeMounts=[{"name": "work", "mountPath": "/work"}])
    cluster.apply(pod("mixed", namespace, pod_spec(main, initContainers=[init, sidecar],
                                                     volumes=[{"name": "work", "emptyDir": {}}])))
    ready = wait_ready(cluster, namespace, "mixed")
    init_states = {s["name"]: s["state"] for s in ready["status"]["initContainerStatuses"]}
    assert init_states["init"]["terminated"]["exitCode"] == 0
    assert "running" in init_states["side"], "a sidecar keeps running next to the containers"
    [log] = (CLUSTER_DIR / "localnode" / "logs").glob(f"{namespace}_mixed_*/main/0.log")
    assert wait_for(lambda: log.read_text().strip(), timeout=10, message="main's request to the sidecar") == "200"


def test_active_deadline_stops_and_fails_the_pod(cluster, namespace, local_node):
    sleeper = container("main", ["python", "-c", "import time; time.sleep(3600)"])
    cluster.apply(pod("bounded", namespace, pod_spec(sleeper, activeDeadlineSeconds=2, terminationGracePeriodSeconds=1)))
    failed = wait_phase(cluster, namespace, "bounded", "Failed", timeout=20)
    assert failed["status"]["reason"] == "DeadlineExceeded"
    assert "terminated" in failed["status"]["containerStatuses"][0]["state"]
    assert pod_processes(namespace) == {}
