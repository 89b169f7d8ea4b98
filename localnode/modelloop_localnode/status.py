"""Pod status as kubelet computes it: phase, conditions, restart decisions, termination messages.
Pure functions of container statuses (the `status.containerStatuses[]` shape) and the pod spec."""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

MAX_MESSAGE_BYTES = 4096  # kubelet's cap on a termination message
FALLBACK_LOG_LINES = 80  # FallbackToLogsOnError: last 80 lines ...
FALLBACK_LOG_BYTES = 2048  # ... and at most 2 KiB of them
BACKOFF_INITIAL_S = 10.0
BACKOFF_MAX_S = 300.0
BACKOFF_RESET_S = 600.0  # a container that ran this long starts its back-off afresh


def rfc3339(ts: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if ts is None else ts))


def exit_code(returncode: int) -> int:
    """Popen's -N (killed by signal N) is 128+N, as a shell and the container runtimes report it."""
    return 128 - returncode if returncode < 0 else returncode


def exit_reason(code: int) -> str:
    return "Completed" if code == 0 else "Error"


def restart_policy(container: Mapping, pod_spec: Mapping) -> str:
    """The container's own restartPolicy (sidecars, container restart rules) or the pod's."""
    return container.get("restartPolicy") or pod_spec.get("restartPolicy") or "Always"


def should_restart(container: Mapping, pod_spec: Mapping, code: int, init: bool) -> bool:
    policy = restart_policy(container, pod_spec)
    if init and container.get("restartPolicy") != "Always":
        # a regular init container only ever restarts after a failure, and never under Never
        return code != 0 and policy != "Never"
    return policy == "Always" or (policy == "OnFailure" and code != 0)


def backoff_seconds(crashes: int) -> float:
    """Delay before restart number `crashes` (1 = first restart): immediate, then 10s, 20s, ... 300s."""
    if crashes <= 1:
        return 0.0
    return min(BACKOFF_INITIAL_S * 2 ** (crashes - 2), BACKOFF_MAX_S)


def termination_message(message_file: Path, policy: str, code: int, log_file: Path) -> str:
    try:
        message = message_file.read_bytes()[:MAX_MESSAGE_BYTES].decode(errors="replace")
    except OSError:
        message = ""
    if message or policy != "FallbackToLogsOnError" or code == 0:
        return message
    try:
        lines = log_file.read_bytes().splitlines()[-FALLBACK_LOG_LINES:]
    except OSError:
        return ""
    return b"\n".join(lines)[-FALLBACK_LOG_BYTES:].decode(errors="replace")


def _terminated(status: Mapping) -> Mapping | None:
    return (status.get("state") or {}).get("terminated")


def pod_phase(pod_spec: Mapping, init_statuses: Sequence[Mapping], statuses: Sequence[Mapping],
              terminating: bool = False) -> str:
    """kubelet's getPhase: Pending until init containers succeeded and every container ran once;
    then Running, or Succeeded/Failed when nothing will run again."""
    policy = pod_spec.get("restartPolicy") or "Always"
    init_specs = {c["name"]: c for c in pod_spec.get("initContainers") or []}
    pending_init = False
    for status in init_statuses:
        sidecar = init_specs.get(status["name"], {}).get("restartPolicy") == "Always"
        terminated = _terminated(status)
        if sidecar:
            if not status.get("started") and not terminating:
                pending_init = True
            continue
        if terminated and terminated.get("exitCode") == 0:
            continue
        if terminated and (policy == "Never" or terminating):
            return "Failed"
        pending_init = True
    if pending_init and not terminating:
        return "Pending"
    running = waiting = stopped = succeeded = failed = 0
    for status in statuses:
        state = status.get("state") or {}
        if "running" in state:
            running += 1
        elif "terminated" in state:
            stopped += 1
            if state["terminated"].get("exitCode") == 0:
                succeeded += 1
            else:
                failed += 1
        elif (status.get("lastState") or {}).get("terminated"):
            stopped += 1
        else:
            waiting += 1
    if terminating:
        if running:
            return "Running"
        return "Succeeded" if statuses and succeeded == len(statuses) else "Failed"
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped:
        if policy == "Always":
            return "Running"
        if policy == "OnFailure":
            return "Succeeded" if stopped == succeeded else "Running"
        return "Failed" if failed else "Succeeded"
    return "Pending"


def pod_conditions(pod: Mapping, init_statuses: Sequence[Mapping], statuses: Sequence[Mapping], phase: str,
                   sandbox_ready: bool) -> dict[str, tuple[str, str, str]]:
    """type -> (status, reason, message) of the conditions kubelet owns."""
    terminal = phase in ("Succeeded", "Failed")
    out: dict[str, tuple[str, str, str]] = {}
    out["PodReadyToStartContainers"] = ("True", "", "") if sandbox_ready and not terminal else ("False", "", "")
    init_specs = {c["name"]: c for c in pod["spec"].get("initContainers") or []}
    incomplete = [s["name"] for s in init_statuses
                  if not (init_specs.get(s["name"], {}).get("restartPolicy") == "Always" and s.get("started"))
                  and (_terminated(s) or {}).get("exitCode", 1) != 0]
    if incomplete and not terminal:
        out["Initialized"] = ("False", "ContainersNotInitialized",
                              f"containers with incomplete status: [{' '.join(incomplete)}]")
    else:
        out["Initialized"] = ("True", "", "")
    unready = [s["name"] for s in statuses if not s.get("ready")]
    if terminal:
        out["ContainersReady"] = ("False", "PodCompleted", "")
    elif unready:
        out["ContainersReady"] = ("False", "ContainersNotReady",
                                  f"containers with unready status: [{' '.join(unready)}]")
    else:
        out["ContainersReady"] = ("True", "", "")
    ready = out["ContainersReady"]
    if ready[0] == "True":
        existing = {c["type"]: c.get("status") for c in (pod.get("status") or {}).get("conditions") or []}
        for gate in pod["spec"].get("readinessGates") or []:
            kind = gate["conditionType"]
            if existing.get(kind) != "True":
                message = (f'corresponding condition of pod readiness gate "{kind}" does not exist.'
                           if kind not in existing else
                           f'the status of pod readiness gate "{kind}" is not "True", but {existing[kind]}')
                ready = ("False", "ReadinessGatesNotReady", message)
                break
    elif not terminal:
        ready = ("False", "ContainersNotReady", ready[2])
    out["Ready"] = ready
    return out


def merge_conditions(previous: Mapping[str, Mapping], computed: Mapping[str, tuple[str, str, str]],
                     now: str) -> list[dict]:
    """Conditions in API shape; lastTransitionTime moves only when the status changes."""
    out = []
    for kind, (status, reason, message) in computed.items():
        before = previous.get(kind)
        transition = before["lastTransitionTime"] if before and before.get("status") == status else now
        condition = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": transition}
        if reason:
            condition["reason"] = reason
        if message:
            condition["message"] = message
        out.append(condition)
    return out
