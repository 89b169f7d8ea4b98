"""The model files of XGBoost and LightGBM versions: each library's own model format, XGBoost's JSON
(`Booster.save_raw("json")`, what `save_model("model.json")` writes) and LightGBM's text
(`Booster.model_to_string()`). Both describe trees as numbers and names; loading them runs no code named by
the file (unlike a pickle), and neither is skops, whose type lists are for scikit-learn's objects.

modelloop serves these versions through model.onnx, which the trainer writes only when it reproduces the
library's predictions (training/onnx_trees.py); the native file is the version's model of record, for whoever
loads it into XGBoost or LightGBM. It is verified like every file of a version: its sha256 and size are in
metadata.json (pinned by the operator, which also checks both, controllers/storage.py), and `load_model`
reads it at most at the recorded size (itself at most limits.model_bytes), checks the digest (and the
pinned model digest) and that it begins as its format does, before model.onnx is read. Nothing in modelloop
parses it further: neither the operator nor the model server loads XGBoost or LightGBM.
"""
from __future__ import annotations

from .errors import ArtifactIntegrityError
from .metadata import LIGHTGBM_TEXT, XGBOOST_JSON

# How each format begins: XGBoost's JSON document has the learner first; LightGBM's text model its header.
MAGIC = {XGBOOST_JSON: b'{"learner":', LIGHTGBM_TEXT: b"tree\nversion=v"}


def check_native_model(data: bytes, model_format: str) -> None:
    """ArtifactIntegrityError unless `data` begins as a `model_format` file does (a cheap check, whatever the
    file's size: the digest already proved it is the file the trainer wrote)."""
    magic = MAGIC.get(model_format)
    if magic is None:
        raise ArtifactIntegrityError(f"model format {model_format!r} is not a native model format "
                                     f"({', '.join(sorted(MAGIC))}); refusing to load")
    if not data.startswith(magic):
        raise ArtifactIntegrityError(f"the model file is not a {model_format} model; refusing to load")
