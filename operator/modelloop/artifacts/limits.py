"""How much of what a store holds is read and parsed, at most: the bounds on metadata.json and model files, and
the JSON reader that checks them before it builds a single object.

A store is written by whoever holds its credentials (docs/security.md, "Store writers and tenants"), so every
byte read from it is bounded before it is parsed. Each bound is a setting: an environment variable read by the
operator and the model server alike, with the default below. A refusal names the bound and its variable, never
what the refused file holds.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np

from .errors import ArtifactLimitError

MiB, GiB = 1024 ** 2, 1024 ** 3


@dataclass(frozen=True)
class ArtifactLimits:
    """The bounds; `from_environment` reads their settings (ENVIRONMENT names them)."""

    # metadata.json: a version's description; 1,600 numeric features of reference sketches fit in 8 MiB.
    metadata_bytes: int = 8 * MiB
    metadata_nodes: int = 500_000
    # Nesting of any JSON read from a store (metadata.json, the model's schema.json): real ones stay under 30.
    json_depth: int = 100
    # A model file (model.skops, model.onnx), as stored.
    model_bytes: int = 4 * GiB
    # schema.json inside model.skops: ~20 KB and ~800 values per tree (a GradientBoosting of 500 trees: 10 MB).
    schema_bytes: int = 64 * MiB
    schema_nodes: int = 2_000_000
    # model.skops is a zip: its entries (one per array; a forest of 200 trees has 1,000), each one's size and
    # the sum once unpacked, and how much bigger than the file that sum may be (the trainer stores entries
    # uncompressed: 1).
    zip_entries: int = 100_000
    zip_entry_bytes: int = 1 * GiB
    zip_total_bytes: int = 4 * GiB
    zip_ratio: float = 10.0
    # model.onnx: the bytes its weights take in memory (initializers, sparse ones at their dense size, tensor and
    # list attributes, such as a TreeEnsemble's nodes; subgraphs included). A forest of 300 trees exported by the
    # trainer holds 36.5 bytes per tree node (13 MiB on examples/data/churn.csv, 85 MiB on 20,000 rows of 10
    # features); the largest tree graph it writes (onnx_trees.MAX_NODES, 5M nodes) ~174 MiB.
    onnx_weight_bytes: int = 512 * MiB

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ArtifactLimits:
        """The defaults, overridden by the environment variables that are set; ValueError names a bad one."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for item in fields(cls):
            name = ENVIRONMENT[item.name]
            text = environ.get(name, "").strip()
            if not text:
                continue
            kind = float if item.name == "zip_ratio" else int
            try:
                value = kind(text)
            except ValueError:
                raise ValueError(f"{name}={text!r} is not a number") from None
            if not value > 0:
                raise ValueError(f"{name}={text!r} must be more than 0")
            values[item.name] = value
        return cls(**values)

    def refuse(self, bound: str, subject: str) -> ArtifactLimitError:
        """The error of going past `bound` (a field name): `subject` ("x has more values than") and the bound's
        value and setting."""
        return ArtifactLimitError(f"{subject} the limit of {getattr(self, bound):,} ({ENVIRONMENT[bound]}); "
                                  f"refusing to load")


# field -> the environment variable that sets it (docs/security.md lists them with their defaults).
ENVIRONMENT: dict[str, str] = {
    "metadata_bytes": "MODELLOOP_MAX_METADATA_BYTES",
    "metadata_nodes": "MODELLOOP_MAX_METADATA_NODES",
    "json_depth": "MODELLOOP_MAX_ARTIFACT_JSON_DEPTH",
    "model_bytes": "MODELLOOP_MAX_MODEL_BYTES",
    "schema_bytes": "MODELLOOP_MAX_SKOPS_SCHEMA_BYTES",
    "schema_nodes": "MODELLOOP_MAX_SKOPS_SCHEMA_NODES",
    "zip_entries": "MODELLOOP_MAX_MODEL_ENTRIES",
    "zip_entry_bytes": "MODELLOOP_MAX_MODEL_ENTRY_BYTES",
    "zip_total_bytes": "MODELLOOP_MAX_MODEL_UNPACKED_BYTES",
    "zip_ratio": "MODELLOOP_MAX_MODEL_COMPRESSION_RATIO",
    "onnx_weight_bytes": "MODELLOOP_MAX_ONNX_INITIALIZER_BYTES",
}
DEFAULT_LIMITS = ArtifactLimits()


def current_limits() -> ArtifactLimits:
    return ArtifactLimits.from_environment()


_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
_NOT_BRACKET_TEXT = re.compile(r"[^\[\]{}]++")


def load_json(data: bytes, limits: ArtifactLimits, nodes_bound: str, what: str) -> Any:
    """The JSON document `data` (UTF-8), once `count_json` passed: nothing is built before. ValueError when it
    is not UTF-8 JSON or holds NaN or Infinity."""
    count_json(data, limits, nodes_bound, what)
    return json.loads(data.decode("utf-8"), parse_constant=_no_constant)  # UnicodeDecodeError is a ValueError


def count_json(text: bytes | str, limits: ArtifactLimits, nodes_bound: str, what: str) -> int:
    """How many values the JSON `text` holds, at most, counted without building any and without copying it:
    one per comma, colon and opening bracket, plus one, wherever they are (inside strings too: an upper bound).
    ArtifactLimitError, naming `what` and the bound, beyond the bound named `nodes_bound` or nesting deeper than
    json_depth (counted on the brackets alone, wherever they are); ValueError when they cannot balance.

    json.loads holds about 70 bytes per value (a 3-byte `{},` is a 64-byte dict): a document of a few MB can
    cost GBs. These counts run at C speed and hold only the brackets, at most twice the bound."""
    opening = _count(text, "[{")
    nodes = _count(text, ",:") + opening + 1
    max_nodes = getattr(limits, nodes_bound)
    if nodes > max_nodes:
        raise limits.refuse(nodes_bound, f"{what} has more JSON values than")
    if _count(text, "]}") > opening:
        raise ValueError("unbalanced brackets")
    brackets = (text.translate(None, _NOT_BRACKETS) if isinstance(text, bytes)
                else _NOT_BRACKET_TEXT.sub("", text).encode("ascii"))
    characters = np.frombuffer(brackets, dtype=np.uint8)
    steps = ((characters == ord("[")) | (characters == ord("{"))).view(np.int8) * np.int8(2) - np.int8(1)
    depth = int(np.cumsum(steps, dtype=np.int32).max(initial=0))
    if depth > limits.json_depth:
        raise limits.refuse("json_depth", f"{what} nests JSON deeper than")
    return nodes


def _count(text: bytes | str, characters: str) -> int:
    return sum(text.count(c.encode() if isinstance(text, bytes) else c) for c in characters)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
