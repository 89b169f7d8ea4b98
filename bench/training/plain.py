"""The peer: what a user writes without modelloop. Same data, split, estimator, params and seed as the
trainer; reads the CSV, fits, scores accuracy on the held-out split, saves the model with joblib."""
from __future__ import annotations

import json
import sys

import joblib
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split


def main(csv_path: str, target: str, params_json: str, test_size: float, seed: int, model_path: str) -> None:
    frame = pd.read_csv(csv_path)
    features, labels = frame.drop(columns=[target]), frame[target]
    x_train, x_valid, y_train, y_valid = train_test_split(features, labels, test_size=test_size, random_state=seed,
                                                          stratify=labels)
    model = HistGradientBoostingClassifier(**json.loads(params_json), random_state=seed).fit(x_train, y_train)
    accuracy = accuracy_score(y_valid, model.predict(x_valid))
    joblib.dump(model, model_path)
    print(json.dumps({"accuracy": accuracy}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
