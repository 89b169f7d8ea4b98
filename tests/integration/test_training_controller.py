"""The ModelTraining controller against the real API server, with the real operator process.

Successful and really-failing runs execute the real trainer on the local node (a process per pod);
kwok drives the cases that need a pod to fail or to keep running on demand.
"""
from __future__ import annotations

import json
import re

import pytest

from tests.fixtures.artifacts import CHURN, secret
from tests.fixtures.cluster import wait_for

KWOK = {"nodeSelector": {"type": "kwok"}, "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists"}]}
# kwok keeps a pod with this annotation running until the annotation is removed (hack/cluster.py kwok_stages).
HOLD = "pod-complete.stage.kwok.x-k8s.io/hold"
HELD = {**KWOK, "annotations": {HOLD: "true"}}


def release(cluster, namespace: str, job: str) -> None:
    """Let kwok complete the held pod of `job`."""
    selector = f"job-name={job}"
    wait_for(lambda: cluster.get("pods", "-n", namespace, "-l", selector)["items"], timeout=30,
             message=f"the pod of {job}")
    cluster.kubectl("annotate", "pods", "-n", namespace, "-l", selector, f"{HOLD}-")


def training(namespace: str, s3, name: str = "churn", **spec) -> dict:
    base = {
        "dataset": {"uri": s3.uri("churn.csv"), "target": "churned", "categorical": ["plan", "region"]},
        "estimator": {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 20, "max_depth": 6}},
        "validation": {"testSize": 0.25, "seed": 7, "metric": "roc_auc"},
        "output": {"uri": s3.uri(f"models/{name}")},
        "storage": {"secretRef": {"name": "s3"}},
    }
    base.update(spec)
    return {"apiVersion": "modelloop.dev/v1alpha1", "kind": "ModelTraining",
            "metadata": {"name": name, "namespace": namespace}, "spec": base}


@pytest.fixture()
def data(cluster, namespace, s3):
    s3.put("churn.csv", CHURN)
    cluster.apply(secret(namespace, s3))
    return s3


def status(cluster, namespace, name="churn") -> dict:
    return cluster.get("mtrain", name, "-n", namespace).get("status") or {}


def cond(st: dict, type_: str) -> dict:
    return next((c for c in st.get("conditions") or () if c["type"] == type_), {})


def jobs(cluster, namespace, name="churn") -> list[dict]:
    return cluster.get("jobs", "-n", namespace, "-l", f"modelloop.dev/training={name}")["items"]


