"""Tree ensembles as ONNX graphs that compute in double precision, as scikit-learn does.

skl2onnx (1.20) writes tree ensembles with `TreeEnsembleClassifier/Regressor`, whose thresholds, leaf
values and outputs are float32: regression outputs lose digits and, with double inputs, the graph does not
even type-check. The `TreeEnsemble` operator of ai.onnx.ml opset 5 computes in the input's type, so these
graphs use it with float64 throughout and reproduce scikit-learn's arithmetic:

- Decision trees, random forests, extra trees and gradient boosting compare `float32(x)` with a float64
  threshold (scikit-learn converts X to float32 for its trees). `float32_thresholds` turns each threshold
  into the float64 `w` for which `x <= w` exactly when `float32(x) <= threshold`, so the graph takes the
  float64 input as it is. Histogram gradient boosting compares float64 values: thresholds are kept.
- Missing values follow each node's learned direction (`missing_go_to_left`).
- Sums run in scikit-learn's order: a forest sums its trees' (normalised) class fractions and divides by
  the number of trees; boosting starts from the baseline (a one-leaf first tree) and adds each stage.
- Each leaf of `TreeEnsemble` feeds one target, so a tree is repeated once per class.

Labels come from the class list with the rule of each estimator's `predict`: the most probable class for
trees and forests, `raw >= 0` (gradient boosting) or `raw > 0` (histogram gradient boosting) for two
classes, the largest raw score otherwise.

XGBoost and LightGBM (boosting.py) are read from their own model documents, and follow their arithmetic:

- XGBoost compares `float32(x) < split` with float32 splits (as `float32(x) <= the float32 before split`,
  turned into a float64 threshold as above), sends missing values to each node's default side, and sums
  the leaves in float32, in tree order, from the base margin. onnxruntime's float32 sums would not follow
  that order (onnxmltools' float32 graphs differ from XGBoost by up to 1.2e-6 relative on regression,
  docs/artifacts.md), so each tree is a target of its own (its leaf, exact in float64), and a float32
  `CumSum` over [base, tree 1, tree 2, ...] per class adds them as XGBoost does: the margins are
  bit-identical. Then the objective's link (sigmoid, softmax, exp) in float64, labels by XGBoost's rule
  (`float32(p) > 0.5`, or the largest float32 probability).
- LightGBM computes in float64: `x <= threshold`, the leaves summed in tree order (tree i feeds class
  i mod K). A missing value goes to the default side when the node's missing type is NaN, and is 0 when it
  is None (as LightGBM replaces it); the Zero missing type (zero_as_missing), categorical splits, linear
  trees and averaged (random forest) output are not converted. Labels are the most probable class, as
  LGBMClassifier.predict takes them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from .boosting import unwrap

TREE_ESTIMATORS = frozenset({
    "DecisionTreeClassifier", "DecisionTreeRegressor", "ExtraTreeClassifier", "ExtraTreeRegressor",
    "RandomForestClassifier", "RandomForestRegressor", "ExtraTreesClassifier", "ExtraTreesRegressor",
    "GradientBoostingClassifier", "GradientBoostingRegressor",
    "HistGradientBoostingClassifier", "HistGradientBoostingRegressor",
})
ML_OPSET = 5  # TreeEnsemble
# Nodes (branches and leaves, counted once per target) above which no model.onnx is written. Each costs
# ~18 bytes in the file and ~190 bytes in an onnxruntime session (measured, 1.32), against ~80 bytes for
# a node of the scikit-learn forest: 5M nodes is ~1 GB of server memory, the default limit.
MAX_NODES = 5_000_000
_BRANCH_LEQ = 0


class UnsupportedTreeModel(ValueError):
    """A tree model this module cannot reproduce exactly (the reason is the message)."""


@dataclass(frozen=True)
class Tree:
    """One tree for one target: per node its children (-1 at leaves), the feature and float64 threshold of
    `x <= threshold`, the side missing values take, and the value a leaf adds."""

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    missing_left: np.ndarray
    value: np.ndarray

    @classmethod
    def constant(cls, value: float) -> Tree:
        leaf = np.array([-1])
        return cls(left=leaf, right=leaf, feature=np.array([0]), threshold=np.array([0.0]),
                   missing_left=np.array([0]), value=np.array([float(value)]))


BOOSTING_MODULES = {"XGBClassifier": "xgboost.", "XGBRegressor": "xgboost.", "LGBMClassifier": "lightgbm.",
                    "LGBMRegressor": "lightgbm."}


def is_tree_model(estimator: Any) -> bool:
    kind = type(unwrap(estimator))
    name = kind.__name__
    return ((kind.__module__.startswith("sklearn.") and name in TREE_ESTIMATORS)
            or kind.__module__.startswith(BOOSTING_MODULES.get(name, "\0")))


def float32_thresholds(threshold: np.ndarray) -> np.ndarray:
    """For each float64 threshold t, the largest float64 w such that, for every float64 x,
    `x <= w` exactly when `float32(x) <= t` (round to nearest, ties to even; scikit-learn's comparison)."""
    t = np.asarray(threshold, dtype=np.float64)
    with np.errstate(over="ignore"):
        below = t.astype(np.float32)
    below = np.where(below.astype(np.float64) > t, np.nextafter(below, np.float32(-np.inf)), below)
    below = below.astype(np.float32)  # the largest float32 <= t
    above = np.nextafter(below, np.float32(np.inf))
    midpoint = (below.astype(np.float64) + above.astype(np.float64)) / 2  # exact in float64
    # x rounds to `below` when under the midpoint, and at the midpoint when `below` is the even one
    ties_to_below = (below.view(np.uint32) & 1) == 0
    w = np.where(ties_to_below, midpoint, np.nextafter(midpoint, -np.inf))
    return np.where(np.isfinite(below) & np.isfinite(above), w, t)


def tree_model_graph(estimator: Any, n_features: int, opset: int) -> Any:
    """An onnx.ModelProto with input X (float64 [n, n_features]) and outputs `label` and `probabilities`
    (classifiers) or `variable` (regressors, [n, 1]), all float64 except the labels."""
    from onnx import TensorProto, helper

    name = type(unwrap(estimator)).__name__
    classifier = name.endswith("Classifier")
    if name.startswith("XGB"):
        targets, finish = _xgboost(estimator, n_features)
    elif name.startswith("LGBM"):
        targets, finish = _lightgbm(estimator, n_features)
    elif "HistGradientBoosting" in name:
        targets, finish = _hist_gradient_boosting(estimator)
    elif "GradientBoosting" in name:
        targets, finish = _gradient_boosting(estimator)
    else:
        targets, finish = _forest(estimator, classifier)
    nodes, initializers = [_tree_ensemble_node(targets, "X", "scores")], []
    outputs = finish(nodes, initializers, "scores")
    if classifier:
        label_type = _label_type(np.asarray(estimator.classes_))
        value_infos = [helper.make_tensor_value_info("label", label_type, [None]),
                       helper.make_tensor_value_info("probabilities", TensorProto.DOUBLE,
                                                     [None, len(estimator.classes_)])]
    else:
        value_infos = [helper.make_tensor_value_info("variable", TensorProto.DOUBLE, [None, 1])]
    assert [v.name for v in value_infos] == outputs
    graph = helper.make_graph(nodes, f"modelloop {name}",
                              [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None, n_features])],
                              value_infos, initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid("ai.onnx.ml", ML_OPSET)])


