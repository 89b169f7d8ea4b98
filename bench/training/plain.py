"""The peer: what a user writes without modelloop. Same data, split, estimator, params and seed as the
trainer; reads the CSV, fits, scores accuracy on the held-out split, saves the model as its library does
(scikit-learn: joblib; XGBoost: save_model JSON; LightGBM: its text model)."""
from __future__ import annotations

import importlib
import json
import sys

import pandas as pd
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split


def main(csv_path: str, target: str, class_path: str, params_json: str, test_size: float, seed: int,
         model_path: str) -> None:
    module, name = class_path.rsplit(".", 1)
    estimator = getattr(importlib.import_module(module), name)
    frame = pd.read_csv(csv_path)
    features, labels = frame.drop(columns=[target]), frame[target]
    x_train, x_valid, y_train, y_valid = train_test_split(features, labels, test_size=test_size, random_state=seed,
                                                          stratify=labels)
    model = estimator(**json.loads(params_json), random_state=seed).fit(x_train, y_train)
    accuracy = accuracy_score(y_valid, model.predict(x_valid))
    if module == "xgboost":
        model.save_model(model_path + ".json")
    elif module == "lightgbm":
        model.booster_.save_model(model_path + ".txt")
    else:
        import joblib

        joblib.dump(model, model_path + ".joblib")
    print(json.dumps({"accuracy": accuracy}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), int(sys.argv[6]), sys.argv[7])