def test_applying_a_training_creates_exactly_one_job_with_the_expected_spec(operator, cluster, namespace, data):
    cluster.apply(training(namespace, data, podTemplate=HELD))
    job = wait_for(lambda: (jobs(cluster, namespace) or [None])[0], timeout=60, message="the training Job")
    wait_for(lambda: status(cluster, namespace).get("phase") == "Running", timeout=30, message="phase Running")
    assert [j["metadata"]["name"] for j in jobs(cluster, namespace)] == ["churn-v1"]
    owner = job["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ModelTraining" and owner["controller"] is True
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["modelloop-train"] and c["args"] == ["--version", "1"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"] is True
    assert "envFrom" not in c  # credentials are the Secret's named keys only
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs["AWS_SECRET_ACCESS_KEY"] == {"name": "s3", "key": "AWS_SECRET_ACCESS_KEY"}
    assert refs["AWS_ENDPOINT_URL"] == {"name": "s3", "key": "AWS_ENDPOINT_URL", "optional": True}
    assert pod["nodeSelector"] == {"type": "kwok"}
    st = status(cluster, namespace)
    assert st["currentRun"] == "churn-v1" and st["observedGeneration"] == 1
    assert cond(st, "Reconciling")["status"] == "True"
    assert cond(st, "Ready")["status"] == "False"
    # Level-based: a resync or an unrelated update creates nothing more.
    cluster.kubectl("annotate", "mtrain", "churn", "-n", namespace, "note=unrelated")
    wait_for(lambda: cluster.get("mtrain", "churn", "-n", namespace)["metadata"]["annotations"].get("note"), timeout=10)
    assert len(jobs(cluster, namespace)) == 1


@pytest.mark.node
def test_successful_run_records_version_metrics_and_ready(operator, cluster, namespace, data):
    cluster.apply(training(namespace, data))
    cluster.kubectl("wait", "mtrain/churn", "-n", namespace, "--for=condition=Ready", "--timeout=180s")
    st = status(cluster, namespace)
    assert st["latestVersion"] == 1 and st["phase"] == "Succeeded"
    assert st["latestArtifact"] == data.uri("models/churn/v1")
    assert st["metric"]["name"] == "roc_auc" and 0.5 < st["metric"]["value"] <= 1.0
    assert {"accuracy", "f1", "roc_auc"} <= set(st["metrics"])
    assert st["runs"][0]["result"] == "Succeeded" and st["runs"][0]["trigger"] == "Created"
    assert cond(st, "Succeeded")["status"] == "True" and cond(st, "Stalled")["status"] == "False"
    meta = json.loads(data.get("models/churn/v1/metadata.json"))
    assert meta["training"]["namespace"] == namespace and meta["version"] == 1
    assert meta["onnx"]["file"] == "model.onnx" and data.get("models/churn/v1/model.onnx")  # written by the pod
    assert "onnxSkipped" not in st["runs"][0]
    reasons = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                              "involvedObject.kind=ModelTraining", "-o", "jsonpath={.items[*].reason}").stdout.split()
    assert "RunStarted" in reasons and "RunSucceeded" in reasons
    assert "modelloop-test-secret" not in json.dumps(cluster.get("mtrain", "churn", "-n", namespace))


@pytest.mark.node
def test_a_run_whose_estimator_has_no_onnx_form_succeeds_and_says_why(operator, cluster, namespace, data):
    cluster.apply(training(namespace, data, estimator={"class": "sklearn.neighbors.NearestCentroid"}))
    cluster.kubectl("wait", "mtrain/churn", "-n", namespace, "--for=condition=Ready", "--timeout=180s")
    run = status(cluster, namespace)["runs"][0]
    assert run["result"] == "Succeeded" and run["onnxSkipped"] == "skl2onnx has no converter for NearestCentroid"
    assert data.keys("models/churn/v1/") == [f"models/churn/v1/{f}" for f in ("metadata.json", "model.skops")]
    messages = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", "reason=RunSucceeded",
                               "-o", "jsonpath={.items[*].message}").stdout
    assert "no model.onnx: skl2onnx has no converter for NearestCentroid" in messages


@pytest.mark.node
def test_failed_run_reports_the_trainers_reason_and_keeps_the_last_good_version(operator, cluster, namespace, data):
    cluster.apply(training(namespace, data))
    cluster.kubectl("wait", "mtrain/churn", "-n", namespace, "--for=condition=Ready", "--timeout=180s")
    bad = training(namespace, data)
    bad["spec"]["dataset"]["target"] = "no_such_column"
    cluster.apply(bad)
    wait_for(lambda: cond(status(cluster, namespace), "Failed").get("status") == "True", timeout=180,
             message="the second run to fail")
    st = status(cluster, namespace)
    assert st["latestVersion"] == 1 and st["latestArtifact"].endswith("/v1")
    assert st["runs"][0]["version"] == 2 and st["runs"][0]["result"] == "Failed"
    assert "no_such_column" in st["runs"][0]["message"] and "DatasetInvalid" in st["runs"][0]["message"]
    assert cond(st, "Ready")["status"] == "True"  # v1 still serves
    assert "last run failed" in cond(st, "Ready")["message"]
    assert st["phase"] == "Failed"
    assert data.keys("models/churn/v2/") == []  # a failed run commits nothing


