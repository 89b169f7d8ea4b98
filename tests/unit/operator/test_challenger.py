"""The life of a challenger as pure decisions: start, analysis, promotion or rejection, canary steps, the watch
after a promotion and its rollback (modelloop.challenger)."""
from __future__ import annotations

from modelloop import challenger
from modelloop.analysis import Live, Paired, Served
from modelloop.api.deployment import PromotionSpec, RolloutSpec
from modelloop.challenger import Evidence, Manual
from modelloop.meta import format_time
from modelloop.render.deployment import ServedModel
from modelloop.rollout import Candidate, Rollout, admitted

T0 = 1_800_000_000.0
V1 = ServedModel(1, "s3://m/churn/v1", "a" * 64, "b" * 64)
V2 = ServedModel(2, "s3://m/churn/v2", "c" * 64, "d" * 64)
V3 = ServedModel(3, "s3://m/churn/v3", "e" * 64, "f" * 64)


def spec(strategy: str = "shadow", **analysis) -> RolloutSpec:
    return RolloutSpec.model_validate({"strategy": strategy, "analysis": {"window": "60s", "minRequests": 100,
                                                                          "minLabels": 50, "watchFor": "10m",
                                                                          **analysis}})


def serving_v1() -> Rollout:
    status = {"modelVersion": 1, "modelUri": V1.uri, "modelSha256": V1.sha256, "modelMetadataSha256": V1.metadata_sha256,
              "metric": {"name": "accuracy", "value": 0.80}}
    return Rollout(status, serving=1, target=V1, state="Available", failed=[], generation=3)


def started(s: RolloutSpec | None = None) -> Rollout:
    r = serving_v1()
    challenger.start(r, Candidate(V2, {"name": "accuracy", "value": 0.82}, pinned=False), s or spec())
    return r


def good(requests: int = 1000) -> Evidence:
    """The challenger as good as the champion: no errors, the same latency, 95% agreement, balanced discordance."""
    return Evidence(Served(requests, 0, 0.010), Served(requests, 0, 0.011),
                    Paired(rows=requests, agreed=int(requests * 0.95), champion_only_right=30, challenger_only_right=32))


def step(r: Rollout, s: RolloutSpec, now: float, evidence: Evidence | None = None, state: str = "Available",
         manual: Manual = Manual(), candidate: int | None = 2, previous: ServedModel | None = None) -> None:
    challenger.advance(r, s, candidate_version=candidate, challenger_state=state, evidence=evidence, manual=manual,
                       now=now, classifier=True, previous_model=previous)


def test_a_new_version_starts_as_the_challenger_and_the_champion_keeps_serving():
    r = started()
    ro = r.status["rollout"]
    assert (ro["phase"], ro["champion"], ro["challenger"], ro["challengerUri"]) == ("Shadowing", 1, 2, V2.uri)
    assert r.serving == 1 and r.status["modelVersion"] == 1 and r.target == V1
    assert [e[1] for e in r.events] == ["ChallengerStarted"]
    assert r.status["candidateVersion"] == 2


def test_the_window_starts_when_the_challenger_is_available_and_nothing_is_decided_before_it_ends():
    s = spec()
    r = started(s)
    step(r, s, T0, state="Progressing")
    assert r.status["rollout"]["startedAt"] is None and "rolling out" in r.status["rollout"]["message"]
    step(r, s, T0 + 5)
    assert r.status["rollout"]["startedAt"] == format_time(T0 + 5)
    step(r, s, T0 + 30, evidence=good())  # enough requests, but only half the window
    ro = r.status["rollout"]
    assert ro["phase"] == "Shadowing" and {g["name"] for g in ro["gates"]} == {
        "errorRate", "latency", "agreement", "performance"}
    assert r.serving == 1


