"""Every name modelloop puts on the Kubernetes API, defined once: the group and version, the kinds and their
plurals, the labels and annotations it writes or reads, its field manager. Pure constants: the API models,
the renderers, the controllers and the kopf registrations all import them from here."""
from __future__ import annotations

from dataclasses import dataclass

GROUP = "modelloop.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "modelloop"


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    singular: str
    short_name: str


TRAINING = Kind("ModelTraining", "modeltrainings", "modeltraining", "mtrain")
DEPLOYMENT = Kind("ModelDeployment", "modeldeployments", "modeldeployment", "mdep")
MONITOR = Kind("DriftMonitor", "driftmonitors", "driftmonitor", "dmon")
KINDS = (TRAINING, DEPLOYMENT, MONITOR)

# Who manages what: the standard label on every child, and the server-side apply field manager.
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "modelloop"
FIELD_MANAGER = "modelloop-operator"

# Labels of the children.
LABEL_TRAINING = f"{GROUP}/training"            # a training Job and its pods: the ModelTraining
LABEL_VERSION = f"{GROUP}/version"              # a training Job: the version it writes
LABEL_DEPLOYMENT = f"{GROUP}/deployment"        # a server Deployment and its pods: the ModelDeployment
LABEL_MONITOR = f"{GROUP}/drift-monitor"        # a drift baseline ConfigMap: the DriftMonitor

# Annotations the operator writes on children.
ANNOTATION_TRIGGER = f"{GROUP}/trigger"         # a training Job: why it runs (Created, SpecChanged, RetrainRequested)
ANNOTATION_GENERATION = f"{GROUP}/generation"   # a training Job: the spec generation it trains
ANNOTATION_MODEL_VERSION = f"{GROUP}/model-version"       # a server pod template: the version it serves
ANNOTATION_MODEL_SHA256 = f"{GROUP}/model-sha256"
ANNOTATION_METADATA_SHA256 = f"{GROUP}/metadata-sha256"
ANNOTATION_MODEL_URI = f"{GROUP}/model-uri"

# Annotations users (or DriftMonitors) write on the three kinds.
RETRAIN_ANNOTATION = f"{GROUP}/retrain-requested"          # a ModelTraining: a new value asks for one run
RETRAIN_DATASET_ANNOTATION = f"{GROUP}/retrain-dataset-uri"  # a ModelTraining: the dataset of that run
PROMOTE_ANNOTATION = f"{GROUP}/promote"                    # a ModelDeployment: promote the challenger now
ABORT_ANNOTATION = f"{GROUP}/abort"                        # a ModelDeployment: reject the challenger now
LABEL_CHALLENGER = f"{GROUP}/challenger-of"                # a challenger Deployment and its pods: the ModelDeployment
RECONCILE_ANNOTATION = f"{GROUP}/reconcile"                # any kind: `disabled` pauses reconciliation
