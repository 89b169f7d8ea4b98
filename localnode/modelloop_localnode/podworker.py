"""One pod's life on the local node, in its own thread.

prepare (check images, pod IP, volumes) -> run init containers one by one -> run the containers,
probe them, restart them under the restart policy -> on deletion stop them (SIGTERM, grace period,
SIGKILL), report the final status and remove the pod. Status goes to the pods/status subresource
whenever it changes.
"""
from __future__ import annotations

import calendar
import json
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from . import status as st
from .downward import field_value, resource_value
from .kube import ApiError
from .log import log
from .probes import ProbeTracker, run_exec, run_probe
from .processes import RegistryClosed, kill_marked, signal_group
from .translate import (DEFAULT_TERMINATION_MESSAGE_PATH, RUNTIME_REPOSITORY, CommandNotFound, ConfigError,
                        EnvSources, HostMap, container_env, mounts_json, pod_env, resolve_argv, runnable_image)
from .volumes import (ObjectReader, PodVolumes, VolumeNotSupported, VolumeUnavailable, decode_data, materialize,
                      unsupported_volumes)

if TYPE_CHECKING:
    from .agent import Agent

SERVICE_ACCOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
NOT_STARTED_EXIT_CODE = 128  # what runtimes report for a container that could not start
RETRY_S = 2.0


class PodFailed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class ContainerRun:
    """The runtime record of one container: its process and what its status says."""

    spec: dict
    init: bool
    key: str  # <namespace>/<pod>/<container>, the processes.json key
    restart_count: int = 0
    crashes: int = 0  # restarts since the last long run, for the back-off
    ran_before: bool = False
    proc: subprocess.Popen | None = None
    started_wall: float = 0.0
    started_mono: float = 0.0
    container_id: str = ""
    state: dict = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict = field(default_factory=dict)
    started: bool = False  # the startup probe passed (or there is none)
    ready: bool = False
    done: bool = False  # terminated for good
    not_before: float = 0.0  # monotonic time before which it must not (re)start
    stop_deadline: float | None = None  # SIGTERM sent; SIGKILL at this monotonic time
    stop_reason: str = ""
    probes: dict[str, ProbeTracker] = field(default_factory=dict)
    exec_env: dict = field(default_factory=dict)
    cwd: str = ""
    log_path: Path | None = None
    message_path: Path | None = None

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def sidecar(self) -> bool:
        return self.init and self.spec.get("restartPolicy") == "Always"

    @property
    def succeeded(self) -> bool:
        return (self.state.get("terminated") or {}).get("exitCode") == 0 and self.done

    def status(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "image": self.spec["image"], "imageID": self.spec["image"],
                               "ready": self.ready, "restartCount": self.restart_count, "state": self.state,
                               "lastState": self.last_state, "started": bool(self.proc) and self.started}
        if self.container_id:
            out["containerID"] = self.container_id
        return out


