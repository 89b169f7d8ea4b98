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

A check has the controllers' one shape (docs/architecture.md, "One reconcile shape"): `observe` reads the
monitor once, the deployment, its serving version and measures the window (and the live performance);
`plans.drift.plan` decides; `act` writes the status once, then the baseline, the retrain request's delivery, the
Events and the report.

Failures (unreachable pods, a missing reference, a malformed sketch) are reported in conditions and
metrics; they never crash the operator and never trigger a retrain.
"""
from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import httpx
import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from .. import kube, metrics
from ..api.deployment import SKETCH_PORT, ModelDeploymentSpec
from ..api.drift import DriftMonitorSpec
from ..artifacts import datasets
from ..config import SETTINGS
from ..names import (
    API_VERSION as API, DEPLOYMENT, GROUP, LABEL_MANAGED_BY, LABEL_MONITOR, MANAGER, MONITOR, RETRAIN_ANNOTATION,
    RETRAIN_DATASET_ANNOTATION, TRAINING, VERSION,
)
from ..reasons import DriftReason as R
from ..meta import parse_duration
from ..report import (HISTORY_FILE, REPORT_FILE, append_history, encode_history, history_point, render_report,
                      report_location)
from ..plans import drift as decide
from ..plans.drift import CheckError, DriftPlan, DriftWorld, Serving, Waiting, Window
from ..retrain import check_interval
from ..drift import DriftConfig, detect, detect_raw
from ..drift import sketch as sketches
from . import endpoints, storage
from .endpoints import AnswerTooLarge, ready_endpoints, ssl_context as _ssl_context

log = logging.getLogger("modelloop.drift")

KIND = MONITOR.kind


@dataclass
class MonitorState:
    """What a monitor remembers between checks; the baseline is also kept in a ConfigMap (baseline_configmap),
    so the first window after a restart or a leader change measures the window, not each pod's whole life."""

    baseline: dict[str, dict] = field(default_factory=dict)   # pod instance -> last cumulative snapshot
    version: int | None = None                                 # serving version the baseline belongs to
    restored: bool = False                                     # the ConfigMap has been read
    history: list[dict] | None = None                          # the report's decided checks (None: not read yet)
    last_window: tuple[int, dict, dict | None] | None = None   # version, drift report, live sketch last decided
    delivered: str | None = None                               # the last retrain request this daemon delivered


BASELINE_KEY = "baseline.json.gz"
MAX_BASELINE_BYTES = 900 * 1024   # a ConfigMap holds at most 1 MiB


def baseline_name(monitor: str) -> str:
    name = f"{monitor}-drift-baseline"
    return name if len(name) <= 253 else f"{monitor[:200]}-{hashlib.sha256(monitor.encode()).hexdigest()[:12]}"


def encode_baseline(version: int, baseline: dict[str, dict]) -> str | None:
    """The baseline as the ConfigMap stores it (gzip, base64), or None when it is too large to keep."""
    raw = gzip.compress(json.dumps({"version": version, "baseline": baseline}, separators=(",", ":")).encode(), 6)
    return base64.b64encode(raw).decode() if len(raw) <= MAX_BASELINE_BYTES else None


def decode_baseline(data: str) -> tuple[int, dict[str, dict]]:
    doc = json.loads(gzip.decompress(base64.b64decode(data)))
    baseline = {k: sketches.validate(v) for k, v in doc["baseline"].items()}
    return int(doc["version"]), baseline


def restore_baseline(monitor: dict, state: MonitorState) -> None:
    """Load the baseline kept for this monitor (once per MonitorState); a missing or unreadable one starts afresh."""
    state.restored = True
    md_ = monitor["metadata"]
    cm = kube.get("v1", "ConfigMap", md_["namespace"], baseline_name(md_["name"]))
    data = ((cm or {}).get("binaryData") or {}).get(BASELINE_KEY)
    if not data:
        return
    try:
        state.version, state.baseline = decode_baseline(data)
    except Exception as e:  # noqa: BLE001
        log.warning("monitor=%s/%s baseline_unreadable=%s", md_["namespace"], md_["name"], e)


