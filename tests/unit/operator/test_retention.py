"""Version retention (spec.output.keepVersions): which versions go, which never do, and what status and
the store say afterwards. Pure decisions, then the controller's pass on a file:// store with the API
calls stubbed."""
from __future__ import annotations

import dataclasses
import random

import pytest

from modelloop import kube
from modelloop.api import ModelTrainingSpec
from modelloop.api.training import DEFAULT_KEEP_VERSIONS
from modelloop.artifacts import ObjectNotFoundError, open_store
from modelloop.config import SETTINGS
from modelloop.controllers import storage, training
from modelloop.plans import training as decide
from modelloop.runs import leftovers_to_remove, next_version, protected_versions, versions_to_prune
from tests.unit.artifacts.conftest import metadata_for

OUT = "s3://bucket/models/churn"
MODEL = b"model bytes"


def dep(name: str = "web", follows: str | None = "churn", version: str | None = None, uri: str | None = None,
        **status) -> dict:
    model = {"fromTraining": follows} if follows else {"uri": uri}
    if version:
        model["version"] = version
    return {"metadata": {"name": name}, "spec": {"model": model}, "status": status}


# ----------------------------------------------------------------------------- versions_to_prune

def test_the_newest_keep_versions_stay_and_the_older_ones_go():
    assert versions_to_prune([1, 2, 3, 4, 5, 6], 3, {}) == [1, 2, 3]
    assert versions_to_prune([6, 1, 5, 2], 2, {}) == [1, 2]  # order of the listing does not matter
    assert versions_to_prune([1, 2, 3], 3, {}) == [] and versions_to_prune([1, 2], 10, {}) == []
    assert versions_to_prune([], 1, {}) == []


def test_protected_versions_are_never_deleted_and_do_not_count_in_keep_versions():
    assert versions_to_prune([1, 2, 3, 4, 5, 6], 3, {1: "served", 3: "rolls back"}) == [2]
    assert versions_to_prune([1, 2, 3], 1, {1, 2, 3}) == []


def test_keep_versions_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        versions_to_prune([1, 2], 0, {})


def test_any_history_keeps_the_newest_and_every_protected_version():
    rng = random.Random(14)
    for _ in range(500):
        stored = rng.sample(range(1, 60), rng.randint(0, 30))
        protected = set(rng.sample(range(1, 60), rng.randint(0, 5)))
        keep = rng.randint(1, 12)
        doomed = versions_to_prune(stored, keep, protected)
        kept = set(stored) - set(doomed)
        assert set(doomed) <= set(stored) and not set(doomed) & protected
        assert set(sorted(stored)[-keep:]) <= kept  # the newest keep versions
        assert len(kept) <= keep + len(protected)
        assert not stored or max(stored) in kept


def test_version_numbers_keep_growing_after_deletion():
    status = {"nextVersion": 7, "latestVersion": 6, "runs": [{"version": 6}]}
    stored = [1, 2, 3, 4, 5, 6]
    after = sorted(set(stored) - set(versions_to_prune(stored, 2, {})))
    assert after == [5, 6] and next_version(status, after) == 7
    # Even with a status that forgot everything (the resource was recreated), the store alone says 7.
    assert next_version({}, after) == 7


# ----------------------------------------------------------------------------- leftovers_to_remove

def test_incomplete_version_folders_below_the_newest_version_are_leftovers():
    # v2: an interrupted deletion; v5: a killed commit; v8: a run writing now (above every stored version).
    assert leftovers_to_remove([2, 5, 8], [1, 3, 4, 6, 7], {}) == [2, 5]
    assert leftovers_to_remove([2, 5], [1, 3, 4, 6], {5: "run churn-v5 is writing it"}) == [2]
    assert leftovers_to_remove([2], [], {}) == []  # nothing committed: nothing to judge by


# ----------------------------------------------------------------------------- protected_versions

def test_the_latest_version_and_a_running_runs_version_are_protected():
    runs = [{"version": 9, "job": "churn-v9", "result": "Running"}, {"version": 8, "result": "Succeeded"}]
    assert protected_versions("churn", OUT, {"latestVersion": 8}, runs, []) == {
        8: "the latest good version", 9: "run churn-v9 is writing it"}


def test_what_a_following_deployment_serves_rolls_back_to_pins_or_held_is_protected():
    following = dep(version="2", modelVersion=2, lastAvailableVersion=3, previousVersion=4, candidateVersion=5)
    assert protected_versions("churn", OUT, {}, [], [following]) == {
        2: "ModelDeployment web serves it", 3: "ModelDeployment web rolls back to it",
        4: "ModelDeployment web served it before", 5: "ModelDeployment web holds it as candidate"}
    pinned_not_yet_served = dep(version="7")
    assert protected_versions("churn", OUT, {}, [], [pinned_not_yet_served]) == {7: "ModelDeployment web pins it"}
    assert protected_versions("churn", OUT, {}, [], [dep(version="latest")]) == {}


