"""Tensors of the Open Inference Protocol (KServe V2): datatypes, shapes, JSON data and the binary tensor
data extension (raw little-endian bytes after the JSON header; BYTES elements as 4-byte length + bytes).

A tensor's declared rows are held to `max_rows` before its data is read, and binary BYTES to at most one
value per feature in each row: splitting them is bounded by the rows, not by the body (4-byte empty
elements of a 16 MiB body would be 4 million). JSON data is bounded by the values its body may hold
(v2.parse_json).
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import bad_request
from .schema import RequestLimits, too_long, too_many_rows

# V2 datatype -> numpy dtype of its binary form (BYTES has none: length-prefixed elements).
NUMPY_DTYPES: dict[str, str] = {
    "BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}
DATATYPES = (*NUMPY_DTYPES, "BYTES")


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: Any  # nested lists from JSON, a numpy array from binary data, or a list of str for BYTES


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype that represents `array` (text and objects are BYTES)."""
    kind = array.dtype.kind
    if kind == "b":
        return "BOOL"
    if kind == "f":
        return "FP64" if array.dtype.itemsize == 8 else "FP32" if array.dtype.itemsize == 4 else "FP16"
    if kind in "iu":
        return ("INT" if kind == "i" else "UINT") + str(array.dtype.itemsize * 8)
    return "BYTES"


def parse_tensors(items: Any, binary: memoryview | None, *, limits: RequestLimits, row_width: int,
                  field: str = "inputs") -> list[Tensor]:
    """Validate the `inputs` of a V2 request; `binary` holds the bytes after the JSON header, if any. Each
    input's shape is held to `limits.max_rows` rows of at most `row_width` values before its data is read."""
    if not isinstance(items, list) or not items:
        raise bad_request(f"'{field}' must be a non-empty list of tensors "
                          '({"name": ..., "datatype": ..., "shape": [...], "data": [...]})')
    tensors: list[Tensor] = []
    offset = 0
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise bad_request(f"{field}[{i}] must be an object with name, datatype, shape and data")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise bad_request(f"{field}[{i}] has no 'name'")
        if name in seen:
            raise bad_request(f"input {name!r} appears twice")
        seen.add(name)
        datatype = item.get("datatype")
        if datatype not in DATATYPES:
            raise bad_request(f"input {name!r} has datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
        shape = item.get("shape")
        if (not isinstance(shape, list) or not shape
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise bad_request(f"input {name!r} has shape {shape!r}; expected a list of non-negative integers")
        if shape[0] > limits.max_rows:
            raise too_many_rows(shape[0], limits)
        params = item.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if binary is None:
                raise bad_request(f"input {name!r} sets binary_data_size but the request has no binary part "
                                  "(send the Inference-Header-Content-Length header)")
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise bad_request(f"input {name!r} has binary_data_size {size!r} but only "
                                  f"{len(binary) - offset} binary bytes remain")
            if datatype == "BYTES" and math.prod(shape[1:]) > row_width:  # (the elements it would split)
                raise bad_request(f"input {name!r} has shape {shape}: rows of {math.prod(shape[1:])} values; the "
                                  f"model's rows hold {row_width} (one value per feature)")
            data = _from_binary(name, datatype, shape, binary[offset:offset + size], limits.max_string_length)
            offset += size
        else:
            if "data" not in item:
                raise bad_request(f"input {name!r} has no 'data'")
            data = item["data"]
            if not isinstance(data, list):
                raise bad_request(f"input {name!r}: 'data' must be a list")
        tensors.append(Tensor(name, datatype, shape, data))
    if binary is not None and offset != len(binary):
        raise bad_request(f"the binary part has {len(binary)} bytes but the inputs' binary_data_size add up to "
                          f"{offset}")
    return tensors


def check_size(tensor: Tensor, array: np.ndarray) -> np.ndarray:
    """`array` (the tensor's data) reshaped to the tensor's shape; a 400 when the element count differs."""
    expected = math.prod(tensor.shape)
    if array.size != expected:
        raise bad_request(f"input {tensor.name!r} has shape {tensor.shape} ({expected} elements) but its data "
                          f"has {array.size} elements")
    return array.reshape(tensor.shape)


def _from_binary(name: str, datatype: str, shape: list[int], raw: memoryview, max_length: int) -> Any:
    if datatype == "BYTES":
        return _split_bytes(name, raw, math.prod(shape), max_length)
    dtype = np.dtype(NUMPY_DTYPES[datatype])
    if len(raw) % dtype.itemsize:
        raise bad_request(f"input {name!r}: {len(raw)} binary bytes is not a whole number of {datatype} "
                          f"elements ({dtype.itemsize} bytes each)")
    return np.frombuffer(raw, dtype=dtype)


def _split_bytes(name: str, raw: memoryview, count: int, max_length: int) -> list[str]:
    """The `count` elements of the shape, each refused when longer than `max_length` characters (a UTF-8
    character has at most 4 bytes: longer elements are refused before they are decoded)."""
    values: list[str] = []
    offset = 0
    max_bytes = 4 * max_length
    while offset < len(raw):
        if len(values) == count:
            raise bad_request(f"input {name!r}: the binary data holds more BYTES elements than its shape's {count}")
        if offset + 4 > len(raw):
            raise bad_request(f"input {name!r}: truncated BYTES element length at byte {offset}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise bad_request(f"input {name!r}: BYTES element of {length} bytes runs past the binary data")
        if length > max_bytes:
            raise too_long(f"input {name!r}", max_length)
        try:
            text = bytes(raw[offset:offset + length]).decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request(f"input {name!r}: BYTES element at byte {offset} is not UTF-8 text") from None
        if len(text) > max_length:
            raise too_long(f"input {name!r}", max_length)
        values.append(text)
        offset += length
    return values


def encode_binary(array: np.ndarray, datatype: str) -> bytes:
    """The binary tensor data of an output."""
    if datatype == "BYTES":
        parts = []
        for value in array.reshape(-1).tolist():
            text = str(value).encode("utf-8")
            parts.append(struct.pack("<I", len(text)))
            parts.append(text)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype]).tobytes()