def keep_baseline(monitor: dict, state: MonitorState) -> None:
    md_ = monitor["metadata"]
    data = encode_baseline(state.version or 0, state.baseline)
    if data is None:
        log.warning("monitor=%s/%s baseline_not_kept=larger than %d bytes compressed", md_["namespace"], md_["name"],
                    MAX_BASELINE_BYTES)
        return
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": baseline_name(md_["name"]), "namespace": md_["namespace"],
                             "labels": {LABEL_MANAGED_BY: MANAGER, LABEL_MONITOR: md_["name"]},
                             "ownerReferences": [kube.owner_reference(monitor)]},
                "binaryData": {BASELINE_KEY: data}})


# ----------------------------------------------------------------------------- I/O

def sketch_url(address: str, model: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{SKETCH_PORT}/v2/models/{model}/sketch"


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
                    raise AnswerTooLarge(f"the sketch is larger than {max_bytes} bytes")
        return sketches.validate(json.loads(body))

    snaps, errors = [], []
    async with httpx.AsyncClient(timeout=deadline, follow_redirects=False, trust_env=False,
                                 verify=_ssl_context()) as client:
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
            elif isinstance(e, (sketches.SketchError, AnswerTooLarge, ValueError)):
                errors.append(f"{address}: malformed sketch: {e}"[:300])
            else:  # unreachable pod, HTTP error
                errors.append(f"{address}: {type(e).__name__}: {e}"[:300])
        await asyncio.gather(*tasks.values(), return_exceptions=True)  # let cancelled fetches finish
    return snaps, errors


def serving_version(namespace: str, md: dict) -> Serving:
    st = md.get("status") or {}
    version, uri = st.get("modelVersion"), st.get("modelUri")
    if not version or not uri:
        raise Waiting(R.NO_SERVING_VERSION, f"ModelDeployment {md['metadata']['name']} serves no version yet")
    try:
        spec = ModelDeploymentSpec.model_validate(md["spec"])
        creds = storage.credentials_from_secret(namespace, storage.deployment_storage(namespace, spec))
        base = uri.rstrip("/")[: -len(f"/v{version}")]
        meta = storage.verified_metadata(namespace, base, version, creds, field="status.modelUri")["metadata"]
        sketches.validate(meta["reference"])
    except Exception as e:  # noqa: BLE001
        raise CheckError(R.REFERENCE_UNAVAILABLE, f"reference of version {version} unavailable: {e}"[:1024]) from e
    return Serving(version, meta, creds, base)


def read_frame(uri: str, fmt: str, credentials: storage.Credentials, columns: list[str], field: str) -> Any:
    """A CSV or Parquet dataset's `columns` as a DataFrame."""
    try:
        raw = storage.read_dataset(uri, credentials, field)
        frame = datasets.parse_frame(raw, fmt)
    except Exception as e:  # noqa: BLE001
        raise CheckError(R.DATASET_UNAVAILABLE, f"{field} '{uri}' cannot be read: {e}"[:1024]) from e
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CheckError(R.DATASET_INVALID, f"{field} '{uri}' lacks the model's features {missing}")
    return frame[columns]


def dataset_window(spec: DriftMonitorSpec, serving: Serving, credentials: storage.Credentials) -> tuple[dict, int]:
    """Exact tests on raw values: the dataset at spec.datasetUri against the training dataset."""
    features = serving.metadata["schema"]["features"]
    names = [f["name"] for f in features]
    recorded = serving.metadata["dataset"]  # the format the trainer read it in, recorded in metadata.json
    fmt = recorded.get("format") or datasets.infer_format(recorded["uri"]) or "csv"
    reference = read_frame(recorded["uri"], fmt, serving.credentials, names, "reference dataset")
    # The compared dataset: the format its extension names, else the training data's.
    current = read_frame(spec.dataset_uri, datasets.infer_format(spec.dataset_uri) or fmt, credentials, names,
                         "spec.datasetUri")
    report = detect_raw(reference, current, [f["name"] for f in features if f.get("categorical")],
                        DriftConfig.from_spec(spec.wire()))
    return report.to_dict(), len(current)


def live_window(namespace: str, spec: DriftMonitorSpec, serving: Serving, baseline: dict[str, dict]) -> Window:
    """The merged window of every ready pod's live sketch, and its drift report once it is big enough."""
    addresses = ready_endpoints(namespace, spec.deployment_ref.name)
    if not addresses:
        raise CheckError(R.NO_READY_PODS, f"ModelDeployment {spec.deployment_ref.name} has no ready pods")
    answered, errors = asyncio.run(fetch_snapshots(addresses, spec.deployment_ref.name))
    snaps = [s for s in answered if s.get("modelVersion") in (None, serving.version)]
    if answered and not snaps:
        raise Waiting(R.WAITING_FOR_ROLLOUT, f"no ready pod serves version {serving.version} yet; nothing decided")
    if not snaps:
        reason = R.INVALID_SKETCH if errors and all("malformed" in e for e in errors) else R.SKETCH_UNAVAILABLE
        raise CheckError(reason, "no pod answered with a sketch: " + "; ".join(errors)[:900])
    current = sketches.merge_all([sketches.window(s, baseline.get(s["instance"])) for s in snaps])
    samples = current.get("rows", 0)
    if samples < spec.min_samples:
        return Window(None, samples, None, current, tuple(errors))  # keep the baseline: rows accumulate until enough
    report = detect(serving.metadata["reference"], current, DriftConfig.from_spec(spec.wire())).to_dict()
    return Window(report, samples, {s["instance"]: s for s in snaps} if report["status"] == "ok" else None,
                  current, tuple(errors))


# ----------------------------------------------------------------------------- one check

def check(obj: dict, state: MonitorState) -> None:
    """One check of the monitor `obj` (read by run_check, under the monitor's lock)."""
    if not kube.reconcilable(obj):
        return
    world = observe(obj, state)
    act(world, decide.plan(world), state)


def observe(obj: dict, state: MonitorState) -> DriftWorld:
    """Every read of one check: the deployment and its serving version, the window measured against its reference
    (from the baseline this daemon keeps), the live performance with feedback on, and the training when a retrain
    may be decided. A CheckError stops the reads where it happened."""
    md_ = obj["metadata"]
    namespace = md_["namespace"]
    try:
        spec = DriftMonitorSpec.model_validate(obj["spec"])
    except ValidationError as e:
        raise kopf.PermanentError(f"spec is invalid: {e.errors()[0]['msg']}")
    world = DriftWorld(obj, spec, datetime.now(timezone.utc).replace(microsecond=0), delivered=state.delivered)
    try:
        dep = kube.get(API, DEPLOYMENT.kind, namespace, spec.deployment_ref.name)
        if dep is None:
            raise CheckError(R.DEPLOYMENT_NOT_FOUND, f"spec.deploymentRef: ModelDeployment '{spec.deployment_ref.name}' "
                             f"not found in namespace {namespace}")
        serving = serving_version(namespace, dep)
    except CheckError as e:
        return replace(world, problem=e)
    if not state.restored:
        restore_baseline(obj, state)
    world = replace(world, dep=dep, serving=serving, baseline_version=state.version,
                    training_name=(spec.action.training_ref.name if spec.action.training_ref
                                   else (dep["spec"].get("model") or {}).get("fromTraining")))
    try:
        world = replace(world, window=_measure(namespace, spec, serving,
                                               state.baseline if serving.version == state.version else {}))
    except CheckError as e:
        return replace(world, problem=e)
    if (dep.get("spec") or {}).get("feedback"):
        since = int(time.time() * 1000 - parse_duration(spec.performance.window) * 1000)
        try:
            world = replace(world, performance=fetch_performance(
                ready_endpoints(namespace, spec.deployment_ref.name), spec.deployment_ref.name, since))
        except CheckError as e:
            world = replace(world, performance_error=e.message)
    if decide.retrain_considered(world) and world.training_name:
        world = replace(world, training=kube.get(API, TRAINING.kind, namespace, world.training_name))
    return world


def _measure(namespace: str, spec: DriftMonitorSpec, serving: Serving, baseline: dict[str, dict]) -> Window:
    """The window: spec.datasetUri against the training data (exact tests), or the servers' live sketches."""
    if not spec.dataset_uri:
        return live_window(namespace, spec, serving, baseline)
    try:
        credentials = storage.credentials_from_secret(namespace, spec.storage)
    except storage.StorageAccessError as e:
        raise CheckError(R.SECRET_NOT_FOUND, str(e)) from e
    report, samples = dataset_window(spec, serving, credentials)
    return Window(report, samples)


def act(world: DriftWorld, plan: DriftPlan, state: MonitorState) -> None:
    """The writes of one check: the gauges, the status (once), then what it records: the retrain count, where the
    next window starts (the baseline ConfigMap), the retrain request's delivery, the Events and the report."""
    obj = world.obj
    namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    _export(namespace, name, world, plan)
    kube.write_status(obj, plan.status)
    for _ in range(plan.retrains):
        metrics.DRIFT_RETRAINS.labels(namespace, name).inc()
    if plan.next_baseline is not None and world.serving is not None:  # the window is recorded: the next one starts here
        state.baseline, state.version = plan.next_baseline, world.serving.version
        keep_baseline(obj, state)
    if plan.deliver is not None:
        deliver_retrain(obj, plan.deliver)
        state.delivered = plan.deliver["value"]
    kube.emit_events(obj, plan.events)
    publish_report(obj, plan.status, Seen(world.serving, plan.report, world.window.sketch if world.window else None),
                   plan.events, state)


@dataclass
class Seen:
    """What one check saw, for the report: the serving version, the decided drift report, the live window."""

    serving: Serving | None = None
    drift: dict | None = None
    live: dict | None = None


def publish_report(obj: dict, status: dict, seen: Seen, events: list[tuple[str, str, str]],
                   state: MonitorState) -> None:
    """At each decision (a decided window or performance verdict, or an event), add the check to the monitor's
    history and write the page and the history to the store (modelloop.report). The history is read from the
    store once per monitor daemon. A report is never worth failing a check: errors are logged and counted."""
    serving = seen.serving
    if serving is not None and seen.drift is not None:
        state.last_window = (serving.version, seen.drift, seen.live)
    decided_performance = any(e.get("value") is not None for e in status.get("performance") or [])
    if serving is None or not (seen.drift or decided_performance or events):
        return
    # The tests and histograms of the last decided window of this version, when this check decided none.
    _, drift, live = (state.last_window if state.last_window and state.last_window[0] == serving.version
                      else (None, None, None))
    md_ = obj["metadata"]
    namespace, name = md_["namespace"], md_["name"]
    where = report_location(serving.base, name)
    try:
        if state.history is None:
            state.history = storage.read_report_history(f"{where}/{HISTORY_FILE}", serving.credentials)
        point = history_point(millis=int(time.time() * 1000), version=serving.version,
                              samples=int(status.get("samples") or 0), drift=seen.drift,
                              performance=status.get("performance") or [], decisions=events)
        state.history = append_history(state.history, point)
        page = render_report(monitor=name, namespace=namespace, deployment=obj["spec"]["deploymentRef"]["name"],
                             version=serving.version, generated=datetime.now(timezone.utc), history=state.history,
                             conditions=status.get("conditions") or [], drift=drift,
                             reference=serving.metadata.get("reference"), live=live)
        storage.write_report(where, {REPORT_FILE: page.encode(), HISTORY_FILE: json.dumps(
            encode_history(state.history), separators=(",", ":")).encode()}, serving.credentials)
    except Exception as e:  # noqa: BLE001
        metrics.DRIFT_CHECK_ERRORS.labels(namespace, name, "ReportUnwritten").inc()
        log.warning("monitor=%s/%s report_unwritten=%s", namespace, name, f"{type(e).__name__}: {e}"[:300])


def performance_url(address: str, model: str, since_ms: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{SKETCH_PORT}/v2/models/{model}/performance?since={since_ms}"


def fetch_performance(addresses: list[str], model: str, since_ms: int,
                      deadline: float = SETTINGS.sketch_deadline_seconds * 3,
                      max_bytes: int = SETTINGS.max_sketch_bytes) -> dict:
    """Live performance as the first pod that answers computes it (each reads every replica's records from
    the store, so one answer is the deployment's). Bounded like the sketches: a deadline and a body size."""
    errors = []
    with endpoints.client(deadline) as http:
        for address in addresses:
            try:
                doc = endpoints.get_json(http, performance_url(address, model, since_ms), max_bytes)
                if not isinstance(doc, dict) or not isinstance(doc.get("versions"), dict):
                    raise ValueError("no 'versions' object")
                return doc["versions"]
            except (httpx.HTTPError, AnswerTooLarge, ValueError) as e:
                errors.append(f"{address}: {type(e).__name__}: {e}"[:300])
    raise CheckError(R.FEEDBACK_UNAVAILABLE, "no pod answered with live performance: " + "; ".join(errors)[:900])


def deliver_retrain(obj: dict, request: dict) -> None:
    """Write a retrain request recorded in status to its ModelTraining (the annotation it acts on). Idempotent: the
    same value is written again after a restart between the status write and this one, and the training acts once
    per value."""
    md_ = obj["metadata"]
    annotations = {RETRAIN_ANNOTATION: request["value"]}
    if request.get("datasetUri"):
        annotations[RETRAIN_DATASET_ANNOTATION] = request["datasetUri"]
    try:
        kube.patch(API, TRAINING.kind, md_["namespace"], request["training"], {"metadata": {"annotations": annotations}})
    except ApiException as e:
        if e.status != 404:
            raise
        log.warning("monitor=%s/%s retrain_undeliverable training=%s (gone)", md_["namespace"], md_["name"],
                    request["training"])


def _export(namespace: str, name: str, world: DriftWorld, plan: DriftPlan) -> None:
    """The check's gauges and error counts: the window's rows and its pods that did not answer, the decided report's
    scores, the performance verdict, and why the check could not run."""
    window = world.window
    if window is not None:
        for e in window.pod_errors:
            metrics.DRIFT_CHECK_ERRORS.labels(namespace, name, "PodUnreachable").inc()
            log.warning("monitor=%s/%s pod_error=%s", namespace, name, e)
        metrics.DRIFT_SAMPLES.labels(namespace, name).set(window.samples)
    if plan.report is not None:
        for f in plan.report["features"]:
            if f["score"] is not None:
                metrics.DRIFT_SCORE.labels(namespace, name, f["name"], f["test"]).set(f["score"])
        metrics.DRIFT_DATASET.labels(namespace, name).set(1 if plan.report["dataset_drift"] else 0)
        metrics.DRIFT_SHARE.labels(namespace, name).set(plan.report["drift_share"])
    if plan.verdict is not None:
        for entry in plan.verdict.entries:
            version = str(entry["version"])
            if entry.get("value") is not None:  # source live, or estimated (without labels)
                metrics.MODEL_PERFORMANCE.labels(namespace, name, version, entry["metric"], entry["source"]).set(
                    entry["value"])
            if entry.get("holdout") is not None:
                metrics.MODEL_PERFORMANCE.labels(namespace, name, version, entry["metric"], "holdout").set(
                    entry["holdout"])
            if entry["source"] == "live":
                metrics.MODEL_PERFORMANCE_LABELLED.labels(namespace, name, version).set(entry["labelled"])
        metrics.MODEL_PERFORMANCE_DROPPED.labels(namespace, name).set(1 if plan.verdict.dropped else 0)
    if plan.error_reason is not None:
        metrics.DRIFT_CHECK_ERRORS.labels(namespace, name, plan.error_reason).inc()


# ----------------------------------------------------------------------------- kopf wiring

_executor: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    """The drift checks' own pool: bounded, separate from kopf's, created on first use."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=SETTINGS.drift_workers, thread_name_prefix="drift-check")
    return _executor


def run_check(namespace: str, name: str, state: MonitorState) -> float | None:
    """One check, in the drift pool; the seconds until the next one, or None when the monitor is gone. The monitor
    is read once, under its lock, and that copy is what the check decides on and writes status against."""
    interval = 60.0
    try:
        with kube.object_lock(KIND, namespace, name):
            obj = kube.get(API, KIND, namespace, name)
            if obj is None:
                return None
            interval = check_interval((obj.get("spec") or {}).get("interval"))
            check(obj, state)
    except kube.Conflict:
        interval = 1.0
    except kopf.PermanentError as e:
        log.error("monitor=%s/%s error=%s", namespace, name, e)
    except Exception as e:  # noqa: BLE001 - a failed check is retried next interval, never fatal
        log.exception("monitor=%s/%s check_failed=%s", namespace, name, e)
        metrics.DRIFT_CHECK_ERRORS.labels(namespace, name, "InternalError").inc()
    return interval


@kopf.daemon(GROUP, VERSION, MONITOR.plural, cancellation_timeout=10)
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