# ------------------------------------------------------------------------------------------- estimators

def _sklearn_tree(tree: Any, value: np.ndarray, *, float32_input: bool = True) -> Tree:
    left = np.asarray(tree.children_left)
    threshold = np.asarray(tree.threshold, dtype=np.float64)
    return Tree(left=left, right=np.asarray(tree.children_right), feature=np.asarray(tree.feature),
                threshold=float32_thresholds(threshold) if float32_input else threshold,
                missing_left=np.asarray(getattr(tree, "missing_go_to_left", np.zeros(len(left), np.uint8))),
                value=np.asarray(value, dtype=np.float64))


def _forest(estimator: Any, classifier: bool) -> tuple[list[list[Tree]], Any]:
    members = list(getattr(estimator, "estimators_", [estimator]))
    if getattr(estimator, "n_outputs_", 1) != 1:
        raise UnsupportedTreeModel("more than one target column is not converted")
    if classifier:
        per_class: list[list[Tree]] = [[] for _ in estimator.classes_]
        for member in members:
            fractions = np.asarray(member.tree_.value[:, 0, :len(estimator.classes_)], dtype=np.float64)
            totals = fractions.sum(axis=1, keepdims=True)
            totals[totals == 0.0] = 1.0
            fractions = fractions / totals  # as each tree's predict_proba normalises
            for k, trees in enumerate(per_class):
                trees.append(_sklearn_tree(member.tree_, fractions[:, k]))
        targets = per_class
    else:
        targets = [[_sklearn_tree(m.tree_, m.tree_.value[:, 0, 0]) for m in members]]
    count = len(members)

    def finish(nodes: list, initializers: list, scores: str) -> list[str]:
        summed = scores
        if count > 1:  # a forest averages: the sum over trees, then one division, as scikit-learn
            summed = _add(nodes, initializers, "Div", scores, np.array(float(count)), "mean")
        if not classifier:
            nodes.append(_node("Identity", [summed], ["variable"]))
            return ["variable"]
        nodes.append(_node("Identity", [summed], ["probabilities"]))
        _labels_from(nodes, initializers, estimator.classes_, "probabilities")
        return ["label", "probabilities"]

    return targets, finish


