"""PersistentVolumeClaims for pods on the local node: a StorageClass (`modelloop-local`, provisioner
`modelloop.dev/localnode`, WaitForFirstConsumer) and a provisioner that binds each claim the scheduler
placed on this node to a hostPath PersistentVolume at `<pvc root>/<namespace>/<claim>` (the directory
the agent mounts for the claim). Released volumes of this node are deleted with their directory.
"""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

from .kube import ApiError, Kube
from .log import log

PROVISIONER = "modelloop.dev/localnode"
SELECTED_NODE = "volume.kubernetes.io/selected-node"
NODE_ANNOTATION = "modelloop.dev/local-node"
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
SYNC_S = 2.0


def render_storage_class(name: str, default: bool) -> dict:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name, "annotations": {DEFAULT_CLASS: "true"} if default else {}},
            "provisioner": PROVISIONER, "volumeBindingMode": "WaitForFirstConsumer", "reclaimPolicy": "Delete"}


def render_volume(claim: dict, node: str, directory: Path, reclaim_policy: str) -> dict:
    meta, spec = claim["metadata"], claim["spec"]
    return {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": f"pvc-{meta['uid']}",
                     "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER, NODE_ANNOTATION: node}},
        "spec": {
            "capacity": {"storage": spec.get("resources", {}).get("requests", {}).get("storage", "1Gi")},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "persistentVolumeReclaimPolicy": reclaim_policy,
            "storageClassName": spec["storageClassName"],
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": meta["namespace"],
                         "name": meta["name"], "uid": meta["uid"]},
            "hostPath": {"path": str(directory), "type": "DirectoryOrCreate"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
        },
    }


class Provisioner:
    def __init__(self, kube: Kube, node: str, pvc_root: Path, class_name: str, stopping: threading.Event) -> None:
        self.kube = kube
        self.node = node
        self.pvc_root = pvc_root
        self.class_name = class_name
        self.stopping = stopping

    def ensure_class(self) -> None:
        """Create the StorageClass; it is the default only when the cluster has none."""
        classes = self.kube.get("/apis/storage.k8s.io/v1/storageclasses")["items"]
        if any(c["metadata"]["name"] == self.class_name for c in classes):
            return
        default = not any((c["metadata"].get("annotations") or {}).get(DEFAULT_CLASS) == "true" for c in classes)
        try:
            self.kube.create("/apis/storage.k8s.io/v1/storageclasses", render_storage_class(self.class_name, default))
            log("storageclass.created", name=self.class_name, default=default)
        except ApiError as e:
            if e.status != 409:
                raise

    def start(self) -> None:
        threading.Thread(target=self._loop, name="provisioner", daemon=True).start()

    def _loop(self) -> None:
        while not self.stopping.wait(SYNC_S):
            try:
                self.sync()
            except Exception as e:  # noqa: BLE001 - the next round retries
                log("provisioner.sync_failed", level="warning", error=str(e)[:300])

    def sync(self) -> None:
        classes = {c["metadata"]["name"]: c for c in self.kube.get("/apis/storage.k8s.io/v1/storageclasses")["items"]
                   if c.get("provisioner") == PROVISIONER}
        for claim in self.kube.get("/api/v1/persistentvolumeclaims")["items"]:
            meta, spec = claim["metadata"], claim["spec"]
            if (claim.get("status", {}).get("phase") == "Pending" and spec.get("storageClassName") in classes
                    and not spec.get("volumeName") and (meta.get("annotations") or {}).get(SELECTED_NODE) == self.node):
                self._provision(claim, classes[spec["storageClassName"]])
        for volume in self.kube.get("/api/v1/persistentvolumes")["items"]:
            annotations = volume["metadata"].get("annotations") or {}
            if (annotations.get("pv.kubernetes.io/provisioned-by") == PROVISIONER
                    and annotations.get(NODE_ANNOTATION) == self.node
                    and volume.get("status", {}).get("phase") in ("Released", "Failed")
                    and volume["spec"].get("persistentVolumeReclaimPolicy") == "Delete"):
                self._delete(volume)

    def _provision(self, claim: dict, storage_class: dict) -> None:
        meta = claim["metadata"]
        directory = self.pvc_root / meta["namespace"] / meta["name"]
        directory.mkdir(parents=True, exist_ok=True)
        volume = render_volume(claim, self.node, directory, storage_class.get("reclaimPolicy") or "Delete")
        try:
            self.kube.create("/api/v1/persistentvolumes", volume)
            log("volume.provisioned", claim=f"{meta['namespace']}/{meta['name']}", volume=volume["metadata"]["name"],
                path=directory)
        except ApiError as e:
            if e.status != 409:
                raise

    def _delete(self, volume: dict) -> None:
        directory = Path(volume["spec"]["hostPath"]["path"])
        try:
            self.kube.delete(f"/api/v1/persistentvolumes/{volume['metadata']['name']}")
        except ApiError as e:
            if e.status != 404:
                raise
        if self.pvc_root in directory.parents:
            shutil.rmtree(directory, ignore_errors=True)
        log("volume.deleted", volume=volume["metadata"]["name"], path=directory)
