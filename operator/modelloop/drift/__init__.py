"""Drift: sketches of feature distributions (the format of docs/contracts.md), the statistics over them
and the decisions. See docs/drift.md."""
from .detect import DEFAULT_THRESHOLDS, DriftConfig, DriftReport, FeatureDrift, detect, detect_raw
from .sketch import (
    FORMAT, LiveSketch, SketchError, build_reference, count_into, empty_like, merge, merge_all, validate, window,
)

__all__ = [
    "DEFAULT_THRESHOLDS", "FORMAT", "DriftConfig", "DriftReport", "FeatureDrift", "LiveSketch", "SketchError",
    "build_reference", "count_into", "detect", "detect_raw", "empty_like", "merge", "merge_all", "validate", "window",
]