def _gradient_boosting(estimator: Any) -> tuple[list[list[Tree]], Any]:
    init = getattr(estimator, "init_", None)
    if not (init == "zero" or type(init).__name__ in ("DummyClassifier", "DummyRegressor")):
        raise UnsupportedTreeModel(f"init estimator {type(init).__name__} is not converted")
    stages = estimator.estimators_  # shape (n_stages, K)
    baseline = np.asarray(estimator._raw_predict_init(np.zeros((1, estimator.n_features_in_))), dtype=np.float64)[0]
    rate = float(estimator.learning_rate)
    targets = [[Tree.constant(baseline[k])] + [_sklearn_tree(stages[i, k].tree_, rate * stages[i, k].tree_.value[:, 0, 0])
                                               for i in range(stages.shape[0])] for k in range(stages.shape[1])]
    loss = type(estimator._loss).__name__
    if estimator.__class__.__name__.endswith("Regressor"):
        return targets, _regression_output(None)
    link = {"HalfBinomialLoss": "sigmoid", "ExponentialLoss": "sigmoid2", "HalfMultinomialLoss": "softmax"}.get(loss)
    if link is None:
        raise UnsupportedTreeModel(f"loss {loss} is not converted")
    return targets, _classification_output(estimator.classes_, link, binary_rule=">=")


