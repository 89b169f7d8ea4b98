"""What is checked and set on a model's objects once skops rebuilt them, before anything predicts with them
(docs/security.md, "Models that never finish").

The exact type list (model.py) decides which classes a model file may build, not the values inside them.
Two kinds of values matter beyond the types:

- **Native index structures.** BallTree and KDTree (the `_tree` of KNeighbors* and RadiusNeighbors* fitted
  with algorithm ball_tree or kd_tree) are walked in native code that trusts their arrays: an index in
  `idx_array` or a node's `idx_start`/`idx_end` beyond the training rows reads outside the arrays and
  crashes the process (or reads memory) at predict. `check_neighbor_tree` checks what scikit-learn's own
  build guarantees: `idx_array` is a permutation of the rows, every node reachable from the root covers
  a range within them, a node with children has them inside the node array, and the arrays' shapes agree.
- **Decision trees.** scikit-learn's `Tree` (decision trees, forests, gradient boosting) and
  HistGradientBoosting's `TreePredictor` are walked the same way (compiled without bounds checks): a child
  index past the node array, a feature index past the columns of X, a node count larger than the nodes held,
  a categorical split's bitset row past its array crash the process at predict. `check_tree` and
  `check_tree_predictor` check what scikit-learn's builders guarantee: children come after their parent
  and inside the node array (so every walk ends at a leaf), every node but the root is the child of exactly
  one node, split features are below the tree's feature count, thresholds are numbers, the node count is
  the nodes held and the value array has their shape, categorical splits name a bitset row that exists and a
  feature the bin mapper knows as categorical. The estimators holding them (`check_tree_estimator`) are
  checked to read no more columns than the X they validate: a tree's feature count is its estimator's
  `n_features_in_`, a forest's or a gradient boosting's members read the ensemble's (and a gradient boosting's
  initial predictions have a column per member of a stage: `check_initial_predictions`), a HistGradientBoosting's
  predictors read its own (one with its own preprocessing of categorical features is refused: its
  OrdinalEncoder is not on the type list, so no servable model has one).
- **`n_jobs`.** An estimator whose `n_jobs` is more than 1 (or -1) starts worker processes (joblib's loky)
  to predict: a model file, or a spec's `estimator.params`, would make a server that runs one prediction
  thread spawn a pool per call. `run_in_one_job` sets `n_jobs = 1` on every object of the model that has
  one (nested pipelines, column transformers and ensembles included). The trainer sets it on the copy it
  stores (after fitting with the spec's value); the loader sets it again, whatever the file says.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from .errors import ArtifactIntegrityError

_NEIGHBOR_TREE_MODULES = {"sklearn.neighbors._ball_tree": 1, "sklearn.neighbors._kd_tree": 2}  # -> bound rows
_TREE = ("sklearn.tree._tree", "Tree")
_TREE_PREDICTOR = ("sklearn.ensemble._hist_gradient_boosting.predictor", "TreePredictor")
_TREE_LEAF = -1  # a Tree node's children when it is a leaf
_GRADIENT_BOOSTING = "sklearn.ensemble._gb"
_SCALARS = (str, bytes, int, float, complex, bool, type(None), np.generic)
_UNREADABLE = (TypeError, ValueError, IndexError, KeyError, OverflowError, AttributeError)


def prepare_loaded_model(model: Any) -> Any:
    """`model` after its index structures and trees passed and with every n_jobs set to 1;
    ArtifactIntegrityError when one of them is inconsistent."""
    boosting = []
    for obj in _objects(model):
        module, name = type(obj).__module__, type(obj).__name__
        if module in _NEIGHBOR_TREE_MODULES:
            check_neighbor_tree(obj, _NEIGHBOR_TREE_MODULES[module])
        elif (module, name) == _TREE:
            check_tree(obj)
        elif (module, name) == _TREE_PREDICTOR:
            check_tree_predictor(obj)
        elif module in _TREE_ESTIMATORS:
            check_tree_estimator(obj)
            if module == _GRADIENT_BOOSTING and "estimators_" in vars(obj):
                boosting.append(obj)
        _set_one_job(obj)
    for estimator in boosting:  # once every structure passed: this predicts with the initial estimator
        check_initial_predictions(estimator)
    return model


def run_in_one_job(model: Any) -> Any:
    """Set `n_jobs = 1` on every object of `model` that has one; returns `model`."""
    for obj in _objects(model):
        _set_one_job(obj)
    return model


def _set_one_job(obj: Any) -> None:
    attributes = getattr(obj, "__dict__", None)
    if attributes is not None and "n_jobs" in attributes and attributes["n_jobs"] != 1:
        attributes["n_jobs"] = 1


def _objects(root: Any) -> Iterator[Any]:
    """Every object reachable from `root` through instance attributes, dicts, lists, tuples and object arrays,
    once each (scalars and numeric arrays are not followed)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if isinstance(obj, _SCALARS) or id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, np.ndarray):
            if obj.dtype == object:
                stack.extend(obj.ravel().tolist())
        elif isinstance(getattr(obj, "__dict__", None), dict) and not isinstance(obj, type):
            stack.extend(vars(obj).values())


