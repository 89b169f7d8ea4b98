"""The three resources of group modelloop.dev/v1alpha1 as pydantic models: the single source from
which the CRDs are generated and with which the controllers parse what they read."""
from .common import API_VERSION, GROUP, VERSION, Condition
from .deployment import ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus
from .drift import DriftMonitor, DriftMonitorSpec, DriftMonitorStatus
from .training import ModelTraining, ModelTrainingSpec, ModelTrainingStatus, RETRAIN_ANNOTATION

__all__ = [
    "API_VERSION", "GROUP", "VERSION", "Condition", "ModelDeployment", "ModelDeploymentSpec",
    "ModelDeploymentStatus", "DriftMonitor", "DriftMonitorSpec", "DriftMonitorStatus", "ModelTraining",
    "ModelTrainingSpec", "ModelTrainingStatus", "RETRAIN_ANNOTATION",
]