def _hist_gradient_boosting(estimator: Any) -> tuple[list[list[Tree]], Any]:
    if getattr(estimator, "is_categorical_", None) is not None and np.any(estimator.is_categorical_):
        raise UnsupportedTreeModel("native categorical features are not converted")
    baseline = np.asarray(estimator._baseline_prediction, dtype=np.float64).reshape(-1)
    per_target: list[list[Tree]] = [[Tree.constant(b)] for b in baseline]
    for iteration in estimator._predictors:
        for k, predictor in enumerate(iteration):
            nodes = predictor.nodes
            leaf = nodes["is_leaf"].astype(bool)
            per_target[k].append(Tree(left=np.where(leaf, -1, nodes["left"].astype(np.int64)),
                                      right=np.where(leaf, -1, nodes["right"].astype(np.int64)),
                                      feature=nodes["feature_idx"].astype(np.int64),
                                      threshold=nodes["num_threshold"].astype(np.float64),
                                      missing_left=nodes["missing_go_to_left"].astype(np.int64),
                                      value=nodes["value"].astype(np.float64)))
    link = type(estimator._loss.link).__name__ if hasattr(estimator._loss, "link") else None
    if estimator.__class__.__name__.endswith("Regressor"):
        if link not in ("IdentityLink", "LogLink"):
            raise UnsupportedTreeModel(f"link {link} is not converted")
        return per_target, _regression_output("Exp" if link == "LogLink" else None)
    loss = type(estimator._loss).__name__
    output = {"HalfBinomialLoss": "sigmoid", "HalfMultinomialLoss": "softmax"}.get(loss)
    if output is None:
        raise UnsupportedTreeModel(f"loss {loss} is not converted")
    return per_target, _classification_output(estimator.classes_, output, binary_rule=">")


XGBOOST_LINKS = {"binary:logistic": "sigmoid", "multi:softprob": "softmax", "reg:squarederror": None,
                 "reg:absoluteerror": None, "reg:pseudohubererror": None, "reg:squaredlogerror": None,
                 "count:poisson": "Exp", "reg:gamma": "Exp", "reg:tweedie": "Exp"}


def _xgboost(estimator: Any, n_features: int) -> tuple[list[list[Tree]], Any]:
    """One target per tree, preceded per class by a one-leaf tree of the base margin; see the docstring."""
    model = unwrap(estimator)
    if not np.isnan(float(model.missing)):
        raise UnsupportedTreeModel("a missing value other than NaN is not converted")
    learner = json.loads(bytes(model.get_booster().save_raw(raw_format="json")))["learner"]
    objective, booster = learner["objective"]["name"], learner["gradient_booster"]
    if booster["name"] != "gbtree":
        raise UnsupportedTreeModel(f"booster {booster['name']} is not converted")
    if objective not in XGBOOST_LINKS:
        raise UnsupportedTreeModel(f"objective {objective} is not converted")
    parameters = learner["learner_model_param"]
    classes = max(1, int(parameters.get("num_class", "0")))
    if int(parameters.get("num_target", "1")) != 1 or int(parameters["num_feature"]) != n_features:
        raise UnsupportedTreeModel("more than one target, or other features than the encoded columns")
    text = parameters["base_score"]
    base = np.asarray(json.loads(text) if text.startswith("[") else [float(text)], dtype=np.float32).reshape(-1)
    if len(base) != classes:
        raise UnsupportedTreeModel(f"{len(base)} base scores for {classes} output(s)")
    one = np.float32(1.0)
    if objective == "binary:logistic":  # XGBoost keeps a probability; the sum starts from its logit
        base = -np.log(one / base - one)
    elif XGBOOST_LINKS[objective] == "Exp":
        base = np.log(base)
    trees, groups = booster["model"]["trees"], booster["model"]["tree_info"]
    per_class: list[list[Tree]] = [[Tree.constant(float(b))] for b in base]
    for tree, group in zip(trees, groups):
        per_class[group].append(_xgboost_tree(tree))
    count = len(per_class[0])
    if any(len(trees) != count for trees in per_class):
        raise UnsupportedTreeModel("classes with different numbers of trees are not converted")
    targets = [[tree] for trees in per_class for tree in trees]  # class-major: reshaped to [n, classes, count]
    return targets, _xgboost_finish(estimator, classes, count, XGBOOST_LINKS[objective])


