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
Then, before anything else is read from the graph, its weights (`weight_bytes`: initializers, sparse ones at
their dense size, attribute tensors and lists, in subgraphs too) are held to `limits.onnx_weight_bytes`
(MODELLOOP_MAX_ONNX_INITIALIZER_BYTES): a few bytes of sparse initializer can ask onnxruntime for gigabytes.

A graph can also make each run cost what the request's values say. `check_onnx_file` refuses, in the main
graph and in subgraphs, every size an operator allocates by (`SIZE_INPUTS`: ConstantOfShape's shape,
Expand, Tile, Range, Pad, Resize, OneHot, ...) and every `Loop` trip count unless it is a constant (an
initializer, a `Constant`, or computed from those alone) or a dimension of a tensor the run already holds
(`Shape`/`Size`, moved only by Gather, Slice, Concat, Squeeze, Unsqueeze, Reshape, Cast, Identity):
never the input's values, nor arithmetic on dimensions. A `Loop` without a trip count is refused, as are
operators whose output size is read from the data (`ImageDecoder`). Opsets newer than the ones these
tables were written against are refused (`REVIEWED_OPSETS`). What the trainer exports passes: sizes from
`Shape` (GaussianProcessRegressor's kernel) and no `Loop`.

A run that takes too long anyway (a constant trip count of 2**62, a kernel working through a large tree) is
stopped from outside: `cancel_runs(thread)` terminates the run that thread is in (onnxruntime checks
`RunOptions.terminate` between nodes and loop iterations) and refuses the thread's next runs until
`resume_runs(thread)`; `running_since(thread)` tells when its run started. The model server's batcher
uses them for `server.inferenceTimeout`. A run that fails for its rows (an allocation onnxruntime cannot
make) raises `OnnxRunError`, a ValueError: the request's problem, not the server's.

`OnnxPredictor` feeds the graph one input per feature, named after it, shape [n, 1]: float64 for numbers,
strings for text features (a missing text value is fed as "", the graph's name for the missing category).
Its outputs are `predict` and, for classifiers with probabilities, `predict_proba`. The trainer checks its
parity with the scikit-learn model through this same class, so what was checked is what is served.
"""
from __future__ import annotations

import functools
import threading
import time
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import ArtifactIntegrityError
from .limits import ArtifactLimits, current_limits
from .metadata import FeatureSchema, OnnxInfo, is_text_feature

PREDICT = "predict"
PREDICT_PROBA = "predict_proba"
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
MISSING_TEXT = ""  # what a missing text value is fed as (the server turns "" into missing before)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# The newest opset of each domain whose operators SIZE_INPUTS and REFUSED_OPERATORS were written against
# (onnx 1.23); a newer one may bring operators that allocate by their inputs. test_hostile_models.py fails
# when the installed onnx knows an operator with a size-like input these tables do not name.
REVIEWED_OPSETS = {"": 28, "ai.onnx": 28, "ai.onnx.ml": 5}
# Inputs (by position) whose values decide how much an operator allocates or how often it runs its body.
SIZE_INPUTS: Mapping[str, tuple[int, ...]] = {
    "AffineGrid": (1,), "BlackmanWindow": (0,), "CenterCropPad": (1,), "Col2Im": (1, 2), "ConstantOfShape": (0,),
    "DFT": (1,), "Expand": (1,), "HammingWindow": (0,), "HannWindow": (0,), "Loop": (0,), "MaxUnpool": (2,),
    "MelWeightMatrix": (0, 1), "OneHot": (1,), "Pad": (1,), "Range": (0, 1, 2), "Resize": (1, 2, 3),
    "STFT": (1, 2), "Tile": (1, 2), "Upsample": (1,),
}
# Operators whose output size is read from the data itself (an image's header).
REFUSED_OPERATORS = frozenset({"ImageDecoder"})
# What a tensor's values may depend on, from least to most: constants of the file, dimensions of tensors the
# run holds, the request's values.
CONSTANT, DIMENSION, DATA = 0, 1, 2
# Operators that move dimensions without computing new ones (a Gather of a Shape is still a dimension).
_MOVES_DIMENSIONS = frozenset({"Cast", "Concat", "Gather", "Identity", "Reshape", "Slice", "Squeeze", "Unsqueeze"})
# Operators whose outputs differ between runs with the same inputs: never constants.
_RANDOM = frozenset({"Bernoulli", "Dropout", "Multinomial", "RandomNormal", "RandomNormalLike", "RandomUniform",
                     "RandomUniformLike"})
_SUBGRAPH_OPERATORS = frozenset({"If", "Loop", "Scan", "SequenceMap"})


def check_onnx_file(data: bytes, limits: ArtifactLimits | None = None) -> Any:
    """The parsed onnx.ModelProto of `data`; ArtifactIntegrityError when it is not an ONNX model, uses
    external data anywhere, or any operator or function outside the standard domains; ArtifactLimitError when
    its weights take more than `limits.onnx_weight_bytes` (default: the environment's setting)."""
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
    limits = limits or current_limits()
    if weight_bytes(model.graph, limits.onnx_weight_bytes) > limits.onnx_weight_bytes:
        raise limits.refuse("onnx_weight_bytes", "the ONNX graph's weights (initializers and attribute values, "
                                                 "subgraphs included) take more bytes than")
    problems: list[str] = []
    for opset in model.opset_import:
        if opset.domain not in STANDARD_DOMAINS:
            problems.append(f"opset import of domain {opset.domain!r}")
    if len(model.functions):
        problems.append(f"{len(model.functions)} model-local function(s)")
    if len(model.training_info):
        problems.append("training information (initialisation graphs)")
    for opset in model.opset_import:
        if opset.domain in REVIEWED_OPSETS and opset.version > REVIEWED_OPSETS[opset.domain]:
            problems.append(f"opset {opset.version} of domain {opset.domain or 'ai.onnx'!r} (newest reviewed: "
                            f"{REVIEWED_OPSETS[opset.domain]})")
    problems.extend(_graph_problems(model.graph, "graph"))
    if not problems:  # sizes only of a graph otherwise acceptable (the walk trusts its structure)
        top = {name: DATA for name in (i.name for i in model.graph.input)}
        problems.extend(_size_problems(model.graph, "graph", top))
    if problems:
        shown = "; ".join(sorted(set(problems))[:10])
        raise ArtifactIntegrityError(
            f"the ONNX file uses what modelloop never writes and refuses to load: {shown} (only operators of "
            f"the standard domains {', '.join(repr(d) for d in sorted(STANDARD_DOMAINS))}, data inside the file, "
            f"sizes and loop counts from constants or dimensions, never from the input's values)")
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


def weight_bytes(graph: Any, stop_above: int | None = None) -> int:
    """The bytes the weights of `graph` and its subgraphs take once onnxruntime holds them, counted from the
    protobuf without building an array: initializers and tensor attributes (a Constant's value, a TreeEnsemble's
    splits) at the larger of what their dims declare and what they store; sparse ones also at their dense size
    (onnxruntime densifies sparse initializers); list attributes (floats, ints, strings) as what they hold.
    Stops counting, with a total above `stop_above`, once it passes it."""
    total = 0
    graphs = [graph]
    while graphs and (stop_above is None or total <= stop_above):
        current = graphs.pop()
        for tensor in current.initializer:
            total += _tensor_bytes(tensor)
        for sparse in current.sparse_initializer:
            total += _sparse_bytes(sparse)
        for node in current.node:
            for attribute in node.attribute:
                total += 4 * len(attribute.floats) + 8 * len(attribute.ints) + sum(map(len, attribute.strings))
                if attribute.HasField("t"):
                    total += _tensor_bytes(attribute.t)
                total += sum(map(_tensor_bytes, attribute.tensors))
                if attribute.HasField("sparse_tensor"):
                    total += _sparse_bytes(attribute.sparse_tensor)
                total += sum(map(_sparse_bytes, attribute.sparse_tensors))
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)
    return total


def _tensor_bytes(tensor: Any, dims: Sequence[int] | None = None) -> int:
    """What onnxruntime allocates for `tensor` (with `dims`, for the dense form of a sparse one): its declared
    elements times their size, or what its fields hold when that is more (ByteSize covers raw_data and strings
    without copying them out of the message; varint fields are counted at their width in memory)."""
    declared = _elements(tensor.dims if dims is None else dims) * _element_bytes(tensor.data_type)
    typed = (4 * len(tensor.float_data) + 4 * len(tensor.int32_data) + 8 * len(tensor.int64_data)
             + 8 * len(tensor.double_data) + 8 * len(tensor.uint64_data))
    return max(declared, typed, tensor.ByteSize())


def _sparse_bytes(sparse: Any) -> int:
    return (_tensor_bytes(sparse.values) + _tensor_bytes(sparse.indices)
            + _tensor_bytes(sparse.values, dims=sparse.dims))


def _elements(dims: Sequence[int]) -> int:
    """The product of `dims` (a negative one counts as 0), capped at 2**62: beyond every bound."""
    count = 1
    for dim in dims:
        count = min(count * max(int(dim), 0), 1 << 62)
    return count


@functools.cache
def _element_bytes(data_type: int) -> int:
    """Bytes per element of an ONNX tensor type in memory (8, a pointer, for strings and unknown types)."""
    import onnx

    try:
        return max(int(onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize), 1)
    except (KeyError, ValueError, TypeError):
        return 8


def _size_problems(graph: Any, where: str, kinds: dict[str, int]) -> Iterable[str]:
    """Sizes and trip counts of `graph` that depend on the request's values. `kinds` maps the names visible
    in the graph (its inputs, and the outer graph's names for a subgraph) to CONSTANT, DIMENSION or DATA;
    it is filled in with the graph's own names. A name not defined before its use counts as DATA."""
    for name in [t.name for t in graph.initializer] + [t.values.name for t in graph.sparse_initializer]:
        kinds.setdefault(name, CONSTANT)  # an initializer that is also an input can be fed: DATA, set before
    for node in graph.node:
        here = f"{where} node {node.name or node.op_type!r}"
        op = node.op_type
        inputs = [kinds.get(name, DATA) if name else CONSTANT for name in node.input]
        if op in REFUSED_OPERATORS:
            yield f"operator {op!r}, whose output size comes from the data ({here})"
        for position in SIZE_INPUTS.get(op, ()):
            if op == "Loop" and (position >= len(node.input) or not node.input[position]):
                yield f"a Loop without a trip count ({here})"
            elif position < len(inputs) and inputs[position] == DATA:
                what = "trip count" if op == "Loop" else f"input {position} (a size)"
                yield f"{op} {what} computed from the input's values ({here})"
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                inner = dict(kinds)
                formal = [i.name for i in subgraph.input]
                for j, name in enumerate(formal):
                    # a Loop body's first input is the iteration number: bounded by the trip count
                    inner[name] = inputs[0] if op == "Loop" and j == 0 and inputs else DATA
                yield from _size_problems(subgraph, f"{here} attribute {attribute.name!r} subgraph", inner)
        if op == "Constant":
            kind = CONSTANT
        elif op in _RANDOM or op in _SUBGRAPH_OPERATORS:
            kind = DATA
        elif op in ("Shape", "Size"):
            kind = CONSTANT if inputs and inputs[0] == CONSTANT else DIMENSION
        elif op in _MOVES_DIMENSIONS:
            kind = max(inputs, default=CONSTANT)
        else:  # computed: constant from constants, otherwise as good as data
            kind = CONSTANT if all(k == CONSTANT for k in inputs) else DATA
        for name in node.output:
            if name:
                kinds[name] = kind


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
    options.log_severity_level = 3  # errors only; the server logs its own events (runs: see _run)
    options.add_session_config_entry("session.load_model_format", "ONNX")
    return options


class OnnxPredictor:
    """A checked model.onnx in an onnxruntime session, predicting from the rows the server builds: a float64
    matrix [n, n_features] in schema order, or a dict feature -> 1-D array (float64 for numbers; str or
    None for text)."""

    def __init__(self, data: bytes, info: OnnxInfo, features: Sequence[FeatureSchema],
                 limits: ArtifactLimits | None = None) -> None:
        import onnxruntime as ort

        check_onnx_file(data, limits)
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
        results = _run(self.session, wanted, self._feed(rows))
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


class OnnxRunError(ValueError):
    """onnxruntime could not run the graph on these rows (an allocation they ask for failed, say)."""


class RunCancelled(Exception):
    """The run was terminated by `cancel_runs`: its caller's deadline passed."""


# The onnxruntime run each thread is in: thread id -> (time.monotonic() at its start, its RunOptions). Plain
# dict and set operations, each atomic under the GIL: a run registers itself, then looks for a cancellation,
# while cancel_runs marks the thread, then looks for its run; whichever comes second sees the other.
_RUNNING: dict[int, tuple[float, Any]] = {}
_CANCELLED: set[int] = set()
_CANCELLED_MESSAGE = ("the onnxruntime run was cancelled: it passed its deadline (the model server's "
                      "spec.server.inferenceTimeout, --inference-timeout-seconds)")


def running_since(thread: int) -> float | None:
    """time.monotonic() at the start of the run `thread` is in, or None."""
    run = _RUNNING.get(thread)
    return None if run is None else run[0]


def cancel_runs(thread: int) -> None:
    """Terminate the run `thread` is in (it raises RunCancelled within a node's time) and refuse its next runs
    until resume_runs(thread)."""
    _CANCELLED.add(thread)
    run = _RUNNING.get(thread)
    if run is not None:
        run[1].terminate = True


def resume_runs(thread: int) -> None:
    _CANCELLED.discard(thread)


def _run(session: Any, wanted: list[str], feed: dict[str, np.ndarray]) -> list[Any]:
    run_options, run_errors = _onnxruntime()
    thread = threading.get_ident()
    if thread in _CANCELLED:
        raise RunCancelled(_CANCELLED_MESSAGE)
    options = run_options()  # one per run (1 us): terminating a finished run's options stops nothing else
    options.log_severity_level = 4  # a failing run is the caller's to report, not onnxruntime's to log
    _RUNNING[thread] = (time.monotonic(), options)
    try:
        if thread in _CANCELLED:
            options.terminate = True
        return session.run(wanted, feed, options)
    except run_errors as exc:
        if options.terminate:
            raise RunCancelled(_CANCELLED_MESSAGE) from None
        # onnxruntime's text names the graph's nodes and the sizes asked for: the rule, not the content
        raise OnnxRunError(f"onnxruntime could not run the model's graph on these rows ({type(exc).__name__}: a "
                           f"node refused their values or could not allocate what they ask for)") from None
    finally:
        _RUNNING.pop(thread, None)


@functools.cache
def _onnxruntime() -> tuple[type, tuple[type[Exception], ...]]:
    """onnxruntime's RunOptions and the errors of a run that failed inside the graph (imported once: the
    operator imports this module without onnxruntime)."""
    from onnxruntime import RunOptions
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

    # InvalidArgument: a node refusing values (a Gather index out of range); a feed the graph cannot take at all
    # fails the warm-up, so here it is the rows
    return RunOptions, (Fail, InvalidArgument, RuntimeException)


def _matches(values: str, array: np.ndarray) -> bool:
    if values == "nan":
        return bool(np.isnan(array).any())
    if values == "infinite":
        return bool(np.isinf(array).any())
    with np.errstate(over="ignore", invalid="ignore"):  # float32-overflow: finite, but infinite as float32
        return bool((np.isfinite(array) & np.isinf(array.astype(np.float32))).any())
