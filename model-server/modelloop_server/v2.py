"""Open Inference Protocol (KServe V2) over HTTP: decode an infer request into rows, encode its response,
and describe the server and the model.

Two input forms are accepted:
- one input of shape [n, n_features] holding the rows in feature order (any numeric datatype), when no
  feature is text; its name is free (e.g. "input-0");
- one input per feature, named after it, of shape [n] (or [n, 1]); text features use BYTES.
Outputs: `predict` and, for classifiers, `predict_proba` (asked for with `outputs` or the request
parameter `predict_proba: true`). The binary tensor data extension works for inputs and outputs.

Decoding is bounded by the request limits (schema.RequestLimits) before each step's work: the JSON
values a body may hold are counted before it is parsed (`parse_json`), each input's rows before its data
is converted (tensors.parse_tensors), each text value before it is kept.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from importlib import metadata as package_metadata
from typing import Any

import numpy as np
import orjson

from .errors import bad_request, over_limit
from .model import PREDICT, PREDICT_PROBA, ServedModel
from .schema import RequestLimits, Rows, numeric_array, too_many_rows
from .tensors import Tensor, check_size, datatype_of, encode_binary, parse_tensors

SERVER_NAME = "modelloop-server"
EXTENSIONS = ["binary_tensor_data", "modelloop_sketch", "modelloop_feedback"]
BINARY_HEADER = "inference-header-content-length"


@dataclass
class InferRequest:
    rows: Rows
    count: int
    outputs: list[str]
    binary_outputs: set[str] = field(default_factory=set)
    id: str | None = None

    @property
    def proba(self) -> bool:
        return PREDICT_PROBA in self.outputs


def decode_infer(body: bytes | bytearray, model: ServedModel, limits: RequestLimits, json_length: int | None = None
                 ) -> InferRequest:
    binary: memoryview | None = None
    if json_length is not None:
        if not 0 <= json_length <= len(body):
            raise bad_request(f"{BINARY_HEADER} is {json_length} but the body has {len(body)} bytes")
        binary = memoryview(body)[json_length:]
        body = body[:json_length]
    schema = model.schema
    doc = parse_json(body, limits)
    if not isinstance(doc, dict):
        raise bad_request("the request body must be a JSON object with 'inputs'")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise bad_request("'parameters' must be an object")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_request("'id' must be a string")
    tensors = parse_tensors(doc.get("inputs"), binary, limits=limits, row_width=len(schema.names))
    rows = _rows(tensors, model, limits)
    count = schema.count(rows)
    if count == 0:
        raise bad_request("the inputs hold no rows; send at least one")
    if count > limits.max_rows:
        raise too_many_rows(count, limits)
    outputs, binary_outputs = _outputs(doc.get("outputs"), params, model)
    return InferRequest(rows, count, outputs, binary_outputs, request_id)


def encode_infer(model: ServedModel, request: InferRequest, predictions: np.ndarray,
                 probabilities: np.ndarray | None) -> tuple[bytes, int | None]:
    """The response body and, when some output is binary, the length of its JSON header."""
    tensors: list[dict[str, Any]] = []
    binary_parts: list[bytes] = []
    for name in request.outputs:
        if name == PREDICT:
            array, tensor = predictions, {"name": PREDICT, "shape": [len(predictions)]}
        else:
            assert probabilities is not None
            array, tensor = probabilities, {"name": PREDICT_PROBA, "shape": list(probabilities.shape),
                                            "parameters": {"classes": model.classes}}
        datatype = tensor["datatype"] = datatype_of(array)
        if name in request.binary_outputs:
            raw = encode_binary(array, datatype)
            tensor.setdefault("parameters", {})["binary_data_size"] = len(raw)
            binary_parts.append(raw)
        else:
            tensor["data"] = array.reshape(-1) if datatype != "BYTES" else array.reshape(-1).tolist()
        tensors.append(tensor)
    doc: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version), "outputs": tensors}
    if request.id is not None:
        doc["id"] = request.id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary_parts:
        return header, None
    return header + b"".join(binary_parts), len(header)


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": _package_version(), "extensions": EXTENSIONS}


def model_metadata(model: ServedModel) -> dict[str, Any]:
    schema = model.schema
    outputs = [{"name": PREDICT, "datatype": model.predict_datatype, "shape": [-1]}]
    if PREDICT_PROBA in model.outputs:
        outputs.append({"name": PREDICT_PROBA, "datatype": "FP64", "shape": [-1, len(model.classes or [])]})
    parameters: dict[str, Any] = {
        "task": model.task, "target": model.target, "estimator": model.metadata["estimator"]["class"],
        "sha256": model.sha256, "runtime": model.runtime,
        "input_forms": ["one input per feature, named after it, shape [-1]"],
    }
    if model.classes is not None:
        parameters["classes"] = model.classes
    if schema.dense:
        parameters["input_forms"].append(f"one numeric input of shape [-1, {len(schema.names)}] in feature order")
    return {
        "name": model.name, "versions": [str(model.version)], "platform": "sklearn",
        "inputs": [{"name": f.name, "datatype": f.datatype, "shape": [-1]} for f in schema.features],
        "outputs": outputs, "parameters": parameters,
    }


def parse_json(body: bytes | bytearray, limits: RequestLimits) -> Any:
    """The JSON document of a request body holding at most `limits.max_values` values, counted before it is
    parsed: parsing costs time and memory per value (an empty list takes 56 bytes for its 3 bytes of
    text), so a body within --max-body-bytes could otherwise cost seconds and gigabytes."""
    if not body:
        raise bad_request("the request body is empty; expected a JSON object")
    max_values = limits.max_values
    if len(body) > max_values and json_values_bound(body, max_values) > max_values:
        raise over_limit("values", f"the request body holds more JSON values than {limits.max_rows} rows take "
                                   f"(at most {max_values}, from --max-rows); send fewer rows per request")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None


def json_values_bound(text: bytes | bytearray, stop_above: int) -> int:
    """At least the number of values and keys in the JSON document `text`, from its bytes alone: each but the
    first follows a '[', '{', ',' or ':' (one inside a string counts too, so the bound only errs high). Once
    above `stop_above`, the remaining separators are not counted (each count is a pass over the body)."""
    bound = 1
    for separator in (b",", b"[", b":", b"{"):
        bound += text.count(separator)
        if bound > stop_above:
            break
    return bound


def _rows(tensors: list[Tensor], model: ServedModel, limits: RequestLimits) -> Rows:
    schema = model.schema
    if len(tensors) == 1 and tensors[0].name not in schema.by_name:
        tensor = tensors[0]
        what = f"input {tensor.name!r}"
        if len(tensor.shape) != 2 or tensor.shape[1] != len(schema.names):
            raise bad_request(
                f"{what} has shape {tensor.shape}; a single input holds rows of shape [n, {len(schema.names)}] "
                f"(features {', '.join(schema.names)}); otherwise send one input per feature named after it")
        if tensor.datatype == "BYTES":
            raise bad_request(f"{what} has datatype BYTES; the [n, {len(schema.names)}] form takes numbers "
                              "(FP64, FP32, INT64, ...)")
        return schema.rows_from_matrix(check_size(tensor, numeric_array(tensor.data, what)), what)

    columns: dict[str, Any] = {}
    for tensor in tensors:
        feature = schema.by_name.get(tensor.name)
        what = f"input {tensor.name!r}"
        if feature is None:
            raise bad_request(f"unknown input {tensor.name!r}; send one input per feature ({', '.join(schema.names)})"
                              f" or a single [n, {len(schema.names)}] input")
        if len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise bad_request(f"{what} has shape {tensor.shape}; a per-feature input has shape [n] or [n, 1]")
        if feature.text:
            if tensor.datatype != "BYTES":
                raise bad_request(f"{what} has datatype {tensor.datatype}; feature {feature.name!r} is text "
                                  "(categorical), send BYTES")
            values = _flat_text(tensor)
            if len(values) != math.prod(tensor.shape):
                raise bad_request(f"{what} has shape {tensor.shape} ({math.prod(tensor.shape)} elements) but its "
                                  f"data has {len(values)} elements")
            columns[tensor.name] = values
        else:
            if tensor.datatype == "BYTES":
                raise bad_request(f"{what} has datatype BYTES; feature {feature.name!r} is numeric, send "
                                  f"{feature.datatype} (or another numeric datatype)")
            columns[tensor.name] = check_size(tensor, numeric_array(tensor.data, what)).reshape(-1)
    return schema.rows_from_columns(columns, "inputs", limits.max_string_length)


def _flat_text(tensor: Tensor) -> list[Any]:
    data = tensor.data
    if data and isinstance(data[0], list):
        flat: list[Any] = []
        for item in data:
            if not isinstance(item, list):
                raise bad_request(f"input {tensor.name!r}: data mixes nested lists and values")
            flat.extend(item)
        return flat
    return data


def _outputs(requested: Any, params: dict[str, Any], model: ServedModel) -> tuple[list[str], set[str]]:
    all_binary = params.get("binary_data_output") is True
    if requested is None:
        names = [PREDICT]
        if params.get(PREDICT_PROBA) is True:
            if PREDICT_PROBA not in model.outputs:
                raise bad_request(f"parameters.predict_proba: model {model.name!r} is a {model.task} model "
                                  "without class probabilities")
            names.append(PREDICT_PROBA)
        return names, set(names) if all_binary else set()
    if not isinstance(requested, list) or not requested:
        raise bad_request("'outputs' must be a non-empty list of {\"name\": ...}")
    names, binary = [], set()
    for i, item in enumerate(requested):
        name = item.get("name") if isinstance(item, dict) else None
        if name not in model.outputs:
            raise bad_request(f"outputs[{i}]: unknown output {name!r}; model {model.name!r} has "
                              f"{', '.join(model.outputs)}")
        if name not in names:
            names.append(name)
        item_params = item.get("parameters") or {}
        if all_binary or (isinstance(item_params, dict) and item_params.get("binary_data") is True):
            binary.add(name)
    return names, binary


@functools.cache
def _package_version() -> str:
    try:
        return package_metadata.version("modelloop")
    except package_metadata.PackageNotFoundError:
        return "0.0.0"
