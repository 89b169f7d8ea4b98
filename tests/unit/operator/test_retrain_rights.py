"""A DriftMonitor retrains only a ModelTraining that allows it; the fresh data it brings is checked
like a spec URI. Pure decisions, no cluster."""
from datetime import datetime, timezone

import pytest

from modelloop.api import DriftMonitorSpec
from modelloop.api.training import RETRAIN_DATASET_ANNOTATION, LabelSelector, RetrainSpec
from modelloop.retrain import retrain_allowed, retrain_decision
from modelloop.runs import dataset_override

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
SPEC = DriftMonitorSpec.model_validate({"deploymentRef": {"name": "churn"}, "consecutive": 2,
                                        "action": {"type": "retrain", "cooldown": "1h"}})


def training(retrain: dict | None = None, **status) -> dict:
    spec = {"retrain": retrain} if retrain is not None else {}
    return {"metadata": {"name": "churn"}, "spec": spec, "status": status}


def test_a_training_without_retrain_rights_refuses_every_monitor():
    go, why = retrain_decision(SPEC, 2, None, training(), NOW, "churn", {})
    assert not go and "does not allow DriftMonitor churn" in why and "spec.retrain.allowedMonitors" in why


def test_a_listed_monitor_may_retrain_and_another_may_not():
    t = training({"allowedMonitors": ["churn"]})
    assert retrain_decision(SPEC, 2, None, t, NOW, "churn", {}) == (True, "drift persisted")
    assert not retrain_decision(SPEC, 2, None, t, NOW, "intruder", {})[0]


def test_monitors_matching_the_selector_may_retrain():
    t = training({"monitorSelector": {"matchLabels": {"team": "ml"},
                                      "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]}})
    assert retrain_allowed(t, "any", {"team": "ml", "env": "prod"})
    assert not retrain_allowed(t, "any", {"team": "ml", "env": "dev"})
    assert not retrain_allowed(t, "any", {"team": "other", "env": "prod"})


@pytest.mark.parametrize("selector, labels, expected", [
    ({}, {"team": "ml"}, False),  # an empty selector allows nobody, unlike in pod selectors
    ({"matchExpressions": [{"key": "team", "operator": "Exists"}]}, {"team": "x"}, True),
    ({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}, {"team": "x"}, False),
    ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]}, {}, True),
])
def test_label_selector_semantics(selector, labels, expected):
    assert LabelSelector.model_validate(selector).matches(labels) is expected


def test_rights_are_checked_before_cooldown_and_running_runs():
    t = training(currentRun="churn-v3")
    assert "does not allow" in retrain_decision(SPEC, 5, None, t, NOW, "churn", {})[1]
    t = training({"allowedMonitors": ["churn"]}, currentRun="churn-v3")
    assert "in progress" in retrain_decision(SPEC, 5, None, t, NOW, "churn", {})[1]


def test_unparseable_rights_allow_nothing():
    assert not retrain_allowed(training({"allowedMonitors": "churn"}), "churn", {})
    assert RetrainSpec().allows("churn", {"team": "ml"}) is False


def test_a_retrain_request_brings_fresh_data_only_when_it_is_a_valid_storage_uri():
    ok = {RETRAIN_DATASET_ANNOTATION: "s3://bucket/fresh/churn.csv"}
    assert dataset_override("RetrainRequested", ok) == ("s3://bucket/fresh/churn.csv", None)
    assert dataset_override("SpecChanged", ok) == (None, None)  # only a retrain request brings data
    assert dataset_override("RetrainRequested", {}) == (None, None)


@pytest.mark.parametrize("uri", ["s3://bucket/../other-tenant/data.csv", "s3://bucket/a//b.csv",
                                 "file:///data/./x.csv", "pvc://claim/..", "http://example.com/x.csv",
                                 "s3://bucket/x.csv?versionId=1", "s3://Bucket/x.csv"])
def test_a_retrain_request_with_a_bad_dataset_uri_is_refused_with_the_annotation_named(uri):
    fresh, refused = dataset_override("RetrainRequested", {RETRAIN_DATASET_ANNOTATION: uri})
    assert fresh is None and RETRAIN_DATASET_ANNOTATION in refused and uri in refused


def test_no_retrain_is_requested_while_the_last_one_is_judged_on_live_traffic():
    for phase in ("Shadowing", "Canary", "Promoting"):
        go, why = retrain_decision(SPEC, 2, None, training({"allowedMonitors": ["churn"]}), NOW, "churn", {},
                                   {"rollout": {"phase": phase, "challenger": 3}})
        assert not go and "version 3 is being judged on live traffic" in why
    for phase in ("Stable", "Watching"):
        assert retrain_decision(SPEC, 2, None, training({"allowedMonitors": ["churn"]}), NOW, "churn", {}, {"rollout": {"phase": phase}})[0]