def test_a_challenger_that_passes_every_gate_is_promoted_and_the_previous_numbers_are_kept_for_the_watch():
    s = spec()
    r = started(s)
    step(r, s, T0)
    step(r, s, T0 + 61, evidence=good())
    ro = r.status["rollout"]
    assert ro["phase"] == "Promoting" and r.serving == 2 and r.status["modelVersion"] == 2
    assert r.status["modelUri"] == V2.uri and r.status["previousVersion"] == 1 and r.state == "Progressing"
    assert (ro["previous"], ro["previousUri"], ro["previousRequests"], ro["previousErrors"]) == (1, V1.uri, 1000, 0)
    assert r.status["metric"] == {"name": "accuracy", "value": 0.82}
    assert "ChallengerPromoted" in [e[1] for e in r.events]
    # The champion Deployment rolls to version 2; once Available the watch starts and the challenger goes.
    r.state = "Available"
    step(r, s, T0 + 90)
    ro = r.status["rollout"]
    assert ro["phase"] == "Watching" and ro["challenger"] is None and ro["startedAt"] == format_time(T0 + 90)


def test_a_challenger_wrong_more_often_on_the_same_rows_is_rejected_and_not_promoted_again():
    s = spec()
    r = started(s)
    step(r, s, T0)
    worse = Evidence(Served(1000, 0, 0.010), Served(1000, 0, 0.010),
                     Paired(rows=1000, agreed=850, champion_only_right=110, challenger_only_right=40))
    step(r, s, T0 + 61, evidence=worse)
    ro = r.status["rollout"]
    assert ro["phase"] == "Stable" and ro["challenger"] is None and r.serving == 1
    assert ro["rejected"][-1]["version"] == 2 and "McNemar" in ro["rejected"][-1]["message"]
    assert [g["verdict"] for g in ro["gates"] if g["name"] == "performance"] == ["fail"]
    assert "ChallengerRejected" in [e[1] for e in r.events]
    # The same version is held back from now on, with the reason.
    assert not admitted(r, Candidate(V2, None, pinned=False), 3, PromotionSpec())
    assert "rejected on live traffic" in r.held


def test_errors_or_latency_reject_without_any_label():
    s = spec()
    for evidence, gate in ((Evidence(Served(1000, 0, 0.01), Served(1000, 80, 0.01), None, "no records"), "errorRate"),
                           (Evidence(Served(1000, 0, 0.01), Served(1000, 0, 0.05), None, "no records"), "latency")):
        r = started(s)
        step(r, s, T0)
        step(r, s, T0 + 61, evidence=evidence)
        ro = r.status["rollout"]
        assert ro["phase"] == "Stable" and r.serving == 1, gate
        assert [g["verdict"] for g in ro["gates"] if g["name"] == gate] == ["fail"]
        assert all(g["verdict"] == "skip" and "no records" in g["message"] for g in ro["gates"]
                   if g["name"] in ("agreement", "performance"))


def test_few_labels_wait_when_labels_are_required_and_skip_otherwise():
    few = Evidence(Served(1000, 0, 0.01), Served(1000, 0, 0.01),
                   Paired(rows=1000, agreed=990, champion_only_right=3, challenger_only_right=2))
    s = spec(requireLabels=True)
    r = started(s)
    step(r, s, T0)
    step(r, s, T0 + 61, evidence=few)
    assert r.status["rollout"]["phase"] == "Shadowing" and "waiting for labels" in r.status["rollout"]["message"]
    s = spec()
    r = started(s)
    step(r, s, T0)
    step(r, s, T0 + 61, evidence=few)
    assert r.status["rollout"]["phase"] == "Promoting"


