"""DriftMonitor controller: one kopf daemon per monitor checks a window every spec.interval.

A check: find the ModelDeployment's serving version and its reference sketches (metadata.json),
fetch the live sketches of every ready endpoint of its Service (EndpointSlices) on the servers'
sketch port, concurrently and within one deadline, take each pod's window (difference from the
previous snapshot of the same pod instance; counter resets handled by the engine), merge them,
decide with the drift engine, write status and metrics, and after `consecutive` drifted windows
request a retrain (at most once per cooldown, never during a run, and only of a ModelTraining whose
spec.retrain allows this monitor).

The daemons are async and run each check in a bounded pool of their own (SETTINGS.drift_workers), so
that however many monitors there are, and however slowly their pods answer, kopf's worker threads
stay free for the reconciles of every kind.

Failures (unreachable pods, a missing reference, a malformed sketch) are reported in conditions and
metrics; they never crash the operator and never trigger a retrain.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx
import kopf
from pydantic import ValidationError

from .. import kube, metrics
from ..api.deployment import SKETCH_PORT, ModelDeploymentSpec
from ..api.drift import MIN_INTERVAL_SECONDS, DriftMonitorSpec
from ..api.training import RETRAIN_ANNOTATION, RETRAIN_DATASET_ANNOTATION, ModelTrainingSpec, RetrainSpec
from ..config import SETTINGS
from ..drift import DriftConfig, detect, detect_raw
from ..drift import sketch as sketches
from ..status import Cond, changed_conditions, merge_conditions
from . import storage

log = logging.getLogger("modelloop.drift")

API = "modelloop.dev/v1alpha1"
KIND = "DriftMonitor"
TOP_FEATURES = 5


def parse_duration(text: str) -> float:
    """Seconds of a Go-style duration ("90s", "5m", "1h30m", "250ms")."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"'{text}' is not a duration like 30s, 5m or 1h")
    return sum(float(n) * units[u] for n, u in parts)


def check_interval(text: str | None) -> float:
    """Seconds between checks: spec.interval, never below the schema's minimum (objects stored before
    the schema had one keep a sane pace too)."""
    try:
        return max(float(MIN_INTERVAL_SECONDS), parse_duration(text or "60s"))
    except ValueError:
        return 60.0


@dataclass
class MonitorState:
    """What a monitor remembers between checks (in memory; a restart starts a fresh baseline)."""

    baseline: dict[str, dict] = field(default_factory=dict)   # pod instance -> last cumulative snapshot
    version: int | None = None                                 # serving version the baseline belongs to


class CheckError(Exception):
    """The check could not run: reported as Ready=False and counted in the error metric."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


class Waiting(CheckError):
    """Nothing to check yet, and nothing wrong (a rollout in progress): Ready stays True."""


# ----------------------------------------------------------------------------- pure decisions

def retrain_allowed(training: dict, monitor: str, labels: dict[str, str]) -> bool:
    """Whether the ModelTraining's spec.retrain lets this DriftMonitor request a retrain (default: no)."""
    try:
        rights = RetrainSpec.model_validate((training.get("spec") or {}).get("retrain") or {})
    except ValidationError:
        return False
    return rights.allows(monitor, labels)


def retrain_decision(spec: DriftMonitorSpec, consecutive: int, last_retrain: str | None, training: dict | None,
                     now: datetime, monitor: str = "", labels: dict[str, str] | None = None) -> tuple[bool, str]:
    """Whether to request a retrain now, and why (not)."""
    if spec.action.type != "retrain":
        return False, "action is none: reporting only"
    if consecutive < spec.consecutive:
        return False, f"{consecutive} of {spec.consecutive} drifted windows in a row"
    if training is None:
        return False, "the ModelTraining to retrain was not found"
    if not retrain_allowed(training, monitor, labels or {}):
        return False, (f"ModelTraining {training['metadata']['name']} does not allow DriftMonitor {monitor} to "
                       f"request retrains; list it in the training's spec.retrain.allowedMonitors or match "
                       f"spec.retrain.monitorSelector")
    tstatus = training.get("status") or {}
    if tstatus.get("currentRun"):
        return False, f"run {tstatus['currentRun']} is in progress"
    if last_retrain:
        since = (now - datetime.fromisoformat(last_retrain.replace("Z", "+00:00"))).total_seconds()
        cooldown = parse_duration(spec.action.cooldown)
        if since < cooldown:
            return False, f"cooldown: last request {since:.0f}s ago, cooldown {cooldown:.0f}s"
    return True, "drift persisted"