def check_neighbor_tree(tree: Any, bound_rows: int) -> None:
    """Refuse a BallTree (`bound_rows` 1: centroids) or KDTree (2: lower and upper bounds) whose arrays do not
    describe a tree over its own data (see the module docstring)."""
    _refuse_unless_built(f"{type(tree).__name__} (a nearest-neighbours index)", _neighbor_tree_problem, tree,
                         bound_rows)


def _refuse_unless_built(what: str, problem_of: Callable[..., str | None], *args: Any) -> None:
    """ArtifactIntegrityError naming `what` and the problem `problem_of(*args)` finds, if any (a state it cannot
    read is one)."""
    try:
        problem = problem_of(*args)
    except _UNREADABLE as exc:
        problem = f"its state cannot be read ({type(exc).__name__})"
    _refuse(what, problem)


def _refuse(what: str, problem: str | None) -> None:
    if problem is not None:
        raise ArtifactIntegrityError(f"the model file holds a {what} that scikit-learn could not have built: "
                                     f"{problem}; predicting with it would read or write outside its arrays; "
                                     f"refusing to load")


def _neighbor_tree_problem(tree: Any, bound_rows: int) -> str | None:
    state = tree.__getstate__()
    data, idx_array, node_data, node_bounds = (np.asarray(a) for a in state[:4])
    leaf_size, n_levels, n_nodes = (int(v) for v in state[4:7])
    return _tree_problem(data, idx_array, node_data, node_bounds, leaf_size, n_levels, n_nodes, state[12],
                         bound_rows)


