"""Volumes become host directories: keys and items as files, claims shared per namespace and name."""
from __future__ import annotations

import pytest

from modelloop_localnode.volumes import ObjectReader, VolumeUnavailable, materialize, unsupported_volumes


def reader(**objects) -> ObjectReader:
    return ObjectReader(secret=lambda n: objects.get(f"secret/{n}"), config_map=lambda n: objects.get(f"cm/{n}"),
                        token=lambda source: "TOKEN")


def pod(*volumes) -> dict:
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"containers": [{"name": "c"}], "volumes": list(volumes)}}


def test_volumes_are_written_as_files_with_items_and_modes(tmp_path):
    objects = reader(**{"secret/db": {"password": b"pw", "user": b"u"}, "cm/cfg": {"a": b"1", "b": b"2"},
                        "cm/kube-root-ca.crt": {"ca.crt": b"CA"}})
    spec = pod({"name": "s", "secret": {"secretName": "db", "defaultMode": 0o400}},
               {"name": "c", "configMap": {"name": "cfg", "items": [{"key": "b", "path": "sub/b.txt"}]}},
               {"name": "e", "emptyDir": {}},
               {"name": "claim", "persistentVolumeClaim": {"claimName": "models"}},
               {"name": "sa", "projected": {"sources": [
                   {"serviceAccountToken": {"path": "token"}},
                   {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                   {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}})
    volumes = materialize(spec, tmp_path / "pod", tmp_path / "pvc", objects, "10.245.0.1", "127.0.0.1")
    assert (volumes.dirs["s"] / "password").read_bytes() == b"pw"
    assert (volumes.dirs["s"] / "password").stat().st_mode & 0o777 == 0o400
    assert sorted(p.name for p in volumes.dirs["c"].rglob("*") if p.is_file()) == ["b.txt"]
    assert volumes.dirs["e"].is_dir() and not any(volumes.dirs["e"].iterdir())
    assert volumes.dirs["claim"] == tmp_path / "pvc" / "ns" / "models" and volumes.claims == {"models": volumes.dirs["claim"]}
    projected = {p.name: p.read_text() for p in volumes.dirs["sa"].iterdir()}
    assert projected == {"token": "TOKEN", "ca.crt": "CA", "namespace": "ns"}


def test_a_missing_source_is_retried_unless_optional_and_unknown_types_are_reported(tmp_path):
    with pytest.raises(VolumeUnavailable, match='secret "nope" not found'):
        materialize(pod({"name": "s", "secret": {"secretName": "nope"}}), tmp_path, tmp_path, reader(), "", "")
    materialize(pod({"name": "s", "secret": {"secretName": "nope", "optional": True}}), tmp_path, tmp_path, reader(), "", "")
    nfs = {"name": "n", "nfs": {"server": "x", "path": "/"}}
    assert unsupported_volumes(pod(nfs, {"name": "e", "emptyDir": {}})) == ["n (nfs)"]
