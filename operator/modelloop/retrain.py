"""A DriftMonitor's decisions, pure: its pace, whether a training lets it retrain, whether to request a retrain
now, and the one-line summary of a window. The controller (controllers/drift.py) measures and acts."""
from __future__ import annotations

import re
from datetime import datetime

from pydantic import ValidationError

from .api.drift import MIN_INTERVAL_SECONDS, DriftMonitorSpec
from .api.training import RetrainSpec
from .meta import parse_duration

TOP_FEATURES = 5


def check_interval(text: str | None) -> float:
    """Seconds between checks: spec.interval, never below the schema's minimum (objects stored before
    the schema had one keep a sane pace too)."""
    try:
        return max(float(MIN_INTERVAL_SECONDS), parse_duration(text or "60s"))
    except ValueError:
        return 60.0


def retrain_allowed(training: dict, monitor: str, labels: dict[str, str]) -> bool:
    """Whether the ModelTraining's spec.retrain lets this DriftMonitor request a retrain (default: no)."""
    try:
        rights = RetrainSpec.model_validate((training.get("spec") or {}).get("retrain") or {})
    except ValidationError:
        return False
    return rights.allows(monitor, labels)


def retrain_decision(spec: DriftMonitorSpec, consecutive: int, last_retrain: str | None, training: dict | None,
                     now: datetime, monitor: str = "", labels: dict[str, str] | None = None,
                     deployment_status: dict | None = None) -> tuple[bool, str]:
    """Whether to request a retrain now, and why (not). Not while the deployment analyses a challenger: that is
    the last retrain being judged on live traffic, and a newer version would replace it before it is decided."""
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
    rollout = (deployment_status or {}).get("rollout") or {}
    if rollout.get("phase") in ("Shadowing", "Canary", "Promoting"):
        return False, (f"version {rollout.get('challenger')} is being judged on live traffic "
                       f"({rollout['phase']}); a retrain waits for its decision")
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


def retrain_outcome(monitor_status: dict, deployment_status: dict) -> dict | None:
    """What became of the version trained after this monitor's last retrain request, when the deployment's live
    analysis (or the watch after its promotion) rejected it and the monitor has not said so yet: the retrain did
    not help, the champion keeps serving. None otherwise."""
    asked = monitor_status.get("lastRetrainTime")
    rejected = ((deployment_status.get("rollout") or {}).get("rejected") or [None])[-1]
    if not asked or not rejected or not rejected.get("time"):
        return None
    if datetime.fromisoformat(rejected["time"].replace("Z", "+00:00")) < datetime.fromisoformat(
            str(asked).replace("Z", "+00:00")):
        return None
    if (monitor_status.get("retrainOutcome") or {}).get("version") == rejected["version"]:
        return None
    rolled_back = (rejected.get("message") or "").startswith("rolled back")
    return {"version": rejected["version"], "result": "rolledBack" if rolled_back else "rejected", "time": rejected["time"],
            "message": f"the retrained version {rejected['version']} did not help: {rejected.get('message', '')}"[:1024]}
