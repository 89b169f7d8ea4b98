"""What the controllers make of a store that does not answer: a condition naming it, and another try later
(the cluster-level test with the S3 server stopped is tests/integration/test_store_outage.py)."""
from __future__ import annotations

import socket

import pytest

from modelloop.artifacts import ArtifactIntegrityError, ObjectNotFoundError, StorageError, open_store
from modelloop.controllers import storage
from modelloop.rollout import ModelUnavailable, deployment_conditions
from modelloop.runs import training_conditions

AVAILABLE = {"spec": {"replicas": 2}, "status": {"availableReplicas": 2,
                                                 "conditions": [{"type": "Available", "status": "True"}]}}


def _conds(conds) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.message) for c in conds}


def test_only_a_store_that_did_not_answer_is_a_store_problem():
    assert storage.store_unavailable(StorageError("s3://b/m: S3 list failed: Could not connect"))
    assert not storage.store_unavailable(ObjectNotFoundError("s3://b/m/v1/metadata.json: not found"))
    assert not storage.store_unavailable(ArtifactIntegrityError("sha256 does not match"))
    assert not storage.store_unavailable(ValueError("x"))


def test_an_unreachable_endpoint_is_a_store_problem_naming_the_store():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = open_store("s3://models/churn", credentials={
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    with pytest.raises(StorageError) as err:
        store.versions()
    assert storage.store_unavailable(err.value)
    assert str(err.value).startswith("s3://models/churn: S3 list failed: Could not connect to the endpoint URL")


def test_training_reports_the_store_problem_while_waiting_for_it():
    problem = "no run can start until the store answers: s3://b/m: S3 list failed: Could not connect"
    conds = _conds(training_conditions("Pending", [], None, None, False, problem))
    assert conds["Reconciling"] == ("True", "StorageUnavailable", problem)
    assert conds["Ready"][:2] == ("False", "NoVersion") and conds["Stalled"][0] == "False"
    # a finished run whose version cannot be checked yet stays Running; the latest good version stays Ready
    runs = [{"result": "Running", "job": "churn-v2", "version": 2}, {"result": "Succeeded", "version": 1}]
    conds = _conds(training_conditions("Running", runs, 1, None, False, "run churn-v2 succeeded; ..."))
    assert conds["Reconciling"][:2] == ("True", "StorageUnavailable")
    assert conds["Ready"][:2] == ("True", "VersionAvailable")
    # an invalid spec is what a user must fix first
    conds = _conds(training_conditions("Pending", [], None, "spec is invalid", False, problem))
    assert conds["Stalled"][:2] == ("True", "InvalidSpec") and conds["Reconciling"][0] == "False"


def test_a_serving_deployment_keeps_serving_and_says_why_a_new_version_waits():
    down = ModelUnavailable("StorageUnavailable", "the model store cannot be read: s3://b/m/v2/metadata.json: S3 "
                                                  "read failed: Could not connect", stalled=False)
    conds = _conds(deployment_conditions("Available", down, None, 1, AVAILABLE))
    assert conds["Reconciling"] == ("True", "StorageUnavailable", down.message)
    assert conds["Ready"] == ("True", "Serving", f"version 1 is serving; StorageUnavailable: {down.message}")
    assert conds["Stalled"][0] == "False"
    # nothing served yet: not Ready, for that reason, and not stalled (it retries by itself)
    conds = _conds(deployment_conditions("Missing", down, None, None, None))
    assert conds["Ready"] == ("False", "StorageUnavailable", down.message)
    assert conds["Reconciling"][0] == "True" and conds["Stalled"][0] == "False"
