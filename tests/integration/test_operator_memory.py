"""The operator stays under its chart's memory limit while one tenant points 50 ModelDeployments at hostile
versions (issue 22: "no operator above its chart limit with 50 hostile deployments").

The operator runs as its own process, this checkout's code with the chart's RBAC and resync interval, in a
memory cgroup of the test's own whose limit is the chart's `resources.limits.memory` (1Gi): cgroup v2's
`memory.max` where the unified hierarchy has the memory controller, otherwise cgroup v1's
`memory.limit_in_bytes` (this machine mounts a hybrid hierarchy whose v2 part has no memory controller). The
kernel enforces the limit as it would for the pod: past it, the operator is OOM-killed. One namespace holds a
Secret, a version trained for real (v1) and 50 hostile versions beside it in the S3 test server, seven kinds in
turn (tests.fixtures.artifacts.HOSTILE_METADATA: issue 22's findings 5 and 11, and the documents whose
refusal cost the most). Every deployment must report the artifact as unusable (Ready False,
ArtifactUnavailable) naming the rule its version breaks; the operator must then be alive, never OOM-killed,
and its cgroup must never have reached the limit (v1 failcnt, v2 `max` events), its peak below it.

Measured on this machine (2 shared cores): the cgroup peaked at 459 to 570 MiB (four runs) from 135 to
140 MiB idle, every deployment reporting within ~20 s. Before metadata.json's refusals were bounded (no object
of more than 256 keys, lists failing fast) the operator was OOM-killed in every run: pydantic built a million
errors, +857 MiB, for one 0.9 MB document of list-valued categories, two documents parsed at once. The code
before issue 22's store bounds (a8ac695), which cached whole documents, took verified_metadata from 221 MiB to
1,990 MiB over the same 50 unknown-keys documents (+35 MiB a version, past 1 GiB at the 23rd).
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.fixtures.artifacts import HOSTILE_METADATA, hostile_metadata, make_store
from tests.fixtures.cluster import ROOT, Cluster, fresh_namespace, wait_for
from tests.fixtures.operator import FORBIDDEN, OperatorProcess
from tests.fixtures.s3 import S3Bucket
from tests.integration.test_deployment_controller import cond

DEPLOYMENTS = 50
MiB = 1024 * 1024
# kind of hostile metadata.json (tests.fixtures.artifacts.HOSTILE_METADATA) -> the rule its status must name
RULES = {
    "unknown-keys": "more than 256 keys",
    "union-items": "schema.features.0.categories.0.str: Input should be a valid string",
    "large-but-allowed": "sha256 or size does not match metadata.json",
    "deeply-nested": "MODELLOOP_MAX_ARTIFACT_JSON_DEPTH",
    "too-many-values": "MODELLOOP_MAX_METADATA_NODES",
    "oversized": "is larger than the limit of",
    "predict-dtype": "onnx.predictDtype",
}
KINDS = list(HOSTILE_METADATA)
CHART_VALUES = yaml.safe_load((ROOT / "charts" / "modelloop" / "values.yaml").read_text())


def chart_memory_limit() -> int:
    """The operator's memory limit in the chart's values, in bytes."""
    quantity = CHART_VALUES["resources"]["limits"]["memory"]
    number, unit = re.fullmatch(r"(\d+)([KMG]i)", quantity).groups()
    return int(number) * 1024 ** {"Ki": 1, "Mi": 2, "Gi": 3}[unit]


@dataclass
class MemoryCgroup:
    """A memory cgroup below the one this process is in, with a limit. Its files differ between cgroup v2 and v1:
    (file, field of a key-value file or None)."""

    path: Path
    version: int

    FILES = {2: {"limit": ("memory.max", None), "peak": ("memory.peak", None),
                 "oom_kills": ("memory.events", "oom_kill"), "limit_hits": ("memory.events", "max")},
             1: {"limit": ("memory.limit_in_bytes", None), "peak": ("memory.max_usage_in_bytes", None),
                 "oom_kills": ("memory.oom_control", "oom_kill"), "limit_hits": ("memory.failcnt", None)}}

    @classmethod
    def create(cls, name: str, limit: int) -> MemoryCgroup:
        for version, parent in cls._parents():
            try:
                (parent / name).mkdir()
            except OSError:
                continue
            group = cls(parent / name, version)
            try:
                (group.path / cls.FILES[version]["limit"][0]).write_text(str(limit))
                return group
            except OSError:
                group.remove()
        pytest.fail("no memory cgroup can be created here (cgroup v2 with the memory controller, or v1's memory "
                    "hierarchy, writable): the operator's memory limit cannot be enforced")

    @staticmethod
    def _parents() -> Iterator[tuple[int, Path]]:
        """(version, this process's cgroup) in a v2 hierarchy that has the memory controller, then in v1's."""
        own = dict(line.split(":", 2)[1:] for line in Path("/proc/self/cgroup").read_text().splitlines())
        for mount in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
            controllers = mount / "cgroup.controllers"
            if "" in own and controllers.exists() and "memory" in controllers.read_text().split():
                yield 2, mount / own[""].lstrip("/")
                break
        if "memory" in own:
            yield 1, Path("/sys/fs/cgroup/memory") / own["memory"].lstrip("/")

    def read(self, what: str) -> int:
        """`what`: limit, peak (bytes), oom_kills, limit_hits (how often usage reached the limit)."""
        name, field = self.FILES[self.version][what]
        text = (self.path / name).read_text()
        return int(text if field is None else dict(line.split() for line in text.splitlines())[field])

    def remove(self) -> None:
        deadline = time.monotonic() + 10
        while self.path.exists():
            try:
                self.path.rmdir()
            except OSError:  # busy until the killed process is reaped
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def hostile_versions(store, bucket: S3Bucket) -> dict[int, str]:
    """Versions 2 to 51 beside the trained v1, written as a hostile store writer would (no commit_version):
    version -> its kind. Each holds v1's model files."""
    valid = store.read_metadata(1)
    files = {name: store.read_file(1, name) for name in (valid["model"]["file"], valid["onnx"]["file"])}
    kinds = {}
    for i in range(DEPLOYMENTS):
        version, kind = i + 2, KINDS[i % len(KINDS)]
        for name, data in files.items():
            bucket.put(f"models/churn/v{version}/{name}", data)
        bucket.put(f"models/churn/v{version}/metadata.json", hostile_metadata(kind, {**valid, "version": version}))
        kinds[version] = kind
    return kinds


def deployment(namespace: str, version: int, bucket: S3Bucket) -> dict:
    return {"apiVersion": "modelloop.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": f"hostile-v{version}", "namespace": namespace},
            "spec": {"replicas": 1, "storage": {"secretRef": {"name": "s3"}},
                     "model": {"uri": bucket.uri(f"models/churn/v{version}")}}}


