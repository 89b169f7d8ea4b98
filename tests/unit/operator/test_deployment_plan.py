"""The ModelDeployment reconcile, decided without a cluster: snapshots built by hand, the plan asserted (the children
to apply or delete, the rollout's decision, the status and Events once the champion's apply answered)."""
from __future__ import annotations

from modelloop.api.deployment import ModelDeploymentSpec
from modelloop.challenger import Manual
from modelloop.plans import deployment as decide
from modelloop.plans.deployment import DeploymentWorld, Rollback
from modelloop.render.deployment import ServedModel
from modelloop.rollout import Candidate, ModelUnavailable

NOW = 1_790_000_000.0


# ----------------------------------------------------------------------------- builders

def model(version: int) -> ServedModel:
    return ServedModel(version, f"s3://bucket/m/v{version}", f"sha{version}", f"msha{version}")


def candidate(version: int, accuracy: float = 0.9, pinned: bool = False) -> Candidate:
    return Candidate(model(version), {"name": "accuracy", "value": accuracy}, pinned=pinned)


def served(version: int, **more) -> dict:
    return {"modelVersion": version, "modelUri": f"s3://bucket/m/v{version}", "modelSha256": f"sha{version}",
            "modelMetadataSha256": f"msha{version}", "metric": {"name": "accuracy", "value": 0.85},
            "lastAvailableVersion": version, "lastAvailableUri": f"s3://bucket/m/v{version}", **more}


def child(version: int, state: str = "Available", replicas: int = 2) -> dict:
    status = {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas,
              "availableReplicas": replicas, "conditions": [{"type": "Available", "status": "True"}]}
    if state == "Failed":
        status = {"observedGeneration": 1, "replicas": replicas, "conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}
    return {"metadata": {"name": "web", "generation": 1}, "status": status,
            "spec": {"replicas": replicas,
                     "template": {"metadata": {"annotations": {"modelloop.dev/model-version": str(version)}}}}}


def world(status: dict | None = None, strategy: str = "direct", annotations: dict | None = None,
          promotion: dict | None = None, **observed) -> DeploymentWorld:
    obj = {"apiVersion": "modelloop.dev/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": "web", "namespace": "ml", "uid": "u", "generation": 1,
                        "annotations": annotations or {}},
           "spec": {"model": {"fromTraining": "churn"}, "replicas": 2, "rollout": {"strategy": strategy},
                    **({"promotion": promotion} if promotion else {})},
           "status": status or {}}
    status = status or {}
    target = model(status["modelVersion"]) if status.get("modelVersion") else None
    observed = {"target": target, "manual": decide.manual_of(obj), **observed}
    return DeploymentWorld(obj, ModelDeploymentSpec.model_validate(obj["spec"]), status, NOW, **observed)


def settled(w: DeploymentWorld, applied: dict | None = None):
    plan = decide.plan(w)
    decide.settle(w, plan, applied if applied is not None else w.dep)
    return plan


def events(plan) -> list[str]:
    return [e[1] for e in plan.events]


# ----------------------------------------------------------------------------- promotion

def test_the_first_version_is_rolled_out_with_its_children():
    plan = settled(world(candidate=candidate(1)))
    assert plan.status["modelVersion"] == 1 and plan.status["phase"] == "Progressing"
    assert plan.champion["kind"] == "Deployment" and plan.champion["spec"]["replicas"] == 2
    assert [c["kind"] for c in plan.children] == ["Service", "NetworkPolicy"]
    assert [(o.kind, o.manifest is None) for o in plan.optional] == [("HorizontalPodAutoscaler", True),
                                                                    ("PodDisruptionBudget", False)]
    assert plan.challenger == [] and not plan.delete_challenger and plan.route is None
    assert events(plan) == ["Promoted"] and plan.rollout.counts == ["promoted"]