def _xgboost_finish(estimator: Any, classes: int, count: int, link: str | None) -> Any:
    """The graph's end for XGBoost: the per-tree scores summed in float32 in tree order, then the link."""

    def finish(nodes: list, initializers: list, scores: str) -> list[str]:
        from onnx import TensorProto

        shape = _constant(initializers, np.array([-1, classes, count], np.int64), "per_tree_shape")
        nodes.append(_node("Reshape", [scores, shape], ["per_tree"]))
        nodes.append(_node("Cast", ["per_tree"], ["per_tree32"], to=TensorProto.FLOAT))
        nodes.append(_node("CumSum", ["per_tree32", _constant(initializers, np.array(2, np.int64), "tree_axis")],
                           ["running"]))  # float32, in tree order: XGBoost's sums exactly
        nodes.append(_node("Slice", ["running", _constant(initializers, np.array([count - 1], np.int64), "last"),
                                     _constant(initializers, np.array([count], np.int64), "end"),
                                     _constant(initializers, np.array([2], np.int64), "axes")], ["margin3"]))
        nodes.append(_node("Reshape", ["margin3", _constant(initializers, np.array([-1, classes], np.int64),
                                                            "margin_shape")], ["margin32"]))
        nodes.append(_node("Cast", ["margin32"], ["margin"], to=TensorProto.DOUBLE))
        if link is None or link == "Exp":
            if link == "Exp":  # exp in float64 rounded to float32: XGBoost's expf, correctly rounded
                nodes.append(_node("Exp", ["margin"], ["exp"]))
                nodes.append(_node("Cast", ["exp"], ["exp32"], to=TensorProto.FLOAT))
                nodes.append(_node("Cast", ["exp32"], ["value"], to=TensorProto.DOUBLE))
            nodes.append(_node("Identity", ["value" if link else "margin"], ["variable"]))
            return ["variable"]
        if link == "softmax":
            nodes.append(_node("Softmax", ["margin"], ["probabilities"], axis=1))
            nodes.append(_node("Cast", ["probabilities"], ["probabilities32"], to=TensorProto.FLOAT))
            _labels_from(nodes, initializers, estimator.classes_, "probabilities32")
            return ["label", "probabilities"]
        _binary_probabilities(nodes, initializers, "margin")
        nodes.append(_node("Cast", ["p1"], ["p1_32"], to=TensorProto.FLOAT))
        threshold = _constant(initializers, np.array(0.5, np.float32), "half")
        nodes.append(_node("Greater", ["p1_32", threshold], ["positive"]))  # XGBClassifier: float32 p > 0.5
        _labels_where(nodes, initializers, estimator.classes_, "positive")
        return ["label", "probabilities"]

    return finish


def _xgboost_tree(tree: dict[str, Any]) -> Tree:
    if any(tree.get("split_type") or ()) or int(tree["tree_param"].get("size_leaf_vector", "1")) > 1:
        raise UnsupportedTreeModel("categorical splits and vector leaves are not converted")
    left = np.asarray(tree["left_children"], dtype=np.int64)
    split = np.asarray(tree["split_conditions"], dtype=np.float32)
    leaf = left == -1
    # float32(x) < split  <=>  float32(x) <= the float32 before split  <=>  x <= float32_thresholds(that)
    before = np.nextafter(split, np.float32(-np.inf)).astype(np.float64)
    return Tree(left=left, right=np.asarray(tree["right_children"], dtype=np.int64),
                feature=np.asarray(tree["split_indices"], dtype=np.int64),
                threshold=np.where(leaf, 0.0, float32_thresholds(before)),
                missing_left=np.asarray(tree["default_left"], dtype=np.int64),
                value=np.where(leaf, split.astype(np.float64), 0.0))


LIGHTGBM_IDENTITY = frozenset({"regression", "regression_l1", "huber", "fair", "quantile", "mape"})
LIGHTGBM_EXP = frozenset({"poisson", "gamma", "tweedie"})


