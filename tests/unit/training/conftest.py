from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.fixtures.s3 import S3Bucket

CLASSIFIER = {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 5, "max_depth": 4}}
REGRESSOR = {"class": "sklearn.ensemble.RandomForestRegressor", "params": {"n_estimators": 5, "max_depth": 4}}


def churn_frame(rows: int = 240, seed: int = 0) -> pd.DataFrame:
    """A small classification dataset: two numbers, one text category, a text label."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"tenure": rng.normal(12, 4, rows), "spend": rng.gamma(2.0, 30.0, rows),
                          "plan": rng.choice(["basic", "plus", "pro"], rows)})
    score = (frame["tenure"] - 12) / 4 + (frame["plan"] == "basic") - (frame["spend"] - 60) / 60
    frame["churned"] = np.where(score + rng.normal(0, 0.3, rows) > 0.5, "yes", "no")
    return frame


def price_frame(rows: int = 240, seed: int = 1) -> pd.DataFrame:
    """A small regression dataset: price from size, rooms and a district code."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"size": rng.uniform(30, 150, rows), "rooms": rng.integers(1, 6, rows),
                          "district": rng.choice(["north", "south"], rows)})
    frame["price"] = 3.0 * frame["size"] + 10 * frame["rooms"] + np.where(frame["district"] == "north", 50, 0) \
        + rng.normal(0, 5, rows)
    return frame


def encode(frame: pd.DataFrame, fmt: str) -> bytes:
    if fmt == "csv":
        return frame.to_csv(index=False).encode()
    import io

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


@dataclass
class Place:
    """Where a test keeps its dataset and models: a local folder or an S3 bucket."""

    kind: str
    root: Path
    bucket: S3Bucket | None = None

    def put(self, name: str, data: bytes) -> str:
        if self.bucket is not None:
            return self.bucket.put(f"data/{name}", data)
        path = self.root / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return f"file://{path}"

    def output(self, name: str = "models") -> str:
        return self.bucket.uri(name) if self.bucket is not None else f"file://{self.root}/{name}"


@pytest.fixture
def local(tmp_path: Path) -> Place:
    return Place("file", tmp_path)


@pytest.fixture(params=["file", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    if request.param == "s3":
        return Place("s3", tmp_path, request.getfixturevalue("s3"))
    return Place("file", tmp_path)


ESTIMATORS = {"classifier": CLASSIFIER, "regressor": REGRESSOR}


def make_spec(dataset_uri: str, target: str, output_uri: str, estimator: str | dict[str, Any] = "classifier",
              **dataset: Any) -> dict[str, Any]:
    """A ModelTraining spec (camelCase, as the controller passes it); `estimator` is a name above or a dict."""
    chosen = ESTIMATORS[estimator] if isinstance(estimator, str) else estimator
    return {"dataset": {"uri": dataset_uri, "target": target, **dataset}, "estimator": json.loads(json.dumps(chosen)),
            "validation": {"testSize": 0.25, "seed": 7}, "output": {"uri": output_uri}}


@pytest.fixture
def spec_for():
    return make_spec


@pytest.fixture
def churn() -> pd.DataFrame:
    return churn_frame()


@pytest.fixture
def prices() -> pd.DataFrame:
    return price_frame()


@pytest.fixture
def to_bytes():
    """encode(frame, "csv" | "parquet") -> the file's bytes."""
    return encode