def test_a_deployment_of_another_training_protects_only_what_lies_under_this_output():
    other = dep(name="other", follows="fraud", modelVersion=2, lastAvailableVersion=3,
                modelUri="s3://bucket/models/fraud/v2", lastAvailableUri="s3://bucket/models/fraud/v3")
    assert protected_versions("churn", OUT, {}, [], [other]) == {}


def test_a_deployment_naming_a_uri_under_this_output_protects_it_whatever_it_follows():
    fixed = dep(name="fixed", follows=None, uri=f"{OUT}/v4/", modelVersion=3, modelUri=f"{OUT}/v3",
                lastAvailableUri="s3://bucket//models/churn/v1")
    assert protected_versions("churn", OUT, {}, [], [fixed]) == {
        3: "ModelDeployment fixed serves it", 1: "ModelDeployment fixed rolls back to it",
        4: "ModelDeployment fixed names it in spec.model.uri"}


# ----------------------------------------------------------------------------- the controller's pass

@pytest.fixture()
def local(tmp_path, monkeypatch):
    """A file:// store with versions 1..6, the operator allowed to use it, and the API stubbed: one
    deployment following the training, serving v1 and rolling back to it."""
    monkeypatch.setattr(storage, "SETTINGS", dataclasses.replace(SETTINGS, local_storage=True))
    uri = f"file://{tmp_path}/models"
    store = open_store(uri)
    for v in range(1, 7):
        store.commit_version(v, {"model.skops": MODEL}, metadata_for(v, MODEL))
    deployments = [dep(modelVersion=1, lastAvailableVersion=1, modelUri=f"{uri}/v1")]
    monkeypatch.setattr(kube, "list_", lambda api, kind, namespace, selector=None: deployments)
    monkeypatch.setattr(kube, "rfc3339", lambda t=None: "2026-12-02T12:00:00Z")
    return store


def spec_of(uri: str, keep: int | None = None) -> ModelTrainingSpec:
    output = {"uri": uri, **({"keepVersions": keep} if keep else {})}
    return ModelTrainingSpec.model_validate({
        "dataset": {"uri": "s3://bucket/churn.csv", "target": "y"},
        "estimator": {"class": "sklearn.linear_model.LogisticRegression"}, "output": output})


def obj(**status) -> dict:
    return {"kind": "ModelTraining", "metadata": {"name": "churn", "namespace": "ns"}, "status": status}


def runs_of(uri: str, versions) -> list[dict]:
    return [{"version": v, "job": f"churn-v{v}", "result": "Succeeded", "artifact": f"{uri}/v{v}"}
            for v in sorted(versions, reverse=True)]


def retain(training_obj: dict, spec: ModelTrainingSpec, status: dict, runs: list[dict], credentials,
           events: list) -> None:
    """The controller's retention pass once a run has ended: observe's reads, the plan's choice, act's deletions and
    the status they leave (in `status`, with `runs` as its runs), and the Events."""
    world = decide.TrainingWorld(
        training_obj, spec, None, True, {}, {}, "2026-12-02T12:00:00Z",
        layout=storage.store_layout(spec.output.uri, credentials), deployments=kube.list_("", "ModelDeployment", "ns"),
        credentials=credentials)
    status["runs"] = runs
    pruning, skipped = decide.retention(world, status, runs)
    plan = decide.TrainingPlan(status, [], [], skipped, [], retention=pruning)
    events += skipped + training._prune(world, plan)


def test_keep_versions_defaults_to_ten():
    assert spec_of(OUT).output.keep_versions == DEFAULT_KEEP_VERSIONS == 10


def test_the_pass_deletes_old_versions_keeps_the_served_one_and_status_points_to_no_deleted_version(local):
    uri = str(local.base)
    status, runs, events = {"latestVersion": 6}, runs_of(uri, range(1, 7)), []
    storage.verified_metadata("ns", uri, 2, storage.ANONYMOUS)  # cached, as after a deployment read it
    retain(obj(), spec_of(uri, keep=3), status, runs, storage.ANONYMOUS, events)

    assert local.versions() == [1, 4, 5, 6] and status["storedVersions"] == [1, 4, 5, 6]
    by_version = {r["version"]: r for r in runs}
    for v in (2, 3):
        assert by_version[v]["prunedTime"] == "2026-12-02T12:00:00Z" and "artifact" not in by_version[v]
    for v in (1, 4, 5, 6):
        assert "prunedTime" not in by_version[v] and by_version[v]["artifact"] == f"{uri}/v{v}"
    assert events == [("Normal", "VersionsPruned", f"deleted v2, v3 from {uri} (keepVersions 3); kept v1, v4, v5, "
                       f"v6; kept beyond keepVersions: v1 (ModelDeployment web serves it)")]
    with pytest.raises(ObjectNotFoundError):  # forgotten by the cache: read again, and found gone
        storage.verified_metadata("ns", uri, 2, storage.ANONYMOUS)