def _lightgbm(estimator: Any, n_features: int) -> tuple[list[list[Tree]], Any]:
    model = unwrap(estimator)
    document = model.booster_.dump_model()
    if document.get("average_output") or document.get("max_feature_idx", -1) + 1 != n_features:
        raise UnsupportedTreeModel("averaged (random forest) output, or other features than the encoded columns")
    name, *options = str(document.get("objective", "")).split()
    settings = dict(option.split(":", 1) for option in options if ":" in option)
    if any(":" not in option for option in options) or not (
            name in LIGHTGBM_IDENTITY | LIGHTGBM_EXP or name in ("binary", "multiclass")):
        raise UnsupportedTreeModel(f"objective {document.get('objective')!r} is not converted")
    classes = int(document["num_tree_per_iteration"])
    per_class: list[list[Tree]] = [[] for _ in range(classes)]
    for i, info in enumerate(document["tree_info"]):
        per_class[i % classes].append(_lightgbm_tree(info["tree_structure"]))

    def finish(nodes: list, initializers: list, scores: str) -> list[str]:
        if name in LIGHTGBM_IDENTITY | LIGHTGBM_EXP:
            nodes.append(_node("Exp" if name in LIGHTGBM_EXP else "Identity", [scores], ["variable"]))
            return ["variable"]
        if name == "multiclass":
            nodes.append(_node("Softmax", [scores], ["probabilities"], axis=1))
        else:
            raw = _add(nodes, initializers, "Mul", scores, np.array(float(settings.get("sigmoid", 1.0))), "raw")
            _binary_probabilities(nodes, initializers, raw)
        _labels_from(nodes, initializers, estimator.classes_, "probabilities")  # LGBMClassifier: argmax
        return ["label", "probabilities"]

    return per_class, finish


def _lightgbm_tree(root: dict[str, Any]) -> Tree:
    """A LightGBM tree (dump_model's nested nodes), numbered breadth first."""
    order, left, right, feature, threshold, missing_left, value = [root], [], [], [], [], [], []
    for node in order:  # grows while it is walked
        if "split_feature" not in node:
            left.append(-1), right.append(-1), feature.append(0), threshold.append(0.0), missing_left.append(0)
            value.append(float(node["leaf_value"]))
            continue
        if node.get("decision_type") != "<=" or node.get("missing_type") not in ("None", "NaN"):
            raise UnsupportedTreeModel("categorical splits and zero_as_missing are not converted")
        if "leaf_coeff" in node:
            raise UnsupportedTreeModel("linear trees are not converted")
        order.extend((node["left_child"], node["right_child"]))
        limit = float(node["threshold"])
        left.append(len(order) - 2), right.append(len(order) - 1), feature.append(int(node["split_feature"]))
        threshold.append(limit), value.append(0.0)
        # missing type None: LightGBM predicts a missing value as 0
        missing_left.append(int(node["default_left"]) if node["missing_type"] == "NaN" else int(0.0 <= limit))
    return Tree(left=np.array(left), right=np.array(right), feature=np.array(feature),
                threshold=np.array(threshold, dtype=np.float64), missing_left=np.array(missing_left),
                value=np.array(value, dtype=np.float64))


# ------------------------------------------------------------------------------------------- outputs

def _binary_probabilities(nodes: list, initializers: list, raw: str) -> None:
    """`probabilities` = [1 - p1, p1] with p1 = sigmoid(raw), raw [n, 1]."""
    nodes.append(_node("Sigmoid", [raw], ["p1"]))
    p0 = _add(nodes, initializers, "Sub", np.array(1.0), "p1", "p0", constant_first=True)
    nodes.append(_node("Concat", [p0, "p1"], ["probabilities"], axis=1))


def _labels_where(nodes: list, initializers: list, classes: Any, positive: str) -> None:
    """The second class where `positive` ([n, 1] bool), the first elsewhere."""
    nodes.append(_node("Cast", [positive], ["index2d"], to=7))  # int64
    nodes.append(_node("Reshape", ["index2d", _constant(initializers, np.array([-1], np.int64), "flat")],
                       ["index"]))
    _gather_labels(nodes, initializers, classes, "index")


