"""Every binary the code runs is built by the targets that run it (hack/build-binaries.sh's sets).

`make demo` once failed after 19 minutes on a new machine because hack/prometheus.py ran `BIN / "promtool"`
and nothing in the demo's path built it (`make test` did, so every machine that had run the tests hid it).
This reads which cached binaries each file runs and compares them with the set its entry point builds.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# `BIN / "kubectl"`, `cluster.bin / "promtool"`, `binary("versitygw")`, `build-binaries.sh"), "versitygw"`
RUNS = re.compile(r'''(?:\bBIN|\.bin)\s*/\s*"([a-z][a-z0-9-]*)"|\bbinary\(\s*"([a-z][a-z0-9-]*)"\s*\)'''
                  r'''|build-binaries\.sh"\)\s*,\s*"([a-z][a-z0-9-]*)"''')
# What `make demo` runs: the cluster (hack/cluster.py, hack/node.py), the demo and its Prometheus and traffic.
DEMO_FILES = ["hack/cluster.py", "hack/node.py", "hack/demo.py", "hack/prometheus.py", "hack/traffic.py"]


def built(*sets: str) -> set[str]:
    out = subprocess.run([str(ROOT / "hack/build-binaries.sh"), "--list", *sets], check=True, text=True,
                         capture_output=True).stdout
    return set(out.split())


def run_by(paths: list[Path]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in paths:
        for match in RUNS.finditer(path.read_text()):
            name = next(g for g in match.groups() if g)
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def test_the_pattern_sees_what_the_demo_runs():
    """A check that finds nothing passes for nothing: the demo's files run the control plane and promtool."""
    runs = run_by([ROOT / f for f in DEMO_FILES])
    assert {"kube-apiserver", "kubelet", "helm", "prometheus", "versitygw"} <= set(runs)


def test_make_demo_builds_every_binary_the_demo_runs():
    runs = run_by([ROOT / f for f in DEMO_FILES])
    missing = {name: files for name, files in runs.items() if name not in built("demo")}
    assert not missing, f"run by the demo but not in hack/build-binaries.sh's demo set: {missing}"


def test_make_test_builds_every_binary_the_code_runs():
    paths = [p for d in ("hack", "tests", "bench") for p in (ROOT / d).rglob("*.py") if ".venv" not in p.parts]
    runs = run_by(paths)
    runs.pop("modelloop-train", None)  # bench/training: the venv's console script (BIN is the venv's bin there)
    missing = {name: files for name, files in runs.items() if name not in built("test")}
    assert not missing, f"run by the code but not in hack/build-binaries.sh's test set: {missing}"


def test_the_cluster_builds_what_it_starts():
    runs = run_by([ROOT / "hack/cluster.py", ROOT / "hack/node.py"])
    runs.pop("helm", None)  # helm installs releases (helm_install): make cluster and make demo build it first
    assert set(runs) <= built("control-plane", "node")


def test_the_makefile_builds_each_targets_set():
    make = (ROOT / "Makefile").read_text()
    demo = make.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    test = make.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    build = make.split("\nBUILD = ", 1)[1].split("\n\n", 1)[0]
    assert 'hack/build-binaries.sh "$$1"' in build and "hack/images.sh" in build
    assert "$(BUILD) demo" in demo and "$(BUILD) test" in test


def test_an_unknown_set_is_refused():
    proc = subprocess.run([str(ROOT / "hack/build-binaries.sh"), "--list", "bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown component or set 'bogus'" in proc.stderr
