"""`modelloop-train`: the entrypoint of the training Job.

    modelloop-train --version N [--spec-file F] [--termination-log PATH]

The spec (JSON) comes from --spec-file or $MODELLOOP_TRAINING_SPEC; the identity written into the
version from $MODELLOOP_TRAINING_NAME, _NAMESPACE, _UID, _GENERATION and _RUN. On success the version
URI is printed on stdout and a one-line JSON summary is written to the termination-message file; on
failure `<Reason>: <message>` is written there and the process exits with the reason's code
(errors.py). Logs are key=value lines on stderr.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
from pathlib import Path
from typing import Any, NoReturn, Sequence

from modelloop.artifacts import open_store

from .errors import INTERNAL_ERROR_EXIT_CODE, SpecError, TrainingError, describe_exception
from ..runtime import (
    DEFAULT_TERMINATION_LOG, TERMINATION_LOG_ENV, configure_logging, log_event, termination_log_path,
    write_termination_message,
)
from .trainer import train

SPEC_ENV = "MODELLOOP_TRAINING_SPEC"
IDENTITY_ENV = {"name": "MODELLOOP_TRAINING_NAME", "namespace": "MODELLOOP_TRAINING_NAMESPACE",
                "uid": "MODELLOOP_TRAINING_UID", "generation": "MODELLOOP_TRAINING_GENERATION",
                "run": "MODELLOOP_TRAINING_RUN"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # usage errors are failures like any other: report them
        raise SpecError(f"invalid arguments: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    code = _run(argv)
    # The process ends next. Its last garbage collection walks every object of scikit-learn, scipy and
    # pandas (0.5-1 s for nothing, as the OS takes the memory back); frozen objects are skipped.
    gc.freeze()
    return code


def _run(argv: Sequence[str] | None) -> int:
    configure_logging()
    termination_log: str | None = termination_log_path()
    try:
        args = _arguments(argv)
        termination_log = args.termination_log or termination_log
        spec = _read_spec(args.spec_file)
        metadata = _train(spec, args.version)
    except TrainingError as exc:
        log_event("training.failed", level=logging.ERROR, reason=exc.reason, exit_code=exc.exit_code,
                  message=str(exc))
        write_termination_message(termination_log, exc.termination_message)
        return exc.exit_code
    except Exception as exc:  # a bug, not the user's data: keep the traceback in the log
        logging.getLogger("modelloop.training").exception("training.crashed")
        write_termination_message(termination_log, f"InternalError: {describe_exception(exc)}")
        return INTERNAL_ERROR_EXIT_CODE
    uri = metadata["uri"]
    summary = {"artifact": uri, "version": metadata["version"], "sha256": metadata["model"]["sha256"],
               "metric": metadata["metric"], "metrics": metadata["metrics"]}
    log_event("training.succeeded", uri=uri, metric=metadata["metric"]["name"], value=metadata["metric"]["value"])
    write_termination_message(termination_log, json.dumps(summary, separators=(",", ":")))
    print(uri, flush=True)
    return 0


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="modelloop-train", description="Train a ModelTraining spec into a new model version.")
    parser.add_argument("--version", type=int, required=True, help="version number to write (<output>/v<N>)")
    parser.add_argument("--spec-file", help=f"JSON file with the ModelTraining spec (default: ${SPEC_ENV})")
    parser.add_argument("--termination-log", help=(f"file receiving the one-line outcome (default: "
                                                   f"${TERMINATION_LOG_ENV}, else {DEFAULT_TERMINATION_LOG})"))
    return parser.parse_args(argv)


def _read_spec(spec_file: str | None) -> Any:
    if spec_file:
        try:
            text, source = Path(spec_file).read_text(), f"--spec-file {spec_file}"
        except OSError as exc:
            raise SpecError(f"cannot read --spec-file {spec_file}: {exc.strerror or exc}") from None
    else:
        text, source = os.environ.get(SPEC_ENV, ""), f"${SPEC_ENV}"
        if not text.strip():
            raise SpecError(f"no spec: pass --spec-file or set {SPEC_ENV} to the ModelTraining spec as JSON")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SpecError(f"{source} is not valid JSON: {exc}") from None


def _train(spec: Any, version: int) -> dict[str, Any]:
    identity: dict[str, Any] = {key: os.environ[env] for key, env in IDENTITY_ENV.items() if os.environ.get(env)}
    if "generation" in identity:
        try:
            identity["generation"] = int(identity["generation"])
        except ValueError:
            raise SpecError(f"{IDENTITY_ENV['generation']}={identity['generation']!r} is not an integer") from None
    log_event("training.started", version=version, **identity)
    metadata = train(spec, version=version, identity=identity)
    return {**metadata, "uri": open_store(spec["output"]["uri"]).version_uri(version)}
