"""How closely model.onnx reproduces XGBoost and LightGBM (docs/artifacts.md, "XGBoost and LightGBM"): each of
the four estimators trained by the real trainer (`train`) on 5,000 rows of 10 numbers (a tenth missing in
two of them), with metadata.json's parity figures, beside onnxmltools' float32 graphs of the same model on the
same hold-out rows (what the trainer would ship had it used them).

    .venv/bin/python bench/training/onnx_parity.py        # prints a Markdown table
"""
from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "model-server")]
ESTIMATORS = {"xgboost.XGBClassifier": {"n_estimators": 200, "max_depth": 6},
              "xgboost.XGBRegressor": {"n_estimators": 200, "max_depth": 6},
              "lightgbm.LGBMClassifier": {"n_estimators": 200, "num_leaves": 31},
              "lightgbm.LGBMRegressor": {"n_estimators": 200, "num_leaves": 31}}
ROWS, FEATURES, SEED, TEST_SIZE = 5000, 10, 7, 0.2


def dataset(regression: bool) -> pd.DataFrame:
    from sklearn.datasets import make_classification, make_regression

    if regression:
        x, y = make_regression(ROWS, FEATURES, noise=10.0, random_state=0)
        y = 1000.0 + 50.0 * y
    else:
        x, y = make_classification(ROWS, FEATURES, n_informative=6, random_state=0)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(FEATURES)])
    rng = np.random.default_rng(0)
    for column in ("f0", "f1"):
        frame.loc[rng.random(ROWS) < 0.1, column] = np.nan
    frame["y"] = y
    return frame


def onnxmltools_difference(class_path: str, params: dict, frame: pd.DataFrame) -> tuple[float, float]:
    """(max abs, max relative above 1) difference of onnxmltools' float32 graph from the library's answers on
    the trainer's hold-out rows (same split, estimator, params and seed as the trainer)."""
    import importlib

    import onnxruntime
    from onnxmltools import convert_lightgbm, convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType
    from sklearn.model_selection import train_test_split

    module, name = class_path.split(".")
    classifier = name.endswith("Classifier")
    x, y = frame.drop(columns=["y"]), frame["y"]
    x_train, x_valid, y_train, _ = train_test_split(x, y, test_size=TEST_SIZE, random_state=SEED,
                                                    stratify=y if classifier else None)
    extra = {"verbose": -1} if module == "lightgbm" else {}
    model = getattr(importlib.import_module(module), name)(**params, random_state=SEED, **extra)
    model.fit(x_train.to_numpy(), y_train.to_numpy())
    convert = convert_xgboost if module == "xgboost" else convert_lightgbm
    options = {"zipmap": False} if module == "lightgbm" and classifier else {}
    graph = convert(model, initial_types=[("X", FloatTensorType([None, FEATURES]))], target_opset=15, **options)
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"X": x_valid.to_numpy(np.float32)})
    got = np.asarray(outputs[1] if classifier else outputs[0], dtype=np.float64).reshape(len(x_valid), -1)
    want = np.asarray(model.predict_proba(x_valid.to_numpy()) if classifier else model.predict(x_valid.to_numpy()),
                      dtype=np.float64).reshape(len(x_valid), -1)
    difference = np.abs(got - want)
    return float(difference.max()), float((difference / np.fmax(1.0, np.abs(want))).max())


def main() -> None:
    from modelloop.training import train

    warnings.simplefilter("ignore")
    print("| estimator | model.onnx: max abs diff, hold-out | model.onnx: max diff, hold-out + probe rows "
          "(relative above 1) | labels equal | onnxmltools float32: max abs diff, hold-out | onnxmltools: "
          "relative above 1 |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for class_path, params in ESTIMATORS.items():
            frame = dataset(regression=class_path.endswith("Regressor"))
            data = Path(work) / f"{class_path}.csv"
            frame.to_csv(data, index=False)
            spec = {"dataset": {"uri": f"file://{data}", "target": "y"},
                    "estimator": {"class": class_path, "params": params},
                    "validation": {"testSize": TEST_SIZE, "seed": SEED},
                    "output": {"uri": f"file://{work}/{class_path}"}}
            parity = train(spec, version=1, identity={})["onnx"]["parity"]
            absolute, relative = onnxmltools_difference(class_path, params, frame)
            print(f"| `{class_path}` | {parity['maxAbsDiff']:.2g} | {parity['maxDiff']:.2g} "
                  f"({parity['rows']} + {parity['probeRows']} rows) | {parity.get('labelsEqual', '')} | "
                  f"{absolute:.2g} | {relative:.2g} |")
    print(json.dumps({"rows": ROWS, "features": FEATURES, "estimators": ESTIMATORS}))


if __name__ == "__main__":
    main()
