"""One training run: spec -> checked dataset -> fitted model -> metrics and sketches -> a new version.

Order matters: everything that can be checked without fitting (spec, estimator and params, output
store and version, dataset columns and types) is checked first.
"""
from __future__ import annotations

import importlib
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Mapping, TypeVar

from modelloop.artifacts import (
    MODEL_FILE, ArtifactMetadata, InvalidUriError, StorageError, UntrustedTypeError, open_store, serialize_model,
    sha256_bytes,
)
from modelloop.artifacts import VersionExistsError as StoreVersionExistsError
from modelloop.artifacts.metadata import TrainingIdentity
from modelloop.drift.sketch import build_reference

from .dataset import Columns, read_dataset, resolve_columns, schema_dtype
from .errors import DatasetInvalidError, FitError, OutputError, SpecError, VersionExistsError
from .estimator import build_estimator, build_model, learned_categories
from .evaluate import evaluate, primary_metric, validation_predictions
from .logs import log_event
from .spec import parse_spec

T = TypeVar("T")


def train(spec: Mapping[str, Any], *, version: int, identity: Mapping[str, Any]) -> dict[str, Any]:
    """Train the spec's model and commit it as `<spec.output.uri>/v<version>`; returns its metadata.

    Raises a TrainingError subclass (see errors.py) naming what to fix.
    """
    parsed = parse_spec(spec)
    who = _identity(identity)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SpecError(f"version {version!r} is not a positive integer")
    estimator, params, task = build_estimator(parsed.estimator.class_name, parsed.estimator.params,
                                              seed=parsed.validation.seed)
    metric = primary_metric(parsed.validation.metric, task, parsed.estimator.class_name)
    try:
        store = open_store(parsed.output.uri, field="spec.output.uri")
    except InvalidUriError as exc:
        raise SpecError(str(exc)) from None
    version_uri = store.version_uri(version)
    if version in _committed(store):
        raise VersionExistsError(f"{version_uri} already exists; versions are immutable, a run needs a new one")

    with _step("dataset.read", uri=parsed.dataset.uri) as info:
        dataset = read_dataset(parsed.dataset)
        columns = resolve_columns(dataset, parsed.dataset, task)
        info.update(format=dataset.format, rows=len(dataset.frame), features=len(columns.features),
                    categorical=len(columns.categorical), sha256=dataset.sha256)
    x_train, x_valid, y_train, y_valid = _split(dataset.frame, columns, task, parsed.validation.test_size,
                                                parsed.validation.seed)
    model = build_model(estimator, columns.categorical)
    # What does not need the fitted model runs beside the fit, which spends its time in native code
    # that releases the GIL: the reference sketch of the training features, and importing skops
    # (whose import builds its trusted-type list by importing every scikit-learn estimator).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="beside-fit") as pool:
        training_columns = {c: x_train[c].to_numpy() for c in columns.features}
        reference = pool.submit(_timed, "sketch.reference", build_reference, training_columns,
                                categorical=columns.categorical)
        pool.submit(importlib.import_module, "skops.io")
        with _step("fit", estimator=parsed.estimator.class_name, rows=len(x_train)):
            try:
                model.fit(x_train, y_train)
            except Exception as exc:  # anything the estimator raises is a property of data + params
                raise FitError(f"fitting {parsed.estimator.class_name} failed: {type(exc).__name__}: {exc}") from None
        with _step("evaluate", rows=len(x_valid)) as info:
            try:
                predictions, probabilities = validation_predictions(model, parsed.estimator.class_name, x_valid)
            except Exception as exc:
                raise FitError(f"predicting the validation split failed: {type(exc).__name__}: {exc}") from None
            metrics = evaluate(model, x_valid, y_valid, predictions, task, metric, probabilities)
            info.update(metric=metric, value=metrics[metric])
        with _step("sketch.predictions"):
            prediction_reference = build_reference({columns.target: predictions},
                                                   categorical=[columns.target] if task == "classification" else ())
        reference = reference.result()
    with _step("serialize") as info:
        try:
            model_bytes, trusted_types = serialize_model(model)
        except UntrustedTypeError as exc:
            raise FitError(f"the fitted model cannot be stored safely: {exc}") from None
        model_sha256 = sha256_bytes(model_bytes)
        info.update(bytes=len(model_bytes), sha256=model_sha256)

    metadata = ArtifactMetadata.model_validate({
        "version": version,
        "created": datetime.now(timezone.utc),
        "model": {"file": MODEL_FILE, "format": "skops", "sha256": model_sha256, "size": len(model_bytes),
                  "trustedTypes": trusted_types},
        "training": who,
        "dataset": {"uri": dataset.uri, "format": dataset.format, "sha256": dataset.sha256,
                    "rows": len(dataset.frame)},
        "estimator": {"class": parsed.estimator.class_name, "params": params},
        "task": task,
        "libraries": _libraries(),
        "metric": {"name": metric, "value": metrics[metric]},
        "metrics": metrics,
        "schema": _schema(model, dataset.frame, columns, task),
        "reference": reference,
        "predictionReference": prediction_reference,
    }).wire()
    with _step("commit", uri=version_uri):
        try:
            store.commit_version(version, {MODEL_FILE: model_bytes}, metadata)
        except StoreVersionExistsError as exc:
            raise VersionExistsError(str(exc)) from None
        except StorageError as exc:
            raise OutputError(f"spec.output.uri: {exc}") from None
    return metadata


