"""The fitted model as model.onnx (encoder included), written only when it answers as scikit-learn does.

`export_onnx` builds one graph: an input per feature, named after it, shape [n, 1] (float64 for numbers,
strings for text features), the one-hot encoding of the categorical features as the trained
ColumnTransformer does it, then the estimator. The estimator part comes from `onnx_trees` for tree
ensembles (float64 `TreeEnsemble`) and from skl2onnx for everything else it converts, with float64 inputs
and class probabilities as a tensor (`zipmap: False`). Outputs: `predict` and, when scikit-learn's model
has `predict_proba`, `predict_proba`.

The encoding is written here rather than by skl2onnx, because skl2onnx's OneHotEncoder truncates numeric
categories to int64 (1.5 would match 1) and names the missing category "nan" (so would the text "nan").
Here numeric categories are compared exactly (`Equal`, and `IsNaN` for a learned missing category) and
text categories with ai.onnx.ml `OneHotEncoder`: the missing category is "" (the server turns "" into
missing before predicting, so no client text reaches it as ""), and categories no served text can equal
(a learned "", numbers in a text column) get names that are not valid UTF-8, which no fed string is.

Parity is checked through `OnnxPredictor`, the class the server predicts with, against the scikit-learn
model fed what the server would feed it (a DataFrame of float64 and text columns): on the hold-out rows
plus probe rows of the first one with missing, infinite and beyond-float32 numbers and missing and unseen
categories. Probe values scikit-learn refuses become `inputRules` (the ONNX path refuses them with the
same error); the others must give the same answers. Labels must be identical (values and dtype);
probabilities within `PARITY_TOLERANCE`; regression values within it absolutely below 1 and relatively
above (float64 carries about 16 significant digits, so a different but exact order of additions differs
by more than 1e-6 on values above 1e10). Anything else leaves the version skops-only, with the reason.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from modelloop.artifacts import ONNX_FILE, OnnxPredictor, sha256_bytes
from modelloop.artifacts.metadata import FeatureSchema, OnnxInfo, is_text_feature
from modelloop.artifacts.onnx_model import PREDICT, PREDICT_PROBA

from .errors import describe_exception
from .estimator import CATEGORICAL_TRANSFORMER, ESTIMATOR_STEP, PREPROCESS_STEP
from .boosting import unwrap
from .onnx_trees import UnsupportedTreeModel, is_tree_model, tree_model_graph

PARITY_TOLERANCE = 1e-6
OPSET = 21  # ai.onnx opset of every graph (onnx 1.16+, onnxruntime 1.18+); ai.onnx.ml: 5 for trees, else skl2onnx's
SKL2ONNX_ML_OPSET = 3
ESTIMATOR_PREFIX, PREPROCESS_PREFIX = "estimator/", "preprocess/"
UNSEEN_TEXT = "\x00modelloop: a category the model has not seen"
# Estimators whose scikit-learn predictions fail on inputs the hold-out rarely holds, in ways no graph
# reproduces: they stay skops-only whatever the parity on the hold-out.
SKOPS_ONLY = {
    "CategoricalNB": "CategoricalNB raises IndexError (a server error) for category codes it has not seen, where "
                     "an ONNX graph would answer",
}
# Probe values per kind, in the order scikit-learn's checks report them (check_array: NaN before infinity).
PROBES = {"nan": (np.nan,), "infinite": (np.inf, -np.inf), "float32-overflow": (1e39, -1e39)}


class Unconvertible(Exception):
    """Why the model has no ONNX form (the message goes to metadata.json and the run's status), with the
    parity figures when parity failed."""

    def __init__(self, reason: str, parity: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.parity = parity


@dataclass(frozen=True)
class OnnxExport:
    data: bytes | None  # model.onnx, or None when the version is skops-only
    info: dict[str, Any]  # metadata.json's `onnx` (camelCase)
    seconds: float

    @property
    def skipped(self) -> str | None:
        return self.info.get("skipped")


def export_onnx(model: Any, features: Sequence[Mapping[str, Any]], task: str, holdout: Any,
                holdout_answers: tuple[Any, Any | None] | None = None) -> OnnxExport:
    """model.onnx of the fitted `model` (the trainer's estimator or Pipeline) and its `onnx` metadata, or
    the reason it has none. `features` are metadata.json's schema.features; `holdout` the validation
    DataFrame; `holdout_answers` the model's (predict, predict_proba or None) on it, when the caller has
    them (reused only when the server would feed the same values: `_reusable`). Never raises for the
    model's sake: a version is still written, skops-only."""
    started = time.perf_counter()
    schema = [FeatureSchema.model_validate(dict(f)) for f in features]
    try:
        data, info = _export(model, schema, task, holdout, holdout_answers)
    except Unconvertible as exc:
        data, info = None, {"skipped": _one_line(str(exc)), **({"parity": exc.parity} if exc.parity else {})}
    except Exception as exc:  # noqa: BLE001 - converters raise anything; the version stays skops-only
        data, info = None, {"skipped": _one_line(f"the conversion failed: {describe_exception(exc)}")}
    return OnnxExport(data, info, time.perf_counter() - started)


def _one_line(text: str, limit: int = 512) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _export(model: Any, schema: list[FeatureSchema], task: str, holdout: Any,
            holdout_answers: tuple[Any, Any | None] | None) -> tuple[bytes, dict[str, Any]]:
    estimator = getattr(model, "named_steps", {}).get(ESTIMATOR_STEP, model)
    if type(estimator).__name__ in SKOPS_ONLY:
        raise Unconvertible(SKOPS_ONLY[type(estimator).__name__])
    _check_names(schema)
    columns = server_columns(holdout, schema)
    probes, rules, probe_answers = _probe(model, schema, task, columns)
    rows = {name: np.concatenate([columns[name], probes[name]]) for name in columns}
    if _reusable(model, task, holdout, schema, holdout_answers):
        assert holdout_answers is not None
        if probe_answers is None and len(next(iter(probes.values()), ())):
            probe_answers = _sklearn_predict(model, task, probes, schema)
        expected, expected_proba = _joined(holdout_answers, probe_answers)
    else:
        expected, expected_proba = _sklearn_predict(model, task, rows, schema)
    graph = model_graph(model, schema, task, with_proba=expected_proba is not None)
    data = graph.SerializeToString()
    info = OnnxInfo(file=ONNX_FILE, format="onnx", sha256=sha256_bytes(data), size=len(data),
                    opsets={o.domain or "ai.onnx": o.version for o in graph.opset_import},
                    predict_dtype=np.asarray(expected).dtype.str, input_rules=rules)
    # OnnxPredictor runs check_onnx_file first, as the server does: a graph failing it is not written
    predicted, probabilities = OnnxPredictor(data, info, schema).predict(rows, proba=expected_proba is not None)
    parity, failure = _parity(task, len(holdout), np.asarray(expected).reshape(-1), expected_proba, predicted,
                              probabilities)
    if failure:
        raise Unconvertible(failure, parity)
    document = info.model_dump(by_alias=True, exclude_none=True, mode="json")
    return data, {**document, "parity": parity}


# ------------------------------------------------------------------------------------------- inputs

def _check_names(schema: Sequence[FeatureSchema]) -> None:
    for feature in schema:
        name = feature.name
        if not name or name in (PREDICT, PREDICT_PROBA) or name.startswith((ESTIMATOR_PREFIX, PREPROCESS_PREFIX)):
            raise Unconvertible(f"feature {name!r} cannot name an input of the ONNX graph (empty, an output's "
                                f"name or a prefix the graph uses: {ESTIMATOR_PREFIX}, {PREPROCESS_PREFIX})")


def server_columns(frame: Any, schema: Sequence[FeatureSchema]) -> dict[str, np.ndarray]:
    """The rows of `frame` as the model server holds them: float64 numbers (NaN for missing), and for text
    features an object array of str, None for missing (and for "")."""
    columns: dict[str, np.ndarray] = {}
    for feature in schema:
        series = frame[feature.name]
        if is_text_feature(feature.dtype, feature.categorical):
            values = np.empty(len(series), dtype=object)
            for i, value in enumerate(series.tolist()):
                values[i] = None if value is None or value != value or value == "" else _as_text(value)
            columns[feature.name] = values
        else:
            columns[feature.name] = series.to_numpy(dtype=np.float64, na_value=np.nan)
    return columns


def _as_text(value: Any) -> str:
    """How the server turns a value into text (modelloop_server.schema.text_array)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _frame(columns: Mapping[str, np.ndarray], schema: Sequence[FeatureSchema]) -> Any:
    import pandas as pd

    return pd.DataFrame({f.name: columns[f.name] for f in schema}, copy=False)


def _sklearn_predict(model: Any, task: str, columns: Mapping[str, np.ndarray], schema: Sequence[FeatureSchema]
                     ) -> tuple[Any, Any | None]:
    """What the server's scikit-learn path answers for these rows (it builds the same DataFrame)."""
    frame = _frame(columns, schema)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictions = model.predict(frame)
        probabilities = (np.asarray(model.predict_proba(frame), dtype=np.float64)
                         if task == "classification" and hasattr(model, "predict_proba") else None)
    return predictions, probabilities


def _reusable(model: Any, task: str, holdout: Any, schema: Sequence[FeatureSchema],
              answers: tuple[Any, Any | None] | None) -> bool:
    """Whether the caller's answers on the hold-out DataFrame are what `_sklearn_predict` would compute from
    the server's columns: every feature a float64 column (the server's columns are then the same values),
    and probabilities exactly when `_sklearn_predict` asks for them."""
    if answers is None or not all(str(holdout[f.name].dtype) == "float64" for f in schema):
        return False
    wants_proba = task == "classification" and hasattr(model, "predict_proba")
    return (answers[1] is not None) == wants_proba


def _joined(first: tuple[Any, Any | None], second: tuple[Any, Any | None] | None) -> tuple[Any, Any | None]:
    """(predictions, probabilities) of the hold-out rows then the probe rows."""
    predictions, probabilities = np.asarray(first[0]), first[1]
    if probabilities is not None:
        probabilities = np.asarray(probabilities, dtype=np.float64)
    if second is None:
        return predictions, probabilities
    return (np.concatenate([predictions, np.asarray(second[0])]),
            None if probabilities is None else np.concatenate([probabilities, second[1]]))


def _probe(model: Any, schema: list[FeatureSchema], task: str, columns: dict[str, np.ndarray]
           ) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], tuple[Any, Any | None] | None]:
    """The probe rows scikit-learn accepts, the input rules (what it refuses) and, when every probe row was
    accepted in one call (the common case: one prediction instead of one per kind of value), its answers."""
    base = {name: values[:1] for name, values in columns.items()}
    text = [f for f in schema if is_text_feature(f.dtype, f.categorical)]
    groups = {"categorical": [f.name for f in schema if f.categorical and f not in text],
              "numeric": [f.name for f in schema if not f.categorical]}
    candidates = [{**base, **{n: np.array([v]) for n in names}}
                  for names in groups.values() if names for values in PROBES.values() for v in values]
    candidates += [{**base, **{f.name: np.array([value], dtype=object) for f in text}}
                   for value in (None, UNSEEN_TEXT) if text]
    if candidates:
        every = {name: np.concatenate([row[name] for row in candidates]) for name in columns}
        try:
            return every, [], _sklearn_predict(model, task, every, schema)
        except (ValueError, TypeError):
            pass  # some are refused: which ones, kind by kind, below
    probes: list[dict[str, np.ndarray]] = []
    rules: list[dict[str, Any]] = []
    for names in groups.values():  # the encoder checks its columns before the estimator checks the rest
        if not names:
            continue
        for kind, values in PROBES.items():
            rows = [{**base, **{n: np.array([v]) for n in names}} for v in values]
            errors = [_refusal(model, task, row, schema) for row in rows]
            if all(e is None for e in errors):
                probes.extend(rows)
            elif all(e is not None for e in errors) and len({e for e in errors}) == 1:
                error = errors[0]
                assert error is not None
                if not error.startswith("ValueError: "):
                    raise Unconvertible(f"scikit-learn refuses {kind} values with {error.split(':')[0]}; the ONNX "
                                        f"path answers refusals as ValueError")
                rules.append({"values": kind, "features": names, "error": error[len("ValueError: "):]})
            else:
                raise Unconvertible(f"scikit-learn refuses some {kind} values in {', '.join(names)} and accepts others")
    for value in (None, UNSEEN_TEXT):
        if text:
            row = {**base, **{f.name: np.array([value], dtype=object) for f in text}}
            error = _refusal(model, task, row, schema)
            if error is not None:
                raise Unconvertible(f"scikit-learn refuses {'missing' if value is None else 'unseen'} categories "
                                    f"({error.split(':')[0]}), which the ONNX graph encodes as it was trained to")
            probes.append(row)
    rows = {name: np.concatenate([columns[name][:0], *[p[name] for p in probes]]) for name in columns}
    return rows, rules, None


