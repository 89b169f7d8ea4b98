"""The canary's HTTPRoute as a real kube-apiserver with the Gateway API's standard CRDs (v1.6.3) takes it: applied
the way the operator applies its children (server-side apply, field manager modelloop-operator), step by step,
refused when broken, and removed with its ModelDeployment."""
from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException

from modelloop import kube
from modelloop.api import ModelDeploymentSpec
from modelloop.names import RECONCILE_ANNOTATION
from modelloop.render.gateway import render_httproute, route_share
from tests.fixtures.cluster import wait_for

SPEC = {"model": {"fromTraining": "churn"},
        "rollout": {"strategy": "canary", "canary": {"steps": [25, 50]},
                    "gateway": {"parentRef": {"name": "public", "sectionName": "http"}}}}


@pytest.fixture()
def owner(crds, gateway_api_crds, namespace) -> dict:
    """A real ModelDeployment with a canary through a Gateway; paused, so that no operator of another session
    reconciles it: here it only owns the route."""
    crds.apply({"apiVersion": "modelloop.dev/v1alpha1", "kind": "ModelDeployment",
                "metadata": {"name": "churn", "namespace": namespace,
                             "annotations": {RECONCILE_ANNOTATION: "disabled"}},
                "spec": SPEC})
    return crds.get("modeldeployment", "churn", "-n", namespace)


def rendered(owner: dict, weight: int) -> dict:
    spec = ModelDeploymentSpec.model_validate(owner["spec"])
    return render_httproute(owner, spec, "churn", "churn-challenger", weight)


def test_the_route_moves_through_the_canary_steps_by_server_side_apply(cluster, owner, namespace):
    for weight in (0, 25, 50, 100, 0):  # no canary, the steps, the challenger takes all, promoted
        applied = kube.apply(rendered(owner, weight))
        assert route_share(applied) == weight / 100
        back = cluster.get("httproute", "churn", "-n", namespace)
        assert route_share(back) == weight / 100
        names = [b["name"] for b in back["spec"]["rules"][0]["backendRefs"]]
        # backendRefs is an atomic list: going back to 0 removes the challenger, it is not left at its old weight.
        assert names == (["churn", "churn-challenger"] if weight else ["churn"])
    assert back["spec"]["parentRefs"][0] == {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                             "name": "public", "sectionName": "http"}
    assert back["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
    assert {m["manager"] for m in applied["metadata"]["managedFields"]} == {"modelloop-operator"}


def _weight(route: dict, value) -> dict:
    route["spec"]["rules"][0]["backendRefs"][1]["weight"] = value
    return route


def _no_port(route: dict) -> dict:
    del route["spec"]["rules"][0]["backendRefs"][1]["port"]
    return route


@pytest.mark.parametrize("break_it, field", [
    (lambda r: _weight(r, 1_000_001), "spec.rules[0].backendRefs[1].weight"),  # the schema's maximum
    (lambda r: _weight(r, -1), "spec.rules[0].backendRefs[1].weight"),
    (_no_port, "Must have port for Service reference"),  # a CEL rule of the CRD
], ids=["weight-above-maximum", "negative-weight", "service-without-port"])
def test_the_schema_is_active_a_broken_route_is_refused(owner, namespace, break_it, field):
    with pytest.raises(ApiException) as refused:
        kube.apply(break_it(rendered(owner, 25)))
    assert refused.value.status == 422
    assert field in refused.value.body


def test_deleting_the_deployment_deletes_its_route(cluster, owner, namespace):
    kube.apply(rendered(owner, 25))
    cluster.kubectl("delete", "modeldeployment", "churn", "-n", namespace)
    wait_for(lambda: kube.get("gateway.networking.k8s.io/v1", "HTTPRoute", namespace, "churn") is None, timeout=120,
             interval=1, message="the garbage collector to delete the HTTPRoute of a deleted ModelDeployment")