def _committed(store: Any) -> list[int]:
    try:
        return store.versions()
    except StorageError as exc:
        raise OutputError(f"spec.output.uri: {exc}") from None


def _identity(identity: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return TrainingIdentity.model_validate(dict(identity)).model_dump(exclude_none=True)
    except Exception as exc:
        raise SpecError(f"training identity is invalid: {exc}") from None


def _split(frame: Any, columns: Columns, task: str, test_size: float, seed: int) -> tuple[Any, Any, Any, Any]:
    """Hold out `test_size` of the rows; stratified by class for classification when every class can be."""
    from sklearn.model_selection import train_test_split

    features, target = frame[columns.features], frame[columns.target]
    if task == "classification":
        try:
            return train_test_split(features, target, test_size=test_size, random_state=seed, stratify=target)
        except ValueError as exc:  # a class too rare to appear on both sides
            log_event("split.unstratified", reason=str(exc))
    try:
        return train_test_split(features, target, test_size=test_size, random_state=seed)
    except ValueError as exc:
        raise DatasetInvalidError(f"cannot hold out spec.validation.testSize={test_size} of {len(frame)} rows: "
                                  f"{exc}") from None


def _schema(model: Any, frame: Any, columns: Columns, task: str) -> dict[str, Any]:
    categories = learned_categories(model)
    features = []
    for name in columns.features:
        feature: dict[str, Any] = {"name": name, "dtype": schema_dtype(frame[name]),
                                   "categorical": name in columns.categorical}
        if name in categories:
            feature["categories"] = categories[name]
        features.append(feature)
    target: dict[str, Any] = {"name": columns.target, "dtype": schema_dtype(frame[columns.target])}
    if task == "classification":
        target["classes"] = model.classes_.tolist()
    return {"features": features, "target": target}


def _libraries() -> dict[str, str]:
    import numpy
    import sklearn
    import skops

    return {"python": platform.python_version(), "scikit-learn": sklearn.__version__,
            "numpy": numpy.__version__, "skops": skops.__version__}


def _timed(event: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    with _step(event):
        return function(*args, **kwargs)


@contextmanager
def _step(event: str, **fields: Any) -> Iterator[dict[str, Any]]:
    """Log one line when a step ends, with its duration and what it found (`info`)."""
    info: dict[str, Any] = dict(fields)
    started = time.perf_counter()
    yield info
    log_event(event, seconds=round(time.perf_counter() - started, 3), **info)
