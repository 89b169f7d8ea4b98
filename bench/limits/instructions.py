"""What the server's protections cost, in instructions per request: a count that other work on the machine
does not move.

    .venv/bin/python bench/limits/instructions.py [--reference issue11|issue22] [--repeat 3] [--rounds 200]
        [--connections 8] [--models rf,logreg]

bench/limits/run.py measures req/s, and on a shared 2-core machine other processes move req/s by far more
than the 3 to 5% in question. This starts the same two servers as run.py (today's, with its defaults, the
digests pinned and --runtime sklearn; and the reference's from its worktree, with the same flags when it takes
them), each under valgrind's callgrind with counting off while it loads. --reference names the commit, as in
run.py's REFERENCES: issue11 (default) ef0c679, before issue 11's protections, target 5%, results in
bench/results/limits-instructions.json; issue22 46a16d7, the main before issue 22's bounds, target 3%,
results in bench/results/limits-instructions-issue22.json. Once a server is ready, --connections keep-alive
connections send the 1-row V2 request of run.py in lock-step (each connection sends, then each reads its
answer): 50 rounds to warm up, then --rounds rounds with counting on (`callgrind_control -i on|off`). The
instructions the server process executed meanwhile (all its threads: event loop, prediction thread), over the
requests answered, are its instructions per request. The lock-step rounds form batches of --connections
requests, as wrk's keep-alive connections do at that concurrency.

Runs are repeated --repeat times per server, alternating; the counts vary by about 1.5% between runs (the
batches a round forms depend a little on timing under valgrind); medians reported. Prints today over the
reference per model and writes the reference's results file. Target: today at most the reference's target
above it. Needs valgrind (installed with apt-get when missing and running as root). Each server run takes
1.5 to 7 minutes (valgrind's start-up dominates; the machine's load sets it): 37 minutes for the default
run on 2026-12-02 with the machine shared.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx

# bench/limits/run.py (the reference tree, training, models, target; one home). Loaded under its own name:
# it imports bench/server/run.py as `run`.
_spec = importlib.util.spec_from_file_location("limits_run", Path(__file__).resolve().with_name("run.py"))
assert _spec is not None and _spec.loader is not None
limits = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = limits  # (its dataclass looks its module up there)
_spec.loader.exec_module(limits)

server_bench = limits.server_bench
ROOT = limits.ROOT
WARMUP_ROUNDS = 50
# Under valgrind on a loaded machine a lock-step round can outlast the 5 s keep-alive default: a server then
# closes a connection as its next request arrives (a reset, seen with 46a16d7's). The timer is armed after every
# answer whatever its length, so a longer one changes no count. Given to both servers when the reference takes
# today's flags (ef0c679's server has no such flag).
KEEP_ALIVE = ["--keep-alive-seconds", "600"]


def ensure_valgrind() -> None:
    if shutil.which("valgrind") and shutil.which("callgrind_control"):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit("valgrind is required and this is not root with apt-get: install it (apt-get install -y valgrind)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "valgrind"]
    if subprocess.run(install, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(install, env=env, check=True)


def request_bytes() -> bytes:
    body = json.dumps(server_bench.payload(1)).encode()
    return (b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (server_bench.MODEL_NAME.encode(), len(body))) + body


class LockStep:
    """`count` keep-alive connections that send one request each, then read one answer each, per round."""

    def __init__(self, port: int, count: int, request: bytes) -> None:
        self.request = request
        self.connections = [socket.create_connection(("127.0.0.1", port), timeout=300) for _ in range(count)]
        self.pending = [bytearray() for _ in range(count)]

    def rounds(self, n: int) -> None:
        for _ in range(n):
            for conn in self.connections:
                conn.sendall(self.request)
            for conn, pending in zip(self.connections, self.pending):
                self._answer(conn, pending)

    @staticmethod
    def _answer(conn: socket.socket, pending: bytearray) -> None:
        while b"\r\n\r\n" not in pending:
            chunk = conn.recv(65536)
            assert chunk, "the server closed a connection"
            pending += chunk
        head = bytes(pending).split(b"\r\n\r\n", 1)[0]
        assert head.startswith(b"HTTP/1.1 200 "), head[:200]
        length = int(re.search(rb"content-length: *(\d+)", head, re.IGNORECASE).group(1))
        end = len(head) + 4 + length
        while len(pending) < end:
            chunk = conn.recv(65536)
            assert chunk, "the server closed a connection within an answer"
            pending += chunk
        del pending[:end]

    def close(self) -> None:
        for conn in self.connections:
            conn.close()


@contextlib.contextmanager
def under_callgrind(command: list[str], port: int, env: dict[str, str] | None, cpus: str, log: Path
                    ) -> Iterator[subprocess.Popen]:
    """A server run under callgrind with counting off (its output file: `log` with the suffix .callgrind), yielded
    once it answers ready; on leaving, stopped with SIGINT (it writes its counts), killed if it does not stop."""
    process = subprocess.Popen(
        ["taskset", "-c", cpus, "valgrind", "--tool=callgrind", "--instr-atstart=no",
         f"--callgrind-out-file={log.with_suffix('.callgrind')}", *command],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        ready = f"http://127.0.0.1:{port}/v2/models/{server_bench.MODEL_NAME}/ready"
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited ({process.returncode}); see {log}:\n{log.read_text()[-2000:]}")
            try:
                if httpx.get(ready, timeout=30).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready under valgrind after 900 s; see {log}")
            time.sleep(1)
        yield process
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def count(command: list[str], port: int, env: dict[str, str], args: argparse.Namespace, log: Path) -> float:
    """Instructions per request of one server run under callgrind (see the module docstring)."""
    with under_callgrind(command, port, env, args.server_cpus, log) as process:
        clients = LockStep(port, args.connections, request_bytes())
        clients.rounds(WARMUP_ROUNDS)
        subprocess.run(["callgrind_control", "-i", "on", str(process.pid)], check=True, capture_output=True)
        clients.rounds(args.rounds)
        subprocess.run(["callgrind_control", "-i", "off", str(process.pid)], check=True, capture_output=True)
        clients.close()
    collected = re.search(r"Collected : (\d+)", log.read_text())
    assert collected, f"no instruction count in {log}"
    return int(collected.group(1)) / (args.rounds * args.connections)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", choices=limits.REFERENCES, default=limits.DEFAULT_REFERENCE,
                        help=", ".join(f"{name}: {r.commit} (target {r.target:.0%}%)"
                                       for name, r in limits.REFERENCES.items()))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--models", default=",".join(limits.MODELS))
    parser.add_argument("--server-cpus", default="1")
    parser.add_argument("--output", type=Path, help="default: the reference's results file")
    args = parser.parse_args()
    reference = limits.REFERENCES[args.reference]
    output = args.output or reference.results("limits-instructions")
    ensure_valgrind()

    tree = limits.reference_tree(reference)
    ref_path = f"{tree / 'operator'}{os.pathsep}{tree / 'model-server'}"
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_at_start = list(os.getloadavg())
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="modelloop-limits-instructions-") as tmp:
        work = Path(tmp)
        data = work / "data.csv"
        server_bench.dataset(data)
        for key in args.models.split(","):
            now_uri = limits.train(key, data, work / key / "now", None)
            ref_uri = limits.train(key, data, work / key / "ref", ref_path)
            counts: dict[str, list[float]] = {"today": [], reference.label: []}
            for repetition in range(args.repeat):
                for label in list(counts)[repetition % 2:] + list(counts)[:repetition % 2]:
                    port = server_bench.free_port()
                    now_command, ref_command = limits.server_commands(reference, now_uri, ref_uri, port, port)
                    if reference.same_flags:
                        now_command, ref_command = [*now_command, *KEEP_ALIVE], [*ref_command, *KEEP_ALIVE]
                    if label == "today":
                        command, env = now_command, dict(os.environ)
                    else:
                        command, env = ref_command, {**os.environ, "PYTHONPATH": ref_path}
                    log = work / key / f"{'today' if label == 'today' else 'before'}-{repetition}.log"
                    counts[label].append(count(command, port, env, args, log))
                    print(f"  {key:<7} rep {repetition + 1}  {label:<18} {counts[label][-1]:>10,.0f} "
                          "instructions/request", flush=True)
            today, before = (statistics.median(v) for v in counts.values())
            results[key] = {"today": today, reference.label: before, "ratio": today / before,
                            "within_target": today / before <= 1 + reference.target, "runs": counts}
    print(f"{'model':<7} {'today':>12} {'before':>12} {'ratio':>6}   (instructions per request, medians)")
    for key, r in results.items():
        print(f"{key:<7} {r['today']:>12,.0f} {r[reference.label]:>12,.0f} {r['ratio']:>6.3f}")
    met = all(r["within_target"] for r in results.values())
    print(f"today at most {reference.target:.0%} above the reference for every model: {'yes' if met else 'no'}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "benchmark": f"modelloop-serve today vs {reference.commit}: instructions per request under callgrind "
                     "(scikit-learn runtime)",
        "commit": limits.commit_measured(),
        "date": started, "load_average_at_start": load_at_start, "load_average_at_end": list(os.getloadavg()),
        "method": {"connections": args.connections, "rounds": args.rounds, "warmup_rounds": WARMUP_ROUNDS,
                   "repeat": args.repeat, "rows_per_request": 1, "server_cpus": args.server_cpus,
                   "valgrind": subprocess.run(["valgrind", "--version"], capture_output=True,
                                              text=True).stdout.strip(),
                   "models": {key: limits.MODELS[key] for key in args.models.split(",")},
                   **limits.method_reference(reference),
                   **({"keep_alive": " ".join(KEEP_ALIVE) + " on both servers"} if reference.same_flags else {}),
                   "target": f"today at most {reference.target:.0%} above the reference"},
        "results": results, "within_target": met}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
