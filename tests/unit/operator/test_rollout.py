"""The rollout state machine of a ModelDeployment (modelloop.rollout), without a cluster."""
from __future__ import annotations

from modelloop.api.deployment import PromotionSpec
from modelloop.render.deployment import ServedModel
from modelloop.rollout import ROLLBACK, Candidate, Rollout, observe, phase_of, promote, roll_back, rollback_version


def model(v: int) -> ServedModel:
    return ServedModel(v, f"s3://b/m/v{v}", f"sha{v}", f"meta{v}")


def acc(value: float) -> dict:
    return {"name": "accuracy", "value": value}


def rollout(serving: int | None, state: str, **status) -> Rollout:
    st = {"modelVersion": serving, **status} if serving else dict(status)
    return Rollout(st, serving=serving, target=model(serving) if serving else None, state=state,
                   failed=list(status.get("failedVersions", [])))


def test_a_first_version_is_promoted_and_counted():
    r = rollout(None, "Missing")
    promote(r, Candidate(model(1), acc(0.9), pinned=False), generation=1, policy=PromotionSpec())
    assert (r.serving, r.state, r.target) == (1, "Progressing", model(1))
    assert r.status["modelVersion"] == 1 and "previousVersion" not in r.status
    assert r.counts == ["promoted"] and r.events[0][1] == "Promoted"
    assert phase_of(r) == "Progressing"


def test_a_failed_rollout_rolls_back_to_the_last_available_version_and_is_not_retried():
    r = rollout(2, "Failed", lastAvailableVersion=1, lastAvailableUri="s3://b/m/v1")
    assert rollback_version(r) == 1
    roll_back(r, 1, model(1), acc(0.9), None, generation=3, deadline_seconds=60)
    assert (r.serving, r.state, r.failed) == (1, "Progressing", [2])
    assert r.status["rollbackGeneration"] == 3 and r.status["previousVersion"] == 2 and r.counts == [ROLLBACK]
    # the training's latest is still 2: held, not promoted again
    promote(r, Candidate(model(2), acc(0.95), pinned=False), generation=3, policy=PromotionSpec())
    assert r.serving == 1 and r.held and "failed its rollout" in r.held and r.status["candidateVersion"] == 2


def test_a_pinned_failed_version_is_retried_after_the_user_edits_the_spec():
    r = rollout(1, "Available", failedVersions=[2], rollbackGeneration=3)
    promote(r, Candidate(model(2), None, pinned=True), generation=3, policy=PromotionSpec())
    assert r.serving == 1 and "edit spec.model" in r.held
    r = rollout(1, "Available", failedVersions=[2], rollbackGeneration=3)
    promote(r, Candidate(model(2), None, pinned=True), generation=4, policy=PromotionSpec())
    assert r.serving == 2 and r.failed == []


def test_nothing_to_roll_back_to_stays_failed():
    r = rollout(1, "Failed")
    assert rollback_version(r) is None
    observe(r, "Progressing")
    assert r.state == "Failed" and phase_of(r) == "Failed"


def test_an_unreadable_rollback_target_is_reported_and_nothing_changes():
    r = rollout(2, "Failed", lastAvailableVersion=1, lastAvailableUri="s3://b/m/v1")
    roll_back(r, 1, None, None, "access denied", generation=3, deadline_seconds=60)
    assert r.serving == 2 and r.events == [("Warning", "RollbackFailed", "cannot roll back to version 1: access denied")]
    assert r.counts == []


def test_a_regression_is_held_with_one_event_and_one_count():
    r = rollout(1, "Available", metric=acc(0.9))
    policy = PromotionSpec(maxRegression=0.01)
    promote(r, Candidate(model(2), acc(0.8), pinned=False), generation=1, policy=policy)
    assert r.serving == 1 and r.counts == ["Regression"] and len(r.events) == 1
    again = rollout(1, "Available", metric=acc(0.9), promotionMessage=r.held)
    promote(again, Candidate(model(2), acc(0.8), pinned=False), generation=1, policy=policy)
    assert again.events == [] and again.counts == []


def test_an_available_version_becomes_the_one_to_roll_back_to():
    r = rollout(2, "Progressing", lastAvailableVersion=1)
    observe(r, "Available")
    assert r.status["lastAvailableVersion"] == 2 and r.status["lastAvailableUri"] == "s3://b/m/v2"
    assert r.events[-1][1] == "RolloutComplete" and phase_of(r) == "Available"


def test_the_serving_candidate_clears_a_held_one():
    r = rollout(2, "Available", candidateVersion=3, promotionMessage="held")
    promote(r, Candidate(model(2), acc(0.9), pinned=False), generation=1, policy=PromotionSpec())
    assert r.status["candidateVersion"] is None and r.status["promotionMessage"] is None