def summarize(report: dict) -> str:
    drifted = sorted((f for f in report["features"] if f["drifted"]), key=lambda f: -(f["score"] or 0.0))
    top = ", ".join(f"{f['name']} {f['test']}={f['score'] or 0:.3g}" + (
        f" missing {f['missing_reference']:.1%}->{f['missing_current']:.1%}" if f.get("missing_drifted") else "")
        for f in drifted[:TOP_FEATURES])
    return (f"{len(drifted)} of {len(report['features'])} features drifted "
            f"(share {report['drift_share']:.2f}) in {report['samples']} rows" + (f": {top}" if top else ""))


# ----------------------------------------------------------------------------- I/O

def ready_endpoints(namespace: str, service: str) -> list[str]:
    """Addresses of the ready endpoints of a Service, from its EndpointSlices."""
    out = []
    for s in kube.list_("discovery.k8s.io/v1", "EndpointSlice", namespace, f"kubernetes.io/service-name={service}"):
        for ep in s.get("endpoints") or ():
            if (ep.get("conditions") or {}).get("ready") and not (ep.get("conditions") or {}).get("terminating"):
                out.extend(ep.get("addresses") or ())
    return sorted(set(out))


def sketch_url(address: str, model: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{SKETCH_PORT}/v2/models/{model}/sketch"


class SketchTooLarge(Exception):
    pass


async def fetch_snapshots(addresses: list[str], model: str, deadline: float = SETTINGS.sketch_deadline_seconds,
                          max_bytes: int = SETTINGS.max_sketch_bytes) -> tuple[list[dict], list[str]]:
    """Live sketches of each pod (validated), and the errors of the pods that could not answer. All
    pods are asked at once; whatever has not answered within `deadline` seconds in total is an error,
    and a body larger than `max_bytes` is refused while it streams."""

    async def fetch(client: httpx.AsyncClient, address: str) -> dict:
        async with client.stream("GET", sketch_url(address, model)) as r:
            r.raise_for_status()
            body = bytearray()
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise SketchTooLarge(f"the sketch is larger than {max_bytes} bytes")
        return sketches.validate(json.loads(body))

    snaps, errors = [], []
    async with httpx.AsyncClient(timeout=deadline, follow_redirects=False, trust_env=False) as client:
        tasks = {address: asyncio.ensure_future(fetch(client, address)) for address in addresses}
        if tasks:
            await asyncio.wait(tasks.values(), timeout=deadline)
        for address, task in tasks.items():
            if not task.done():
                task.cancel()
                errors.append(f"{address}: no answer within {deadline:g}s")
                continue
            e = task.exception()
            if e is None:
                snaps.append(task.result())
            elif isinstance(e, (sketches.SketchError, SketchTooLarge, ValueError)):
                errors.append(f"{address}: malformed sketch: {e}"[:300])
            else:  # unreachable pod, HTTP error
                errors.append(f"{address}: {type(e).__name__}: {e}"[:300])
        await asyncio.gather(*tasks.values(), return_exceptions=True)  # let cancelled fetches finish
    return snaps, errors


@dataclass(frozen=True)
class Serving:
    """The version a deployment serves, its metadata (reference sketches, schema, training dataset)
    and the credentials to read its store."""

    version: int
    metadata: dict
    credentials: Any


def serving_version(namespace: str, md: dict) -> Serving:
    st = md.get("status") or {}
    version, uri = st.get("modelVersion"), st.get("modelUri")
    if not version or not uri:
        raise Waiting("NoServingVersion", f"ModelDeployment {md['metadata']['name']} serves no version yet")
    try:
        spec = ModelDeploymentSpec.model_validate(md["spec"])
        secret = spec.storage
        if secret is None and spec.model.from_training:
            t = kube.get(API, "ModelTraining", namespace, spec.model.from_training)
            secret = ModelTrainingSpec.model_validate(t["spec"]).storage if t else None
        creds = storage.credentials_from_secret(namespace, secret)
        base = uri.rstrip("/")[: -len(f"/v{version}")]
        meta = storage.verified_metadata(namespace, base, version, creds, field="status.modelUri")["metadata"]
        sketches.validate(meta["reference"])
    except Exception as e:  # noqa: BLE001
        raise CheckError("ReferenceUnavailable", f"reference of version {version} unavailable: {e}"[:1024]) from e
    return Serving(version, meta, creds)


def read_frame(uri: str, credentials: storage.Credentials, columns: list[str], field: str) -> Any:
    """A CSV or Parquet dataset's `columns` as a DataFrame."""
    import pandas as pd

    try:
        raw = storage.read_dataset(uri, credentials, field)
        frame = (pd.read_parquet(io.BytesIO(raw)) if uri.endswith((".parquet", ".pq"))
                 else pd.read_csv(io.BytesIO(raw)))
    except Exception as e:  # noqa: BLE001
        raise CheckError("DatasetUnavailable", f"{field} '{uri}' cannot be read: {e}"[:1024]) from e
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CheckError("DatasetInvalid", f"{field} '{uri}' lacks the model's features {missing}")
    return frame[columns]


def dataset_window(spec: DriftMonitorSpec, serving: Serving, credentials: storage.Credentials) -> tuple[dict, int]:
    """Exact tests on raw values: the dataset at spec.datasetUri against the training dataset."""
    features = serving.metadata["schema"]["features"]
    names = [f["name"] for f in features]
    reference = read_frame(serving.metadata["dataset"]["uri"], serving.credentials, names, "reference dataset")
    current = read_frame(spec.dataset_uri, credentials, names, "spec.datasetUri")
    report = detect_raw(reference, current, [f["name"] for f in features if f.get("categorical")],
                        DriftConfig.from_spec(spec.wire()))
    return report.to_dict(), len(current)


def live_window(namespace: str, name: str, spec: DriftMonitorSpec, serving: Serving, state: MonitorState
                ) -> tuple[dict | None, int]:
    """The merged window of every ready pod's live sketch, and the drift report once it is big enough."""
    addresses = ready_endpoints(namespace, spec.deployment_ref.name)
    if not addresses:
        raise CheckError("NoReadyPods", f"ModelDeployment {spec.deployment_ref.name} has no ready pods")
    answered, errors = asyncio.run(fetch_snapshots(addresses, spec.deployment_ref.name))
    snaps = [s for s in answered if s.get("modelVersion") in (None, serving.version)]
    if answered and not snaps:
        raise Waiting("WaitingForRollout", f"no ready pod serves version {serving.version} yet; nothing decided")
    if not snaps:
        reason = "InvalidSketch" if errors and all("malformed" in e for e in errors) else "SketchUnavailable"
        raise CheckError(reason, "no pod answered with a sketch: " + "; ".join(errors)[:900])
    for e in errors:
        metrics.DRIFT_CHECK_ERRORS.labels(namespace, name, "PodUnreachable").inc()
        log.warning("monitor=%s/%s pod_error=%s", namespace, name, e)
    current = sketches.merge_all([sketches.window(s, state.baseline.get(s["instance"])) for s in snaps])
    samples = current.get("rows", 0)
    if samples < spec.min_samples:
        return None, samples  # keep the baseline: rows accumulate until there are enough to decide
    report = detect(serving.metadata["reference"], current, DriftConfig.from_spec(spec.wire())).to_dict()
    if report["status"] == "ok":
        state.baseline = {s["instance"]: s for s in snaps}
    return report, samples


# ----------------------------------------------------------------------------- one check

def check(namespace: str, name: str, state: MonitorState) -> None:
    obj = kube.get(API, KIND, namespace, name)
    if not kube.reconcilable(obj):
        return
    md_ = obj["metadata"]
    status: dict[str, Any] = dict(obj.get("status") or {})
    events: list[tuple[str, str, str]] = []
    try:
        spec = DriftMonitorSpec.model_validate(obj["spec"])
    except ValidationError as e:
        raise kopf.PermanentError(f"spec is invalid: {e.errors()[0]['msg']}")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    conds: list[Cond]
    try:
        dep = kube.get(API, "ModelDeployment", namespace, spec.deployment_ref.name)
        if dep is None:
            raise CheckError("DeploymentNotFound", f"spec.deploymentRef: ModelDeployment '{spec.deployment_ref.name}' "
                             f"not found in namespace {namespace}")
        serving = serving_version(namespace, dep)
        version = serving.version
        if version != state.version:  # a new version serves: the window restarts against its reference
            if state.version is not None:
                events.append(("Normal", "ReferenceChanged", f"now watching version {version}"))
            state.baseline, state.version = {}, version
            status.update(consecutiveDrifted=0)
        if spec.dataset_uri:
            try:
                credentials = storage.credentials_from_secret(namespace, spec.storage)
            except storage.StorageAccessError as e:
                raise CheckError("SecretNotFound", str(e)) from e
            report, samples = dataset_window(spec, serving, credentials)
        else:
            report, samples = live_window(namespace, name, spec, serving, state)
        status.update(modelVersion=version, samples=samples, lastCheckTime=kube.rfc3339(now))
        metrics.DRIFT_SAMPLES.labels(namespace, name).set(samples)
        if report is None or report["status"] != "ok":
            msg = (report or {}).get("message") or f"{samples} new rows of {spec.min_samples} needed; nothing decided"
            conds = [Cond.of("Ready", True, "InsufficientSamples", msg), Cond.of("DriftDetected", False, "Undecided", msg)]
            status.update(phase="InsufficientData")
        else:
            drifted = bool(report["dataset_drift"])
            consecutive = (status.get("consecutiveDrifted") or 0) + 1 if drifted else 0
            summary = summarize(report)
            status.update(phase="Drifted" if drifted else "Watching", datasetDrift=drifted,
                          driftShare=round(report["drift_share"], 4), consecutiveDrifted=consecutive,
                          features=[{"name": f["name"], "test": f["test"], "score": round(f["score"] or 0.0, 6),
                                     **({"threshold": f["threshold"]} if f.get("threshold") is not None else {}),
                                     **({"pValue": f["p_value"]} if f.get("p_value") is not None else {}),
                                     "drifted": bool(f["drifted"])} for f in report["features"]])
            conds = [Cond.of("Ready", True, "Checked", f"checked {samples} rows against version {version}"),
                     Cond.of("DriftDetected", drifted, "DatasetDrift" if drifted else "NoDrift", summary)]
            _export(namespace, name, report)
            if drifted:
                training_name = (spec.action.training_ref.name if spec.action.training_ref
                                 else (dep["spec"].get("model") or {}).get("fromTraining"))
                training = kube.get(API, "ModelTraining", namespace, training_name) if training_name else None
                go, why = retrain_decision(spec, consecutive, status.get("lastRetrainTime"), training, now,
                                           name, md_.get("labels") or {})
                if go:
                    reason = f"DriftMonitor {name} at {kube.rfc3339(now)}: {summary}"[:1000]
                    annotations = {RETRAIN_ANNOTATION: reason}
                    if spec.action.dataset_uri:
                        annotations[RETRAIN_DATASET_ANNOTATION] = spec.action.dataset_uri
                    kube.patch(API, "ModelTraining", namespace, training_name, {"metadata": {"annotations": annotations}})
                    status.update(lastRetrainTime=kube.rfc3339(now), retrains=(status.get("retrains") or 0) + 1,
                                  consecutiveDrifted=0)
                    metrics.DRIFT_RETRAINS.labels(namespace, name).inc()
                    events.append(("Normal", "RetrainRequested", f"requested a retrain of {training_name}: {summary}"))
                elif spec.action.type == "retrain" and consecutive >= spec.consecutive:
                    denied = training is not None and not retrain_allowed(training, name, md_.get("labels") or {})
                    events.append(("Warning", "RetrainDenied", why) if denied else ("Normal", "RetrainSkipped", why))
    except Waiting as e:
        conds = [Cond.of("Ready", True, e.reason, e.message), Cond.of("DriftDetected", False, "Undecided", e.message)]
        status.update(lastCheckTime=kube.rfc3339(now))
    except CheckError as e:
        metrics.DRIFT_CHECK_ERRORS.labels(namespace, name, e.reason).inc()
        conds = [Cond.of("Ready", False, e.reason, e.message),
                 Cond.of("DriftDetected", False, "Undecided", f"no decision: {e.message}")]
        status.update(phase="Error", lastCheckTime=kube.rfc3339(now))

    conditions = merge_conditions(status.get("conditions"), conds, md_.get("generation"))
    status.update(observedGeneration=md_.get("generation"), conditions=conditions)
    kube.write_status(obj, status)
    was, now_drift = (obj.get("status") or {}).get("datasetDrift"), status.get("datasetDrift")
    if now_drift and not was:
        events.append(("Warning", "DriftDetected", next(c["message"] for c in conditions if c["type"] == "DriftDetected")))
    elif was and now_drift is False:
        events.append(("Normal", "DriftResolved", next(c["message"] for c in conditions if c["type"] == "DriftDetected")))
    for c in changed_conditions(obj.get("status", {}).get("conditions"), conditions):
        if c["type"] == "Ready":
            events.append(("Normal" if c["status"] == "True" else "Warning", c["reason"], c["message"]))
    kube.emit_events(obj, events)


def _export(namespace: str, name: str, report: dict) -> None:
    for f in report["features"]:
        if f["score"] is not None:
            metrics.DRIFT_SCORE.labels(namespace, name, f["name"], f["test"]).set(f["score"])
    metrics.DRIFT_DATASET.labels(namespace, name).set(1 if report["dataset_drift"] else 0)
    metrics.DRIFT_SHARE.labels(namespace, name).set(report["drift_share"])


# ----------------------------------------------------------------------------- kopf wiring

_executor: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    """The drift checks' own pool: bounded, separate from kopf's, created on first use."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=SETTINGS.drift_workers, thread_name_prefix="drift-check")
    return _executor


def run_check(namespace: str, name: str, state: MonitorState) -> float | None:
    """One check, in the drift pool; the seconds until the next one, or None when the monitor is gone."""
    interval = 60.0
    try:
        obj = kube.get(API, KIND, namespace, name)
        if obj is None:
            return None
        interval = check_interval((obj.get("spec") or {}).get("interval"))
        with kube.object_lock(KIND, namespace, name):
            check(namespace, name, state)
    except kube.Conflict:
        interval = 1.0
    except kopf.PermanentError as e:
        log.error("monitor=%s/%s error=%s", namespace, name, e)
    except Exception as e:  # noqa: BLE001 - a failed check is retried next interval, never fatal
        log.exception("monitor=%s/%s check_failed=%s", namespace, name, e)
        metrics.DRIFT_CHECK_ERRORS.labels(namespace, name, "InternalError").inc()
    return interval


@kopf.daemon("modelloop.dev", "v1alpha1", "driftmonitors", cancellation_timeout=10)
async def monitor(name: str, namespace: str, **_: Any) -> None:
    """Async: waiting costs no thread; kopf cancels the task when the monitor is deleted or the
    operator stops (a check already running in the pool finishes on its own)."""
    state = MonitorState()
    loop = asyncio.get_running_loop()
    while True:
        interval = await loop.run_in_executor(executor(), run_check, namespace, name, state)
        if interval is None:
            return
        await asyncio.sleep(interval)
