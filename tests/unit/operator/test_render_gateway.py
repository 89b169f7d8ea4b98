"""The canary's HTTPRoute is a pure function of the ModelDeployment, the two Services and the step's weight."""
import pytest

from modelloop.api import ModelDeploymentSpec
from modelloop.api.deployment import SERVER_PORT
from modelloop.render.deployment import render_service
from modelloop.render.gateway import render_httproute, route_share

OWNER = {"apiVersion": "modelloop.dev/v1alpha1", "kind": "ModelDeployment",
         "metadata": {"name": "churn", "namespace": "ml", "uid": "u-1", "generation": 4}}


def canary_spec(**parent_ref) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({
        "model": {"fromTraining": "churn"},
        "rollout": {"strategy": "canary", "canary": {"steps": [25, 50]},
                    "gateway": {"parentRef": {"name": "public", **parent_ref}}}})


def route(weight: int, **parent_ref) -> dict:
    return render_httproute(OWNER, canary_spec(**parent_ref), "churn", "churn-challenger", weight)


def backends(r: dict) -> list[dict]:
    return r["spec"]["rules"][0]["backendRefs"]


def test_route_is_named_owned_and_labelled_like_the_other_children():
    r, service = route(25), render_service(OWNER)
    assert (r["apiVersion"], r["kind"]) == ("gateway.networking.k8s.io/v1", "HTTPRoute")
    assert r["metadata"]["name"] == "churn" and r["metadata"]["namespace"] == "ml"
    assert r["metadata"]["ownerReferences"] == service["metadata"]["ownerReferences"]
    assert r["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert r["metadata"]["labels"]["app.kubernetes.io/managed-by"] == service["metadata"]["labels"][
        "app.kubernetes.io/managed-by"]
    assert r["metadata"]["labels"]["app.kubernetes.io/instance"] == "churn"


def test_route_attaches_to_the_gateway_of_the_spec_in_its_own_namespace_by_default():
    assert route(25)["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"}]
    assert route(25, namespace="infra", sectionName="http")["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "infra",
         "sectionName": "http"}]


def test_every_path_goes_to_the_two_services_weighted_by_the_step():
    r = route(25)
    assert len(r["spec"]["rules"]) == 1
    assert r["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert backends(r) == [{"kind": "Service", "name": "churn", "port": SERVER_PORT, "weight": 75},
                           {"kind": "Service", "name": "churn-challenger", "port": SERVER_PORT, "weight": 25}]


def test_without_a_canary_the_route_names_only_the_champion_whose_service_exists():
    assert backends(route(0)) == [{"kind": "Service", "name": "churn", "port": SERVER_PORT, "weight": 100}]


def test_after_the_last_step_the_challenger_takes_everything_and_the_champion_stays_listed():
    assert [(b["name"], b["weight"]) for b in backends(route(100))] == [("churn", 0), ("churn-challenger", 100)]


def test_a_deployment_without_a_gateway_wants_no_route():
    spec = ModelDeploymentSpec.model_validate({"model": {"fromTraining": "churn"}, "rollout": {"strategy": "canary"}})
    assert render_httproute(OWNER, spec, "churn", "churn-challenger", 25) is None


@pytest.mark.parametrize("weight", [-1, 101])
def test_a_weight_outside_0_to_100_is_refused_with_the_value(weight):
    with pytest.raises(ValueError, match=f"challenger_weight {weight} "):
        route(weight)


@pytest.mark.parametrize("weight", [0, 25, 50, 99, 100])
def test_route_share_reads_back_the_rendered_weight(weight):
    assert route_share(route(weight)) == weight / 100


def test_route_share_reads_a_route_as_the_api_server_returns_it():
    """Defaults filled in (group, an omitted weight is 1), status added: the share is read the same way."""
    applied = route(50)
    for b in backends(applied):
        b["group"] = ""
    del backends(applied)[1]["weight"]
    backends(applied)[0]["weight"] = 3
    applied["status"] = {"parents": []}
    assert route_share(applied) == 0.25


def test_route_share_is_zero_when_nothing_is_routed():
    assert route_share({"spec": {}}) == 0.0
    assert route_share({"spec": {"rules": [{"backendRefs": []}]}}) == 0.0
    assert route_share({"spec": {"rules": [{"backendRefs": [{"name": "a", "weight": 0},
                                                            {"name": "b", "weight": 0}]}]}}) == 0.0
