"""The V1 REST form (TF Serving / KServe V1): `POST /v1/models/{name}:predict` with `instances` (a list of
rows, each a list in feature order or an object keyed by feature name) or `inputs` (the same list, or
an object feature name -> list of values), answered with `{"predictions": [...]}`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from .errors import bad_request
from .model import ServedModel
from .schema import RequestLimits, Rows, check_column_rows, too_many_rows
from .v2 import parse_json


def decode_predict(body: bytes | bytearray, model: ServedModel, limits: RequestLimits) -> tuple[Rows, int]:
    """The rows of a V1 body, held to `limits` (the JSON values before parsing, the rows before conversion)."""
    schema = model.schema
    doc = parse_json(body, limits)
    if not isinstance(doc, dict):
        raise bad_request("the request body must be a JSON object with 'instances' or 'inputs'")
    if "instances" in doc:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise bad_request("'instances' must be a list of rows")
        rows = schema.rows_from_records(instances, "instances", limits)
    elif "inputs" in doc:
        inputs = doc["inputs"]
        if isinstance(inputs, dict):
            check_column_rows(inputs, limits)
            rows = schema.rows_from_columns(inputs, "inputs", limits.max_string_length)
        elif isinstance(inputs, list):
            rows = schema.rows_from_records(inputs, "inputs", limits)
        else:
            raise bad_request("'inputs' must be a list of rows or an object of feature name -> values")
    else:
        raise bad_request("the request needs 'instances' (a list of rows) or 'inputs'")
    count = schema.count(rows)
    if count == 0:
        raise bad_request("the request holds no rows; send at least one")
    if count > limits.max_rows:
        raise too_many_rows(count, limits)
    return rows, count


def encode_predict(predictions: np.ndarray, request_id: str) -> bytes:
    """`{"predictions": [...], "id": ...}`: `id` (also in X-Request-Id) names the rows, `<id>:<row>`."""
    values: Any = predictions if predictions.dtype.kind in "fiub" else predictions.tolist()
    return orjson.dumps({"predictions": values, "id": request_id}, option=orjson.OPT_SERIALIZE_NUMPY)


def model_status(name: str, ready: bool) -> dict[str, Any]:
    return {"name": name, "ready": ready}
