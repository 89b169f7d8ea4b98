"""Real artifacts (written by the real trainer to a file:// folder) and real `modelloop-serve` processes.

Each server process starts once per session, all of them concurrently, and is reached over HTTP on a
free loopback port.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[3]
LOGREG = {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 500}}
FOREST = {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 5, "max_depth": 4}}
RIDGE = {"class": "sklearn.linear_model.Ridge"}
NUMERIC_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
START_TIMEOUT = 60.0


def flowers_frame(rows: int = 300, seed: int = 0) -> pd.DataFrame:
    """All-numeric classification: four measurements, a text species."""
    rng = np.random.default_rng(seed)
    species = rng.choice(["setosa", "versicolor", "virginica"], rows)
    shift = pd.Series(species).map({"setosa": 0.0, "versicolor": 1.5, "virginica": 3.0}).to_numpy()
    frame = pd.DataFrame({name: rng.normal(3 + shift * (i + 1) / 4, 0.4, rows)
                          for i, name in enumerate(NUMERIC_FEATURES)})
    frame["species"] = species
    return frame


def churn_frame(rows: int = 300, seed: int = 1) -> pd.DataFrame:
    """Mixed classification: two numbers, a text category, an int category, a text label."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"tenure": rng.normal(12, 4, rows), "spend": rng.gamma(2.0, 30.0, rows),
                          "plan": rng.choice(["basic", "plus", "pro"], rows),
                          "region": rng.integers(1, 4, rows)})
    score = (frame["tenure"] - 12) / 4 + (frame["plan"] == "basic") - (frame["spend"] - 60) / 60
    frame["churned"] = np.where(score + rng.normal(0, 0.3, rows) > 0.5, "yes", "no")
    return frame


def price_frame(rows: int = 300, seed: int = 2) -> pd.DataFrame:
    """All-numeric regression."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"size": rng.uniform(30, 150, rows), "rooms": rng.integers(1, 6, rows).astype(float)})
    frame["price"] = 3.0 * frame["size"] + 10 * frame["rooms"] + rng.normal(0, 5, rows)
    return frame


def train_version(root: Path, name: str, frame: pd.DataFrame, target: str, estimator: dict[str, Any],
                  categorical: list[str] | None = None, version: int = 1) -> tuple[str, dict[str, Any]]:
    """Train with the real trainer into file://root/name/out/v<version>; returns the version URI and metadata."""
    from modelloop.training.trainer import train

    data = root / name / f"data-v{version}.csv"
    data.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(data, index=False)
    dataset: dict[str, Any] = {"uri": f"file://{data}", "target": target}
    if categorical:
        dataset["categorical"] = categorical
    spec = {"dataset": dataset, "estimator": estimator, "output": {"uri": f"file://{root / name / 'out'}"}}
    metadata = train(spec, version=version, identity={"name": name, "namespace": "default"})
    return f"file://{root / name / 'out'}/v{version}", metadata


@dataclass
class Artifact:
    uri: str
    metadata: dict[str, Any]

    @property
    def path(self) -> Path:
        return Path(self.uri.removeprefix("file://"))


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Artifact]:
    root = tmp_path_factory.mktemp("server-artifacts")
    return {
        "flowers": Artifact(*train_version(root, "flowers", flowers_frame(), "species", LOGREG)),
        "churn": Artifact(*train_version(root, "churn", churn_frame(), "churned", FOREST, categorical=["region"])),
        "prices": Artifact(*train_version(root, "prices", price_frame(), "price", RIDGE)),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    """A `modelloop-serve` process on a free loopback port; its stderr goes to `log`."""

    args: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    sketch_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    rebinds: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sketch_url(self) -> str:
        return f"http://127.0.0.1:{self.sketch_port}"

    def start(self) -> ServerProcess:
        env = {**os.environ, "MODELLOOP_TERMINATION_LOG": str(self.log.with_suffix(".termination")), **self.env}
        command = [sys.executable, "-m", "modelloop_server.cli", "--host", "127.0.0.1", "--port", str(self.port),
                   "--sketch-port", str(self.sketch_port), *self.args]
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                        stderr=self.log.open("wb"))
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                if "address already in use" in self.log.read_text() and self.rebinds < 3:
                    # free_port's port was taken by another process between its check and the server's bind
                    # (sessions side by side on one machine): new ports, same server.
                    self.rebinds += 1
                    self.port, self.sketch_port = free_port(), free_port()
                    self.start()
                    continue
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout}s:\n{self.log.read_text()}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # SIGINT skips the drain period
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The value of one sample of /metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                    return sample.value
        return 0.0