def _regression_output(inverse_link: str | None) -> Any:
    def finish(nodes: list, initializers: list, scores: str) -> list[str]:
        nodes.append(_node(inverse_link or "Identity", [scores], ["variable"]))
        return ["variable"]
    return finish


def _classification_output(classes: Any, link: str, *, binary_rule: str) -> Any:
    """Probabilities from raw scores (sigmoid of one score for two classes, twice the score for the
    exponential loss, softmax otherwise) and labels by scikit-learn's rule on the raw scores."""
    def finish(nodes: list, initializers: list, scores: str) -> list[str]:
        if link == "softmax":
            nodes.append(_node("Softmax", [scores], ["probabilities"], axis=1))
            _labels_from(nodes, initializers, classes, scores)
            return ["label", "probabilities"]
        raw = _add(nodes, initializers, "Mul", scores, np.array(2.0), "raw2") if link == "sigmoid2" else scores
        _binary_probabilities(nodes, initializers, raw)
        compare = _add(nodes, initializers, "GreaterOrEqual" if binary_rule == ">=" else "Greater", scores,
                       np.array(0.0), "positive")
        _labels_where(nodes, initializers, classes, compare)
        return ["label", "probabilities"]
    return finish


def _labels_from(nodes: list, initializers: list, classes: Any, scores: str) -> None:
    nodes.append(_node("ArgMax", [scores], ["index"], axis=1, keepdims=0))  # first maximum, as numpy
    _gather_labels(nodes, initializers, classes, "index")


def _gather_labels(nodes: list, initializers: list, classes: Any, index: str) -> None:
    nodes.append(_node("Gather", [_class_constant(initializers, np.asarray(classes)), index], ["label"], axis=0))


def _label_type(classes: np.ndarray) -> int:
    from onnx import TensorProto

    if classes.dtype.kind in "OUS":
        return TensorProto.STRING
    return {"b": TensorProto.BOOL, "f": TensorProto.DOUBLE}.get(classes.dtype.kind, TensorProto.INT64)


def _class_constant(initializers: list, classes: np.ndarray) -> str:
    from onnx import helper, numpy_helper

    kind = _label_type(classes)
    if classes.dtype.kind in "OUS":
        tensor = helper.make_tensor("classes", kind, [len(classes)], [str(c).encode() for c in classes])
    else:
        dtype = {"b": np.bool_, "f": np.float64}.get(classes.dtype.kind, np.int64)
        tensor = numpy_helper.from_array(classes.astype(dtype), "classes")
    initializers.append(tensor)
    return "classes"


# ------------------------------------------------------------------------------------------- graph pieces

def _tree_ensemble_node(targets: list[list[Tree]], x: str, output: str) -> Any:
    """One TreeEnsemble node summing, per target, its trees in order. Integer attributes are filled from
    numpy arrays directly (a Python list per attribute would take ~30 bytes per node)."""
    from onnx import AttributeProto, helper, numpy_helper

    nodes = sum(len(tree.left) for trees in targets for tree in trees)
    if nodes > MAX_NODES:
        raise UnsupportedTreeModel(f"{nodes} tree nodes over {len(targets)} target(s), more than {MAX_NODES} (an "
                                   f"onnxruntime session would need about {nodes * 190 // 2**20} MiB)")
    a: dict[str, Any] = {k: [] for k in ("featureids", "splits", "modes", "truenodeids", "trueleafs",
                                         "falsenodeids", "falseleafs", "missing", "roots", "leaf_targets",
                                         "leaf_weights")}
    a["node_count"] = a["leaf_count"] = 0
    for target, trees in enumerate(targets):
        for tree in trees:
            _append_tree(a, tree, target)
    node = helper.make_node(
        "TreeEnsemble", [x], [output], domain="ai.onnx.ml", name="modelloop_trees",
        n_targets=len(targets), aggregate_function=1, post_transform=0, tree_roots=a["roots"],
        nodes_splits=numpy_helper.from_array(np.concatenate(a["splits"]).astype(np.float64)),
        nodes_modes=numpy_helper.from_array(np.concatenate(a["modes"]).astype(np.uint8)),
        leaf_weights=numpy_helper.from_array(np.concatenate(a["leaf_weights"]).astype(np.float64)))
    for name, key in (("nodes_featureids", "featureids"), ("nodes_truenodeids", "truenodeids"),
                      ("nodes_trueleafs", "trueleafs"), ("nodes_falsenodeids", "falsenodeids"),
                      ("nodes_falseleafs", "falseleafs"), ("nodes_missing_value_tracks_true", "missing"),
                      ("leaf_targetids", "leaf_targets")):
        attribute = node.attribute.add()
        attribute.name, attribute.type = name, AttributeProto.INTS
        attribute.ints.extend(np.concatenate(a[key]).astype(np.int64))
    return node


