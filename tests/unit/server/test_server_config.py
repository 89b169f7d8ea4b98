"""Flags, their environment variables (what the pod template sets), and defaults shared with the API."""
from __future__ import annotations

import pytest

from modelloop.api.deployment import SERVER_PORT, SKETCH_PORT, ServerSpec
from modelloop_server.config import parse_config


def test_environment_variables_configure_the_server() -> None:
    config = parse_config([], {
        "MODELLOOP_MODEL_URI": "s3://models/iris/v3", "MODELLOOP_MODEL_NAME": "iris", "MODELLOOP_POD_IP": "10.1.2.3",
        "MODELLOOP_PORT": "9000", "MODELLOOP_SKETCH_PORT": "9001", "MODELLOOP_MAX_BATCH_SIZE": "64", "MODELLOOP_MAX_BATCH_WAIT_MS": "0.5",
        "MODELLOOP_MAX_BODY_BYTES": "2048", "MODELLOOP_DRAIN_SECONDS": "10", "MODELLOOP_LOG_LEVEL": "debug"})
    assert (config.model_uri, config.model_name, config.host, config.port) == (
        "s3://models/iris/v3", "iris", "10.1.2.3", 9000)
    assert (config.max_batch_size, config.max_batch_wait_ms, config.max_body_bytes) == (64, 0.5, 2048)
    assert (config.drain_seconds, config.log_level, config.sketch_port) == (10.0, "debug", 9001)


def test_flags_win_over_environment_variables() -> None:
    config = parse_config(["--model-uri", "file:///m/v2", "--max-batch-size", "4"],
                          {"MODELLOOP_MODEL_URI": "s3://models/iris/v3", "MODELLOOP_MAX_BATCH_SIZE": "64"})
    assert config.model_uri == "file:///m/v2"
    assert config.max_batch_size == 4


def test_defaults_are_those_of_the_model_deployment_api() -> None:
    config = parse_config(["--model-uri", "file:///m/v1"], {})
    spec = ServerSpec()
    assert config.port == SERVER_PORT
    assert config.sketch_port == SKETCH_PORT != SERVER_PORT
    assert config.host == "0.0.0.0"
    assert config.model_name is None
    assert (config.max_batch_size, config.max_batch_wait_ms, config.max_body_bytes, config.runtime) == (
        spec.max_batch_size, spec.max_batch_wait_ms, spec.max_body_bytes, spec.runtime) == (32, 2, 16 * 1024 ** 2,
                                                                                             "auto")


@pytest.mark.parametrize("runtime", ["auto", "onnx", "sklearn"])
def test_the_runtime_comes_from_the_environment_or_the_flag(runtime: str) -> None:
    assert parse_config([], {"MODELLOOP_MODEL_URI": "s3://m/v1", "MODELLOOP_RUNTIME": runtime}).runtime == runtime
    assert parse_config(["--model-uri", "s3://m/v1", "--runtime", runtime], {}).runtime == runtime


def test_the_pinned_digests_and_the_limits_come_from_the_environment() -> None:
    config = parse_config([], {
        "MODELLOOP_MODEL_URI": "s3://models/iris/v3", "MODELLOOP_MODEL_SHA256": "a" * 64,
        "MODELLOOP_METADATA_SHA256": "b" * 64, "MODELLOOP_MAX_CONCURRENCY": "16", "MODELLOOP_MAX_QUEUE": "8",
        "MODELLOOP_MAX_ROWS": "100", "MODELLOOP_HEADER_TIMEOUT_SECONDS": "2", "MODELLOOP_BODY_TIMEOUT_SECONDS": "3",
        "MODELLOOP_KEEP_ALIVE_SECONDS": "4", "MODELLOOP_MAX_HEADER_BYTES": "8192"})
    assert (config.model_sha256, config.metadata_sha256) == ("a" * 64, "b" * 64)
    assert (config.max_concurrency, config.max_queue, config.max_rows, config.max_header_bytes) == (16, 8, 100, 8192)
    assert (config.header_timeout_seconds, config.body_timeout_seconds, config.keep_alive_seconds) == (2.0, 3.0, 4.0)


def test_without_pins_or_limits_set_the_defaults_apply() -> None:
    config = parse_config(["--model-uri", "file:///m/v1"], {})
    assert config.model_sha256 is None and config.metadata_sha256 is None
    assert (config.max_concurrency, config.max_queue, config.max_rows) == (128, 64, 10_000)
    assert (config.header_timeout_seconds, config.body_timeout_seconds, config.keep_alive_seconds) == (10.0, 30.0, 5.0)
    assert config.max_header_bytes == 65_536


@pytest.mark.parametrize("argv, environ, message", [
    (["--model-uri", "file:///m/v1"], {"MODELLOOP_MODEL_SHA256": "ABC"}, "--model-sha256 'ABC' must be 64"),
    (["--model-uri", "file:///m/v1", "--metadata-sha256", "f" * 63], {}, "--metadata-sha256"),
    (["--model-uri", "file:///m/v1", "--max-queue", "0"], {}, "--max-queue 0 must be at least 1"),
    (["--model-uri", "file:///m/v1", "--sketch-min-rows", "0"], {}, "--sketch-min-rows 0 must be at least 1"),
    (["--model-uri", "file:///m/v1", "--max-rows", "-5"], {}, "--max-rows -5 must be at least 1"),
    (["--model-uri", "file:///m/v1", "--body-timeout-seconds", "0"], {}, "--body-timeout-seconds 0 must be more"),
    ([], {}, "--model-uri"),
    (["--model-uri", "file:///m/v1"], {"MODELLOOP_MAX_BATCH_SIZE": "many"}, "MODELLOOP_MAX_BATCH_SIZE='many'"),
    (["--model-uri", "file:///m/v1", "--max-batch-size", "0"], {}, "--max-batch-size 0 must be at least 1"),
    (["--model-uri", "file:///m/v1", "--max-batch-wait-ms", "-1"], {}, "must be 0 or more"),
    (["--model-uri", "file:///m/v1", "--log-level", "loud"], {}, "--log-level 'loud'"),
    (["--model-uri", "file:///m/v1"], {"MODELLOOP_RUNTIME": "tensorflow"},
     "--runtime 'tensorflow' must be one of auto, onnx, sklearn"),
    (["--model-uri", "file:///m/v1", "--port", "9000"], {"MODELLOOP_SKETCH_PORT": "9000"}, "differ from --port"),
])
def test_invalid_settings_stop_the_server_with_a_usage_error(argv: list[str], environ: dict[str, str],
                                                             message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv, environ)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
