"""Pod volumes as host directories.

| volume                | host directory                                               |
|-----------------------|--------------------------------------------------------------|
| emptyDir              | `<pod dir>/volumes/<volume>` (fresh, removed with the pod)   |
| secret, configMap     | `<pod dir>/volumes/<volume>`, one file per key or item       |
| downwardAPI, projected| `<pod dir>/volumes/<volume>` (projected service-account token by TokenRequest) |
| persistentVolumeClaim | `<pvc root>/<namespace>/<claim>` (shared by every pod of the claim, kept) |
| hostPath              | the path itself                                              |

Files are written once, when the pod starts; later changes of a Secret or ConfigMap are not synced.
"""
from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .downward import field_value, resource_value

SUPPORTED = ("emptyDir", "secret", "configMap", "downwardAPI", "projected", "persistentVolumeClaim", "hostPath")


class VolumeUnavailable(Exception):
    """A volume's source does not exist yet (kubelet keeps the pod in ContainerCreating and retries)."""


class VolumeNotSupported(Exception):
    """The pod uses a volume type the local node cannot provide."""


@dataclass
class ObjectReader:
    """Reads what volumes are made of; each returns None when the object does not exist."""

    secret: Callable[[str], Mapping[str, bytes] | None]
    config_map: Callable[[str], Mapping[str, bytes] | None]
    token: Callable[[Mapping], str]  # a serviceAccountToken projection -> token
    node_allocatable: Mapping[str, str] = field(default_factory=dict)


@dataclass
class PodVolumes:
    dirs: dict[str, Path]  # volume name -> host directory
    claims: dict[str, Path]  # claim name -> host directory


def unsupported_volumes(pod: Mapping) -> list[str]:
    out = []
    for volume in pod["spec"].get("volumes") or []:
        kinds = [k for k in volume if k != "name"]
        if not any(k in SUPPORTED for k in kinds):
            out.append(f"{volume['name']} ({', '.join(kinds) or 'no source'})")
    return out


def _write(directory: Path, relative: str, data: bytes, mode: int) -> None:
    target = (directory / relative).resolve()
    if directory.resolve() not in target.parents:
        raise VolumeNotSupported(f"item path {relative!r} escapes the volume")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    target.chmod(mode)


def _write_keys(directory: Path, kind: str, source: Mapping, data: Mapping[str, bytes] | None,
                default_mode: int) -> None:
    name = source.get("name") or source.get("secretName")
    if data is None:
        if source.get("optional"):
            return
        raise VolumeUnavailable(f'{kind} "{name}" not found')
    items = source.get("items")
    if not items:
        for key, value in data.items():
            _write(directory, key, value, default_mode)
        return
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise VolumeUnavailable(f'key {item["key"]!r} not found in {kind} "{name}"')
        _write(directory, item["path"], data[item["key"]], item.get("mode", default_mode))


def _write_downward(directory: Path, pod: Mapping, items: list, default_mode: int, pod_ip: str, host_ip: str,
                    node_allocatable: Mapping[str, str]) -> None:
    first_container = pod["spec"]["containers"][0]["name"]
    for item in items:
        if "fieldRef" in item:
            value = field_value(pod, item["fieldRef"]["fieldPath"], pod_ip, host_ip)
        else:
            value = resource_value(pod, first_container, item["resourceFieldRef"], node_allocatable)
        _write(directory, item["path"], value.encode(), item.get("mode", default_mode))


def materialize(pod: Mapping, pod_dir: Path, pvc_root: Path, objects: ObjectReader, pod_ip: str,
                host_ip: str) -> PodVolumes:
    """Create every volume of the pod; raises VolumeUnavailable (retry) or VolumeNotSupported (fail)."""
    namespace = pod["metadata"]["namespace"]
    volumes = PodVolumes(dirs={}, claims={})
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        directory = pod_dir / "volumes" / name
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            directory = pvc_root / namespace / claim
            directory.mkdir(parents=True, exist_ok=True)
            volumes.claims[claim] = directory
        elif "hostPath" in volume:
            directory = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type") in ("DirectoryOrCreate",):
                directory.mkdir(parents=True, exist_ok=True)
        else:
            directory.mkdir(parents=True, exist_ok=True)
        if "secret" in volume:
            source = volume["secret"]
            mode = source.get("defaultMode", 0o644)
            _write_keys(directory, "secret", source, objects.secret(source["secretName"]), mode)
        elif "configMap" in volume:
            source = volume["configMap"]
            mode = source.get("defaultMode", 0o644)
            _write_keys(directory, "configmap", source, objects.config_map(source["name"]), mode)
        elif "downwardAPI" in volume:
            source = volume["downwardAPI"]
            _write_downward(directory, pod, source.get("items") or [], source.get("defaultMode", 0o644), pod_ip,
                            host_ip, objects.node_allocatable)
        elif "projected" in volume:
            mode = volume["projected"].get("defaultMode", 0o644)
            for source in volume["projected"].get("sources") or []:
                if "secret" in source:
                    s = source["secret"]
                    _write_keys(directory, "secret", s, objects.secret(s["name"]), mode)
                elif "configMap" in source:
                    s = source["configMap"]
                    _write_keys(directory, "configmap", s, objects.config_map(s["name"]), mode)
                elif "downwardAPI" in source:
                    _write_downward(directory, pod, source["downwardAPI"].get("items") or [], mode, pod_ip, host_ip,
                                    objects.node_allocatable)
                elif "serviceAccountToken" in source:
                    s = source["serviceAccountToken"]
                    _write(directory, s["path"], objects.token(s).encode(), source.get("mode", mode))
                else:
                    raise VolumeNotSupported(f"volume {name}: projected source {sorted(source)} is not supported")
        volumes.dirs[name] = directory
    return volumes


def decode_data(obj: Mapping) -> dict[str, bytes]:
    """The data of a Secret (base64 `data`) or ConfigMap (`data` + base64 `binaryData`) as bytes."""
    out: dict[str, bytes] = {}
    if obj.get("kind") == "Secret":
        for key, value in (obj.get("data") or {}).items():
            out[key] = base64.b64decode(value)
        for key, value in (obj.get("stringData") or {}).items():
            out[key] = value.encode()
        return out
    for key, value in (obj.get("binaryData") or {}).items():
        out[key] = base64.b64decode(value)
    for key, value in (obj.get("data") or {}).items():
        out[key] = value.encode()
    return out
