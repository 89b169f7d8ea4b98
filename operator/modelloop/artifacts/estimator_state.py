"""What is checked and set on a model's objects once skops rebuilt them, before anything predicts with them
(docs/security.md, "Models that never finish").

The exact type list (model.py) decides which classes a model file may build, not the values inside them.
Two kinds of values matter beyond the types:

- **Native index structures.** BallTree and KDTree (the `_tree` of KNeighbors* and RadiusNeighbors* fitted
  with algorithm ball_tree or kd_tree) are walked in native code that trusts their arrays: an index in
  `idx_array` or a node's `idx_start`/`idx_end` beyond the training rows reads outside the arrays and
  crashes the process (or reads memory) at predict. `check_neighbor_trees` checks what scikit-learn's own
  build guarantees: `idx_array` is a permutation of the rows, every node reachable from the root covers
  a range within them, a node with children has them inside the node array, and the arrays' shapes agree.
- **`n_jobs`.** An estimator whose `n_jobs` is more than 1 (or -1) starts worker processes (joblib's loky)
  to predict: a model file, or a spec's `estimator.params`, would make a server that runs one prediction
  thread spawn a pool per call. `run_in_one_job` sets `n_jobs = 1` on every object of the model that has
  one (nested pipelines, column transformers and ensembles included). The trainer sets it on the copy it
  stores (after fitting with the spec's value); the loader sets it again, whatever the file says.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from .errors import ArtifactIntegrityError

_NEIGHBOR_TREE_MODULES = {"sklearn.neighbors._ball_tree": 1, "sklearn.neighbors._kd_tree": 2}  # -> bound rows
_SCALARS = (str, bytes, int, float, complex, bool, type(None), np.generic)


def prepare_loaded_model(model: Any) -> Any:
    """`model` after its index structures passed and with every n_jobs set to 1; ArtifactIntegrityError
    when an index structure is inconsistent."""
    for obj in _objects(model):
        module = type(obj).__module__
        if module in _NEIGHBOR_TREE_MODULES:
            check_neighbor_tree(obj, _NEIGHBOR_TREE_MODULES[module])
        _set_one_job(obj)
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
    name = type(tree).__name__
    try:
        state = tree.__getstate__()
        data, idx_array, node_data, node_bounds = (np.asarray(a) for a in state[:4])
        leaf_size, n_levels, n_nodes = (int(v) for v in state[4:7])
        sample_weight = state[12]
        problem = _tree_problem(data, idx_array, node_data, node_bounds, leaf_size, n_levels, n_nodes,
                                sample_weight, bound_rows)
    except (TypeError, ValueError, IndexError, KeyError, OverflowError) as exc:
        problem = f"its state cannot be read ({type(exc).__name__})"
    if problem is not None:
        raise ArtifactIntegrityError(
            f"the model file holds a {name} (a nearest-neighbours index) that scikit-learn could not have built: "
            f"{problem}; predicting with it would read outside its arrays; refusing to load")


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
