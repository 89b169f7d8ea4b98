"""One training run: spec -> checked dataset -> fitted model -> metrics and sketches -> a new version.

Order matters: everything that can be checked without fitting (spec, estimator and params, output
store and version, dataset columns and types) is checked before the fit.
"""
from __future__ import annotations

import importlib
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Mapping, TypeVar

from modelloop.api.training import ModelTrainingSpec
from modelloop.artifacts import (
    MODEL_FILES, ONNX_FILE, ArtifactMetadata, ArtifactStore, InvalidUriError, StorageError, UntrustedTypeError,
    open_store, serialize_model, sha256_bytes,
)
from modelloop.artifacts import VersionExistsError as StoreVersionExistsError
from modelloop.artifacts.estimator_state import run_in_one_job
from modelloop.artifacts.metadata import TrainingIdentity
from modelloop.drift.sketch import build_reference
from modelloop.outcomes.cbpe import fit_calibration

from . import boosting
from .dataset import Columns, Dataset, read_dataset, resolve_columns, schema_dtype
from .errors import DatasetInvalidError, FitError, OutputError, SpecError, VersionExistsError, describe_exception
from .estimator import ESTIMATOR_STEP, Task, build_estimator, build_model, learned_categories
from .evaluate import evaluate, primary_metric, validation_predictions
from .onnx_export import OnnxExport, export_onnx
from .onnx_trees import is_tree_model
from ..runtime import log_event
from .spec import parse_spec

T = TypeVar("T")


@dataclass(frozen=True)
class Split:
    x_train: Any
    x_valid: Any
    y_train: Any
    y_valid: Any


@dataclass(frozen=True)
class StoredModel:
    """The model file of the version: its bytes, format (metadata.json's model.format) and, for skops, the
    types skops does not trust by default (for information)."""

    data: bytes
    format: str
    trusted_types: list[str]

    @property
    def file(self) -> str:
        return MODEL_FILES[self.format]


@dataclass(frozen=True)
class Outcome:
    """What a fit produced, besides the model itself."""

    metrics: dict[str, float]
    reference: dict[str, Any]
    prediction_reference: dict[str, Any]
    calibration: dict[str, Any] | None = None  # classifiers with predict_proba (modelloop.outcomes.cbpe)
    # the model's answers on the hold-out rows, which the ONNX parity check reuses instead of predicting again
    holdout_answers: tuple[Any, Any | None] | None = None


def train(spec: Mapping[str, Any], *, version: int, identity: Mapping[str, Any]) -> dict[str, Any]:
    """Train the spec's model and commit it as `<spec.output.uri>/v<version>`; returns its metadata.

    Raises a TrainingError subclass (see errors.py) naming what to fix.
    """
    parsed = parse_spec(spec)
    who = _identity(identity)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SpecError(f"version {version!r} is not a positive integer")
    class_path = parsed.estimator.class_name
    estimator, params, task = build_estimator(class_path, parsed.estimator.params, seed=parsed.validation.seed)
    metric = primary_metric(parsed.validation.metric, task, class_path)
    store = _output_store(parsed.output.uri, version)

    with _step("dataset.read", uri=parsed.dataset.uri) as info:
        dataset = read_dataset(parsed.dataset)
        columns = resolve_columns(dataset, parsed.dataset, task)
        info.update(format=dataset.format, rows=len(dataset.frame), features=len(columns.features),
                    categorical=len(columns.categorical), sha256=dataset.sha256)
    split = _split(dataset.frame, columns, task, parsed.validation.test_size, parsed.validation.seed)
    model = build_model(estimator, columns.categorical)
    outcome = _fit_and_evaluate(model, class_path, split, columns, task, metric)
    with _step("serialize") as info:
        stored = _serialize(model, class_path)
        info.update(format=stored.format, bytes=len(stored.data))

    schema = _schema(model, dataset.frame, columns, task)
    with _step("onnx.export") as info:
        exported = export_onnx(model, schema["features"], task, split.x_valid, outcome.holdout_answers)
        parity = exported.info.get("parity") or {}
        info.update(converted=exported.data is not None, bytes=len(exported.data or b""),
                    max_diff=parity.get("maxDiff"), skipped=exported.skipped)
    if exported.data is None and boosting.is_boosting(class_path):
        raise FitError(f"{class_path} models are served through model.onnx only, and this one has none: "
                       f"{exported.skipped} (docs/artifacts.md); no version was written")
    metadata = _metadata(parsed, version, who, stored, params, task, metric, dataset, schema, outcome, exported)
    files = {stored.file: stored.data, **({ONNX_FILE: exported.data} if exported.data is not None else {})}
    with _step("commit", uri=store.version_uri(version), sha256=metadata["model"]["sha256"]):
        try:
            store.commit_version(version, files, metadata)
        except StoreVersionExistsError as exc:
            raise VersionExistsError(str(exc)) from None
        except StorageError as exc:
            raise OutputError(f"spec.output.uri: {exc}") from None
    return metadata