class PodWorker(threading.Thread):
    def __init__(self, agent: Agent, pod: dict) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod {meta['namespace']}/{meta['name']}", daemon=True)
        self.agent = agent
        self.pod = pod
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self.removed = False
        self.finished = False  # the thread is done; the agent may forget this worker
        slug = f"{self.namespace}_{self.pod_name}_{self.uid}"
        self.pod_dir = agent.state_dir / "pods" / slug
        self.log_dir = agent.state_dir / "logs" / slug
        self.ip: str | None = None
        self.volumes: PodVolumes | None = None
        self.prepared = False
        self.failure: PodFailed | None = None
        self.retry_at = 0.0
        self.final = False  # terminal phase reached: nothing runs any more
        self.stopping = False  # stopping every container (deletion or active deadline)
        self.deadline_at: float | None = None  # monotonic time activeDeadlineSeconds runs out
        self.deleted = False
        self.reported: dict | None = None
        status = pod.get("status") or {}
        self.conditions = {c["type"]: c for c in status.get("conditions") or []}
        self.start_time: str | None = status.get("startTime")
        spec = pod["spec"]
        self.init_runs = [ContainerRun(c, True, self._key(c)) for c in spec.get("initContainers") or []]
        self.app_runs = [ContainerRun(c, False, self._key(c)) for c in spec["containers"]]
        # A pod that was already terminal when this agent first saw it keeps the status it has.
        self.frozen = self.final = status.get("phase") in ("Succeeded", "Failed")
        self._restore(status)

    def _key(self, container: dict) -> str:
        return f"{self.namespace}/{self.pod_name}/{container['name']}"

    @property
    def runs(self) -> list[ContainerRun]:
        return self.init_runs + self.app_runs

    # --------------------------------------------------------------------------------------------
    # Events from the agent

    def update(self, pod: dict) -> None:
        with self._lock:
            self.pod = pod
            if self.reported and self._drifted(pod):
                self.reported = None  # someone else (e.g. the node controller) changed our fields
        self.wake.set()

    def remove(self) -> None:
        with self._lock:
            self.removed = True
        self.wake.set()

    def _drifted(self, pod: dict) -> bool:
        status = pod.get("status") or {}
        if status.get("phase") != self.reported.get("phase") or status.get("podIP") != self.reported.get("podIP"):
            return True
        current = {c["type"]: c.get("status") for c in status.get("conditions") or []}
        return any(current.get(c["type"]) != c["status"] for c in self.reported.get("conditions") or [])

    # --------------------------------------------------------------------------------------------
    # The loop

    def run(self) -> None:
        log("pod.added", pod=f"{self.namespace}/{self.pod_name}", uid=self.uid)
        while True:
            try:
                delay = self.sync()
            except Exception as e:  # noqa: BLE001 - keep the pod alive; the next tick retries
                log("pod.sync_error", level="error", pod=f"{self.namespace}/{self.pod_name}", error=repr(e))
                delay = RETRY_S
            if self.finished:
                return
            self.wake.wait(delay)
            self.wake.clear()

    def sync(self) -> float:
        with self._lock:
            pod, removed = self.pod, self.removed
        if self.agent.stopping.is_set():
            return 1.0
        if removed:
            self._teardown(pod)
            return 0
        if pod["metadata"].get("deletionTimestamp"):
            return self._terminate(pod)
        if self.final:
            self._report(pod)
            return 5.0
        if not self.prepared and not self.failure:
            if time.monotonic() < self.retry_at:
                return self.retry_at - time.monotonic()
            try:
                self._prepare(pod)
            except PodFailed as e:
                self.failure = e
                self._fail_containers(e)
                log("pod.failed", level="warning", pod=f"{self.namespace}/{self.pod_name}", reason=e.reason,
                    message=e.message)
            except VolumeUnavailable as e:  # kubelet's FailedMount: keep waiting, retry
                self.retry_at = time.monotonic() + RETRY_S
                waiting = {"reason": "ContainerCreating", "message": f"MountVolume.SetUp failed: {e}"}
                for run in self.runs:
                    run.state = {"waiting": waiting}
        if self.prepared:
            if not self.failure:
                self._deadline(pod)
            self._step(pod)  # after a failure (deadline) it only collects the stopping processes
        self._report(pod)
        return self._next_tick()

    def _next_tick(self) -> float:
        now = time.monotonic()
        times = [self.retry_at] if not self.prepared else []
        if self.deadline_at is not None and not self.stopping:
            times.append(self.deadline_at)
        for run in self.runs:
            if run.proc is None and not run.done and run.not_before > now:
                times.append(run.not_before)
            if run.stop_deadline:
                times.append(run.stop_deadline)
            times += [p.next_due for p in run.probes.values()]
        delay = min([t - now for t in times], default=5.0)
        if self.reported is None:
            delay = min(delay, 1.0)
        return max(0.05, min(delay, 5.0))

    # --------------------------------------------------------------------------------------------
    # Preparation

    def _restore(self, status: dict) -> None:
        """Continue from the status a previous agent run reported (its processes are gone)."""
        reported = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
        previous = {s["name"]: s for s in reported}
        now = st.rfc3339()
        for run in self.runs:
            before = previous.get(run.name)
            if not before:
                continue
            run.restart_count = before.get("restartCount", 0)
            run.last_state = before.get("lastState") or {}
            state = before.get("state") or {}
            if "running" in state:
                state = {"terminated": {"exitCode": 137, "reason": "AgentRestarted",
                                        "startedAt": state["running"].get("startedAt"), "finishedAt": now,
                                        "message": "the local node agent restarted; its process was stopped"}}
            if "terminated" in state:
                run.ran_before = True
                code = state["terminated"].get("exitCode", 0)
                if self.final or not st.should_restart(run.spec, self.pod["spec"], code, run.init):
                    run.state, run.done = state, True
                else:
                    run.last_state = state
                    run.state = {"waiting": {"reason": "ContainerCreating"}}
            elif run.last_state.get("terminated"):
                run.ran_before = True

    def _prepare(self, pod: dict) -> None:
        spec = pod["spec"]
        if self.start_time is None:
            self.start_time = st.rfc3339()
        extra = self.agent.runnable_images
        for run in self.runs:
            image = run.spec.get("image", "")
            if not runnable_image(image, extra):
                allowed = RUNTIME_REPOSITORY + " (any tag)" + "".join(f", {i}" for i in extra)
                raise PodFailed("ImageNotRunnable",
                                f'container {run.name}: image "{image}" cannot run on local node '
                                f"{self.agent.node_name}, which runs only {allowed} as local processes "
                                "(add --runnable-image to allow more, or keep the pod off this node)")
        unsupported = unsupported_volumes(pod)
        if unsupported:
            raise PodFailed("VolumeNotSupported", f"volumes not supported by the local node: {', '.join(unsupported)}")
        preferred = (pod.get("status") or {}).get("podIP")
        self.ip = self.agent.addresses.allocate(self.uid, preferred)
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        objects = ObjectReader(secret=lambda n: self._object("secrets", n),
                               config_map=lambda n: self._object("configmaps", n),
                               token=lambda source: self._token(pod, source), node_allocatable=self.agent.allocatable)
        try:
            self.volumes = materialize(pod, self.pod_dir, self.agent.pvc_root, objects, self.ip, self.agent.host_ip)
        except VolumeNotSupported as e:
            raise PodFailed("VolumeNotSupported", str(e)) from e
        except ValueError as e:  # an unsupported downward API field
            raise PodFailed("VolumeNotSupported", str(e)) from e
        pvc_root = self.pod_dir / "pvc"
        pvc_root.mkdir(exist_ok=True)
        for claim, directory in self.volumes.claims.items():
            link = pvc_root / claim
            if not link.is_symlink():
                link.symlink_to(directory, target_is_directory=True)
        self.prepared = True
        log("pod.prepared", pod=f"{self.namespace}/{self.pod_name}", ip=self.ip,
            restart_policy=spec.get("restartPolicy", "Always"))

    def _object(self, plural: str, name: str) -> dict[str, bytes] | None:
        obj = self.agent.kube.get_or_none(f"/api/v1/namespaces/{self.namespace}/{plural}/{name}")
        return None if obj is None else decode_data(obj)

    def _token(self, pod: dict, source: dict) -> str:
        account = pod["spec"].get("serviceAccountName") or "default"
        body: dict[str, Any] = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                "spec": {"expirationSeconds": source.get("expirationSeconds", 3607),
                                         "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.pod_name,
                                                            "uid": self.uid}}}
        if source.get("audience"):
            body["spec"]["audiences"] = [source["audience"]]
        path = f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}/token"
        try:
            answer = self.agent.kube.create(path, body)
        except ApiError as e:
            raise VolumeUnavailable(f"service account token for {account}: {e}") from e
        return answer["status"]["token"]

    def _fail_containers(self, failure: PodFailed) -> None:
        now = st.rfc3339()
        for run in self.runs:
            run.state = {"terminated": {"exitCode": NOT_STARTED_EXIT_CODE, "reason": failure.reason,
                                        "message": failure.message, "startedAt": None, "finishedAt": now}}
            run.done = True
        self.final = True

    # --------------------------------------------------------------------------------------------
    # The process of a container

    def _paths(self, run: ContainerRun) -> HostMap:
        assert self.volumes is not None
        pairs = []
        for mount in run.spec.get("volumeMounts") or []:
            host = self.volumes.dirs[mount["name"]]
            if mount.get("subPath"):
                host = host / mount["subPath"]
                if not host.exists():
                    host.mkdir(parents=True, exist_ok=True)
            pairs.append((mount["mountPath"], str(host)))
        container_dir = self.pod_dir / "containers" / run.name
        message_path = run.spec.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
        pairs.append((message_path, str(container_dir / "termination-log")))
        return HostMap(tuple(pairs), self.ip or "")

    def _process_config(self, run: ContainerRun, pod: dict) -> tuple[dict[str, str], list[str], Path]:
        paths = self._paths(run)
        container_dir = self.pod_dir / "containers" / run.name
        (container_dir / "tmp").mkdir(parents=True, exist_ok=True)
        (self.pod_dir / "home").mkdir(exist_ok=True)
        mounts = paths.as_dict()
        message_file = mounts[run.spec.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH]
        api = urlparse(self.agent.kube.host)
        provided = {
            "KUBERNETES_SERVICE_HOST": api.hostname or "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(api.port or 443),
            "POD_IP": self.ip,
            "TMPDIR": mounts.get("/tmp", str(container_dir / "tmp")),
        }
        kubeconfig = self._service_account_kubeconfig(mounts.get(SERVICE_ACCOUNT_PATH), container_dir)
        if kubeconfig:
            provided["KUBECONFIG"] = str(kubeconfig)
        forced = {
            "MODELLOOP_POD_IP": self.ip,
            "MODELLOOP_TERMINATION_LOG": message_file,
            "MODELLOOP_PVC_ROOT": str(self.pod_dir / "pvc"),
            "MODELLOOP_MOUNTS": mounts_json(paths),
            "PYTHONUNBUFFERED": "1",
        }
        provided.update(forced)

        def field(path: str) -> str:
            try:
                return field_value(pod, path, self.ip or "", self.agent.host_ip)
            except ValueError as e:
                raise ConfigError(str(e)) from e

        def text(data: dict[str, bytes] | None) -> dict[str, str] | None:
            return None if data is None else {k: v.decode(errors="replace") for k, v in data.items()}

        sources = EnvSources(secret=lambda n: text(self._object("secrets", n)),
                             config_map=lambda n: text(self._object("configmaps", n)), field=field,
                             resource=lambda ref: resource_value(pod, run.name, ref, self.agent.allocatable))
        declared = pod_env(run.spec, sources, paths, provided)
        base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(self.pod_dir / "home"), "LANG": "C.UTF-8",
                "HOSTNAME": pod["spec"].get("hostname") or self.pod_name}
        env = container_env(base, provided, declared, forced, self.agent.bin_dir)
        argv = resolve_argv(run.spec, env, paths, self.agent.bin_dir, self.agent.default_entrypoint)
        working_dir = run.spec.get("workingDir") or ""
        mapped = paths.to_host(working_dir)
        cwd = Path(mapped) if working_dir and mapped != working_dir else container_dir  # only a mount is visible
        cwd.mkdir(parents=True, exist_ok=True)
        return env, argv, cwd

    def _service_account_kubeconfig(self, mount: str | None, container_dir: Path) -> Path | None:
        """A kubeconfig for the pod's service account: clients cannot read the fixed in-cluster
        paths (/var/run/secrets/...) from a process, but they all honour KUBECONFIG."""
        if not mount or not (Path(mount) / "token").exists():
            return None
        path = container_dir / "kubeconfig"
        cluster: dict[str, Any] = {"server": self.agent.kube.host}
        if (Path(mount) / "ca.crt").exists():
            cluster["certificate-authority"] = str(Path(mount) / "ca.crt")
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "pod",
            "clusters": [{"name": "local", "cluster": cluster}],
            "users": [{"name": "serviceaccount", "user": {"tokenFile": str(Path(mount) / "token")}}],
            "contexts": [{"name": "pod", "context": {"cluster": "local", "user": "serviceaccount",
                                                    "namespace": self.namespace}}],
        }, indent=1))
        return path

    def _start(self, run: ContainerRun, pod: dict) -> None:
        now = time.monotonic()
        try:
            env, argv, cwd = self._process_config(run, pod)
        except ConfigError as e:
            run.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            run.not_before = now + RETRY_S
            return
        except ApiError as e:
            run.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            run.not_before = now + RETRY_S
            return
        except CommandNotFound as e:
            if run.ran_before:
                run.restart_count += 1
            run.ran_before = True
            self._exited(run, NOT_STARTED_EXIT_CODE, "StartError", str(e), time.time())
            return
        if run.ran_before:
            run.restart_count += 1
        container_dir = self.pod_dir / "containers" / run.name
        run.message_path = container_dir / "termination-log"
        run.message_path.write_bytes(b"")
        log_dir = self.log_dir / run.name
        log_dir.mkdir(parents=True, exist_ok=True)
        run.log_path = log_dir / f"{run.restart_count}.log"
        try:
            proc = self.agent.registry.spawn(run.key, self.uid, argv, env, cwd, run.log_path)
        except RegistryClosed:
            return
        except OSError as e:
            run.ran_before = True
            self._exited(run, NOT_STARTED_EXIT_CODE, "StartError", str(e), time.time())
            return
        run.proc, run.ran_before = proc, True
        run.started_wall, run.started_mono = time.time(), time.monotonic()
        run.container_id = f"localnode://{proc.pid}"
        run.state = {"running": {"startedAt": st.rfc3339(run.started_wall)}}
        run.exec_env, run.cwd = env, str(cwd)
        run.ready = False
        run.stop_deadline, run.stop_reason = None, ""
        run.probes = {kind: ProbeTracker(kind, run.spec[f"{kind}Probe"], run.started_mono)
                      for kind in ("startup", "readiness", "liveness") if run.spec.get(f"{kind}Probe")}
        run.started = "startup" not in run.probes
        threading.Thread(target=self._wait_for, args=(proc,), daemon=True, name=f"wait {run.key}").start()
        log("container.started", pod=f"{self.namespace}/{self.pod_name}", container=run.name, pid=proc.pid,
            restarts=run.restart_count, argv=" ".join(argv)[:300], log=run.log_path)

    def _wait_for(self, proc: subprocess.Popen) -> None:
        proc.wait()
        self.wake.set()

    def _exited(self, run: ContainerRun, code: int, reason: str, message: str, finished: float) -> None:
        """Record a termination and decide, under the restart policy, whether the container runs again."""
        terminated: dict[str, Any] = {"exitCode": code, "reason": reason,
                                      "startedAt": st.rfc3339(run.started_wall) if run.proc else None,
                                      "finishedAt": st.rfc3339(finished)}
        if message:
            terminated["message"] = message
        if run.container_id and run.proc:
            terminated["containerID"] = run.container_id
        ran_for = time.monotonic() - run.started_mono if run.proc else 0.0
        run.proc, run.ready, run.started, run.probes, run.stop_deadline = None, False, False, {}, None
        restart = not self.stopping and st.should_restart(run.spec, self.pod["spec"], code, run.init)
        if restart:
            run.crashes = 1 if ran_for >= st.BACKOFF_RESET_S else run.crashes + 1
            delay = st.backoff_seconds(run.crashes)
            run.last_state = {"terminated": terminated}
            run.not_before = time.monotonic() + delay
            run.state = {"waiting": {"reason": "CrashLoopBackOff",
                                     "message": f"back-off {delay:g}s restarting failed container={run.name} "
                                                f"pod={self.pod_name}_{self.namespace}({self.uid})"}} if delay else \
                {"waiting": {"reason": "ContainerCreating"}}
        else:
            run.state, run.done = {"terminated": terminated}, True
        log("container.exited", pod=f"{self.namespace}/{self.pod_name}", container=run.name, exit_code=code,
            reason=reason, restart=restart, stopped_by=run.stop_reason or None)

    def _reap(self, run: ContainerRun) -> None:
        proc = run.proc
        if proc is None or proc.returncode is None:
            return
        self.agent.registry.forget(run.key, proc.pid)
        signal_group(proc.pid, signal.SIGKILL)  # whatever the process left in its group
        code = st.exit_code(proc.returncode)
        policy = run.spec.get("terminationMessagePolicy") or "File"
        message = st.termination_message(run.message_path, policy, code, run.log_path) if run.message_path else ""
        self._exited(run, code, st.exit_reason(code), message, time.time())
        kill_marked(self.agent.agent_id, f"{run.key}:{self.uid}", grace=1.0)  # children that left the group

    def _stop(self, run: ContainerRun, grace: float, reason: str) -> None:
        """SIGTERM now; SIGKILL when the grace period is over (checked by _enforce_deadlines)."""
        if run.proc is None:
            return
        deadline = time.monotonic() + max(grace, 0)
        if run.stop_deadline is not None and run.stop_deadline <= deadline:
            return
        run.stop_deadline, run.stop_reason = deadline, reason
        signal_group(run.proc.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        log("container.stopping", pod=f"{self.namespace}/{self.pod_name}", container=run.name, grace_s=grace,
            reason=reason)

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for run in self.runs:
            if run.proc and run.proc.returncode is None and run.stop_deadline and now >= run.stop_deadline:
                signal_group(run.proc.pid, signal.SIGKILL)

    # --------------------------------------------------------------------------------------------
    # Running containers

    def _step(self, pod: dict) -> None:
        for run in self.runs:
            self._reap(run)
        self._enforce_deadlines()
        if self.stopping:
            return
        now = time.monotonic()
        blocked = False
        for run in self.init_runs:
            if run.sidecar:
                self._ensure_running(run, pod, now)
                if not run.started:
                    blocked = True
                    break
                continue
            if run.succeeded:
                continue
            if not run.done:
                self._ensure_running(run, pod, now)
            blocked = True  # running, backing off, or failed for good (the phase says Failed)
            break
        if not blocked:
            for run in self.app_runs:
                if not run.done:
                    self._ensure_running(run, pod, now)
        for run in self.runs:
            if run.proc is not None and run.proc.returncode is None:
                self._probe(run, pod)

    def _ensure_running(self, run: ContainerRun, pod: dict, now: float) -> None:
        if run.proc is None and not run.done and now >= run.not_before:
            self._start(run, pod)

    def _probe(self, run: ContainerRun, pod: dict) -> None:
        if run.stop_deadline is not None:
            return
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        for kind in ("startup", "liveness", "readiness"):
            tracker = run.probes.get(kind)
            now = time.monotonic()
            if tracker is None or now < tracker.next_due or (kind == "startup") == run.started:
                continue
            ok, message = run_probe(tracker.spec, run.spec, self.ip or "", self._exec_probe(run))
            changed = tracker.record(ok, message, time.monotonic())
            if kind == "startup" and ok:
                run.started = True
            if changed:
                log("probe.changed", pod=f"{self.namespace}/{self.pod_name}", container=run.name, probe=kind,
                    result="success" if tracker.result else "failure", message=None if ok else message)
            if tracker.exhausted:
                self._stop(run, tracker.spec.get("terminationGracePeriodSeconds", grace),
                           f"{kind} probe failed: {message}")
                run.ready = False
                return
        readiness = run.probes.get("readiness")
        run.ready = run.started and (readiness.result if readiness else True)

    def _exec_probe(self, run: ContainerRun):
        def execute(command: list[str], timeout: float) -> tuple[bool, str]:
            try:
                argv = resolve_argv({"command": command}, run.exec_env, self._paths(run), self.agent.bin_dir)
            except CommandNotFound as e:
                return False, str(e)
            return run_exec(argv, run.exec_env, run.cwd, timeout)
        return execute

    def _deadline(self, pod: dict) -> None:
        deadline = pod["spec"].get("activeDeadlineSeconds")
        if not deadline or self.stopping or self.final or not self.start_time:
            return
        started = calendar.timegm(time.strptime(self.start_time, "%Y-%m-%dT%H:%M:%SZ"))
        self.deadline_at = time.monotonic() + started + deadline - time.time()
        if time.monotonic() < self.deadline_at:
            return
        self.failure = PodFailed("DeadlineExceeded", "Pod was active on the node longer than the specified deadline")
        self.stopping = True
        for run in self.runs:
            self._stop(run, pod["spec"].get("terminationGracePeriodSeconds", 30), "active deadline exceeded")
            if run.proc is None:
                run.done = True

    # --------------------------------------------------------------------------------------------
    # Deletion

    def _terminate(self, pod: dict) -> float:
        meta, spec = pod["metadata"], pod["spec"]
        if not self.stopping:
            self.stopping = True
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if meta.get("deletionGracePeriodSeconds") is not None:
                grace = min(grace, meta["deletionGracePeriodSeconds"])
            log("pod.terminating", pod=f"{self.namespace}/{self.pod_name}", grace_s=grace)
            for run in self.runs:
                self._stop(run, grace, "pod deleted")
        for run in self.runs:
            self._reap(run)
        self._enforce_deadlines()
        if any(run.proc is not None for run in self.runs):
            self._report(pod)
            return 0.2
        if self.deleted:
            return 5.0
        for run in self.runs:
            run.done = True
        self._report(pod)
        try:
            self.agent.kube.delete(f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}",
                                   {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}})
        except ApiError as e:
            if e.status not in (404, 409):
                log("pod.delete_failed", level="warning", pod=f"{self.namespace}/{self.pod_name}", error=str(e))
                return RETRY_S
        self.deleted = True
        log("pod.deleted", pod=f"{self.namespace}/{self.pod_name}")
        return 5.0

    def _teardown(self, pod: dict) -> None:
        """The pod is gone from the API: make sure nothing of it remains."""
        self.stopping = True
        grace = min(pod["spec"].get("terminationGracePeriodSeconds", 30), 5)
        for run in self.runs:
            self._stop(run, grace, "pod removed")
        deadline = time.monotonic() + grace + 1
        while any(r.proc is not None and r.proc.returncode is None for r in self.runs) and time.monotonic() < deadline:
            self._enforce_deadlines()
            time.sleep(0.05)
        for run in self.runs:
            if run.proc is not None:
                signal_group(run.proc.pid, signal.SIGKILL)
                try:
                    run.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
                self._reap(run)
            kill_marked(self.agent.agent_id, f"{run.key}:{self.uid}", grace=0.5)
        self.agent.addresses.release(self.uid)
        shutil.rmtree(self.pod_dir, ignore_errors=True)
        self.finished = True
        log("pod.removed", pod=f"{self.namespace}/{self.pod_name}", uid=self.uid)

    # --------------------------------------------------------------------------------------------
    # Status

    def _status(self, pod: dict) -> dict:
        init_statuses = [r.status() for r in self.init_runs]
        statuses = [r.status() for r in self.app_runs]
        all_stopped = self.stopping and all(r.proc is None for r in self.runs)
        if self.failure:
            phase = "Failed" if (self.final or all_stopped) else "Running"
        else:
            phase = st.pod_phase(pod["spec"], init_statuses, statuses, terminating=all_stopped)
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            phase = pod["status"]["phase"]  # a terminal phase never changes
        computed = st.pod_conditions(pod, init_statuses, statuses, phase, self.prepared)
        existing = {c["type"] for c in (pod.get("status") or {}).get("conditions") or []}
        if "PodScheduled" not in existing:
            computed = {"PodScheduled": ("True", "", ""), **computed}
        conditions = st.merge_conditions(self.conditions, computed, st.rfc3339())
        status: dict[str, Any] = {"phase": phase, "conditions": conditions, "hostIP": self.agent.host_ip,
                                  "hostIPs": [{"ip": self.agent.host_ip}], "startTime": self.start_time,
                                  "containerStatuses": statuses}
        if init_statuses:
            status["initContainerStatuses"] = init_statuses
        if self.ip:
            status["podIP"], status["podIPs"] = self.ip, [{"ip": self.ip}]
        if self.failure:
            status["reason"], status["message"] = self.failure.reason, self.failure.message
        if phase in ("Succeeded", "Failed"):
            self.final = True
            self.agent.addresses.release(self.uid)  # as CNI does once the pod's sandbox is gone
        return status

    def _report(self, pod: dict) -> None:
        if self.frozen or (self.final and self.reported is not None and not self.stopping):
            return
        status = self._status(pod)
        if status == self.reported:
            return
        body = {"metadata": {"uid": self.uid}, "status": {**status}}
        # conditions merge by type: clear a reason or message the new condition no longer has
        body["status"]["conditions"] = [{"reason": None, "message": None, **c} for c in status["conditions"]]
        if "podIPs" in status:
            body["status"]["podIPs"] = status["podIPs"] + [{"$patch": "replace"}]
        body["status"]["hostIPs"] = status["hostIPs"] + [{"$patch": "replace"}]
        try:
            self.agent.kube.patch(f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}/status", body)
        except ApiError as e:
            if e.status != 404:
                log("pod.status_failed", level="warning", pod=f"{self.namespace}/{self.pod_name}", error=str(e)[:500])
            self.reported = None
            return
        if self.reported is None or self.reported.get("phase") != status["phase"]:
            log("pod.phase", pod=f"{self.namespace}/{self.pod_name}", phase=status["phase"], ip=self.ip)
        self.reported = status
        self.conditions = {c["type"]: c for c in status["conditions"]}
