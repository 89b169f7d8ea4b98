"""ModelDeployment → its Gateway API HTTPRoute (spec.rollout.gateway): the canary's weights carried by a Gateway
instead of pod counts. Pure functions of the resource, the two Services and the step's weight."""
from __future__ import annotations

from typing import Any

from ..api.deployment import SERVER_PORT, ModelDeploymentSpec
from . import pods
from .deployment import _meta

GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"


def render_httproute(owner: dict, spec: ModelDeploymentSpec, champion_service: str, challenger_service: str,
                     challenger_weight: int) -> dict[str, Any] | None:
    """The HTTPRoute named like the ModelDeployment, attached to spec.rollout.gateway.parentRef: every path to the
    champion's Service, and `challenger_weight` percent of requests to the challenger's. None when the spec asks
    for no route (no spec.rollout.gateway): a route the operator made before is then deleted, as an HPA is.

    The route lives as long as spec.rollout.gateway is set, between canaries too: it is how users reach the model
    through the Gateway. At weight 0 the challenger's backend is left out rather than given weight 0: between
    canaries, and after a rejection, the challenger's Service does not exist, and a backendRef naming a missing
    Service sets the route's ResolvedRefs condition to False (BackendNotFound) on a route that serves everyone.
    The champion stays first even at weight 0 (the last step, challenger at 100): its Service always exists."""
    if spec.rollout.gateway is None:
        return None
    if not 0 <= challenger_weight <= 100:
        raise ValueError(f"challenger_weight {challenger_weight} is not a percentage from 0 to 100 "
                         "(spec.rollout.canary.steps hold 1 to 99; 0 and 100 are before and after the steps)")
    name = owner["metadata"]["name"]
    parent = spec.rollout.gateway.parent_ref
    parent_ref: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": parent.name}
    if parent.namespace:
        parent_ref["namespace"] = parent.namespace
    if parent.section_name:
        parent_ref["sectionName"] = parent.section_name
    backends = [_backend(champion_service, 100 - challenger_weight)]
    if challenger_weight:
        backends.append(_backend(challenger_service, challenger_weight))
    return {"apiVersion": GATEWAY_API_VERSION, "kind": "HTTPRoute",
            "metadata": _meta(owner, name, pods.common_labels("server", name)),
            "spec": {"parentRefs": [parent_ref],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                "backendRefs": backends}]}}


def _backend(service: str, weight: int) -> dict[str, Any]:
    return {"kind": "Service", "name": service, "port": SERVER_PORT, "weight": weight}


def route_share(route: dict) -> float:
    """The challenger's share of the route's requests, 0 to 1, read back from an applied (or read) HTTPRoute as
    render_httproute writes it: the first backendRef of the first rule is the champion, any other the challenger.
    0 when the route has only the champion, or no weight at all (nothing is served through it then)."""
    rules = (route.get("spec") or {}).get("rules") or []
    backends = (rules[0].get("backendRefs") or []) if rules else []
    # The API server defaults an omitted weight to 1, as implementations read it.
    weights = [b.get("weight", 1) for b in backends]
    total = sum(weights)
    return 0.0 if total == 0 else (total - weights[0]) / total
