"""Pod processes carry the node's marker; processes.json stays current; leftovers of a previous run
are recognised by their marker and stopped."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

from modelloop_localnode.processes import ProcessRegistry, agent_id, alive, marked_processes, stop_leftovers


def test_spawned_processes_are_recorded_marked_and_stopped_as_leftovers(tmp_path):
    node = agent_id(f"unit-{uuid.uuid4().hex[:6]}", tmp_path)
    registry = ProcessRegistry(tmp_path / "processes.json", node)
    # the child starts a grandchild in a new session: only the marker can find it
    code = ("import subprocess, sys, time\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
            "time.sleep(60)")
    proc = registry.spawn("ns/pod/main", "uid-1", [sys.executable, "-c", code], {"PATH": "/usr/bin"}, tmp_path,
                          tmp_path / "main.log")
    assert json.loads((tmp_path / "processes.json").read_text()) == {"ns/pod/main": proc.pid}
    deadline = time.monotonic() + 10
    while len(marked_processes(node)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    marked = marked_processes(node)
    assert proc.pid in marked and len(marked) == 2
    assert set(marked.values()) == {f"{node}:ns/pod/main:uid-1"}
    other = agent_id(node.split("@")[0], tmp_path / "elsewhere")
    assert marked_processes(other) == {}, "another agent with the same node name owns none of them"

    stop_leftovers(tmp_path / "processes.json", node, grace=1)  # what the next agent run does first
    proc.wait(timeout=5)
    deadline = time.monotonic() + 5
    while any(alive(p) for p in marked) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in marked)
    assert json.loads((tmp_path / "processes.json").read_text()) == {}


def test_a_recorded_pid_without_our_marker_is_left_alone(tmp_path):
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "processes.json").write_text(json.dumps({"ns/pod/main": stranger.pid}))
        stop_leftovers(tmp_path / "processes.json", agent_id("unit-node", tmp_path), grace=0.2)
        assert stranger.poll() is None, "a reused pid must not be killed"
    finally:
        stranger.kill()
        stranger.wait()
