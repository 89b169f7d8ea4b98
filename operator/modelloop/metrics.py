"""Prometheus metrics of the operator, served on --metrics-port. One place for every name; the
chart's alert rules (charts/modelloop/templates/prometheusrule.yaml) use these names."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LEADER = Gauge("modelloop_operator_leader", "1 while this replica holds the leader Lease and reconciles, else 0.")

TRAINING_RUNS = Counter("modelloop_training_runs_total", "Training runs that finished, by result.",
                        ["namespace", "training", "result"])
TRAINING_RUN_DURATION = Histogram("modelloop_training_run_duration_seconds",
                                  "Wall time of finished training runs, from the Job's start to the result, by result.",
                                  ["namespace", "training", "result"],
                                  buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200))
TRAINING_VERSION_METRIC = Gauge("modelloop_training_version_metric",
                                "Hold-out metrics of each good version, by metric name (accuracy, f1, r2, ...).",
                                ["namespace", "training", "version", "metric"])
TRAINING_VERSIONS_PRUNED = Counter("modelloop_training_versions_pruned_total",
                                   "Versions deleted from the store by retention (spec.output.keepVersions).",
                                   ["namespace", "training"])
TRAINING_LATEST_VERSION = Gauge("modelloop_training_latest_version", "Latest good version of a ModelTraining.",
                                ["namespace", "training"])
DEPLOYMENT_VERSION = Gauge("modelloop_deployment_model_version", "Model version a ModelDeployment serves.",
                           ["namespace", "deployment"])
ROLLBACKS = Counter("modelloop_deployment_rollbacks_total", "Rollouts rolled back after their progress deadline.",
                    ["namespace", "deployment"])
PROMOTIONS = Counter("modelloop_deployment_promotions_total", "New versions promoted, or held back, by outcome.",
                     ["namespace", "deployment", "outcome"])
ROLLOUT_PHASE = Gauge("modelloop_rollout_phase", "1 for the phase of a ModelDeployment's rollout (Stable, Shadowing, "
                      "Canary, Promoting, Watching), 0 for the others.", ["namespace", "deployment", "phase"])
ROLLOUT_SHARE = Gauge("modelloop_rollout_challenger_share", "Share of user traffic the challenger serves.",
                      ["namespace", "deployment"])
ROLLOUT_GATE = Gauge("modelloop_rollout_gate_value", "Current value of an analysis gate (errorRate, latency, agreement, "
                     "performance), beside its threshold.", ["namespace", "deployment", "gate"])
ROLLOUT_GATE_THRESHOLD = Gauge("modelloop_rollout_gate_threshold", "Threshold of an analysis gate.",
                               ["namespace", "deployment", "gate"])
ROLLOUT_GATE_PASSING = Gauge("modelloop_rollout_gate_passing", "1 when a gate passes (or is skipped), 0 when it fails, "
                             "-1 while it waits for data.", ["namespace", "deployment", "gate"])
ROLLOUT_REQUESTS = Gauge("modelloop_rollout_requests", "Requests each role answered in the analysis window (or the "
                         "watch), by role (champion, challenger).", ["namespace", "deployment", "role"])
ROLLOUT_ERROR_RATE = Gauge("modelloop_rollout_error_rate", "Error rate (5xx) of each role in the analysis window.",
                           ["namespace", "deployment", "role"])
ROLLOUT_P99 = Gauge("modelloop_rollout_p99_seconds", "p99 latency of each role in the analysis window.",
                    ["namespace", "deployment", "role"])
DRIFT_SCORE = Gauge("modelloop_drift_score", "Drift score of a feature in the last window.",
                    ["namespace", "monitor", "feature", "test"])
DRIFT_DATASET = Gauge("modelloop_drift_dataset_drift", "1 when the last window drifted as a whole, else 0.",
                      ["namespace", "monitor"])
DRIFT_SHARE = Gauge("modelloop_drift_share", "Share of drifted features in the last window.", ["namespace", "monitor"])
MODEL_PERFORMANCE = Gauge("modelloop_model_performance",
                          "A version's performance by source: live (labels fed back, in the monitor's window), "
                          "estimated (accuracy from calibrated confidence, without labels) or holdout (the "
                          "training's validation split).",
                          ["namespace", "monitor", "version", "metric", "source"])
MODEL_PERFORMANCE_DROPPED = Gauge("modelloop_model_performance_dropped",
                                  "1 when the served version's live performance dropped significantly below its "
                                  "hold-out value (the monitor's test), else 0.", ["namespace", "monitor"])
MODEL_PERFORMANCE_LABELLED = Gauge("modelloop_model_performance_labelled",
                                   "Labelled predictions of a version in the monitor's window.",
                                   ["namespace", "monitor", "version"])
DRIFT_SAMPLES = Gauge("modelloop_drift_window_samples", "Rows in the last window.", ["namespace", "monitor"])
DRIFT_RETRAINS = Counter("modelloop_drift_retrains_total", "Retrain requests made by a DriftMonitor.",
                         ["namespace", "monitor"])
DRIFT_CHECK_ERRORS = Counter("modelloop_drift_check_errors_total", "Drift checks that could not complete, by reason.",
                             ["namespace", "monitor", "reason"])


def forget_training_version(namespace: str, training: str, version: int) -> None:
    """Drop the series of a version deleted from the store (modelloop_training_version_metric): retention
    bounds them as it bounds the store."""
    labels = {"namespace": namespace, "training": training, "version": str(version)}
    for family in TRAINING_VERSION_METRIC.collect():
        for sample in family.samples:
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                TRAINING_VERSION_METRIC.remove(namespace, training, str(version), sample.labels["metric"])
