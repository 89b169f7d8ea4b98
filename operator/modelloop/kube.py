"""The Kubernetes API as the controllers use it: one client, server-side apply, status patches, events.

The controllers are level-based: they read the world, render the desired children, apply them with
server-side apply (field manager `modelloop-operator`), and write status. Everything goes through
the official `kubernetes` client so that the same code runs in a cluster and against the embedded
control plane.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import threading
import uuid
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

import kopf
import kubernetes
from kubernetes.client.exceptions import ApiException

from .cache import BoundedCache
from .config import SETTINGS
from .meta import now, owner_reference, reconcilable, rfc3339  # noqa: F401 - the controllers use them as kube.*
from .names import API_VERSION, DEPLOYMENT, FIELD_MANAGER, MONITOR, TRAINING

log = logging.getLogger("modelloop.kube")

# kind -> (api prefix, plural); the kinds modelloop reads or writes.
_PATHS = {
    ("v1", "Service"): ("/api/v1", "services"),
    ("v1", "Pod"): ("/api/v1", "pods"),
    ("v1", "Secret"): ("/api/v1", "secrets"),
    ("v1", "ConfigMap"): ("/api/v1", "configmaps"),
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments"),
    ("apps/v1", "ReplicaSet"): ("/apis/apps/v1", "replicasets"),
    ("batch/v1", "Job"): ("/apis/batch/v1", "jobs"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    ("policy/v1", "PodDisruptionBudget"): ("/apis/policy/v1", "poddisruptionbudgets"),
    ("networking.k8s.io/v1", "NetworkPolicy"): ("/apis/networking.k8s.io/v1", "networkpolicies"),
    ("discovery.k8s.io/v1", "EndpointSlice"): ("/apis/discovery.k8s.io/v1", "endpointslices"),
    ("coordination.k8s.io/v1", "Lease"): ("/apis/coordination.k8s.io/v1", "leases"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): ("/apis/gateway.networking.k8s.io/v1", "httproutes"),
    **{(API_VERSION, k.kind): (f"/apis/{API_VERSION}", k.plural) for k in (TRAINING, DEPLOYMENT, MONITOR)},
}


class Conflict(Exception):
    """The object changed since it was read (HTTP 409); the caller re-reads and retries."""


@functools.cache
def client() -> kubernetes.client.ApiClient:
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        # The client reads $KUBECONFIG when it is imported; read it now, when it is used.
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    config = kubernetes.client.Configuration.get_default_copy()
    # A connection for every thread that calls the API (the client's default is 5 per CPU): with fewer,
    # urllib3 discards a connection after each request beyond the pool, and the next one pays a new TLS
    # handshake, on both sides, under load (bench/operator).
    config.connection_pool_maxsize = SETTINGS.workers + SETTINGS.drift_workers
    return kubernetes.client.ApiClient(config)


def _path(api_version: str, kind: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
    prefix, plural = _PATHS[(api_version, kind)]
    path = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path


def _call(method: str, path: str, body: Any = None, query: list | None = None,
          content_type: str = "application/json", timeout: float = 60) -> Any:
    c = client()
    url_method, url, headers, _, post = c.param_serialize(
        method, path, query_params=query or [], header_params={"Accept": "application/json",
                                                               "Content-Type": content_type},
        auth_settings=["BearerToken"])
    response = c.call_api(url_method, url, headers, body, post, _request_timeout=timeout)
    raw = response.read()
    if response.status >= 400:
        if response.status == 409:
            raise Conflict(raw.decode(errors="replace")[:500])
        raise ApiException(status=response.status, reason=response.reason, body=raw.decode(errors="replace"))
    return json.loads(raw) if raw else None


def get(api_version: str, kind: str, namespace: str, name: str, timeout: float = 60) -> dict | None:
    """The object, or None when it does not exist."""
    try:
        return _call("GET", _path(api_version, kind, namespace, name), timeout=timeout)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def list_(api_version: str, kind: str, namespace: str, label_selector: str | None = None) -> list[dict]:
    query = [("labelSelector", label_selector)] if label_selector else []
    return _call("GET", _path(api_version, kind, namespace), query=query)["items"]


def apply(obj: dict, force: bool = True) -> dict:
    """Server-side apply of a rendered child (create or converge), as field manager modelloop-operator."""
    md = obj["metadata"]
    return _remember(_call("PATCH", _path(obj["apiVersion"], obj["kind"], md.get("namespace"), md["name"]),
                           body=obj, query=[("fieldManager", FIELD_MANAGER), ("force", "true" if force else "false")],
                           content_type="application/apply-patch+yaml"))


def create(obj: dict, timeout: float = 60) -> dict:
    """Create; raises Conflict when an object of that name exists."""
    md = obj["metadata"]
    return _remember(_call("POST", _path(obj["apiVersion"], obj["kind"], md.get("namespace")), body=obj, timeout=timeout))


def replace(obj: dict, timeout: float = 60) -> dict:
    """Update the whole object; raises Conflict when it changed since it was read (its resourceVersion)."""
    md = obj["metadata"]
    return _call("PUT", _path(obj["apiVersion"], obj["kind"], md.get("namespace"), md["name"]), body=obj,
                 timeout=timeout)


def delete(api_version: str, kind: str, namespace: str, name: str, propagation: str = "Background") -> bool:
    try:
        _call("DELETE", _path(api_version, kind, namespace, name),
              body={"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation})
        return True
    except ApiException as e:
        if e.status == 404:
            return False
        raise


def patch(api_version: str, kind: str, namespace: str, name: str, body: dict | list, subresource: str | None = None,
          merge: bool = True) -> dict:
    """A JSON merge patch (a dict), or with `merge=False` a JSON patch (a list of operations)."""
    ct = "application/merge-patch+json" if merge else "application/json-patch+json"
    return _call("PATCH", _path(api_version, kind, namespace, name, subresource), body=body, content_type=ct)


def patch_status(obj: dict, status: dict, resource_version: str | None = None) -> dict:
    """Merge-patch the status subresource. With `resource_version`, the write fails with Conflict when
    the object changed since it was read (optimistic concurrency, e.g. for version allocation)."""
    body: dict[str, Any] = {"status": status}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    md = obj["metadata"]
    return _remember(patch(obj["apiVersion"], obj["kind"], md["namespace"], md["name"], body, subresource="status"))


def write_status(obj: dict, status: dict) -> dict:
    """Write `status` (None values remove keys) when it differs from what `obj` carries; optimistic on
    the object's resourceVersion. Returns the object as written (`obj` itself when nothing changed: an
    unchanged status is not written, so a controller that reacts to its own writes settles after one round)."""
    desired = {k: v for k, v in status.items() if v is not None}
    current = obj.get("status") or {}
    if desired == current:
        return obj
    body = {**desired, **{k: None for k in current if k not in desired}}
    return patch_status(obj, body, resource_version=obj["metadata"]["resourceVersion"])


def emit_events(obj: dict, events: list[tuple[str, str, str]]) -> None:
    """Post each (type, reason, message) as an Event about `obj` and log it, one line each."""
    md = obj["metadata"]
    for type_, reason, message in events:
        emit_event(obj, type_, reason, message)
        log.info("kind=%s object=%s/%s event=%s %s", obj["kind"], md["namespace"], md["name"], reason, message)


def emit_event(obj: dict, type_: str, reason: str, message: str, action: str = "Reconcile") -> None:
    """A Kubernetes Event (events.k8s.io/v1) about `obj`; failures are logged, never raised."""
    md = obj["metadata"]
    t = datetime.now(timezone.utc)
    event = {
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": f"{md['name']}.{uuid.uuid4().hex[:16]}", "namespace": md["namespace"]},
        "eventTime": t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "reportingController": "modelloop.dev/operator", "reportingInstance": "modelloop-operator",
        "action": action, "reason": reason, "type": type_, "note": message[:1024],
        "regarding": {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": md["name"],
                      "namespace": md["namespace"], "uid": md["uid"]},
    }
    try:
        _call("POST", f"/apis/events.k8s.io/v1/namespaces/{md['namespace']}/events", body=event)
    except Exception as e:  # noqa: BLE001 - an event is best effort
        log.warning("event=failed reason=%s error=%s", reason, e)


# ----------------------------------------------------------------------------- the operator's own writes

# (kind, namespace, name) -> the resourceVersion that the operator's last status write, server-side apply or
# create of the object returned: the writes by which a controller records what it has just reconciled. Plain
# patches are not remembered: one controller's patch can be news to another (a DriftMonitor's retrain
# annotation on a ModelTraining). Bounded: an entry that falls out only costs one reconcile that changes nothing.
# Kept here, not a kopf index: an index holds what the watch shows, not which of those states this process wrote.
_written: BoundedCache[tuple[str, str, str], str] = BoundedCache(16 * SETTINGS.cache_entries)


def _remember(obj: Any) -> Any:
    md = obj.get("metadata") or {}
    if md.get("resourceVersion") and md.get("name") and obj.get("kind"):
        _written.put((obj["kind"], md.get("namespace", ""), md["name"]), md["resourceVersion"])
    return obj


def own_write(body: Any) -> bool:
    """True when a watch event carries the object exactly as this operator's last write of it left it (its
    resourceVersion is the one that write returned): the reconcile that wrote it saw that state, so reacting
    to the event would change nothing. Any later change by anyone else has another resourceVersion."""
    md = body.get("metadata") or {}
    rv = md.get("resourceVersion")
    return bool(rv) and _written.get((body.get("kind", ""), md.get("namespace", ""), md.get("name", ""))) == rv


# ----------------------------------------------------------------------------- one reconcile at a time

class _Gate:
    __slots__ = ("lock", "queued", "body", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queued = False   # a reconcile is waiting for the lock and has not read the object yet
        self.body: Any = None  # the newest copy of the object a trigger brought (its own watch event)
        self.users = 0        # the threads that hold, wait for or just triggered it: at 0 the gate goes


# (kind, namespace, name) -> the gate of an object some thread is reconciling or waiting to: an entry lives while
# it is used (_held), so the dict holds the objects in flight, not every object ever reconciled.
_gates: dict[tuple[str, str, str], _Gate] = {}
_gates_guard = threading.Lock()


@contextlib.contextmanager
def _held(kind: str, namespace: str, name: str) -> Iterator[_Gate]:
    """The object's gate, kept while the caller uses it and removed once nobody does."""
    key = (kind, namespace, name)
    with _gates_guard:
        gate = _gates.setdefault(key, _Gate())
        gate.users += 1
    try:
        yield gate
    finally:
        with _gates_guard:
            gate.users -= 1
            if gate.users == 0:
                del _gates[key]


