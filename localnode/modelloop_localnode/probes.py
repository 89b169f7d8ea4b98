"""Container probes (startup, readiness, liveness): httpGet, tcpSocket and exec, with kubelet's
timing (initialDelaySeconds, periodSeconds, timeoutSeconds) and thresholds."""
from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


def probe_port(port: int | str, container: Mapping) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"probe port {port!r} names no port of container {container['name']}")


def http_get(spec: Mapping, container: Mapping, pod_ip: str, timeout: float) -> tuple[bool, str]:
    host = spec.get("host") or pod_ip
    port = probe_port(spec["port"], container)
    path = spec.get("path") or "/"
    headers = {"User-Agent": "kube-probe/1.36", "Accept": "*/*"}
    headers.update({h["name"]: h["value"] for h in spec.get("httpHeaders") or []})
    if spec.get("scheme", "HTTP").upper() == "HTTPS":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # kubelet does not verify probe certificates either
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        status = conn.getresponse().status
        return 200 <= status < 400, f"HTTP probe failed with statuscode: {status}"
    except (OSError, http.client.HTTPException) as e:
        return False, f'Get "http://{host}:{port}{path}": {e}'
    finally:
        conn.close()


def tcp_socket(spec: Mapping, container: Mapping, pod_ip: str, timeout: float) -> tuple[bool, str]:
    host = spec.get("host") or pod_ip
    port = probe_port(spec["port"], container)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True, ""
    except OSError as e:
        return False, f"dial tcp {host}:{port}: {e}"


@dataclass
class ProbeTracker:
    """One probe of one running container: when it is due and what its thresholds make of the results."""

    kind: str  # "startup", "readiness" or "liveness"
    spec: Mapping
    started: float  # monotonic time the container started
    result: bool = field(init=False)
    next_due: float = field(init=False)
    successes: int = 0
    failures: int = 0
    message: str = ""

    def __post_init__(self) -> None:
        self.result = self.kind == "liveness"  # readiness/startup start out failed, liveness healthy
        self.next_due = self.started + self.spec.get("initialDelaySeconds", 0)

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds", 10))

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeoutSeconds", 1))

    def record(self, ok: bool, message: str, now: float) -> bool:
        """Account for one result; returns True when the tracked result changed."""
        self.next_due = now + self.period
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            needed = self.spec.get("successThreshold", 1) if self.kind == "readiness" else 1
            flip = not self.result and self.successes >= needed
        else:
            self.successes, self.failures = 0, self.failures + 1
            self.message = message
            flip = self.result and self.failures >= self.spec.get("failureThreshold", 3)
        if flip:
            self.result = ok
        return flip

    @property
    def exhausted(self) -> bool:
        """A startup/liveness probe that failed failureThreshold times in a row: restart the container."""
        return self.kind in ("startup", "liveness") and self.failures >= self.spec.get("failureThreshold", 3)


def run_probe(spec: Mapping, container: Mapping, pod_ip: str,
              exec_probe: Callable[[list[str], float], tuple[bool, str]]) -> tuple[bool, str]:
    timeout = float(spec.get("timeoutSeconds", 1))
    try:
        if "httpGet" in spec:
            return http_get(spec["httpGet"], container, pod_ip, timeout)
        if "tcpSocket" in spec:
            return tcp_socket(spec["tcpSocket"], container, pod_ip, timeout)
        if "exec" in spec:
            return exec_probe(spec["exec"].get("command") or [], timeout)
    except ValueError as e:
        return False, str(e)
    return True, "probe type not supported by the local node; treated as passing"


def run_exec(argv: list[str], env: Mapping[str, str], cwd: str, timeout: float) -> tuple[bool, str]:
    try:
        done = subprocess.run(argv, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired:
        return False, f"command timed out after {timeout:g}s"
    except OSError as e:
        return False, str(e)
    output = (done.stdout + done.stderr).decode(errors="replace").strip()[-500:]
    return done.returncode == 0, f"command exited with {done.returncode}: {output}"

