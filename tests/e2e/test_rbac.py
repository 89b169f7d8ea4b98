"""The chart's RBAC against the calls the operator really makes: the apiserver audits every request of a
ServiceAccount (hack/cluster.py), and this test reads what the operators of the session did under the
chart's ServiceAccounts (the integration tests' subprocess and the Helm-installed pod)."""
from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from typing import Iterator

import pytest
import yaml

from tests.fixtures.cluster import CLUSTER_DIR
from tests.fixtures.operator import CHART, E2E_RELEASE, E2E_RELEASE_NS, TESTS_RELEASE, TESTS_RELEASE_NS

OPERATORS = {f"system:serviceaccount:{TESTS_RELEASE_NS}:{TESTS_RELEASE}",
             f"system:serviceaccount:{E2E_RELEASE_NS}:{E2E_RELEASE}"}
# Granted, and needed by code paths the suite does not always reach; each with the reason it is granted.
RARELY_USED = {
    ("", "events", "create"): "kopf posts a core Event when a handler fails (modelloop's own go to events.k8s.io)",
    ("batch", "jobs", "delete"): "runs past spec.historyLimit",
    ("autoscaling", "horizontalpodautoscalers", "delete"): "spec.autoscaling removed",
    ("policy", "poddisruptionbudgets", "delete"): "replicas lowered to one",
    ("", "pods", "list"): "a failed training run (its pods' termination messages)",
    ("coordination.k8s.io", "leases", "create"): "the first replica of an install creates the leader Lease",
}


AUDIT_LOG = CLUSTER_DIR / "logs" / "audit.log"


def audit_lines() -> Iterator[str]:
    """The audit log's lines, the files the apiserver rotated out (audit-<time>.log, --audit-log-maxsize) first."""
    for path in [*sorted(AUDIT_LOG.parent.glob("audit-*.log")), AUDIT_LOG]:
        with open(path) as f:
            yield from f


def audited_calls(since: datetime) -> tuple[set[tuple[str, str, str]], list[dict]]:
    """(group, resource, verb) of every request the operators made since `since`, and the refused ones."""
    calls, forbidden = set(), []
    for line in audit_lines():
        event = json.loads(line)
        if event["user"]["username"] not in OPERATORS or "objectRef" not in event:
            continue
        if datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00")) < since:
            continue  # an earlier session on the same cluster
        ref = event["objectRef"]
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        status = event.get("responseStatus", {})
        calls.add((ref.get("apiGroup", ""), resource, event["verb"]))
        if event["verb"] == "patch" and status.get("code") == 201:
            # server-side apply that created the object: authorized as create as well as patch
            calls.add((ref.get("apiGroup", ""), resource, "create"))
        # A 403 for creating in a namespace being deleted is not an authorization decision.
        if status.get("code") == 403 and "being terminated" not in status.get("message", ""):
            forbidden.append(event)
    return calls, forbidden


def granted(cluster) -> set[tuple[str, str, str]]:
    version = cluster.state["versions"]["K8S_VERSION"].lstrip("v")
    out = cluster.helm("template", "modelloop", str(CHART), "-n", "modelloop-system", "--kube-version", version).stdout
    rules = [r for d in yaml.safe_load_all(out) if d and d["kind"] in ("ClusterRole", "Role") for r in d["rules"]]
    return {(g, res, v) for r in rules for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}


@pytest.mark.last
def test_the_charts_rules_are_exactly_what_the_operator_uses(cluster):
    # Both are what a broken audit policy or a renamed release or ServiceAccount looks like: a failure, not a skip.
    if not AUDIT_LOG.exists():
        pytest.fail(f"no audit log at {AUDIT_LOG}: the apiserver writes it (hack/cluster.py's --audit-log-path and "
                    "audit policy), so this cluster's RBAC cannot be checked; a cluster started before auditing "
                    "existed needs `make cluster-down cluster`")
    calls, forbidden = audited_calls(cluster.session_started)
    if not calls:
        pytest.fail(f"the audit log has no request of {sorted(OPERATORS)} since {cluster.session_started}: either "
                    "the audit policy no longer records ServiceAccounts' requests, the chart's ServiceAccount or "
                    "the tests' releases were renamed, or no operator ran (run the integration and e2e sessions "
                    "first: make test)")
    assert not forbidden, [f"{e['verb']} {e['objectRef']}" for e in forbidden[:10]]
    rules = granted(cluster)
    assert calls <= rules, f"calls no rule grants: {sorted(calls - rules)}"
    unused = rules - calls - set(RARELY_USED)
    by_resource = defaultdict(list)
    for g, res, v in sorted(unused):
        by_resource[f"{g or 'core'}/{res}"].append(v)
    assert not unused, f"granted but never used by the operator in this session: {dict(by_resource)}"