def converge(kind: str, namespace: str, name: str, reconcile: Callable[[dict | None], None], body: Any = None,
             attempts: int = 5) -> None:
    """Run a controller's `reconcile(obj)` (one of modelloop's kinds; None when it does not exist) under the
    object's lock; a Conflict (the object changed since it was read) re-reads and runs it again.

    Triggers coalesce: when a reconcile of the object is already waiting for the lock, it will read the
    object after whatever caused this trigger, so this one returns at once (a burst of events from an object
    and its children costs one more reconcile, not one per event). A trigger from the object's own watch
    event brings the object (`body`): the reconcile starts from the newest such copy instead of a GET. A
    change after it is another event, and a status written from a stale copy is a Conflict, re-read."""
    with _held(kind, namespace, name) as gate:
        with _gates_guard:
            if body is not None:
                gate.body = body
            if gate.queued:
                return
            gate.queued = True
        with gate.lock:
            with _gates_guard:
                gate.queued = False
                seen, gate.body = gate.body, None
            for _ in range(attempts):
                obj = copy.deepcopy(dict(seen)) if seen is not None else get(API_VERSION, kind, namespace, name)
                seen = None
                try:
                    return reconcile(obj)
                except Conflict:
                    continue
    raise kopf.TemporaryError(f"{kind} {namespace}/{name}: status kept conflicting", delay=2)


@contextlib.contextmanager
def object_lock(kind: str, namespace: str, name: str) -> Iterator[None]:
    """Hold the lock converge() holds while it reconciles the object: whatever else writes the object's status
    (a DriftMonitor's check) takes it too."""
    with _held(kind, namespace, name) as gate, gate.lock:
        yield