def refused_at_start(server: ServerProcess) -> tuple[str, str]:
    """Poll readiness until the process exits; it must exit 1 without ever being ready, with one
    model.refused line. Returns that line and the termination message."""
    statuses = set()
    deadline = time.monotonic() + START_TIMEOUT
    while server.process.poll() is None:
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"the server did not exit within {START_TIMEOUT}s:\n{server.log.read_text()}")
        try:
            statuses.add(httpx.get(f"{server.url}/v2/health/ready", timeout=1).status_code)
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    assert server.wait_exit() == 1
    assert 200 not in statuses
    refused = [line for line in server.log.read_text().splitlines() if "event=model.refused" in line]
    assert len(refused) == 1, server.log.read_text()
    return refused[0], server.log.with_suffix(".termination").read_text()


@contextmanager
def running(servers: dict[Any, ServerProcess]) -> Iterator[None]:
    """Start `servers` all at once, wait until each is ready; stop them all on the way out."""
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait_ready()
        yield
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def servers(artifacts: dict[str, Artifact], tmp_path_factory: pytest.TempPathFactory):
    """One long-lived server per model, started concurrently. Batching: flowers never waits (0 ms),
    churn waits up to 200 ms for company, so concurrent requests there are merged for sure. flowers is
    pinned to its digests as the operator pins every server and keeps the default sketch window; churn and
    prices publish a sketch after every row, so tests can count exactly."""
    from modelloop.artifacts import sha256_bytes

    logs = tmp_path_factory.mktemp("server-logs")
    flowers = artifacts["flowers"]
    flowers_pins = {"MODELLOOP_MODEL_SHA256": flowers.metadata["model"]["sha256"],
                    "MODELLOOP_METADATA_SHA256": sha256_bytes((flowers.path / "metadata.json").read_bytes())}
    started = {
        "flowers": ServerProcess(["--model-uri", artifacts["flowers"].uri, "--max-batch-wait-ms", "0",
                                  "--max-body-bytes", "65536"], logs / "flowers.log", env=flowers_pins),
        "churn": ServerProcess(["--max-batch-wait-ms", "200", "--max-batch-size", "64", "--sketch-min-rows", "1"],
                               logs / "churn.log",
                               env={"MODELLOOP_MODEL_URI": artifacts["churn"].uri,
                                    "MODELLOOP_MODEL_NAME": "churn-model"}),
        "prices": ServerProcess(["--model-uri", artifacts["prices"].uri, "--max-batch-wait-ms", "0",
                                 "--sketch-min-rows", "1"],
                                logs / "prices.log"),
    }
    with running(started):
        yield started


@pytest.fixture(scope="session")
def flowers(servers: dict[str, ServerProcess]) -> ServerProcess:
    return servers["flowers"]


@pytest.fixture(scope="session")
def churn(servers: dict[str, ServerProcess]) -> ServerProcess:
    return servers["churn"]


@pytest.fixture(scope="session")
def prices(servers: dict[str, ServerProcess]) -> ServerProcess:
    return servers["prices"]


@pytest.fixture
def client() -> httpx.Client:
    with httpx.Client(timeout=10) as c:
        yield c


def v2_matrix(rows: list[list[float]], name: str = "input-0", datatype: str = "FP64") -> dict[str, Any]:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": [len(rows), len(rows[0])], "data": rows}]}


def v2_columns(columns: dict[str, list[Any]], datatypes: dict[str, str] | None = None) -> dict[str, Any]:
    return {"inputs": [{"name": name, "datatype": (datatypes or {}).get(name, "FP64"), "shape": [len(values)],
                        "data": values} for name, values in columns.items()]}


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """uvicorn serving `app` on a free loopback port in a thread of the test process; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                                           lifespan="on", log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    # A hang guard, not a timing check: on a loaded machine (the unit session runs beside the cluster tests)
    # the lifespan's model load and warm-up took longer than 10 s once.
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "uvicorn exited before it started"
        assert time.monotonic() < deadline, "uvicorn did not start within 60 s"
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