def _tree_problem(data: np.ndarray, idx_array: np.ndarray, node_data: np.ndarray, node_bounds: np.ndarray,
                  leaf_size: int, n_levels: int, n_nodes: int, sample_weight: Any, bound_rows: int) -> str | None:
    if data.ndim != 2 or data.shape[0] < 1 or data.shape[1] < 1:
        return f"its data has shape {data.shape}, not (rows, features)"
    rows, features = data.shape
    if idx_array.ndim != 1 or idx_array.shape[0] != rows or idx_array.dtype.kind not in "iu":
        return f"idx_array has shape {idx_array.shape} and dtype {idx_array.dtype}, not ({rows},) integers"
    if not np.array_equal(np.sort(idx_array), np.arange(rows)):
        return "idx_array is not a permutation of the data's rows"
    if not 1 <= n_levels <= 62 or n_nodes != 2 ** n_levels - 1 or leaf_size < 1:
        return f"n_levels {n_levels}, n_nodes {n_nodes} and leaf_size {leaf_size} do not fit together"
    if node_data.shape != (n_nodes,) or not {"idx_start", "idx_end", "is_leaf"} <= set(node_data.dtype.names or ()):
        return f"node_data has shape {node_data.shape}, not ({n_nodes},) nodes"
    if node_bounds.shape != (bound_rows, n_nodes, features):
        return f"node_bounds has shape {node_bounds.shape}, not ({bound_rows}, {n_nodes}, {features})"
    if sample_weight is not None and np.asarray(sample_weight).shape != (rows,):
        return f"sample_weight has shape {np.asarray(sample_weight).shape}, not ({rows},)"
    leaf = node_data["is_leaf"] != 0
    reachable = np.zeros(n_nodes, dtype=bool)
    reachable[0] = True
    for level in range(1, n_levels):  # a node is reached when its parent is, and is not a leaf
        first, last = 2 ** level - 1, 2 ** (level + 1) - 1
        parents = (np.arange(first, last) - 1) // 2
        reachable[first:last] = reachable[parents] & ~leaf[parents]
    start, end = node_data["idx_start"][reachable], node_data["idx_end"][reachable]
    if not ((0 <= start) & (start <= end) & (end <= rows)).all():
        return "a node's idx_start/idx_end range lies outside the data's rows"
    if (reachable & ~leaf)[(n_nodes - 1) // 2:].any():
        return "a node of the last level is not a leaf (its children would lie beyond the node array)"
    return None


def check_tree(tree: Any) -> None:
    """Refuse a scikit-learn `Tree` (of a decision tree, forest or gradient boosting) whose walk could leave its
    arrays (see the module docstring)."""
    _refuse_unless_built("decision tree (sklearn.tree._tree.Tree)", _tree_structure_problem, tree)


def _tree_structure_problem(tree: Any) -> str | None:
    count, capacity = int(tree.node_count), int(tree.capacity)
    if count < 1 or count != capacity:  # before any array is read: they are views of `node_count` nodes
        return f"node_count {count} is not the {capacity} nodes it holds"
    n_features, n_outputs, n_classes = int(tree.n_features), int(tree.n_outputs), int(tree.max_n_classes)
    if min(n_features, n_outputs, n_classes) < 1:
        return f"{n_features} features, {n_outputs} outputs and {n_classes} classes are not all positive"
    state = tree.__getstate__()
    nodes, values = state["nodes"], np.asarray(state["values"])
    if values.shape != (count, n_outputs, n_classes):
        return f"its values have shape {values.shape}, not ({count}, {n_outputs}, {n_classes})"
    left, right = nodes["left_child"], nodes["right_child"]
    leaf = left == _TREE_LEAF
    if (right[leaf] != _TREE_LEAF).any():
        return "a leaf has a right child"
    return _branches_problem(left[~leaf], right[~leaf], np.flatnonzero(~leaf), count) or _splits_problem(
        nodes["feature"][~leaf], nodes["threshold"][~leaf], n_features)


def _branches_problem(left: np.ndarray, right: np.ndarray, parents: np.ndarray, count: int) -> str | None:
    """How the children of the branch nodes `parents` fail to make one tree of `count` nodes, walked from node 0."""
    if not ((left > parents) & (right > parents) & (left < count) & (right < count)).all():
        return "a node's child lies outside the node array or before the node (children follow their parent)"
    if not np.array_equal(np.sort(np.concatenate([left, right])), np.arange(1, count)):
        return "the nodes do not form one tree (every node but the root is the child of exactly one node)"
    return None


def _splits_problem(features: np.ndarray, thresholds: np.ndarray, n_features: int | None) -> str | None:
    if (features < 0).any() or (n_features is not None and (features >= n_features).any()):
        return f"a split's feature index is not below the {n_features} features it reads"
    if np.isnan(thresholds).any():  # +inf is a split of missing values from the rest
        return "a split's threshold is not a number"
    return None


def check_tree_predictor(predictor: Any, n_features: int | None = None, categorical: np.ndarray | None = None
                         ) -> None:
    """Refuse a HistGradientBoosting `TreePredictor` whose walk could leave its arrays; with `n_features` (the
    columns of the X it is given) and `categorical` (the bin mapper's categorical features), also one that reads
    past them."""
    _refuse_unless_built("HistGradientBoosting tree (TreePredictor)", _tree_predictor_problem, predictor, n_features,
                         categorical)


def _tree_predictor_problem(predictor: Any, n_features: int | None, categorical: np.ndarray | None) -> str | None:
    from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE

    nodes = predictor.nodes
    if not isinstance(nodes, np.ndarray) or nodes.dtype != PREDICTOR_RECORD_DTYPE or nodes.ndim != 1 or not len(nodes):
        return "its nodes are not a non-empty array of predictor records"
    bitsets = [getattr(predictor, name) for name in ("raw_left_cat_bitsets", "binned_left_cat_bitsets")]
    if any(not isinstance(b, np.ndarray) or b.dtype != np.uint32 or b.ndim != 2 or b.shape[1] != 8 for b in bitsets):
        return "its categorical bitsets are not arrays of 8 uint32 per split"
    branch = nodes["is_leaf"] == 0
    split = nodes[branch]
    problem = _branches_problem(split["left"].astype(np.int64), split["right"].astype(np.int64),
                                np.flatnonzero(branch), len(nodes))
    numeric = split["is_categorical"] == 0
    problem = problem or _splits_problem(split["feature_idx"], split["num_threshold"][numeric], n_features)
    if problem is not None:
        return problem
    by_category = split[~numeric]
    if (by_category["bitset_idx"] >= min(len(b) for b in bitsets)).any():
        return "a categorical split names a bitset row its arrays do not have"
    if categorical is not None and len(by_category) and not categorical[by_category["feature_idx"]].all():
        return "a categorical split reads a feature the bin mapper does not know as categorical"
    return None


def check_tree_estimator(estimator: Any) -> None:
    """Refuse a fitted tree estimator whose trees read more columns than the X its predict validates (see the
    module docstring); an unfitted one (a forest's template) holds no tree and passes."""
    fitted = getattr(estimator, "__dict__", {})
    if any(name in fitted for name in ("tree_", "estimators_", "_predictors")):
        _refuse_unless_built(type(estimator).__name__, _TREE_ESTIMATORS[type(estimator).__module__], estimator)


def _n_features_in(estimator: Any) -> int:
    """The columns scikit-learn checks X against at predict (without the attribute, it checks none)."""
    value = estimator.__dict__["n_features_in_"]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise TypeError("n_features_in_ is not a positive integer")
    return int(value)


def _decision_tree_estimator_problem(estimator: Any) -> str | None:
    n_features, tree = _n_features_in(estimator), estimator.tree_
    if (type(tree).__module__, type(tree).__name__) != _TREE or int(tree.n_features) != n_features:
        return f"its tree does not read the {n_features} features it validates"
    return None


def _ensemble_problem(estimator: Any) -> str | None:
    """Forests (members called without validating X) and gradient boosting (members' nodes walked directly, X
    validated by the first member): every member must read the ensemble's features."""
    n_features, members = _n_features_in(estimator), estimator.estimators_
    if type(estimator).__module__ == _GRADIENT_BOOSTING:
        columns = int(estimator.n_trees_per_iteration_)
        if not isinstance(members, np.ndarray) or members.ndim != 2 or members.shape[1] != columns or not members.size:
            return f"its estimators_ are not (stages, {columns}) trees"  # predict writes column k of (rows, columns)
        members = members.ravel().tolist()
    if any(_n_features_in(member) != n_features for member in members):
        return f"a member does not read the {n_features} features the ensemble validates"
    return None


def check_initial_predictions(boosting: Any) -> None:
    """Refuse a gradient boosting whose initial predictions (from `init_`) have another number of columns than
    its stages add to: scikit-learn's native loop writes column k of each row for every member k of a stage,
    past the array when it is narrower (a crafted file aborted the process with a corrupted heap)."""
    import warnings

    columns = boosting.estimators_.shape[1]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # feature names: the row is a bare array
            shape = np.shape(boosting._raw_predict_init(np.zeros((1, boosting.n_features_in_), dtype=np.float32)))
    except Exception as exc:  # noqa: BLE001 - whatever its initial estimator raises, it cannot be served
        shape = f"none: it cannot predict ({type(exc).__name__})"
    _refuse(type(boosting).__name__, None if shape == (1, columns) else
            f"its initial predictions have shape {shape}, not the (rows, {columns}) its stages add to")


def _hist_gradient_boosting_problem(estimator: Any) -> str | None:
    if estimator.__dict__.get("_in_fit"):
        return "it says it is being fitted (predict would walk binned data)"
    if estimator.__dict__.get("_preprocessor") is not None:  # its OrdinalEncoder is not on the type list
        return "it has its own preprocessing of categorical features, which modelloop's trainer never fits"
    n_features = _n_features_in(estimator)  # the columns validated X has, handed to every predictor
    mapped = estimator._bin_mapper.is_categorical_  # uint8 per feature (make_known_categories_bitsets' map)
    categorical = np.zeros(n_features, dtype=np.uint8) if mapped is None else np.asarray(mapped)
    if categorical.dtype.kind not in "biu" or categorical.shape != (n_features,):
        return f"its bin mapper does not describe its {n_features} features"
    categorical = categorical != 0
    for iteration in estimator._predictors:
        for predictor in iteration:
            check_tree_predictor(predictor, n_features, categorical)
    return None


# The module of a tree estimator's class -> what its fitted state must satisfy.
_TREE_ESTIMATORS = {
    "sklearn.tree._classes": _decision_tree_estimator_problem,
    "sklearn.ensemble._forest": _ensemble_problem,
    "sklearn.ensemble._gb": _ensemble_problem,
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting": _hist_gradient_boosting_problem,
}
