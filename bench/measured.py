"""What every benchmark's results file says about the run: the commit measured (and the files of the measured
code that differed from it, since the tree is shared while a benchmark runs), the machine and when."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
# The code a benchmark measures, unless it names its own: the operator package and the server.
MEASURED_CODE = ("operator/modelloop", "model-server")


def commit_measured(paths: Sequence[str] = MEASURED_CODE) -> dict[str, Any]:
    """HEAD, and the files under `paths` that differ from it (git status; none when the run measured HEAD)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout

    changed = git("status", "--porcelain", "-z", "--", *paths).split("\0")
    return {"head": git("rev-parse", "HEAD").strip(),
            "uncommitted_changes": sorted(entry[3:] for entry in changed if len(entry) > 3)}


def run_facts(paths: Sequence[str] = MEASURED_CODE) -> dict[str, Any]:
    """The commit, the date and the machine, for the top of a results file."""
    return {"commit": commit_measured(paths), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                        "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}}
