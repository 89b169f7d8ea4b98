from __future__ import annotations

from typing import Any, Callable

import pytest

from modelloop.artifacts import sha256_bytes
from tests.fixtures.s3 import S3Bucket

EMPTY_SKETCH = {"format": "modelloop.sketch/v1", "rows": 0, "features": []}


def metadata_for(version: int, model: bytes, trusted_types: list[str] | None = None) -> dict[str, Any]:
    """A complete, valid metadata.json for `model` (the artifact format of docs/contracts.md)."""
    return {
        "format": "modelloop.artifact/v1", "version": version, "created": "2026-11-27T08:00:00Z",
        "model": {"file": "model.skops", "format": "skops", "sha256": sha256_bytes(model), "size": len(model),
                  "trustedTypes": trusted_types or []},
        "training": {"name": "iris", "namespace": "default", "uid": "u-1", "generation": 1, "run": f"iris-v{version}"},
        "dataset": {"uri": "file:///data/iris.csv", "format": "csv", "sha256": "0" * 64, "rows": 150},
        "estimator": {"class": "sklearn.linear_model.LogisticRegression", "params": {}},
        "task": "classification",
        "libraries": {"python": "3.11.7"},
        "metric": {"name": "accuracy", "value": 0.9}, "metrics": {"accuracy": 0.9},
        "schema": {"features": [{"name": "x", "dtype": "float64", "categorical": False}],
                   "target": {"name": "y", "dtype": "int64", "classes": [0, 1]}},
        "reference": EMPTY_SKETCH, "predictionReference": EMPTY_SKETCH,
    }


@pytest.fixture
def make_metadata() -> Callable[..., dict[str, Any]]:
    return metadata_for


@pytest.fixture(params=["file", "pvc", "s3"])
def output_uri(request: pytest.FixtureRequest, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty output location on each kind of store."""
    if request.param == "file":
        return f"file://{tmp_path}/models/iris"
    if request.param == "pvc":
        monkeypatch.setenv("MODELLOOP_PVC_ROOT", str(tmp_path / "pvc"))
        return "pvc://models-claim/iris"
    bucket: S3Bucket = request.getfixturevalue("s3")
    return bucket.uri("models/iris")