def test_nothing_to_serve_renders_no_children_and_says_why():
    why = ModelUnavailable("WaitingForTraining", "ModelTraining 'churn' has no good version yet", stalled=False)
    plan = settled(world(unavailable=why))
    assert plan.champion is None and plan.status["phase"] == "Pending"
    assert {c["type"]: c["reason"] for c in plan.conditions}["Ready"] == "WaitingForTraining"


def test_a_version_that_becomes_available_is_remembered_to_roll_back_to():
    w = world({**served(1), "lastAvailableVersion": None, "lastAvailableUri": None}, dep=child(1))
    plan = settled(w)
    assert plan.status["lastAvailableVersion"] == 1 and plan.status["phase"] == "Available"
    assert "RolloutComplete" in events(plan)


def test_a_worse_candidate_is_held_and_the_champion_keeps_serving():
    plan = settled(world(served(1), promotion={"maxRegression": 0.1}, candidate=candidate(2, accuracy=0.5),
                         dep=child(1)))
    assert plan.status["modelVersion"] == 1 and plan.status["candidateVersion"] == 2
    assert events(plan)[0] == "PromotionHeld"


def test_a_canary_strategy_starts_a_challenger_beside_the_champion():
    plan = settled(world(served(1), strategy="canary", candidate=candidate(2), dep=child(1)))
    assert plan.status["rollout"]["phase"] == "Canary" and plan.status["modelVersion"] == 1
    assert [c["kind"] for c in plan.challenger] == ["Deployment", "Service", "NetworkPolicy"]
    assert plan.challenger[0]["metadata"]["name"] == "web-challenger"
    assert events(plan) == ["ChallengerStarted"]


# ----------------------------------------------------------------------------- rollback

def test_a_rollout_past_its_deadline_rolls_back_to_the_last_available_version():
    status = served(2, lastAvailableVersion=1, lastAvailableUri="s3://bucket/m/v1")
    w = world(status, dep=child(2, "Failed"), rollback=Rollback(model(1), {"name": "accuracy", "value": 0.8}))
    plan = settled(w)
    assert plan.status["modelVersion"] == 1 and plan.status["failedVersions"] == [2]
    assert plan.champion["spec"]["template"]["metadata"]["annotations"]["modelloop.dev/model-version"] == "1"
    assert events(plan)[0] == "RolledBack" and plan.rollout.counts == ["rollback"]


def test_a_rollback_that_cannot_read_its_version_stalls():
    status = served(2, lastAvailableVersion=1, lastAvailableUri="s3://bucket/m/v1")
    plan = settled(world(status, dep=child(2, "Failed"), rollback=Rollback(error="sha256 does not match")))
    assert plan.status["modelVersion"] == 2 and plan.status["phase"] == "Failed"
    assert events(plan)[0] == "RollbackFailed"


def test_the_rollout_is_decided_on_a_copy_of_the_snapshot():
    w = world(served(1), candidate=candidate(2), dep=child(1))
    decide.plan(w)
    assert w.status["modelVersion"] == 1


# ----------------------------------------------------------------------------- the challenger and the annotations

def test_a_promote_annotation_without_a_challenger_is_ignored_and_removed():
    plan = settled(world(served(1), annotations={"modelloop.dev/promote": "yes"}, dep=child(1)))
    assert plan.manual == Manual(promote=True) and events(plan)[0] == "NoChallenger"


def test_a_challenger_left_after_its_analysis_is_deleted():
    status = served(2, rollout={"phase": "Stable", "strategy": "canary"})
    plan = settled(world(status, strategy="canary", dep=child(2), challenger_dep=child(2)))
    assert plan.delete_challenger and plan.challenger == []


def test_what_an_analysis_needs_is_read_only_while_the_challengers_pods_serve():
    ro = {"phase": "Canary", "challenger": 2, "startedAt": "2026-09-21T00:00:00Z"}
    assert decide.analysing(ro, child(2))
    assert not decide.analysing(ro, None)
    assert not decide.analysing({**ro, "startedAt": None}, child(2))
