"""The downward API: pod fields and container resources as strings (for env `fieldRef`/`resourceFieldRef`
and downwardAPI volume items). Pure functions."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal

from kubernetes.utils import parse_quantity

_INDEXED = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: Mapping, path: str, pod_ip: str, host_ip: str) -> str:
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    indexed = _INDEXED.match(path)
    if indexed:
        return (meta.get(indexed.group(1)) or {}).get(indexed.group(2), "")
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    values = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
    }
    if path not in values:
        supported = ", ".join(sorted(values))
        raise ValueError(f"fieldRef {path!r} is not supported by the local node (supported: {supported}, "
                         "metadata.labels['k'], metadata.annotations['k'])")
    return values[path]


def resource_value(pod: Mapping, container_name: str, ref: Mapping, node_allocatable: Mapping[str, str]) -> str:
    """`limits.cpu`, `requests.memory`, ... of a container, divided by `divisor` and rounded up
    (kubelet's rule); a missing limit is the node's allocatable amount."""
    name = ref.get("containerName") or container_name
    container = next((c for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", [])
                      if c["name"] == name), {})
    kind, _, resource = ref["resource"].partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(resource)
    if value is None and kind == "requests":
        value = (resources.get("limits") or {}).get(resource)
    if value is None:
        value = node_allocatable.get(resource, "0")
    divisor = parse_quantity(ref.get("divisor") or "1")
    if divisor == 0:
        divisor = Decimal(1)
    return str(int(math.ceil(parse_quantity(value) / divisor)))