def _append_tree(a: dict[str, list], tree: Tree, target: int) -> None:
    """Add one tree's branches and leaves (arrays, concatenated when the node is made)."""
    left, right = np.asarray(tree.left), np.asarray(tree.right)
    is_leaf = left == -1
    interior, leaves = np.flatnonzero(~is_leaf), np.flatnonzero(is_leaf)
    node_base, leaf_base = a["node_count"], a["leaf_count"]
    a["leaf_targets"].append(np.full(len(leaves), target, dtype=np.int64))
    a["leaf_weights"].append(np.asarray(tree.value, dtype=np.float64)[leaves])
    a["leaf_count"] += len(leaves)
    if len(interior) == 0:  # a single leaf: one branch whose two sides reach it
        a["roots"].append(node_base)
        for key, value in (("featureids", 0), ("splits", 0.0), ("modes", _BRANCH_LEQ), ("missing", 0),
                           ("truenodeids", leaf_base), ("trueleafs", 1), ("falsenodeids", leaf_base),
                           ("falseleafs", 1)):
            a[key].append(np.array([value]))
        a["node_count"] += 1
        return
    position = np.empty(len(left), dtype=np.int64)  # a node's index among branches, or a leaf's among leaves
    position[interior] = node_base + np.arange(len(interior))
    position[leaves] = leaf_base + np.arange(len(leaves))
    a["roots"].append(int(position[0]))
    for side, ids, leafs in ((left, "truenodeids", "trueleafs"), (right, "falsenodeids", "falseleafs")):
        children = side[interior]
        a[ids].append(position[children])
        a[leafs].append(is_leaf[children].astype(np.int64))
    a["featureids"].append(np.asarray(tree.feature)[interior].astype(np.int64))
    a["splits"].append(np.asarray(tree.threshold, dtype=np.float64)[interior])
    a["modes"].append(np.full(len(interior), _BRANCH_LEQ, dtype=np.uint8))
    a["missing"].append(np.asarray(tree.missing_left)[interior].astype(np.int64))
    a["node_count"] += len(interior)


def _node(op: str, inputs: list[str], outputs: list[str], **attributes: Any) -> Any:
    from onnx import helper

    return helper.make_node(op, inputs, outputs, name=f"modelloop_{outputs[0]}", **attributes)


def _constant(initializers: list, value: np.ndarray, name: str) -> str:
    from onnx import numpy_helper

    initializers.append(numpy_helper.from_array(value, name))
    return name


def _add(nodes: list, initializers: list, op: str, left: Any, right: Any, output: str, *,
         constant_first: bool = False) -> str:
    """`output = left <op> right`, where the array operand becomes a constant named after the output."""
    if constant_first:
        left = _constant(initializers, np.asarray(left, dtype=np.float64), f"{output}_constant")
    else:
        right = _constant(initializers, np.asarray(right, dtype=np.float64), f"{output}_constant")
    nodes.append(_node(op, [left, right], [output]))
    return output