def test_failed_pod_on_kwok_sets_failed_with_the_termination_message(operator, cluster, namespace, data):
    failing = {**KWOK, "labels": {"pod-container-running-failed.stage.kwok.x-k8s.io": "true"},
               "annotations": {"pod-container-running-failed.stage.kwok.x-k8s.io/exit-code": "3",
                               # kwok's stage template does not quote the message: no ": " in it
                               "pod-container-running-failed.stage.kwok.x-k8s.io/message":
                                   "DatasetUnreadable s3://bucket/churn.csv access denied"}}
    cluster.apply(training(namespace, data, podTemplate=failing))
    wait_for(lambda: status(cluster, namespace).get("phase") == "Failed", timeout=60, message="phase Failed")
    st = status(cluster, namespace)
    assert "latestVersion" not in st
    assert st["runs"][0]["message"] == "exit code 3: DatasetUnreadable s3://bucket/churn.csv access denied"
    assert cond(st, "Ready")["reason"] == "NoVersion"
    runs_total = [l for l in operator.metrics().splitlines() if l.startswith("modelloop_training_runs_total{")]
    assert f'modelloop_training_runs_total{{namespace="{namespace}",result="Failed",training="churn"}} 1.0' in runs_total


def test_invalid_estimator_params_stall_before_any_job_starts(operator, cluster, namespace, data):
    cluster.apply(training(namespace, data, estimator={"class": "sklearn.ensemble.RandomForestClassifier",
                                                       "params": {"n_trees": 10}}))
    wait_for(lambda: cond(status(cluster, namespace), "Stalled").get("status") == "True", timeout=30, message="Stalled")
    st = status(cluster, namespace)
    assert "n_trees" in cond(st, "Stalled")["message"] and cond(st, "Stalled")["reason"] == "InvalidSpec"
    assert jobs(cluster, namespace) == []


def test_retrain_annotation_starts_exactly_one_new_run_and_a_request_during_a_run_is_queued(
        operator, cluster, namespace, data):
    cluster.apply(training(namespace, data, podTemplate=HELD))
    wait_for(lambda: status(cluster, namespace).get("currentRun") == "churn-v1", timeout=30, message="run 1")
    cluster.kubectl("annotate", "mtrain", "churn", "-n", namespace, "modelloop.dev/retrain-requested=drift-1")
    wait_for(lambda: status(cluster, namespace).get("queuedRequest") == "drift-1", timeout=30, message="queued request")
    # Run 1 ends (kwok completes it; no artifact, so it fails); the queued request then starts run 2.
    release(cluster, namespace, "churn-v1")
    wait_for(lambda: status(cluster, namespace).get("currentRun") == "churn-v2", timeout=60, message="run 2")
    st = status(cluster, namespace)
    assert st["runs"][0]["trigger"] == "RetrainRequested" and st["runs"][0]["reason"] == "drift-1"
    assert st["handledRequest"] == "drift-1" and "queuedRequest" not in st
    release(cluster, namespace, "churn-v2")
    wait_for(lambda: status(cluster, namespace).get("phase") != "Running", timeout=60, message="run 2 to end")
    # The same value again is not a new request; a new value is exactly one more run.
    cluster.kubectl("annotate", "--overwrite", "mtrain", "churn", "-n", namespace, "modelloop.dev/retrain-requested=drift-1")
    cluster.kubectl("annotate", "--overwrite", "mtrain", "churn", "-n", namespace, "modelloop.dev/retrain-requested=drift-2")
    wait_for(lambda: len(status(cluster, namespace).get("runs", [])) == 3, timeout=30, message="run 3")
    release(cluster, namespace, "churn-v3")
    wait_for(lambda: status(cluster, namespace).get("phase") != "Running", timeout=60, message="run 3 to end")
    assert [r["version"] for r in status(cluster, namespace)["runs"]] == [3, 2, 1]


