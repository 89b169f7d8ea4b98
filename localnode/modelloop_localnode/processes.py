"""The pod processes this agent started: spawning, signalling, and `<state dir>/processes.json`.

Every process gets `MODELLOOP_LOCALNODE_ID=<agent>:<namespace>/<pod>/<container>:<pod uid>` in its
environment, where `<agent>` is `<node>@<state dir>`: two agents on one host (two clusters, both with a
node `modelloop-local`) never take each other's processes for their own. Children inherit it, so a
scan of /proc finds every process of a pod, including those
that left the process group; and a pid read back from processes.json is only signalled after
/proc/<pid>/environ proves it is still ours (a pid can be reused once its process is gone).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from .log import log

MARKER = "MODELLOOP_LOCALNODE_ID"


def agent_id(node: str, state_dir: Path) -> str:
    return f"{node}@{state_dir.resolve()}"


def marker(agent: str, key: str, uid: str) -> str:
    return f"{agent}:{key}:{uid}"


def marker_key(value: str) -> str:
    """`<ns>/<pod>/<container>` of a marker value."""
    return value.rsplit(":", 2)[1]


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def marker_of(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = MARKER.encode() + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode(errors="replace")
    return None


def marked_processes(agent: str, key_uid: str | None = None) -> dict[int, str]:
    """pid -> marker of the live processes started by `agent` (optionally for one `key:uid`)."""
    wanted = f"{agent}:" if key_uid is None else f"{agent}:{key_uid}"
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        value = marker_of(pid)
        if value and (value == wanted if key_uid else value.startswith(wanted)) and alive(pid):
            found[pid] = value
    return found


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group led by `pid` (each pod process leads its own session)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def signal_pids(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_marked(agent: str, key_uid: str | None = None, grace: float = 3.0) -> list[int]:
    """Stop every process marked by `agent` (or one container): SIGTERM, then SIGKILL after `grace`."""
    pids = list(marked_processes(agent, key_uid))
    if not pids:
        return []
    signal_pids(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    signal_pids([p for p in pids if alive(p)], signal.SIGKILL)
    return pids


class RegistryClosed(Exception):
    """The agent is stopping; no new process may start."""


class ProcessRegistry:
    """Spawns pod processes and keeps `processes.json` (`{"<ns>/<pod>/<container>": pid}`) current."""

    def __init__(self, path: Path, agent: str) -> None:
        self.path = path
        self.agent = agent
        self._pids: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self._pids, indent=1, sort_keys=True))
        tmp.replace(self.path)

    def spawn(self, key: str, uid: str, argv: list[str], env: Mapping[str, str], cwd: Path,
              log_path: Path) -> subprocess.Popen:
        env = {**env, MARKER: marker(self.agent, key, uid)}
        with self._lock:
            if self._closed:
                raise RegistryClosed()
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
            self._pids[key] = proc.pid
            self._save()
        return proc

    def forget(self, key: str, pid: int) -> None:
        with self._lock:
            if self._pids.get(key) == pid:
                del self._pids[key]
                self._save()

    def close(self) -> dict[str, int]:
        """Refuse new processes; returns the ones still registered."""
        with self._lock:
            self._closed = True
            return dict(self._pids)

    def clear(self) -> None:
        with self._lock:
            self._pids.clear()
            self._save()


def stop_leftovers(path: Path, agent: str, grace: float = 3.0) -> None:
    """Kill what a previous run of the agent left behind: the verified pids of processes.json and
    every process carrying this agent's marker. Pods are started again from the API's view."""
    try:
        recorded = {k: int(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, TypeError, AttributeError):
        recorded = {}
    ours = [pid for pid in recorded.values() if (marker_of(pid) or "").startswith(f"{agent}:")]
    for pid in ours:
        signal_group(pid, signal.SIGTERM)
    killed = kill_marked(agent, grace=grace)
    for pid in ours:
        signal_group(pid, signal.SIGKILL)
    if recorded or killed:
        log("leftovers.stopped", recorded=len(recorded), verified=len(ours), killed=len(set(killed) | set(ours)))
    path.write_text("{}")