def test_a_second_pass_deletes_nothing_more_and_emits_nothing(local):
    uri = str(local.base)
    status, runs = {"latestVersion": 6}, runs_of(uri, range(1, 7))
    retain(obj(), spec_of(uri, keep=3), status, runs, storage.ANONYMOUS, [])
    events: list = []
    retain(obj(), spec_of(uri, keep=3), status, runs, storage.ANONYMOUS, events)
    assert events == [] and local.versions() == [1, 4, 5, 6]


def test_a_failed_deletion_is_a_warning_and_status_follows_the_store(local, monkeypatch):
    uri = str(local.base)
    real = storage.delete_version

    def denied_after_v2(output, version, credentials, field="spec.output.uri"):
        if version > 2:
            raise storage.StorageAccessError("access denied (AccessDenied) on delete")
        real(output, version, credentials, field)

    monkeypatch.setattr(storage, "delete_version", denied_after_v2)
    status, runs, events = {"latestVersion": 6}, runs_of(uri, range(1, 7)), []
    retain(obj(), spec_of(uri, keep=3), status, runs, storage.ANONYMOUS, events)
    assert local.versions() == status["storedVersions"] == [1, 3, 4, 5, 6]
    assert [r["version"] for r in runs if r.get("prunedTime")] == [2]
    assert [e[:2] for e in events] == [("Warning", "PruneFailed"), ("Normal", "VersionsPruned")]
    assert "cannot delete version 3" in events[0][2] and "access denied" in events[0][2]


def test_runs_of_an_earlier_output_are_not_marked(local):
    uri = str(local.base)
    runs = runs_of("s3://bucket/old-models", [7, 8]) + runs_of(uri, [6])
    retain(obj(), spec_of(uri, keep=3), {"latestVersion": 6}, runs, storage.ANONYMOUS, [])
    assert not any(r.get("prunedTime") for r in runs)


def test_the_leftovers_of_an_interrupted_deletion_are_removed(local):
    uri = str(local.base)
    (local.base.local_path() / "v2" / "metadata.json").unlink()  # a deletion that stopped after metadata.json
    events: list = []
    retain(obj(), spec_of(uri, keep=10), {"latestVersion": 6}, runs_of(uri, range(1, 7)),
                              storage.ANONYMOUS, events)
    assert local.layout() == ([1, 3, 4, 5, 6], []) and events == []


def test_the_metric_series_of_a_deleted_version_go_with_it(local):
    from modelloop import metrics

    uri = str(local.base)
    for v in (2, 5):
        for name in ("accuracy", "f1"):
            metrics.TRAINING_VERSION_METRIC.labels("ns", "churn", str(v), name).set(0.9)
    retain(obj(), spec_of(uri, keep=3), {"latestVersion": 6}, runs_of(uri, range(1, 7)),
                              storage.ANONYMOUS, [])
    series = {(s.labels["version"], s.labels["metric"]) for f in metrics.TRAINING_VERSION_METRIC.collect()
              for s in f.samples if s.labels["namespace"] == "ns" and s.labels["training"] == "churn"}
    assert series == {("5", "accuracy"), ("5", "f1")}
    import prometheus_client

    pruned = prometheus_client.REGISTRY.get_sample_value("modelloop_training_versions_pruned_total",
                                                          {"namespace": "ns", "training": "churn"})
    assert pruned >= 2  # other tests of this module prune as ns/churn too


def test_the_version_that_was_latest_until_this_run_stays_for_this_pass(local):
    # A deployment following `latest` may be rolling it out without having said so in its status yet.
    uri = str(local.base)
    status, runs = {"latestVersion": 6}, runs_of(uri, range(1, 7))
    retain(obj(latestVersion=2), spec_of(uri, keep=1), status, runs, storage.ANONYMOUS, [])
    assert local.versions() == [1, 2, 6]
    retain(obj(latestVersion=6), spec_of(uri, keep=1), status, runs, storage.ANONYMOUS, [])
    assert local.versions() == [1, 6]
