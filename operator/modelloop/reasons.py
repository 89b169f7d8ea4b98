"""Every condition and Event reason the operator writes, defined once, with what it means.

The controllers use these members (a StrEnum member is its string); the reason tables of docs/api.md are
generated from the ROWS below (`python -m modelloop.reasons`, checked by tests/unit/operator/test_reasons.py),
so the documentation cannot drift from the code. A test also fails when a controller writes a reason as a
string literal.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import StrEnum


class TrainingReason(StrEnum):
    VERSION_AVAILABLE = "VersionAvailable"
    TRAINING = "Training"
    NO_VERSION = "NoVersion"
    INVALID_SPEC = "InvalidSpec"
    VALID = "Valid"
    RUN_IN_PROGRESS = "RunInProgress"
    RUN_QUEUED = "RunQueued"
    IDLE = "Idle"
    RUN_SUCCEEDED = "RunSucceeded"
    RUN_FAILED = "RunFailed"
    STORAGE_UNAVAILABLE = "StorageUnavailable"


class DeploymentReason(StrEnum):
    SERVING = "Serving"
    ROLLING_OUT = "RollingOut"
    ROLLOUT_COMPLETE = "RolloutComplete"
    ROLLOUT_FAILED = "RolloutFailed"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    PROGRESSING = "Progressing"
    IDLE = "Idle"
    WAITING_FOR_TRAINING = "WaitingForTraining"
    TRAINING_NOT_FOUND = "TrainingNotFound"
    ARTIFACT_UNAVAILABLE = "ArtifactUnavailable"
    SECRET_NOT_FOUND = "SecretNotFound"
    STORAGE_UNAVAILABLE = "StorageUnavailable"
    MINIMUM_REPLICAS_AVAILABLE = "MinimumReplicasAvailable"
    MINIMUM_REPLICAS_UNAVAILABLE = "MinimumReplicasUnavailable"
    ANALYSING = "Analysing"


class DriftReason(StrEnum):
    CHECKED = "Checked"
    INSUFFICIENT_SAMPLES = "InsufficientSamples"
    NO_SERVING_VERSION = "NoServingVersion"
    WAITING_FOR_ROLLOUT = "WaitingForRollout"
    DEPLOYMENT_NOT_FOUND = "DeploymentNotFound"
    REFERENCE_UNAVAILABLE = "ReferenceUnavailable"
    NO_READY_PODS = "NoReadyPods"
    SKETCH_UNAVAILABLE = "SketchUnavailable"
    INVALID_SKETCH = "InvalidSketch"
    DATASET_UNAVAILABLE = "DatasetUnavailable"
    DATASET_INVALID = "DatasetInvalid"
    SECRET_NOT_FOUND = "SecretNotFound"
    DATASET_DRIFT = "DatasetDrift"
    NO_DRIFT = "NoDrift"
    UNDECIDED = "Undecided"
    PERFORMANCE_DROPPED = "PerformanceDropped"
    PERFORMANCE_HOLDS = "PerformanceHolds"
    PERFORMANCE_UNDECIDED = "PerformanceUndecided"
    FEEDBACK_UNAVAILABLE = "FeedbackUnavailable"


class TrainingEvent(StrEnum):
    RUN_STARTED = "RunStarted"
    RUN_SUCCEEDED = "RunSucceeded"
    RUN_FAILED = "RunFailed"
    RETRAIN_REFUSED = "RetrainRefused"
    VERSIONS_PRUNED = "VersionsPruned"
    PRUNE_FAILED = "PruneFailed"


class DeploymentEvent(StrEnum):
    PROMOTED = "Promoted"
    PROMOTION_HELD = "PromotionHeld"
    ROLLOUT_COMPLETE = "RolloutComplete"
    ROLLED_BACK = "RolledBack"
    ROLLBACK_FAILED = "RollbackFailed"
    CHALLENGER_STARTED = "ChallengerStarted"
    CHALLENGER_PROMOTED = "ChallengerPromoted"
    CHALLENGER_REJECTED = "ChallengerRejected"
    CHALLENGER_REPLACED = "ChallengerReplaced"
    CANARY_STEPPED = "CanaryStepped"
    NO_CHALLENGER = "NoChallenger"


class DriftEvent(StrEnum):
    DRIFT_DETECTED = "DriftDetected"
    DRIFT_RESOLVED = "DriftResolved"
    REFERENCE_CHANGED = "ReferenceChanged"
    RETRAIN_REQUESTED = "RetrainRequested"
    RETRAIN_SKIPPED = "RetrainSkipped"
    RETRAIN_DENIED = "RetrainDenied"
    PERFORMANCE_DROPPED = "PerformanceDropped"
    PERFORMANCE_RECOVERED = "PerformanceRecovered"
    RETRAIN_DID_NOT_HELP = "RetrainDidNotHelp"


class RunTrigger(StrEnum):
    """Why a training run started (`status.runs[].trigger`, the Job's modelloop.dev/trigger annotation)."""

    CREATED = "Created"
    SPEC_CHANGED = "SpecChanged"
    RETRAIN_REQUESTED = "RetrainRequested"


@dataclass(frozen=True)
class Row:
    """One row of a condition table: a condition type, its status, the reasons it can carry, what it means."""

    condition: str
    status: str
    reasons: tuple[StrEnum, ...]
    meaning: str = ""


T, D, M = TrainingReason, DeploymentReason, DriftReason
ROWS: dict[str, list[Row]] = {
    "ModelTraining": [
        Row("Ready", "True", (T.VERSION_AVAILABLE,),
            "a good version exists (`status.latestVersion`); the message says when the last run failed"),
        Row("Ready", "False", (T.TRAINING, T.NO_VERSION, T.INVALID_SPEC),
            "the first run is in progress; no run succeeded yet; the spec cannot be trained"),
        Row("Reconciling", "True/False", (T.RUN_IN_PROGRESS, T.RUN_QUEUED, T.STORAGE_UNAVAILABLE, T.IDLE),
            "a run is training; a retrain request waits for it; the store of `spec.output.uri` did not answer "
            "(unreachable, timed out, access refused): a wanted run cannot start, or a finished run's version cannot "
            "be checked yet (the run stays `Running`), and the next reconcile tries again (a Warning Event); "
            "nothing to do"),
        Row("Stalled", "True/False", (T.INVALID_SPEC, T.VALID),
            "the estimator class or its params are rejected (checked by constructing the estimator before any "
            "Job starts), or a Secret or store named by the spec cannot be used"),
        Row("Succeeded / Failed", "True/False", (T.RUN_SUCCEEDED, T.RUN_FAILED),
            "outcome of the most recent finished run; Failed's message is the trainer's one-line reason"),
    ],
    "ModelDeployment": [
        Row("Ready", "True", (D.SERVING,),
            "the desired version is rolled out and Available (the message mentions a held-back candidate)"),
        Row("Ready", "False", (D.ROLLING_OUT, D.ROLLOUT_FAILED, D.WAITING_FOR_TRAINING, D.TRAINING_NOT_FOUND,
                               D.ARTIFACT_UNAVAILABLE, D.SECRET_NOT_FOUND, D.STORAGE_UNAVAILABLE),
            "a version is rolling out; it failed with nothing to roll back to; no version can be served yet "
            "(`ArtifactUnavailable`: the version is missing or fails its checks; `StorageUnavailable`: the store did "
            "not answer, retried by itself)"),
        Row("Available", "True/False", (D.MINIMUM_REPLICAS_AVAILABLE, D.MINIMUM_REPLICAS_UNAVAILABLE),
            "mirrors the child Deployment"),
        Row("Progressing", "True/False", (D.ROLLING_OUT, D.ROLLOUT_COMPLETE, D.WAITING_FOR_TRAINING,
                                          D.TRAINING_NOT_FOUND, D.ARTIFACT_UNAVAILABLE, D.SECRET_NOT_FOUND,
                                          D.STORAGE_UNAVAILABLE),
            "a version is being rolled out; or why none can be"),
        Row("Reconciling", "True/False", (D.ROLLING_OUT, D.ANALYSING, D.IDLE, D.WAITING_FOR_TRAINING,
                                          D.TRAINING_NOT_FOUND, D.ARTIFACT_UNAVAILABLE, D.SECRET_NOT_FOUND,
                                          D.STORAGE_UNAVAILABLE),
            "True while work is in progress (a rollout, a first version awaited, a challenger analysed on live "
            "traffic or a new champion watched: `Analysing`, with what the analysis is doing); `StorageUnavailable` "
            "while serving: the served version stays, a newer candidate waits until the store answers (a Warning "
            "Event)"),
        Row("Stalled", "True/False", (D.PROGRESS_DEADLINE_EXCEEDED, D.TRAINING_NOT_FOUND, D.SECRET_NOT_FOUND,
                                      D.ARTIFACT_UNAVAILABLE, D.WAITING_FOR_TRAINING, D.STORAGE_UNAVAILABLE,
                                      D.PROGRESSING, D.SERVING),
            "True when a user must act: a rollout failed with nothing to roll back to, or a reference is wrong"),
    ],
    "DriftMonitor": [
        Row("Ready", "True", (M.CHECKED, M.INSUFFICIENT_SAMPLES, M.NO_SERVING_VERSION, M.WAITING_FOR_ROLLOUT),
            "the last check ran, or waits for `minSamples` rows, a first version or the pods of a new one"),
        Row("Ready", "False", (M.DEPLOYMENT_NOT_FOUND, M.REFERENCE_UNAVAILABLE, M.NO_READY_PODS,
                               M.SKETCH_UNAVAILABLE, M.INVALID_SKETCH, M.DATASET_UNAVAILABLE, M.DATASET_INVALID,
                               M.SECRET_NOT_FOUND),
            "the check could not run; nothing is decided"),
        Row("DriftDetected", "True/False", (M.DATASET_DRIFT, M.NO_DRIFT, M.UNDECIDED),
            "the message lists the top drifted features with their scores"),
        Row("PerformanceDegraded", "True/False", (M.PERFORMANCE_DROPPED, M.PERFORMANCE_HOLDS, M.PERFORMANCE_UNDECIDED,
                                                  M.FEEDBACK_UNAVAILABLE),
            "present when the deployment has spec.feedback: live performance of the served version against its "
            "hold-out value, with the interval and the labelled count"),
    ],
}
EVENTS: dict[str, type[StrEnum]] = {"ModelTraining": TrainingEvent, "ModelDeployment": DeploymentEvent,
                                    "DriftMonitor": DriftEvent}
# Condition reasons that need someone's attention: their transitions are Warning events.
PROBLEMS = frozenset({D.ROLLOUT_FAILED, D.PROGRESS_DEADLINE_EXCEEDED, D.TRAINING_NOT_FOUND, D.ARTIFACT_UNAVAILABLE,
                      D.SECRET_NOT_FOUND, D.STORAGE_UNAVAILABLE, T.INVALID_SPEC, T.NO_VERSION})


def table(kind: str) -> str:
    """The Markdown condition table of a kind, as docs/api.md shows it."""
    lines = ["| condition | status | reasons | meaning |", "|---|---|---|---|"]
    lines += [f"| {r.condition} | {r.status} | {', '.join(f'`{x}`' for x in r.reasons)} | {r.meaning} |"
              for r in ROWS[kind]]
    return "\n".join(lines)


def events_line(kind: str) -> str:
    return "Events: " + ", ".join(f"`{e}`" for e in EVENTS[kind]) + "."


if __name__ == "__main__":
    for kind in ROWS:
        sys.stdout.write(f"{kind}\n\n{table(kind)}\n\n{events_line(kind)}\n\n")