def test_a_canary_passes_its_steps_one_analysed_window_at_a_time_then_takes_everything():
    s = RolloutSpec.model_validate({"strategy": "canary", "canary": {"steps": [25, 50]},
                                    "analysis": {"window": "60s", "minRequests": 100}})
    r = started(s)
    ro = r.status["rollout"]
    assert (ro["phase"], ro["step"]) == ("Canary", 0)
    unpaired = Evidence(Served(1000, 0, 0.01), Served(400, 0, 0.01), None, "a canary's rows are not paired")
    step(r, s, T0)
    step(r, s, T0 + 61, evidence=unpaired)
    assert (ro["phase"], ro["step"], ro["startedAt"]) == ("Canary", 1, None)
    assert "CanaryStepped" in [e[1] for e in r.events]
    step(r, s, T0 + 70)
    step(r, s, T0 + 140, evidence=unpaired)
    assert ro["phase"] == "Promoting" and r.serving == 2


def test_canary_replicas_keep_one_pod_of_each_version_and_report_the_real_share():
    s = RolloutSpec.model_validate({"strategy": "canary", "canary": {"steps": [10, 50]}})
    assert challenger.replicas_of(s, "Canary", 0, 4) == (3, 1, 0.25)
    assert challenger.replicas_of(s, "Canary", 1, 4) == (2, 2, 0.5)
    assert challenger.replicas_of(s, "Canary", 0, 1) == (1, 1, 0.5)
    shadow = RolloutSpec.model_validate({"strategy": "shadow", "shadow": {"fraction": 0.3}})
    assert challenger.replicas_of(shadow, "Shadowing", None, 4) == (4, 2, 0.0)
    gateway = RolloutSpec.model_validate({"strategy": "canary", "canary": {"steps": [10]},
                                          "gateway": {"parentRef": {"name": "edge"}}})
    assert challenger.replicas_of(gateway, "Canary", 0, 4) == (4, 1, 0.1)


def test_people_can_promote_or_abort_by_annotation():
    s = spec()
    r = started(s)
    step(r, s, T0, manual=Manual(abort=True))
    assert r.status["rollout"]["phase"] == "Stable" and "abort" in r.status["rollout"]["rejected"][-1]["message"]
    r = started(s)
    step(r, s, T0, manual=Manual(promote=True))
    assert r.status["rollout"]["phase"] == "Promoting" and r.serving == 2


def test_a_newer_version_replaces_the_challenger_without_rejecting_it():
    s = spec()
    r = started(s)
    step(r, s, T0)
    step(r, s, T0 + 10, evidence=good(), candidate=3)
    ro = r.status["rollout"]
    assert ro["phase"] == "Stable" and not ro.get("rejected") and "replaced by the newer version 3" in ro["message"]
    assert admitted(r, Candidate(V3, None, pinned=False), 3, PromotionSpec())


def test_a_challenger_that_never_becomes_available_is_rejected():
    s = spec()
    r = started(s)
    step(r, s, T0, state="Failed")
    assert r.status["rollout"]["rejected"][-1]["version"] == 2 and r.serving == 1


def promoted_and_watching(s: RolloutSpec) -> Rollout:
    r = started(s)
    step(r, s, T0)
    step(r, s, T0 + 61, evidence=good())
    r.state = "Available"
    step(r, s, T0 + 90)
    assert r.status["rollout"]["phase"] == "Watching"
    return r


def test_the_watch_rolls_back_a_new_champion_whose_error_rate_is_significantly_higher():
    s = spec()
    r = promoted_and_watching(s)
    step(r, s, T0 + 200, evidence=Evidence(Served(2000, 300, 0.01), Served(0, 0)), previous=V1)
    ro = r.status["rollout"]
    assert r.serving == 1 and r.status["modelVersion"] == 1 and r.target == V1 and r.state == "Progressing"
    assert ro["phase"] == "Stable" and ro["rejected"][-1]["version"] == 2
    assert "RolledBack" in [e[1] for e in r.events]
    assert not admitted(r, Candidate(V2, None, pinned=False), 3, PromotionSpec())