@pytest.fixture()
def tenant_namespace(cluster: Cluster, request) -> Iterator[str]:
    """A namespace outside `t-*`, so that only this test's operator watches it."""
    yield from fresh_namespace(cluster, "mem-", request)


@pytest.fixture()
def memory_cgroup() -> Iterator[MemoryCgroup]:
    group = MemoryCgroup.create(f"modelloop-operator-{os.getpid()}", chart_memory_limit())
    yield group
    group.remove()


def test_fifty_hostile_deployments_keep_the_operator_under_its_chart_memory_limit(
        crds, tests_rbac, tenant_namespace, s3, memory_cgroup, tmp_path):
    assert RULES.keys() == HOSTILE_METADATA.keys()
    namespace, limit = tenant_namespace, chart_memory_limit()
    store = make_store(crds, namespace, s3)  # v1 trained for real, and the Secret `s3`
    kinds = hostile_versions(store, s3)
    log = tmp_path / "operator.log"
    operator = OperatorProcess(crds, log, tests_rbac, env={}, resync=CHART_VALUES["resyncSeconds"],
                               namespace=namespace, cgroup=memory_cgroup.path)
    try:
        idle = memory_cgroup.read("peak")
        started = time.monotonic()
        crds.apply({"apiVersion": "v1", "kind": "List",
                    "items": [deployment(namespace, version, s3) for version in kinds]})

        def reported() -> dict[str, dict]:
            """Each deployment's Ready condition, once every one says ArtifactUnavailable."""
            items = crds.get("mdep", "-n", namespace)["items"]
            ready = {d["metadata"]["name"]: cond(d.get("status") or {}, "Ready") for d in items}
            done = {name: c for name, c in ready.items() if c.get("reason") == "ArtifactUnavailable"}
            return done if len(done) == DEPLOYMENTS else {}

        ready = wait_for(lambda: operator.proc.poll() is not None or reported(), timeout=150, interval=2,
                         message=f"all {DEPLOYMENTS} deployments to report their artifact as unusable")
        seconds = time.monotonic() - started
        assert operator.proc.poll() is None, (f"the operator exited ({operator.proc.returncode}), OOM kills: "
                                              f"{memory_cgroup.read('oom_kills')}:\n{operator.log_tail()}")
        status = Path(f"/proc/{operator.proc.pid}/status").read_text()
        rss_peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
        peak, hits, kills = (memory_cgroup.read(what) for what in ("peak", "limit_hits", "oom_kills"))
        print(f"cgroup v{memory_cgroup.version}, limit {limit / MiB:.0f} MiB: idle {idle / MiB:.0f} MiB, peak "
              f"{peak / MiB:.0f} MiB (the operator's peak RSS {rss_peak / MiB:.0f} MiB), the limit reached {hits} "
              f"times, {kills} OOM kills; {DEPLOYMENTS} deployments reported in {seconds:.0f} s")

        assert kills == 0
        assert hits == 0, "the operator's memory reached the chart's limit"
        assert peak < limit
        for version, kind in kinds.items():
            message = ready[f"hostile-v{version}"]["message"]
            assert ready[f"hostile-v{version}"]["status"] == "False"
            assert RULES[kind] in message, (kind, message)
        forbidden = [line for line in log.read_text(errors="replace").splitlines() if FORBIDDEN.search(line)]
        assert not forbidden, forbidden[:10]
    finally:
        operator.stop()