def _refusal(model: Any, task: str, row: Mapping[str, np.ndarray], schema: Sequence[FeatureSchema]) -> str | None:
    """`Type: message` of what scikit-learn raises predicting `row` (unscrubbed: it is its answer to a
    client, on the scikit-learn path too), or None."""
    try:
        _sklearn_predict(model, task, row, schema)
    except (ValueError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# ------------------------------------------------------------------------------------------- parity

def _parity(task: str, holdout: int, expected: np.ndarray, expected_proba: np.ndarray | None, predicted: np.ndarray,
            probabilities: np.ndarray | None) -> tuple[dict[str, Any], str | None]:
    """(parity figures, why parity fails or None). The first `holdout` rows are the hold-out split, the rest
    probes: `maxAbsDiff` is taken on the hold-out rows (probes hold values such as 1e39), `maxDiff`, the
    figure compared with the tolerance, on every row."""
    figures: dict[str, Any] = {"rows": holdout, "probeRows": len(expected) - holdout}
    if task == "classification":
        same_type = predicted.dtype == expected.dtype and predicted.shape == expected.shape
        figures["labelsEqual"] = same_type and bool(np.array_equal(predicted, expected))
        got, want = (probabilities, expected_proba) if expected_proba is not None else (None, None)
        scale = 1.0
    else:
        got, want = predicted.astype(np.float64).reshape(-1, 1), expected.astype(np.float64).reshape(-1, 1)
        scale = np.fmax(1.0, np.abs(want[:, 0]))  # relative above 1 (NaN: equal or not, counted as 1)
    if want is not None:
        differences = _differences(got, want)
        if differences is None:
            return figures, "parity failed: the ONNX graph gives missing, infinite or misshapen values where " \
                            "scikit-learn does not"
        figures["maxAbsDiff"] = float(differences[:holdout].max(initial=0.0))
        figures["maxDiff"] = float((differences / scale).max(initial=0.0))
    figures["tolerance"] = PARITY_TOLERANCE
    if task == "classification" and not figures["labelsEqual"]:
        if predicted.dtype != expected.dtype:
            return figures, f"parity failed: labels come as {predicted.dtype}, scikit-learn's as {expected.dtype}"
        mismatched = int(np.sum(predicted != expected)) if predicted.shape == expected.shape else len(expected)
        return figures, f"parity failed: {mismatched} of {len(expected)} predicted labels differ from scikit-learn's"
    if figures.get("maxDiff", 0.0) > PARITY_TOLERANCE:
        where = ("on the hold-out rows" if float((differences / scale)[:holdout].max(initial=0.0)) > PARITY_TOLERANCE
                 else "on probe rows (missing, infinite or beyond-float32 values, missing or unseen categories)")
        return figures, (f"parity failed: the largest difference from scikit-learn is {figures['maxDiff']:.3g} "
                         f"{where} (tolerance {PARITY_TOLERANCE:g})")
    return figures, None


def _differences(got: np.ndarray | None, expected: np.ndarray) -> np.ndarray | None:
    """|got - expected| per row (largest over columns), equal non-finite values counting as equal; None when
    the shapes differ or a non-finite value is not matched."""
    if got is None or got.shape != expected.shape:
        return None
    same = (got == expected) | (np.isnan(got) & np.isnan(expected))
    with np.errstate(invalid="ignore"):
        differences = np.where(same, 0.0, np.abs(got - expected))
    if not np.all(np.isfinite(differences)):
        return None
    return differences.max(axis=1) if differences.size else np.zeros(len(differences))


# ------------------------------------------------------------------------------------------- the graph

def model_graph(model: Any, schema: Sequence[FeatureSchema], task: str, *, with_proba: bool) -> Any:
    """The whole model as one onnx.ModelProto: feature inputs -> encoding -> estimator -> outputs."""
    import onnx
    from onnx import compose, helper

    estimator, encoded = _pipeline_parts(model, schema)
    width = sum(1 if kind == "number" else len(item[1]) for kind, item in encoded)
    est = _estimator_graph(estimator, width, task)
    est = compose.add_prefix(est, ESTIMATOR_PREFIX)
    pre = _encoding_graph(schema, encoded, est)
    merged = compose.merge_models(pre, est, io_map=[(f"{PREPROCESS_PREFIX}X", f"{ESTIMATOR_PREFIX}X")])
    graph = merged.graph
    produced = [o for o in graph.output]
    wanted = [(PREDICT, produced[0])]
    if task == "classification" and with_proba:
        if len(produced) < 2:
            raise Unconvertible("the ONNX graph has no class probabilities")
        wanted.append((PREDICT_PROBA, produced[1]))
    outputs = []
    for name, value in wanted:
        elem = value.type.tensor_type.elem_type
        if name == PREDICT_PROBA or (task == "regression" and elem != onnx.TensorProto.DOUBLE):
            graph.node.append(helper.make_node("Cast", [value.name], [name], to=onnx.TensorProto.DOUBLE,
                                               name=f"output/{name}"))
            elem = onnx.TensorProto.DOUBLE
        else:
            graph.node.append(helper.make_node("Identity", [value.name], [name], name=f"output/{name}"))
        shape = [None, 1] if task == "regression" else [None] if name == PREDICT else [None, None]
        outputs.append(helper.make_tensor_value_info(name, elem, shape))
    del graph.output[:]
    graph.output.extend(outputs)
    merged.producer_name, merged.producer_version = "modelloop", ""
    onnx.checker.check_model(merged, full_check=True)
    return merged


def _pipeline_parts(model: Any, schema: Sequence[FeatureSchema]) -> tuple[Any, list[tuple[str, Any]]]:
    """(the estimator, the columns it receives in order): ("onehot", (feature, categories)) or
    ("number", feature)."""
    by_name = {f.name: f for f in schema}
    steps = getattr(model, "named_steps", None)
    if steps is None:
        names = [str(n) for n in getattr(model, "feature_names_in_", [f.name for f in schema])]
        if names != [f.name for f in schema]:
            raise Unconvertible("the estimator's input columns are not the schema's features")
        return model, [("number", f) for f in schema]
    if list(steps) != [PREPROCESS_STEP, ESTIMATOR_STEP]:
        raise Unconvertible(f"pipeline steps {list(steps)} are not the trainer's")
    transformer = steps[PREPROCESS_STEP]
    encoded: list[tuple[str, Any]] = []
    names = [str(n) for n in transformer.feature_names_in_]
    for name, step, cols in transformer.transformers_:
        if name == CATEGORICAL_TRANSFORMER:
            if (getattr(step, "drop_idx_", None) is not None or getattr(step, "_infrequent_enabled", False)
                    or step.handle_unknown != "ignore"):
                raise Unconvertible("the one-hot encoder drops or groups categories")
            for column, categories in zip(cols, step.categories_):
                encoded.append(("onehot", (by_name[str(column)], list(categories))))
        elif name == "remainder" and _passthrough(step):
            encoded.extend(("number", by_name[names[i] if isinstance(i, (int, np.integer)) else str(i)])
                           for i in cols)
        elif step != "drop" and len(cols):
            raise Unconvertible(f"column transformer step {name!r} is not the trainer's")
    return steps[ESTIMATOR_STEP], encoded


def _passthrough(step: Any) -> bool:
    """The remainder step passes columns through: "passthrough", or the identity FunctionTransformer
    scikit-learn puts in its place once fitted."""
    if isinstance(step, str):
        return step == "passthrough"
    from sklearn.preprocessing import FunctionTransformer

    return type(step) is FunctionTransformer and step.func is None and step.inverse_func is None


def _estimator_graph(estimator: Any, n_inputs: int, task: str) -> Any:
    """The estimator alone: input X (float64 [n, n_inputs]) -> (label, probabilities) or (values)."""
    if is_tree_model(estimator):
        try:
            return tree_model_graph(estimator, n_inputs, OPSET)
        except UnsupportedTreeModel as exc:
            raise Unconvertible(f"{type(unwrap(estimator)).__name__}: {exc}") from None
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.common.exceptions import MissingShapeCalculator

    arguments: dict[str, Any] = {"initial_types": [("X", DoubleTensorType([None, n_inputs]))],
                                 "target_opset": {"": OPSET, "ai.onnx.ml": SKL2ONNX_ML_OPSET}}
    try:
        try:
            return to_onnx(estimator, options={"zipmap": False} if task == "classification" else None, **arguments)
        except (NameError, ValueError) as exc:
            if "zipmap" not in str(exc):
                raise
            return to_onnx(estimator, **arguments)
    except MissingShapeCalculator:
        raise Unconvertible(f"skl2onnx has no converter for {type(estimator).__name__}") from None


def _encoding_graph(schema: Sequence[FeatureSchema], encoded: list[tuple[str, Any]], estimator_model: Any) -> Any:
    """Feature inputs -> `preprocess/X`, the float64 matrix the estimator was fitted on."""
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    initializers: list[Any] = []
    parts: list[str] = []
    for i, (kind, item) in enumerate(encoded):
        if kind == "number":
            parts.append(item.name)
            continue
        feature, categories = item
        stem = f"{PREPROCESS_PREFIX}{i}"
        if is_text_feature(feature.dtype, feature.categorical):
            names = _text_categories(categories)
            nodes.append(helper.make_node("OneHotEncoder", [feature.name], [f"{stem}/hot"], domain="ai.onnx.ml",
                                          cats_strings=names, zeros=1, name=f"{stem}/onehot"))
            initializers.append(numpy_helper.from_array(np.array([-1, len(names)], np.int64), f"{stem}/shape"))
            nodes.append(helper.make_node("Reshape", [f"{stem}/hot", f"{stem}/shape"], [f"{stem}/flat"],
                                          name=f"{stem}/reshape"))
            nodes.append(helper.make_node("Cast", [f"{stem}/flat"], [f"{stem}/out"], to=TensorProto.DOUBLE,
                                          name=f"{stem}/cast"))
        else:
            values, missing = _numeric_categories(categories, feature.name)
            initializers.append(numpy_helper.from_array(values, f"{stem}/categories"))
            nodes.append(helper.make_node("Equal", [feature.name, f"{stem}/categories"], [f"{stem}/equal"],
                                          name=f"{stem}/equal"))
            hits = f"{stem}/equal"
            if missing.any():  # the learned missing category: NaN never equals, IsNaN finds it
                initializers.append(numpy_helper.from_array(missing, f"{stem}/missing"))
                nodes.append(helper.make_node("IsNaN", [feature.name], [f"{stem}/isnan"], name=f"{stem}/isnan"))
                nodes.append(helper.make_node("And", [f"{stem}/isnan", f"{stem}/missing"], [f"{stem}/nan"],
                                              name=f"{stem}/nan"))
                nodes.append(helper.make_node("Or", [f"{stem}/equal", f"{stem}/nan"], [f"{stem}/hits"],
                                              name=f"{stem}/hits"))
                hits = f"{stem}/hits"
            nodes.append(helper.make_node("Cast", [hits], [f"{stem}/out"], to=TensorProto.DOUBLE, name=f"{stem}/cast"))
        parts.append(f"{stem}/out")
    nodes.append(helper.make_node("Concat", parts, [f"{PREPROCESS_PREFIX}X"], axis=1, name=f"{PREPROCESS_PREFIX}concat"))
    inputs = [helper.make_tensor_value_info(f.name, TensorProto.STRING if is_text_feature(f.dtype, f.categorical)
                                            else TensorProto.DOUBLE, [None, 1]) for f in schema]
    width = sum(1 if kind == "number" else len(item[1]) for kind, item in encoded)
    output = helper.make_tensor_value_info(f"{PREPROCESS_PREFIX}X", TensorProto.DOUBLE, [None, width])
    graph = helper.make_graph(nodes, "modelloop encoding", inputs, [output], initializer=initializers)
    opsets = {o.domain: o.version for o in estimator_model.opset_import}
    opsets.setdefault("ai.onnx.ml", 1)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = estimator_model.ir_version
    return model


def _text_categories(categories: list[Any]) -> list[bytes]:
    """The encoder's categories as the strings the graph compares: "" for the missing one; for what no
    served text can equal (a learned "", a non-text value), bytes that are not UTF-8, one per column."""
    names: list[bytes] = []
    for j, category in enumerate(categories):
        if category is None or (isinstance(category, float) and category != category):
            names.append(b"")
        elif isinstance(category, str) and category != "":
            names.append(category.encode())
        else:
            names.append(b"\xff" + str(j).encode())
    return names


def _numeric_categories(categories: list[Any], feature: str) -> tuple[np.ndarray, np.ndarray]:
    """(float64 category values, which one is the missing category)."""
    values, missing = [], []
    for category in categories:
        if isinstance(category, (bool, np.bool_, int, np.integer, float, np.floating)):
            values.append(float(category))
            missing.append(bool(category != category))
        elif category is None:
            values.append(np.nan)
            missing.append(True)
        else:
            raise Unconvertible(f"numeric feature {feature!r} has a category that is not a number")
    return np.array(values, dtype=np.float64), np.array(missing, dtype=bool)
