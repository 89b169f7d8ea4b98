"""The S3 server stops while the operator reconciles a ModelDeployment and a ModelTraining, then comes back.

The test runs a versitygw of its own on the node address (pods reach it), so stopping it disturbs no other
test. During the outage, a training the deployment follows publishes a new version, and a new training is
created. The operator must report the store problem in both resources' conditions (naming the store and the
endpoint that does not answer), keep serving what it served, start no run, and not crash; once the server is
back, both recover with no one acting: the new version is rolled out and the new training trains.

OUTAGE_SECONDS (environment MODELLOOP_TEST_S3_OUTAGE_SECONDS, default 20) is how long the server stays
stopped: at least until both reports are seen (a few seconds: the operator resyncs every 5 s in the tests and
boto3 gives up on a refused connection after its retries, about 2 s). Set it to 60 for the issue's minute.
"""
from __future__ import annotations

import json
import os
import time
from typing import Iterator

import pytest

from tests.fixtures.artifacts import make_store
from tests.fixtures.cluster import wait_for
from tests.fixtures.s3 import S3Bucket, Versitygw, new_bucket
from tests.integration.test_deployment_controller import cond, deployment, st, suspended_training
from tests.integration.test_training_controller import jobs, status, training

OUTAGE_SECONDS = float(os.environ.get("MODELLOOP_TEST_S3_OUTAGE_SECONDS", "20"))


@pytest.fixture()
def own_s3(cluster, tmp_path, monkeypatch) -> Iterator[tuple[Versitygw, S3Bucket]]:
    """A versitygw of this test's own on the node address, and a bucket on it."""
    gateway = Versitygw(cluster.host, tmp_path / "s3", tmp_path / "versitygw.log")
    try:
        yield gateway, new_bucket(gateway.start(), monkeypatch)
    finally:
        gateway.stop()


def events(cluster, namespace: str, reason: str) -> list[dict]:
    return cluster.get("events", "-n", namespace, "--field-selector", f"reason={reason}")["items"]


@pytest.mark.node
def test_a_stopped_s3_server_is_reported_and_everything_recovers_when_it_is_back(operator, cluster, namespace,
                                                                                 own_s3):
    gateway, bucket = own_s3
    endpoint = gateway.server.endpoint.removeprefix("http://")
    store = make_store(cluster, namespace, bucket)  # v1 trained for real, the Secret `s3`, churn.csv
    suspended_training(cluster, namespace, store)  # training `churn`: status moved by the test, as runs would
    cluster.apply(deployment(namespace, model={"fromTraining": "churn"}))
    wait_for(lambda: st(cluster, namespace).get("modelVersion") == 1
             and cond(st(cluster, namespace), "Ready").get("status") == "True", timeout=90, message="v1 served")
    store.add(2, store.read_metadata(1)["metric"]["value"] + 0.01)
    v2 = store.read_metadata(2)

    gateway.stop()
    stopped = time.monotonic()
    # While the server is down, training `churn` publishes version 2 and a new training `fresh` is created.
    cluster.kubectl("patch", "mtrain", "churn", "-n", namespace, "--subresource=status", "--type=merge", "-p",
                    json.dumps({"status": {"latestVersion": 2, "latestArtifact": store.version_uri(2),
                                           "metric": v2["metric"], "metrics": v2["metrics"]}}))
    cluster.apply(training(namespace, bucket, name="fresh"))

    reconciling = wait_for(lambda: (c := cond(st(cluster, namespace), "Reconciling")).get("reason")
                           == "StorageUnavailable" and c, timeout=60, message="the deployment to report the store")
    assert reconciling["status"] == "True"
    assert reconciling["message"].startswith(f"the model store cannot be read: {store.version_uri(2)}/metadata.json")
    assert f'Could not connect to the endpoint URL: "http://{endpoint}/' in reconciling["message"]
    served = st(cluster, namespace)
    assert served["modelVersion"] == 1 and served["phase"] == "Available"  # v1 is still served
    ready = cond(served, "Ready")
    assert ready["status"] == "True" and ready["message"].startswith("version 1 is serving; StorageUnavailable: ")
    annotations = cluster.get("deployment", "churn", "-n", namespace)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["modelloop.dev/model-version"] == "1"

    waiting = wait_for(lambda: (c := cond(status(cluster, namespace, "fresh"), "Reconciling")).get("reason")
                       == "StorageUnavailable" and c, timeout=60, message="the training to report the store")
    assert waiting["status"] == "True"
    assert waiting["message"].startswith(f"no run can start until the store answers: {bucket.uri('models/fresh')}: "
                                         f"S3 list failed: Could not connect to the endpoint URL")
    assert jobs(cluster, namespace, "fresh") == [] and status(cluster, namespace, "fresh").get("phase") == "Pending"
    kinds = {e["involvedObject"]["kind"] for e in events(cluster, namespace, "StorageUnavailable")
             if e["type"] == "Warning"}
    assert kinds == {"ModelDeployment", "ModelTraining"}
    assert operator.process.proc.poll() is None  # reported, not crashed

    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
    assert cond(st(cluster, namespace), "Reconciling")["reason"] == "StorageUnavailable"  # for the whole outage
    assert jobs(cluster, namespace, "fresh") == []
    gateway.start()  # same port, same objects

    wait_for(lambda: st(cluster, namespace).get("modelVersion") == 2, timeout=60, message="version 2 promoted")
    cluster.kubectl("wait", "mdep/churn", "-n", namespace, "--for=condition=Ready", "--timeout=90s")
    recovered = st(cluster, namespace)
    assert cond(recovered, "Ready")["message"] == "version 2 is serving"
    assert cond(recovered, "Reconciling")["status"] == "False"

    cluster.kubectl("wait", "mtrain/fresh", "-n", namespace, "--for=condition=Ready", "--timeout=240s")
    trained = status(cluster, namespace, "fresh")
    assert trained["phase"] == "Succeeded" and trained["latestVersion"] == 1
    assert cond(trained, "Reconciling")["status"] == "False"
    assert [r["result"] for r in trained["runs"]] == ["Succeeded"]
