"""model.onnx: what is checked before onnxruntime sees a byte of it, and the session that predicts with it the
way the model server calls the scikit-learn model (docs/artifacts.md, docs/security.md).

An ONNX file is data: a protobuf graph of operators that onnxruntime implements itself. Loading it runs no
code named by the file, as long as two doors stay shut, which `check_onnx_file` does before a session exists:

- external data: a tensor may name a file that holds its bytes (`data_location: EXTERNAL`); onnxruntime
  would open it, relative to where the model "is". A version is two files in a store, never a directory
  of tensors, so any such tensor (in initializers, node attributes, subgraphs) is refused;
- custom operators: an operator from a domain other than the standard ones ("" / "ai.onnx" and
  "ai.onnx.ml") runs only with a registered custom-op library, i.e. native code. None is registered, and
  such a node is refused anyway, as are model-local functions (their domain is their own).

The digest of the file is checked by `load_model` first (against metadata.json, which the operator pins).

`OnnxPredictor` feeds the graph one input per feature, named after it, shape [n, 1]: float64 for numbers,
strings for text features (a missing text value is fed as "", the graph's name for the missing category).
Its outputs are `predict` and, for classifiers with probabilities, `predict_proba`. The trainer checks its
parity with the scikit-learn model through this same class, so what was checked is what is served.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import ArtifactIntegrityError
from .metadata import FeatureSchema, OnnxInfo, is_text_feature

PREDICT = "predict"
PREDICT_PROBA = "predict_proba"
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
MISSING_TEXT = ""  # what a missing text value is fed as (the server turns "" into missing before)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_onnx_file(data: bytes) -> Any:
    """The parsed onnx.ModelProto of `data`; ArtifactIntegrityError when it is not an ONNX model, uses
    external data anywhere, or any operator or function outside the standard domains."""
    import onnx
    from google.protobuf.message import DecodeError

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ArtifactIntegrityError(f"the ONNX file is not a readable ONNX model ({type(exc).__name__}); "
                                     f"refusing to load") from None
    if not model.HasField("graph"):
        raise ArtifactIntegrityError("the ONNX file holds no graph; refusing to load")
    problems: list[str] = []
    for opset in model.opset_import:
        if opset.domain not in STANDARD_DOMAINS:
            problems.append(f"opset import of domain {opset.domain!r}")
    if len(model.functions):
        problems.append(f"{len(model.functions)} model-local function(s)")
    if len(model.training_info):
        problems.append("training information (initialisation graphs)")
    problems.extend(_graph_problems(model.graph, "graph"))
    if problems:
        shown = "; ".join(sorted(set(problems))[:10])
        raise ArtifactIntegrityError(
            f"the ONNX file uses what modelloop never writes and refuses to load: {shown} (only operators of "
            f"the standard domains {', '.join(repr(d) for d in sorted(STANDARD_DOMAINS))}, data inside the file)")
    return model


def _graph_problems(graph: Any, where: str) -> Iterable[str]:
    for tensor in graph.initializer:
        yield from _tensor_problems(tensor, f"{where} initializer {tensor.name!r}")
    for sparse in graph.sparse_initializer:
        yield from _sparse_problems(sparse, f"{where} sparse initializer")
    for node in graph.node:
        here = f"{where} node {node.name or node.op_type!r}"
        if node.domain not in STANDARD_DOMAINS:
            yield f"operator {node.op_type!r} of domain {node.domain!r} ({here})"
        for attribute in node.attribute:
            at = f"{here} attribute {attribute.name!r}"
            if attribute.HasField("t"):
                yield from _tensor_problems(attribute.t, at)
            for tensor in attribute.tensors:
                yield from _tensor_problems(tensor, at)
            if attribute.HasField("sparse_tensor"):
                yield from _sparse_problems(attribute.sparse_tensor, at)
            for sparse in attribute.sparse_tensors:
                yield from _sparse_problems(sparse, at)
            if attribute.HasField("g"):
                yield from _graph_problems(attribute.g, f"{at} subgraph")
            for subgraph in attribute.graphs:
                yield from _graph_problems(subgraph, f"{at} subgraph")


def _tensor_problems(tensor: Any, where: str) -> Iterable[str]:
    import onnx

    if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
        yield f"external data ({where})"


def _sparse_problems(sparse: Any, where: str) -> Iterable[str]:
    yield from _tensor_problems(sparse.values, where)
    yield from _tensor_problems(sparse.indices, where)


def session_options() -> Any:
    """onnxruntime settings for a server with one prediction thread (the batcher's): no thread pools, the
    graph's nodes run one after the other on the calling thread; only the ONNX format is parsed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only; the server logs its own events
    options.add_session_config_entry("session.load_model_format", "ONNX")
    return options


class OnnxPredictor:
    """A checked model.onnx in an onnxruntime session, predicting from the rows the server builds: a float64
    matrix [n, n_features] in schema order, or a dict feature -> 1-D array (float64 for numbers; str or
    None for text)."""

    def __init__(self, data: bytes, info: OnnxInfo, features: Sequence[FeatureSchema]) -> None:
        import onnxruntime as ort

        check_onnx_file(data)
        if info.predict_dtype is None:
            raise ArtifactIntegrityError("metadata.json onnx has no predictDtype; refusing to load")
        self.session = ort.InferenceSession(data, session_options(), providers=["CPUExecutionProvider"])
        self.names = [f.name for f in features]
        self.text = {f.name for f in features if is_text_feature(f.dtype, f.categorical)}
        inputs = {i.name for i in self.session.get_inputs()}
        if inputs != set(self.names):
            raise ArtifactIntegrityError(f"the ONNX graph's inputs {sorted(inputs)} are not the schema's features "
                                         f"{self.names}; refusing to load")
        self.outputs = tuple(o.name for o in self.session.get_outputs())
        if self.outputs not in ((PREDICT,), (PREDICT, PREDICT_PROBA)):
            raise ArtifactIntegrityError(f"the ONNX graph's outputs {list(self.outputs)} are not "
                                         f"{PREDICT} [and {PREDICT_PROBA}]; refusing to load")
        self.predict_dtype = np.dtype(info.predict_dtype)
        position = {name: j for j, name in enumerate(self.names)}
        self.rules = [(rule.values, [position[f] for f in rule.features if f in position], rule.features,
                       rule.error) for rule in info.input_rules or ()]
        self.overflow_rule = any(values == "float32-overflow" for values, *_ in self.rules)

    def predict(self, rows: np.ndarray | Mapping[str, np.ndarray], *, proba: bool
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels (in the dtype scikit-learn's predict gives) or values, and class probabilities when asked
        and the graph has them. Rows the scikit-learn model would refuse raise its ValueError."""
        self._check(rows)
        wanted = [PREDICT, PREDICT_PROBA] if proba and PREDICT_PROBA in self.outputs else [PREDICT]
        results = self.session.run(wanted, self._feed(rows))
        predictions = results[0].reshape(-1)
        if predictions.dtype != self.predict_dtype:
            predictions = predictions.astype(self.predict_dtype)
        probabilities = np.asarray(results[1], dtype=np.float64) if len(results) > 1 else None
        return predictions, probabilities

    def _feed(self, rows: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if isinstance(rows, np.ndarray):
            return {name: rows[:, j:j + 1] for j, name in enumerate(self.names)}
        feed: dict[str, np.ndarray] = {}
        for name in self.names:
            column = rows[name]
            if name in self.text:
                missing = np.equal(column, None)
                if missing.any():
                    column = column.copy()
                    column[missing] = MISSING_TEXT
                feed[name] = column.reshape(-1, 1)
            else:
                feed[name] = np.asarray(column, dtype=np.float64).reshape(-1, 1)
        return feed

    def _check(self, rows: np.ndarray | Mapping[str, np.ndarray]) -> None:
        if not self.rules:
            return
        if isinstance(rows, np.ndarray) and np.isfinite(rows).all() and (
                not self.overflow_rule or np.abs(rows).max(initial=0.0) <= _FLOAT32_MAX):
            return  # the common case, in two passes over the matrix
        for values, positions, names, error in self.rules:
            if isinstance(rows, np.ndarray):
                selected = [rows[:, positions]]
            else:
                selected = [np.asarray(rows[name], dtype=np.float64) for name in names]
            if any(_matches(values, column) for column in selected):
                raise ValueError(error)


def _matches(values: str, array: np.ndarray) -> bool:
    if values == "nan":
        return bool(np.isnan(array).any())
    if values == "infinite":
        return bool(np.isinf(array).any())
    with np.errstate(over="ignore", invalid="ignore"):  # float32-overflow: finite, but infinite as float32
        return bool((np.isfinite(array) & np.isinf(array.astype(np.float32))).any())
