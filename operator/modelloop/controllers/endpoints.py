"""The operator's reads of the model server pods on their sketch port (the port only the operator can reach):
which pods are ready, their URLs, and bounded GETs of their JSON answers (a deadline, a body size)."""
from __future__ import annotations

import functools
import json
import ssl
from typing import Any

import httpx

from .. import kube
from ..api.deployment import SKETCH_PORT
from ..config import SETTINGS


class AnswerTooLarge(Exception):
    pass


def ready_endpoints(namespace: str, service: str) -> list[str]:
    """Addresses of the ready endpoints of a Service, from its EndpointSlices."""
    out = []
    for s in kube.list_("discovery.k8s.io/v1", "EndpointSlice", namespace, f"kubernetes.io/service-name={service}"):
        for ep in s.get("endpoints") or ():
            if (ep.get("conditions") or {}).get("ready") and not (ep.get("conditions") or {}).get("terminating"):
                out.extend(ep.get("addresses") or ())
    return sorted(set(out))


def pod_url(address: str, model: str, path: str, port: int | None = None) -> str:
    """http://<pod>:<sketch port>/v2/models/<model>/<path> (IPv6 addresses bracketed)."""
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{SKETCH_PORT if port is None else port}/v2/models/{model}/{path}"


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """Built once for every client. Pod URLs are plain http, but httpx builds a verifying SSL context (certifi's
    CA bundle) for each client unless it is given one: 30 ms of CPU per check, a third of a core for 100 monitors
    every 10 s (bench/operator)."""
    return httpx.create_ssl_context()


def client(deadline: float) -> httpx.Client:
    return httpx.Client(timeout=deadline, follow_redirects=False, trust_env=False, verify=ssl_context())


def get_json(http: httpx.Client, url: str, max_bytes: int = SETTINGS.max_sketch_bytes) -> Any:
    """One pod's JSON answer, refused while it streams once larger than `max_bytes`."""
    with http.stream("GET", url) as r:
        r.raise_for_status()
        body = bytearray()
        for chunk in r.iter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise AnswerTooLarge(f"the answer is larger than {max_bytes} bytes")
    return json.loads(body)