def test_operator_restart_during_a_run_creates_no_duplicate_job_and_the_result_lands(
        operator, cluster, namespace, data):
    from modelloop.training import train

    # kwok holds the pod until this test's own trainer has written version 1. (The hold used to be a kwok
    # delay of a bare number, which kwok reads as none: the test passed only while the restarted operator
    # was slower than `train`.)
    doc = training(namespace, data, podTemplate=HELD)
    cluster.apply(doc)
    wait_for(lambda: status(cluster, namespace).get("currentRun") == "churn-v1", timeout=30, message="run 1")
    operator.process.stop(kill=True)
    # While the operator is down: its status write of the run is lost (it was killed between creating the Job
    # and recording it), and a user edits the spec. The Job is adopted with the generation it trains, so the
    # edit is trained next.
    cluster.kubectl("patch", "mtrain", "churn", "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", '{"status": {"runs": null, "currentRun": null}}')
    cluster.kubectl("patch", "mtrain", "churn", "-n", namespace, "--type=merge", "-p", '{"spec": {"historyLimit": 5}}')
    operator.restart(kill=True)
    # What the (simulated) pod does while kwok holds it: the trainer writes version 1.
    train(doc["spec"], version=1, identity={"name": "churn", "namespace": namespace, "uid": "x", "generation": 1,
                                            "run": "churn-v1"})
    release(cluster, namespace, "churn-v1")
    wait_for(lambda: [(r["job"], r["result"]) for r in status(cluster, namespace).get("runs") or []] ==
             [("churn-v2", "Running"), ("churn-v1", "Succeeded")], timeout=120,
             message="run 1's result after the restart, then a run of the edited spec")
    st = status(cluster, namespace)
    assert [(r["generation"], r["trigger"]) for r in st["runs"]] == [(2, "SpecChanged"), (1, "Created")]
    assert st["latestVersion"] == 1
    assert sorted(j["metadata"]["name"] for j in cluster.get("jobs", "-n", namespace)["items"]) == ["churn-v1", "churn-v2"]


def test_missing_storage_secret_stalls_with_a_message_naming_it(operator, cluster, namespace, data):
    cluster.apply(training(namespace, data, storage={"secretRef": {"name": "no-such-secret"}}))
    wait_for(lambda: cond(status(cluster, namespace), "Stalled").get("status") == "True", timeout=30, message="Stalled")
    assert "Secret 'no-such-secret' not found" in cond(status(cluster, namespace), "Stalled")["message"]
    assert jobs(cluster, namespace) == []


def annotations(cluster, namespace, name="churn") -> dict:
    return cluster.get("mtrain", name, "-n", namespace)["metadata"].get("annotations") or {}


def first_run_failed(cluster, namespace, data) -> None:
    """A training whose first run has ended (kwok completes the pod; without an artifact it fails)."""
    cluster.apply(training(namespace, data, podTemplate=KWOK))
    wait_for(lambda: status(cluster, namespace).get("phase") == "Failed", timeout=60, message="run 1 to end")


def test_retrain_with_fresh_data_uses_it_once_and_clears_the_annotation(operator, cluster, namespace, data):
    first_run_failed(cluster, namespace, data)
    fresh = data.uri("fresh/churn.csv")
    cluster.kubectl("annotate", "mtrain", "churn", "-n", namespace, "modelloop.dev/retrain-requested=drift-1",
                    f"modelloop.dev/retrain-dataset-uri={fresh}")
    wait_for(lambda: len(status(cluster, namespace).get("runs") or []) == 2, timeout=30, message="run 2")
    job = cluster.get("job", "churn-v2", "-n", namespace)
    spec = json.loads(next(e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
                           if e["name"] == "MODELLOOP_TRAINING_SPEC"))
    assert spec["dataset"]["uri"] == fresh
    wait_for(lambda: "modelloop.dev/retrain-dataset-uri" not in annotations(cluster, namespace), timeout=30,
             message="the dataset annotation to be cleared once used")
    assert f"(dataset {fresh})" in status(cluster, namespace)["runs"][0]["reason"]


@pytest.mark.parametrize("uri", ["s3://bucket/../other-team/data.csv", "ftp://bucket/data.csv"])
def test_retrain_with_an_invalid_dataset_uri_is_refused_and_starts_nothing(operator, cluster, namespace, data, uri):
    first_run_failed(cluster, namespace, data)
    cluster.kubectl("annotate", "mtrain", "churn", "-n", namespace, "modelloop.dev/retrain-requested=drift-1",
                    f"modelloop.dev/retrain-dataset-uri={uri}")
    wait_for(lambda: status(cluster, namespace).get("handledRequest") == "drift-1", timeout=30, message="handled")
    wait_for(lambda: "modelloop.dev/retrain-dataset-uri" not in annotations(cluster, namespace), timeout=30,
             message="the refused annotation to be cleared")
    assert len(status(cluster, namespace)["runs"]) == 1
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                             "involvedObject.kind=ModelTraining,reason=RetrainRefused", "-o", "json").stdout
    assert "modelloop.dev/retrain-dataset-uri" in events