def _serialize(model: Any, class_path: str) -> StoredModel:
    """XGBoost's and LightGBM's models in their own format (boosting.py), scikit-learn's with skops."""
    if boosting.is_boosting(class_path):
        data, model_format = boosting.native_model(getattr(model, "named_steps", {}).get(ESTIMATOR_STEP, model))
        return StoredModel(data, model_format, [])
    run_in_one_job(model)  # fitted with the spec's n_jobs; served by one prediction thread (docs/security.md)
    try:
        data, trusted_types = serialize_model(model)
    except UntrustedTypeError as exc:
        raise FitError(f"the fitted model cannot be stored safely: {exc}") from None
    return StoredModel(data, "skops", trusted_types)


def _output_store(uri: str, version: int) -> ArtifactStore:
    """The output store, checked to be reachable and not to hold `version` already (before any fit)."""
    try:
        store = open_store(uri, field="spec.output.uri")
        committed = store.versions()
    except InvalidUriError as exc:
        raise SpecError(str(exc)) from None
    except StorageError as exc:
        raise OutputError(f"spec.output.uri: {exc}") from None
    if version in committed:
        raise VersionExistsError(f"{store.version_uri(version)} already exists; versions are immutable, "
                                 f"a run needs a new one")
    return store


def _identity(identity: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return TrainingIdentity.model_validate(dict(identity)).model_dump(exclude_none=True)
    except Exception as exc:
        raise SpecError(f"training identity is invalid: {exc}") from None


def _split(frame: Any, columns: Columns, task: Task, test_size: float, seed: int) -> Split:
    """Hold out `test_size` of the rows; stratified by class for classification when every class can be."""
    from sklearn.model_selection import train_test_split

    features, target = frame[columns.features], frame[columns.target]
    if task == "classification":
        try:
            return Split(*train_test_split(features, target, test_size=test_size, random_state=seed,
                                           stratify=target))
        except ValueError as exc:  # a class too rare to appear on both sides
            log_event("split.unstratified", reason=describe_exception(exc))
    try:
        return Split(*train_test_split(features, target, test_size=test_size, random_state=seed))
    except ValueError as exc:
        raise DatasetInvalidError(f"cannot hold out spec.validation.testSize={test_size} of {len(frame)} rows: "
                                  f"{describe_exception(exc)}") from None


def _fit_and_evaluate(model: Any, class_path: str, split: Split, columns: Columns, task: Task, metric: str
                      ) -> Outcome:
    # What does not need the fitted model runs beside the fit, which spends its time in native code
    # that releases the GIL: the reference sketch of the training features, and importing skops
    # (its import builds a trusted-type list by importing every scikit-learn estimator, ~0.5 s) and
    # the ONNX libraries (skl2onnx only for estimators it converts here: ~0.7 s).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="beside-fit") as pool:
        training_columns = {c: split.x_train[c].to_numpy() for c in columns.features}
        reference = pool.submit(_timed, "sketch.reference", build_reference, training_columns,
                                categorical=columns.categorical)
        if not boosting.is_boosting(class_path):
            pool.submit(importlib.import_module, "skops.io")
        estimator = getattr(model, "named_steps", {}).get(ESTIMATOR_STEP, model)
        for library in ("onnx", "onnxruntime") if is_tree_model(estimator) else ("skl2onnx", "onnxruntime"):
            pool.submit(importlib.import_module, library)
        with _step("fit", estimator=class_path, rows=len(split.x_train)):
            try:
                model.fit(split.x_train, split.y_train)
            except Exception as exc:  # anything the estimator raises is a property of data + params
                raise FitError(f"fitting {class_path} failed: {describe_exception(exc)}") from None
        with _step("evaluate", rows=len(split.x_valid)) as info:
            try:
                predictions, probabilities = validation_predictions(model, class_path, split.x_valid)
            except Exception as exc:
                raise FitError(f"predicting the validation split failed: {describe_exception(exc)}") from None
            if task == "classification" and probabilities is None and hasattr(model, "predict_proba"):
                probabilities = _probabilities(model, split.x_valid)  # evaluate needs them anyway (roc_auc)
            metrics = evaluate(model, split.x_valid, split.y_valid, predictions, task, metric, probabilities)
            info.update(metric=metric, value=metrics[metric])
        calibration = _calibration(predictions, probabilities, split.y_valid) if task == "classification" else None
        prediction_reference = build_reference({columns.target: predictions},
                                               categorical=[columns.target] if task == "classification" else ())
        return Outcome(metrics=metrics, reference=reference.result(), prediction_reference=prediction_reference,
                       calibration=calibration, holdout_answers=(predictions, probabilities))


def _probabilities(model: Any, features: Any) -> Any | None:
    """predict_proba of the validation split, or None when the estimator cannot give it (evaluate then says
    which metrics are undefined)."""
    try:
        return model.predict_proba(features)
    except Exception as exc:
        log_event("predict_proba.unavailable", reason=describe_exception(exc))
        return None


def _calibration(predictions: Any, probabilities: Any | None, truth: Any) -> dict[str, Any] | None:
    """The hold-out calibration of the confidence the server records (the most probable class's probability)
    against whether the prediction was right: one isotonic fit on the hold-out (modelloop.outcomes.cbpe,
    docs/cbpe.md). None without probabilities; a failure is logged, never fails the run."""
    if probabilities is None:
        return None
    import numpy as np

    with _step("calibrate") as info:
        try:
            confidence = np.asarray(probabilities, dtype=np.float64).max(axis=1)
            calibration = fit_calibration(confidence, np.asarray(predictions) == np.asarray(truth))
        except Exception as exc:
            info.update(skipped=describe_exception(exc))
            return None
        info.update(method=calibration["method"], rows=calibration["rows"], ece_before=calibration["eceBefore"],
                    ece_after=calibration["eceAfter"])
        return calibration


def _metadata(spec: ModelTrainingSpec, version: int, identity: dict[str, Any], stored: StoredModel,
              params: dict[str, Any], task: Task, metric: str, dataset: Dataset, schema: dict[str, Any],
              outcome: Outcome, exported: OnnxExport) -> dict[str, Any]:
    """metadata.json of the version (docs/contracts.md), validated by its model."""
    return ArtifactMetadata.model_validate({
        "version": version,
        "created": datetime.now(timezone.utc),
        "model": {"file": stored.file, "format": stored.format, "sha256": sha256_bytes(stored.data),
                  "size": len(stored.data), "trustedTypes": stored.trusted_types},
        "training": identity,
        "dataset": {"uri": dataset.uri, "format": dataset.format, "sha256": dataset.sha256,
                    "rows": len(dataset.frame)},
        "estimator": {"class": spec.estimator.class_name, "params": params},
        "task": task,
        "libraries": _libraries(spec.estimator.class_name),
        "metric": {"name": metric, "value": outcome.metrics[metric]},
        "metrics": outcome.metrics,
        "schema": schema,
        "reference": outcome.reference,
        "predictionReference": outcome.prediction_reference,
        "onnx": exported.info,
        "calibration": outcome.calibration,
    }).wire()


def _schema(model: Any, frame: Any, columns: Columns, task: Task) -> dict[str, Any]:
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


def _libraries(class_path: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import numpy
    import sklearn

    found = {"python": platform.python_version(), "scikit-learn": sklearn.__version__, "numpy": numpy.__version__}
    if boosting.is_boosting(class_path):
        library = boosting.library(class_path)
        found[library] = importlib.import_module(library).__version__
    else:
        import skops

        found["skops"] = skops.__version__
    for package in ("onnx", "onnxruntime", "skl2onnx"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


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
