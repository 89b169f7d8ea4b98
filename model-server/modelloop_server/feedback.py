"""`POST /v2/models/{name}/feedback`: ground truth for earlier predictions, by prediction id.

    {"ids": ["<request id>:<row>", ...], "targets": [<true class or value>, ...]}

Checked before anything is stored, each failure a 4xx that names the entry: the shape (two lists of equal
length, at most --max-feedback-ids), every id of the form `<request id>:<row>`, no id twice in one call,
every target of the model's kind (one of the classes of a classifier, exactly as the predictions name them;
a finite number for a regressor). Then every id must have been predicted by this deployment (any replica)
within maxDelay: unknown ids are refused with 422 and none of the call is stored. A call is stored whole,
as one label segment, before it is answered 200: a retry of the same call stores the same labels again,
which the join counts once (the newest label of an id wins, so a later call can also correct one).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from modelloop.outcomes.records import ROW_ID

from .errors import ClientError, bad_request
from .model import ServedModel


@dataclass(frozen=True)
class Feedback:
    ids: list[str]
    labels: list[str] | None   # classifiers: the true classes as the records name classes
    values: list[float] | None  # regressors


def decode_feedback(body: bytes, model: ServedModel, *, max_ids: int) -> Feedback:
    if not body:
        raise bad_request("the request body is empty; expected {\"ids\": [...], \"targets\": [...]}")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) - {"ids", "targets"} or "ids" not in doc or "targets" not in doc:
        raise bad_request("the request body must be a JSON object with exactly 'ids' and 'targets'")
    ids, targets = doc["ids"], doc["targets"]
    if not isinstance(ids, list) or not isinstance(targets, list):
        raise bad_request("'ids' and 'targets' must be lists")
    if len(ids) != len(targets):
        raise bad_request(f"'ids' has {len(ids)} entries and 'targets' {len(targets)}; one target per id")
    if not ids:
        raise bad_request("'ids' is empty; send at least one label")
    if len(ids) > max_ids:
        raise ClientError(413, f"{len(ids)} labels in one call; the limit is {max_ids} (--max-feedback-ids); "
                               "send them in several calls")
    seen: set[str] = set()
    for i, prediction_id in enumerate(ids):
        if not isinstance(prediction_id, str) or not ROW_ID.match(prediction_id):
            raise bad_request(f"ids[{i}] is not a prediction id: expected '<request id>:<row>' as the "
                              f"server returned it (the request id: 1-128 printable ASCII characters, no spaces)")
        if prediction_id in seen:
            raise bad_request(f"ids[{i}] {prediction_id!r} appears twice in this call; send one label per id")
        seen.add(prediction_id)
    if model.classifier:
        return Feedback(ids, _class_labels(targets, model), None)
    return Feedback(ids, None, _values(targets))


def _class_labels(targets: list[Any], model: ServedModel) -> list[str]:
    classes = model.classes or []
    # A target names a class when it is the same JSON value: 1 is class 1, "1" is not, true is not 1.
    by_json = {orjson.dumps(c): str(c) for c in classes}
    labels = []
    for i, target in enumerate(targets):
        label = by_json.get(orjson.dumps(target)) if isinstance(target, (str, int, float, bool)) else None
        if label is None:
            shown = orjson.dumps(target)[:40].decode("utf-8", "replace")
            raise bad_request(f"targets[{i}] {shown} is not one of the model's classes "
                              f"{orjson.dumps(classes[:20]).decode()}")
        labels.append(label)
    return labels


def _values(targets: list[Any]) -> list[float]:
    values = []
    for i, target in enumerate(targets):
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target):
            raise bad_request(f"targets[{i}] must be a finite number: the model is a regressor")
        values.append(float(target))
    return values