def test_the_watch_rolls_back_a_new_champion_whose_live_accuracy_falls_below_the_previous_versions():
    s = spec()
    r = promoted_and_watching(s)
    before = Live("accuracy", 600, 0.86, 0.832, 0.888)  # version 1 on its own labelled rows before the promotion
    steady = Evidence(Served(2000, 1, 0.01), Served(0, 0), live={1: before, 2: Live("accuracy", 30, 0.5, 0.32, 0.68)})
    step(r, s, T0 + 200, evidence=steady, previous=V1)
    assert r.serving == 2 and r.status["rollout"]["phase"] == "Watching", "30 labels decide nothing"
    worse = Evidence(Served(4000, 2, 0.01), Served(0, 0), live={1: before, 2: Live("accuracy", 500, 0.70, 0.66, 0.74)})
    step(r, s, T0 + 260, evidence=worse, previous=V1)
    ro = r.status["rollout"]
    assert r.serving == 1 and ro["phase"] == "Stable" and ro["rejected"][-1]["version"] == 2
    assert "live accuracy 0.7 on 500 labelled rows" in ro["rejected"][-1]["message"]


def test_a_canary_whose_own_rows_show_it_worse_is_rejected_at_its_step():
    s = RolloutSpec.model_validate({"strategy": "canary", "canary": {"steps": [50]},
                                    "analysis": {"window": "60s", "minRequests": 100, "minLabels": 100}})
    r = started(s)
    step(r, s, T0)
    live = {1: Live("accuracy", 400, 0.85, 0.815, 0.885), 2: Live("accuracy", 400, 0.55, 0.501, 0.599)}
    step(r, s, T0 + 61, evidence=Evidence(Served(1000, 0, 0.01), Served(1000, 0, 0.01), None,
                                          "a canary's rows are each answered by one version", live))
    ro = r.status["rollout"]
    assert ro["phase"] == "Stable" and r.serving == 1 and ro["rejected"][-1]["version"] == 2
    assert {g["name"]: g["verdict"] for g in ro["gates"]}["performance"] == "fail"


def test_the_watch_releases_the_previous_version_after_watch_for():
    s = spec()
    r = promoted_and_watching(s)
    step(r, s, T0 + 300, evidence=Evidence(Served(2000, 1, 0.01), Served(0, 0)), previous=V1)
    assert r.status["rollout"]["phase"] == "Watching" and r.serving == 2
    step(r, s, T0 + 90 + 601, evidence=Evidence(Served(4000, 2, 0.01), Served(0, 0)), previous=V1)
    assert r.status["rollout"]["phase"] == "Stable" and r.serving == 2 and r.status["rollout"]["previous"] is None


def test_switching_to_direct_stops_the_analysis_and_leaves_the_version_to_the_direct_rules():
    r = started()
    step(r, spec("direct"), T0)
    assert r.status["rollout"]["phase"] == "Stable" and r.status["candidateVersion"] is None
    assert admitted(r, Candidate(V2, None, pinned=False), 3, PromotionSpec())


def test_a_monitor_hears_once_that_the_version_its_retrain_produced_was_rejected():
    from modelloop.retrain import retrain_outcome

    r = started()
    step(r, spec(), T0, state="Failed")
    deployment = r.status
    asked = {"lastRetrainTime": format_time(T0 - 600)}
    outcome = retrain_outcome(asked, deployment)
    assert outcome["version"] == 2 and outcome["result"] == "rejected" and "did not help" in outcome["message"]
    assert retrain_outcome({**asked, "retrainOutcome": outcome}, deployment) is None  # said once
    assert retrain_outcome({"lastRetrainTime": format_time(T0 + 600)}, deployment) is None  # an older rejection
    assert retrain_outcome({}, deployment) is None  # this monitor never asked


def test_a_newer_version_ends_the_watch_and_becomes_the_next_challenger():
    s = spec()
    r = promoted_and_watching(s)
    challenger.end_watch(r, "version 3 arrived")
    challenger.start(r, Candidate(V3, None, pinned=False), s)
    ro = r.status["rollout"]
    assert (ro["phase"], ro["champion"], ro["challenger"], ro["previous"]) == ("Shadowing", 2, 3, None)


