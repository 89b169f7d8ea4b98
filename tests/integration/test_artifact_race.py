"""Two trainers commit the same version at once, against the real S3 server (versitygw, tests/fixtures/s3.py).

Two ModelTrainings that share one output (a misconfiguration the store must survive) each fit their own model
and reach the commit of version N together: a barrier holds each writer just before `commit_version`, so both
commits run concurrently, over HTTP, on the real server. Exactly one commits; the other gets the trainer's
VersionExistsError naming the version; the stored version is the winner's, whole: its metadata.json, its
model.skops and model.onnx belong together and pass every check of the model loader.
"""
from __future__ import annotations

import json
import threading

from modelloop.artifacts import ArtifactStore, load_model, open_store
from modelloop.training import train
from modelloop.training.errors import VersionExistsError
from tests.fixtures.artifacts import CHURN, SPEC

ROUNDS = 5
WRITERS = {  # two different models: the loser's files can never pass for the winner's
    "churn-a": {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 300}},
    "churn-b": {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 5, "max_depth": 3}},
}


def test_two_trainers_racing_for_one_version_leave_exactly_one_whole_version(s3, monkeypatch):
    s3.put("churn.csv", CHURN)
    output = s3.uri("models/shared")
    real_commit = ArtifactStore.commit_version
    barrier = threading.Barrier(len(WRITERS), timeout=120)

    def commit_together(self, version, files, metadata):
        barrier.wait()  # both writers hold a fitted model; now both commit
        return real_commit(self, version, files, metadata)

    monkeypatch.setattr(ArtifactStore, "commit_version", commit_together)

    for version in range(1, ROUNDS + 1):
        outcomes: dict[str, object] = {}

        def run(name: str) -> None:
            spec = json.loads(json.dumps(SPEC))
            spec["dataset"]["uri"], spec["output"]["uri"] = s3.uri("churn.csv"), output
            spec["estimator"] = WRITERS[name]
            identity = {"name": name, "namespace": "race", "uid": f"uid-{name}", "generation": 1,
                        "run": f"{name}-v{version}"}
            try:
                outcomes[name] = train(spec, version=version, identity=identity)
            except Exception as exc:  # noqa: BLE001 - the test reports what each writer got
                outcomes[name] = exc

        threads = [threading.Thread(target=run, args=(name,)) for name in WRITERS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert set(outcomes) == set(WRITERS), f"round {version}: a writer did not finish"

        winners = [name for name, result in outcomes.items() if isinstance(result, dict)]
        assert len(winners) == 1, f"round {version}: {outcomes}"
        (winner,) = winners
        (loser,) = set(WRITERS) - {winner}
        error = outcomes[loser]
        assert isinstance(error, VersionExistsError), f"round {version}: {loser} got {error!r}"
        assert error.reason == "VersionExists" and f"version {version}" in str(error), str(error)

        store = open_store(output)
        uri = store.version_uri(version)
        committed = outcomes[winner]
        assert store.read_metadata(version)["training"]["run"] == f"{winner}-v{version}"
        for runtime in ("sklearn", "auto"):  # sha256 and size of each file against metadata.json, types, load
            loaded = load_model(uri, expected_sha256=committed["model"]["sha256"], runtime=runtime)
            assert loaded.metadata.training.name == winner
        assert sorted(s3.keys(f"models/shared/v{version}/")) == sorted(
            f"models/shared/v{version}/{name}"
            for name in ("metadata.json", committed["model"]["file"], *([committed["onnx"]["file"]]
                                                                        if committed.get("onnx") else [])))

    assert open_store(output).versions() == list(range(1, ROUNDS + 1))
    assert s3.keys("models/shared/.staging/") == []  # no writer left a claim or staged files behind

