"""The NetworkPolicy each ModelDeployment gets, enforced on the real node (kube-router's firewall): the
inference port is open to every pod, the sketch port (live feature distributions of the traffic) to the
Helm-installed operator's pods only, and labels copied onto a pod in another namespace do not open it."""
from __future__ import annotations

import json

from modelloop.api.deployment import SERVER_PORT, SKETCH_PORT
from tests.e2e.helpers import serve
from tests.fixtures.cluster import RESTRICTED_CONTAINER, RESTRICTED_POD, wait_for

# Run in a container: one HTTP GET, printing its status code, or the error's class when no HTTP answer came.
PROBE = """
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception as e:
    print(type(e).__name__, e)
"""


def probe_pod(cluster, namespace: str, name: str, image: str, labels: dict[str, str]) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
                   "spec": {"securityContext": RESTRICTED_POD, "restartPolicy": "Never",
                            "terminationGracePeriodSeconds": 0,
                            "containers": [{"name": "probe", "image": image, "imagePullPolicy": "IfNotPresent",
                                            "command": ["python3", "-c", "import time; time.sleep(900)"],
                                            "securityContext": RESTRICTED_CONTAINER}]}})


def get(cluster, namespace: str, pod: str, container: str, url: str) -> str:
    """What a GET of url from inside that container got: an HTTP status code, or why there was none."""
    return cluster.kubectl("exec", pod, "-n", namespace, "-c", container, "--", "python3", "-c", PROBE, url,
                           timeout=60).stdout.strip()


def test_the_sketch_port_answers_the_operator_only_and_the_inference_port_everyone(
        helm_operator, cluster, e2e_namespace, e2e_store):
    ns, image = e2e_namespace, helm_operator.images["RUNTIME_IMAGE"]
    serve(cluster, ns, e2e_store.version_uri(1), replicas=1)
    policy = wait_for(lambda: cluster.kubectl("get", "networkpolicy", "churn", "-n", ns, "-o", "json",
                                              check=False).stdout, timeout=60, message="the NetworkPolicy")
    operator_labels = json.loads(policy)["spec"]["ingress"][1]["from"][0]["podSelector"]["matchLabels"]
    # A pod of this namespace, and one that copies the operator's pod labels (not its namespace).
    probe_pod(cluster, ns, "plain", image, {"probe": "plain"})
    probe_pod(cluster, ns, "lookalike", image, operator_labels)
    cluster.kubectl("wait", "mdep/churn", "-n", ns, "--for=condition=Ready", "--timeout=180s")
    cluster.kubectl("wait", "pod/plain", "pod/lookalike", "-n", ns, "--for=condition=Ready", "--timeout=120s")
    server = next(p for p in cluster.get("pods", "-n", ns, "-l", "app.kubernetes.io/name=modelloop-server")["items"]
                  if p["status"].get("podIP"))
    ip = server["status"]["podIP"]
    inference = f"http://{ip}:{SERVER_PORT}/v2/health/ready"
    sketch = f"http://{ip}:{SKETCH_PORT}/v2/models/churn/sketch"
    operator = helm_operator.pod()["metadata"]["name"]

    # A new pod's policy takes the firewall a moment to program, as with any NetworkPolicy implementation.
    wait_for(lambda: not get(cluster, ns, "plain", "probe", sketch).isdigit(), timeout=30, interval=1,
             message="the sketch port to refuse a pod that is not the operator's")
    seen = {who: {port: get(cluster, namespace, pod, container, url)
                  for port, url in (("inference", inference), ("sketch", sketch))}
            for who, namespace, pod, container in (("plain", ns, "plain", "probe"),
                                                   ("lookalike", ns, "lookalike", "probe"),
                                                   ("operator", helm_operator.namespace, operator, "operator"))}
    print(f"from each pod to the server at {ip}: {seen}")
    for who in ("plain", "lookalike"):
        assert seen[who]["inference"] == "200", seen
        assert not seen[who]["sketch"].isdigit(), seen  # no HTTP answer at all: refused or dropped
    assert seen["operator"]["inference"] == "200", seen
    assert seen["operator"]["sketch"].isdigit(), seen  # any HTTP answer: the port is open to it
