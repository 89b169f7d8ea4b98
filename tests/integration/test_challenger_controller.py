"""Champion and challenger (spec.rollout.strategy shadow and canary) against the real API server, with the real
operator process: the challenger's children, the champion's shadow copies, the people's promote and abort
annotations, the rejected version held back, and a canary's replica split. Server pods run on kwok nodes here,
so no server answers and the analysis never decides by itself: the decisions on live numbers are
tests/unit/operator/test_challenger.py's and tests/e2e/test_challenger.py's."""
from __future__ import annotations

import json

from tests.fixtures.cluster import wait_for
from tests.integration.test_deployment_controller import cond, deployment, publish, st, suspended_training


def rollout(cluster, namespace) -> dict:
    return st(cluster, namespace).get("rollout") or {}


def challenger_dep(cluster, namespace) -> dict | None:
    found = cluster.kubectl("get", "deployment", "churn-challenger", "-n", namespace, "-o", "json", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def events(cluster, namespace) -> list[str]:
    return cluster.kubectl("get", "events", "-n", namespace, "--field-selector", "involvedObject.kind=ModelDeployment",
                           "-o", "jsonpath={.items[*].reason}").stdout.split()


def test_a_new_version_runs_as_a_shadow_challenger_and_people_can_abort_or_promote_it(
        operator, cluster, namespace, store):
    suspended_training(cluster, namespace, store)
    cluster.apply(deployment(namespace, model={"fromTraining": "churn"}, rollout={
        "progressDeadlineSeconds": 30, "strategy": "shadow", "shadow": {"fraction": 0.5},
        "analysis": {"window": "1h", "watchFor": "1h"}}))
    wait_for(lambda: st(cluster, namespace).get("modelVersion") == 1, timeout=60, message="version 1 served")
    cluster.kubectl("wait", "mdep/churn", "-n", namespace, "--for=condition=Ready", "--timeout=60s")
    args = cluster.get("deployment", "churn", "-n", namespace)["spec"]["template"]["spec"]["containers"][0]["args"]
    target = args[args.index("--shadow-to") + 1]
    assert target == f"churn-challenger.{namespace}.svc.cluster.local:8080"
    assert args[args.index("--shadow-fraction") + 1] == "0.5"

    # Version 2 passes the offline gates: it becomes the challenger, beside version 1, behind its own Service.
    v1 = store.read_metadata(1)["metric"]["value"]
    store.add(2, v1 + 0.01)
    publish(cluster, namespace, store, 2)
    challenger = wait_for(lambda: challenger_dep(cluster, namespace), timeout=60, message="the challenger")
    pod = challenger["spec"]["template"]["metadata"]
    assert pod["annotations"]["modelloop.dev/model-version"] == "2"
    assert pod["labels"]["modelloop.dev/challenger-of"] == "churn"
    assert "modelloop.dev/deployment" not in pod["labels"]  # not behind the users' Service
    assert challenger["spec"]["replicas"] == 1  # 2 champion replicas x fraction 0.5
    svc = cluster.get("service", "churn-challenger", "-n", namespace)
    assert svc["spec"]["selector"] == {"app.kubernetes.io/name": "modelloop-server", "modelloop.dev/challenger-of": "churn"}
    netpol = cluster.get("networkpolicy", "churn-challenger", "-n", namespace)
    assert netpol["spec"]["podSelector"]["matchLabels"] == svc["spec"]["selector"]
    owner = cluster.get("mdep", "churn", "-n", namespace)["metadata"]["uid"]
    assert all(o["metadata"]["ownerReferences"][0]["uid"] == owner for o in (challenger, svc, netpol))
    wait_for(lambda: rollout(cluster, namespace).get("startedAt"), timeout=60, message="the analysis window started")
    status = st(cluster, namespace)
    assert status["modelVersion"] == 1 and status["candidateVersion"] == 2
    assert (status["rollout"]["phase"], status["rollout"]["champion"], status["rollout"]["challenger"]) == (
        "Shadowing", 1, 2)
    assert cond(status, "Reconciling")["reason"] == "Analysing" and cond(status, "Ready")["status"] == "True"
    columns = cluster.kubectl("get", "mdep", "churn", "-n", namespace).stdout
    assert "ROLLOUT" in columns and "Shadowing" in columns and "CHALLENGER" in columns

    # A person aborts it: the challenger goes, version 2 is rejected and held back, the annotation is consumed.
    cluster.kubectl("annotate", "mdep/churn", "-n", namespace, "modelloop.dev/abort=now")
    wait_for(lambda: rollout(cluster, namespace).get("phase") == "Stable", timeout=60, message="the abort")
    wait_for(lambda: challenger_dep(cluster, namespace) is None, timeout=60, message="the challenger removed")
    status = st(cluster, namespace)
    assert status["modelVersion"] == 1 and status["rollout"]["rejected"][-1]["version"] == 2
    assert "rejected on live traffic" in status["promotionMessage"]
    wait_for(lambda: "modelloop.dev/abort" not in (cluster.get("mdep", "churn", "-n", namespace)["metadata"].get(
        "annotations") or {}), timeout=30, message="the abort annotation removed")
    assert {"ChallengerStarted", "ChallengerRejected"} <= set(events(cluster, namespace))

    # Version 3 becomes the next challenger; a person promotes it: the champion rolls to it, then is watched.
    store.add(3, v1 + 0.02)
    publish(cluster, namespace, store, 3)
    wait_for(lambda: rollout(cluster, namespace).get("challenger") == 3 and rollout(cluster, namespace).get(
        "startedAt"), timeout=60, message="version 3 analysed")
    cluster.kubectl("annotate", "mdep/churn", "-n", namespace, "modelloop.dev/promote=now")
    wait_for(lambda: rollout(cluster, namespace).get("phase") == "Watching", timeout=90, message="version 3 watched")
    status = st(cluster, namespace)
    assert status["modelVersion"] == 3 and status["previousVersion"] == 1 and status["rollout"]["previous"] == 1
    assert cluster.get("deployment", "churn", "-n", namespace)["spec"]["template"]["metadata"]["annotations"][
        "modelloop.dev/model-version"] == "3"
    wait_for(lambda: challenger_dep(cluster, namespace) is None, timeout=60, message="the challenger removed")
    assert "ChallengerPromoted" in events(cluster, namespace)


def test_a_canary_by_replicas_gives_the_challenger_pods_behind_the_one_service(operator, cluster, namespace, store):
    suspended_training(cluster, namespace, store)
    cluster.apply(deployment(namespace, model={"fromTraining": "churn"}, replicas=4, rollout={
        "progressDeadlineSeconds": 30, "strategy": "canary", "canary": {"steps": [25, 50]},
        "analysis": {"window": "1h"}}))
    wait_for(lambda: st(cluster, namespace).get("modelVersion") == 1, timeout=60, message="version 1 served")
    cluster.kubectl("wait", "mdep/churn", "-n", namespace, "--for=condition=Ready", "--timeout=60s")
    store.add(2, store.read_metadata(1)["metric"]["value"] + 0.01)
    publish(cluster, namespace, store, 2)
    challenger = wait_for(lambda: challenger_dep(cluster, namespace), timeout=60, message="the challenger")
    assert challenger["spec"]["replicas"] == 1
    assert challenger["spec"]["template"]["metadata"]["labels"]["modelloop.dev/deployment"] == "churn"
    wait_for(lambda: cluster.get("deployment", "churn", "-n", namespace)["spec"]["replicas"] == 3, timeout=60,
             message="the champion down to 3 of 4 replicas")
    ro = wait_for(lambda: rollout(cluster, namespace) if rollout(cluster, namespace).get("trafficShare") else None,
                  timeout=60, message="the traffic share")
    assert (ro["phase"], ro["step"], ro["trafficShare"]) == ("Canary", 0, 0.25)
    # The users' Service selects both versions' pods.
    selector = cluster.get("service", "churn", "-n", namespace)["spec"]["selector"]
    assert all(challenger["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())


def test_the_schema_refuses_a_gateway_without_canary_and_steps_that_do_not_increase(cluster, namespace):
    for rollout_spec, message in (({"strategy": "shadow", "gateway": {"parentRef": {"name": "edge"}}},
                                   "spec.rollout.gateway is used by strategy canary only"),
                                  ({"strategy": "canary", "canary": {"steps": [50, 25]}},
                                   "spec.rollout.canary.steps must increase"),
                                  ({"strategy": "canary", "canary": {"steps": [25, 25]}},
                                   "spec.rollout.canary.steps must increase"),
                                  ({"strategy": "canary", "canary": {"steps": [0, 100]}},
                                   "percentages from 1 to 99"),
                                  ({"strategy": "shadow", "shadow": {"fraction": 0}}, "fraction")):
        obj = deployment(namespace, model={"uri": "s3://bucket/models/churn/v1"}, rollout=rollout_spec)
        refused = cluster.kubectl("apply", "-f", "-", input=json.dumps(obj), check=False)
        assert refused.returncode != 0 and message in refused.stderr, (rollout_spec, refused.stderr)


def test_a_canary_through_a_gateway_moves_the_routes_weight_and_the_route_goes_with_the_gateway(
        operator, gateway_api_crds, cluster, namespace, store):
    from modelloop.render.gateway import route_share

    suspended_training(cluster, namespace, store)
    cluster.apply(deployment(namespace, model={"fromTraining": "churn"}, replicas=2, rollout={
        "progressDeadlineSeconds": 30, "strategy": "canary", "canary": {"steps": [10, 50]},
        "gateway": {"parentRef": {"name": "edge", "sectionName": "http"}}, "analysis": {"window": "1h"}}))
    route = wait_for(lambda: cluster.get("httproute", "-n", namespace)["items"], timeout=60, message="the route")[0]
    assert route["metadata"]["name"] == "churn" and route_share(route) == 0  # all users to the champion
    assert route["spec"]["parentRefs"][0]["name"] == "edge"
    store.add(2, store.read_metadata(1)["metric"]["value"] + 0.01)
    publish(cluster, namespace, store, 2)
    wait_for(lambda: route_share(cluster.get("httproute", "churn", "-n", namespace)) == 0.1, timeout=90,
             message="10% of the route to the challenger once its pods are Available")
    challenger = challenger_dep(cluster, namespace)
    assert "modelloop.dev/deployment" not in challenger["spec"]["template"]["metadata"]["labels"]  # by the route only
    assert cluster.get("deployment", "churn", "-n", namespace)["spec"]["replicas"] == 2  # the champion keeps its pods
    assert rollout(cluster, namespace)["trafficShare"] == 0.1
    cluster.kubectl("patch", "mdep/churn", "-n", namespace, "--type=json", "-p", json.dumps(
        [{"op": "replace", "path": "/spec/rollout/strategy", "value": "direct"},
         {"op": "remove", "path": "/spec/rollout/gateway"}]))
    wait_for(lambda: not cluster.get("httproute", "-n", namespace)["items"], timeout=60, message="the route deleted")