def test_retention_keeps_the_newest_versions_and_the_one_a_deployment_serves(operator, cluster, namespace, s3, store):
    """keepVersions 3, six runs (kwok holds each pod while this test writes its version, as the trainer
    would), and a deployment pinned to v1: v2, v3, v4 leave the store and status; v1 stays."""
    from tests.integration.test_deployment_controller import deployment

    cluster.apply(training(namespace, s3, podTemplate=HELD, output={"uri": s3.uri("models/churn"), "keepVersions": 3}))
    cluster.apply(deployment(namespace, replicas=1, model={"fromTraining": "churn", "version": "1"}))
    cluster.kubectl("wait", "mdep/churn", "-n", namespace, "--for=condition=Ready", "--timeout=90s")
    for version in range(2, 8):  # v1 is the store fixture's: the first run gets v2
        wait_for(lambda: status(cluster, namespace).get("currentRun") == f"churn-v{version}", timeout=60,
                 message=f"run {version}")
        store.add(version, 0.70 + version / 100)
        release(cluster, namespace, f"churn-v{version}")
        wait_for(lambda: status(cluster, namespace).get("latestVersion") == version
                 and not status(cluster, namespace).get("currentRun"), timeout=60, message=f"version {version}")
        if version < 7:
            cluster.kubectl("annotate", "--overwrite", "mtrain", "churn", "-n", namespace,
                            f"modelloop.dev/retrain-requested=r{version}")

    # The store: the newest three and the served v1, nothing else, not even a file of a deleted version.
    assert store.layout() == ([1, 5, 6, 7], [])
    assert {key.split("/")[2] for key in s3.keys("models/churn/")} == {"v1", "v5", "v6", "v7"}
    # Status: what is stored, and no run pointing to a deleted version.
    st = status(cluster, namespace)
    assert st["storedVersions"] == [1, 5, 6, 7] and st["latestVersion"] == 7 and st["nextVersion"] == 8
    runs = {r["version"]: r for r in st["runs"]}
    assert sorted(runs) == [2, 3, 4, 5, 6, 7] and all(r["result"] == "Succeeded" for r in runs.values())
    for v in (2, 3, 4):
        assert "artifact" not in runs[v] and runs[v]["prunedTime"]
    for v in (5, 6, 7):
        assert runs[v]["artifact"] == s3.uri(f"models/churn/v{v}") and "prunedTime" not in runs[v]
    messages = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                               "involvedObject.kind=ModelTraining,reason=VersionsPruned",
                               "-o", "jsonpath={range .items[*]}{.message}{'\\n'}{end}").stdout.splitlines()
    # One event per pass that deleted something (one could be lost to a status conflict that reran the pass).
    deleted = {int(v) for m in messages for v in re.findall(r"v(\d+)", m.partition(" from ")[0])}
    assert deleted and deleted <= {2, 3, 4} and all(f"from {s3.uri('models/churn')} (keepVersions 3)" in m
                                                     for m in messages)
    assert all("kept beyond keepVersions: v1 (ModelDeployment churn serves it)" in m for m in messages)
    # The deployment still serves v1, and the next run still gets a new number.
    dep = cluster.get("mdep", "churn", "-n", namespace)["status"]
    assert dep["modelVersion"] == 1 and dep["lastAvailableVersion"] == 1
    assert next(c for c in dep["conditions"] if c["type"] == "Ready")["status"] == "True"
    cluster.kubectl("annotate", "--overwrite", "mtrain", "churn", "-n", namespace, "modelloop.dev/retrain-requested=r7")
    wait_for(lambda: status(cluster, namespace).get("currentRun") == "churn-v8", timeout=60, message="run 8")