def test_the_challenger_is_its_own_deployment_behind_the_users_service_only_in_a_canary_by_replicas():
    from modelloop.api.deployment import ModelDeploymentSpec
    from modelloop.render.deployment import (render_challenger, render_deployment, render_network_policy,
                                             render_service, selector)

    owner = {"apiVersion": "modelloop.dev/v1alpha1", "kind": "ModelDeployment",
             "metadata": {"name": "churn", "namespace": "ml", "uid": "u-1"}}
    shadow = ModelDeploymentSpec.model_validate({"model": {"fromTraining": "churn"}, "replicas": 2,
                                                 "rollout": {"strategy": "shadow", "shadow": {"fraction": 0.25}}})
    args = render_deployment(owner, shadow, V1)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-4:] == ["--shadow-to", "churn-challenger.ml.svc.cluster.local:8080", "--shadow-fraction", "0.25"]
    direct = ModelDeploymentSpec.model_validate({"model": {"fromTraining": "churn"}})
    assert "--shadow-to" not in render_deployment(owner, direct, V1)["spec"]["template"]["spec"]["containers"][0]["args"]

    users = selector("churn")
    for in_service in (False, True):
        dep = render_challenger(owner, shadow, V2, replicas=1, in_service=in_service)
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["metadata"]["name"] == "churn-challenger" and dep["spec"]["replicas"] == 1
        assert dep["metadata"]["labels"]["modelloop.dev/deployment"] == "churn"  # its events reconcile churn
        assert dep["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "modelloop-server",
                                                          "modelloop.dev/challenger-of": "churn"}
        assert all(labels.get(k) == v for k, v in users.items()) == in_service
        container = dep["spec"]["template"]["spec"]["containers"][0]
        assert "--shadow-to" not in container["args"] and container["args"][container["args"].index("--model-name") + 1] == "churn"
        assert dep["spec"]["template"]["metadata"]["annotations"]["modelloop.dev/model-version"] == "2"
    own = render_service(owner, challenger=True)
    assert own["metadata"]["name"] == "churn-challenger" and own["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    policy = render_network_policy(owner, challenger=True)
    assert policy["metadata"]["name"] == "churn-challenger"
    assert policy["spec"]["podSelector"]["matchLabels"] == own["spec"]["selector"]


def test_a_canary_by_replicas_takes_a_champion_pod_only_for_an_available_challenger_pod():
    from modelloop.api.deployment import ModelDeploymentSpec
    from modelloop.plans.deployment import replicas as _replicas

    spec = ModelDeploymentSpec.model_validate({"model": {"fromTraining": "churn"}, "replicas": 4, "rollout": {
        "strategy": "canary", "canary": {"steps": [25, 50]}}})
    ro = {"phase": "Canary", "strategy": "canary", "challenger": 2, "step": 1}

    def challenger(available: int) -> dict:
        return {"spec": {"template": {"metadata": {"annotations": {"modelloop.dev/model-version": "2"}}}},
                "status": {"availableReplicas": available}}
    assert _replicas(spec, ro, None, None) == (4, 2, 0.0)
    assert _replicas(spec, ro, None, challenger(1)) == (3, 2, 0.25)
    assert _replicas(spec, ro, None, challenger(2)) == (2, 2, 0.5)
    assert _replicas(spec, {**ro, "phase": "Promoting"}, None, challenger(2)) == (None, 2, round(2 / 6, 4))
    assert _replicas(spec, {"phase": "Stable"}, None, None) == (None, 0, 0.0)


def test_without_a_watch_the_promoted_version_is_the_stable_champion_at_once():
    s = spec(watchFor="0s")
    r = started(s)
    step(r, s, T0)
    step(r, s, T0 + 61, evidence=good())
    r.state = "Available"
    step(r, s, T0 + 90)
    ro = r.status["rollout"]
    assert (ro["phase"], ro["champion"], ro["challenger"], ro["previous"]) == ("Stable", 2, None, None)
