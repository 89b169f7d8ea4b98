"""modelloop-train: the training Job's entrypoint. Exit code and termination message tell the controller
what happened; the version URI goes to stdout, key=value logs to stderr."""
from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelloop.artifacts import open_store
from modelloop.training import cli, train
from modelloop.training.errors import EXIT_CODES

TRAIN = str(Path(sys.executable).with_name("modelloop-train"))


def run_cli(spec: dict | None, *args: str, env: dict[str, str] | None = None,
            tmp_path: Path) -> tuple[subprocess.CompletedProcess, str]:
    """Run the real console script; returns the process and what it wrote to the termination log."""
    termination = tmp_path / "termination-log"
    environment = {**os.environ, **(env or {}), "MODELLOOP_TERMINATION_LOG": str(termination)}
    if spec is not None:
        environment["MODELLOOP_TRAINING_SPEC"] = json.dumps(spec)
    proc = subprocess.run([TRAIN, *args], env=environment, capture_output=True, text=True, timeout=120)
    return proc, termination.read_text() if termination.exists() else ""


@pytest.fixture
def in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """cli.main() in this process, with the logging it reconfigures restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("MODELLOOP_TERMINATION_LOG", str(termination))

    def run(*args: str) -> tuple[int, str]:
        code = cli.main(list(args))
        return code, termination.read_text() if termination.exists() else ""
    yield run
    root.handlers[:], root.level = handlers, level
    logging.captureWarnings(False)
    gc.unfreeze()  # main() freezes the heap for a fast process exit


def test_cli_trains_from_s3_prints_the_version_uri_and_reports_metrics(s3, churn, to_bytes, spec_for, tmp_path):
    spec = spec_for(s3.put("churn.csv", to_bytes(churn, "csv")), "churned", s3.uri("models/churn"))
    identity = {"MODELLOOP_TRAINING_NAME": "churn", "MODELLOOP_TRAINING_NAMESPACE": "team-a",
                "MODELLOOP_TRAINING_UID": "0b9c", "MODELLOOP_TRAINING_GENERATION": "4",
                "MODELLOOP_TRAINING_RUN": "churn-v3"}
    proc, termination = run_cli(spec, "--version", "3", env={**s3.server.env, **identity}, tmp_path=tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"s3://{s3.name}/models/churn/v3\n"
    summary = json.loads(termination)
    assert summary["artifact"] == f"s3://{s3.name}/models/churn/v3" and summary["version"] == 3
    assert summary["metric"]["name"] == "accuracy" and set(summary["metrics"]) == {"accuracy", "f1", "roc_auc"}
    metadata = open_store(s3.uri("models/churn")).read_metadata(3)
    assert metadata["training"] == {"name": "churn", "namespace": "team-a", "uid": "0b9c", "generation": 4,
                                    "run": "churn-v3"}
    assert summary["sha256"] == metadata["model"]["sha256"]
    lines = proc.stderr.strip().splitlines()
    assert all(line.startswith("ts=") and " level=" in line and " event=" in line for line in lines), lines
    assert any("event=training.succeeded" in line for line in lines)
    assert s3.server.secret_key not in proc.stderr + proc.stdout + termination


@pytest.mark.parametrize("change, code, message", [
    pytest.param(lambda s: s["dataset"].update(target="label"), 4,
                 "DatasetInvalid: spec.dataset.target 'label' is not a column", id="missing-column"),
    pytest.param(lambda s: s["estimator"].update({"class": "subprocess.Popen"}), 2,
                 "InvalidSpec: spec.estimator.class 'subprocess.Popen' is not an allowed estimator", id="disallowed"),
    pytest.param(lambda s: s["dataset"].update(uri=s["dataset"]["uri"].replace("churn", "nothing")), 3,
                 "DatasetUnreadable: spec.dataset.uri: file://", id="unreadable-dataset"),
])
def test_cli_failure_exits_with_its_code_and_a_one_line_reason(local, churn, to_bytes, spec_for, tmp_path, change,
                                                               code, message):
    spec = spec_for(local.put("churn.csv", to_bytes(churn, "csv")), "churned", local.output())
    change(spec)
    proc, termination = run_cli(spec, "--version", "1", tmp_path=tmp_path)

    assert proc.returncode == code, proc.stderr
    assert termination.startswith(message) and termination.count("\n") == 1
    assert proc.stdout == ""
    assert f"level=error event=training.failed reason={termination.split(':')[0]} exit_code={code}" in proc.stderr


def test_cli_refuses_to_overwrite_an_existing_version(local, churn, to_bytes, spec_for, tmp_path):
    spec = spec_for(local.put("churn.csv", to_bytes(churn, "csv")), "churned", local.output())
    train(spec, version=1, identity={})
    before = open_store(local.output()).read_file(1, "model.skops")
    proc, termination = run_cli(spec, "--version", "1", tmp_path=tmp_path)

    assert proc.returncode == EXIT_CODES["VersionExists"] == 6
    assert termination.startswith(f"VersionExists: {local.output()}/v1 already exists")
    assert open_store(local.output()).read_file(1, "model.skops") == before


def test_spec_is_read_from_a_file_and_the_termination_log_from_the_flag(in_process, local, churn, to_bytes, spec_for,
                                                                        tmp_path, monkeypatch):
    spec = spec_for(local.put("churn.csv", to_bytes(churn, "csv")), "churned", local.output())
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    monkeypatch.delenv("MODELLOOP_TRAINING_SPEC", raising=False)
    code, _ = in_process("--version", "2", "--spec-file", str(tmp_path / "spec.json"),
                         "--termination-log", str(tmp_path / "flag-log"))
    assert code == 0
    assert json.loads((tmp_path / "flag-log").read_text())["artifact"] == f"{local.output()}/v2"


@pytest.mark.parametrize("setup, args, code, message", [
    pytest.param({}, ["--version", "1"], 2, "InvalidSpec: no spec: pass --spec-file or set MODELLOOP_TRAINING_SPEC",
                 id="no-spec"),
    pytest.param({"MODELLOOP_TRAINING_SPEC": "{not json"}, ["--version", "1"], 2,
                 "InvalidSpec: $MODELLOOP_TRAINING_SPEC is not valid JSON", id="spec-not-json"),
    pytest.param({"MODELLOOP_TRAINING_SPEC": "{}"}, [], 2,
                 "InvalidSpec: invalid arguments: the following arguments are required: --version", id="no-version"),
    pytest.param({"MODELLOOP_TRAINING_SPEC": "{}"}, ["--version", "1"], 2,
                 "InvalidSpec: spec.dataset: Field required; spec.estimator: Field required; spec.output: Field "
                 "required", id="empty-spec"),
])
def test_cli_invocation_errors_are_reported_like_any_failure(in_process, monkeypatch, setup, args, code, message):
    monkeypatch.delenv("MODELLOOP_TRAINING_SPEC", raising=False)
    for key, value in setup.items():
        monkeypatch.setenv(key, value)
    exit_code, termination = in_process(*args)
    assert exit_code == code
    assert termination.startswith(message) and termination.count("\n") == 1


def test_a_fit_failure_exits_5(in_process, local, churn, to_bytes, spec_for, monkeypatch):
    churn.loc[::7, "spend"] = None
    spec = spec_for(local.put("churn.csv", to_bytes(churn, "csv")), "churned", local.output(),
                    estimator={"class": "sklearn.svm.SVC", "params": {}})
    monkeypatch.setenv("MODELLOOP_TRAINING_SPEC", json.dumps(spec))
    code, message = in_process("--version", "1")
    assert (code, message.split(":")[0]) == (5, "FitFailed")


def test_an_unreachable_output_store_exits_7(in_process, s3, churn, to_bytes, spec_for, monkeypatch):
    spec = spec_for(s3.put("churn.csv", to_bytes(churn, "csv")), "churned", "s3://no-such-bucket/models")
    monkeypatch.setenv("MODELLOOP_TRAINING_SPEC", json.dumps(spec))
    assert in_process("--version", "1") == (
        7, "OutputFailed: spec.output.uri: s3://no-such-bucket/models: bucket 'no-such-bucket' does not exist\n")


def test_an_unexpected_crash_exits_1_with_the_cause(in_process, monkeypatch):
    monkeypatch.setenv("MODELLOOP_TRAINING_SPEC", "{}")
    monkeypatch.setattr(cli, "train", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk on fire")))
    assert in_process("--version", "1") == (1, "InternalError: RuntimeError: disk on fire\n")
