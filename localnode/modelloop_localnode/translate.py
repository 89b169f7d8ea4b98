"""How a container of modelloop's runtime image becomes a local process. Pure functions.

- `runnable_image`: which images the agent can run (modelloop's runtime image, plus `--runnable-image`).
- `resolve_argv`: `command`/`args` with Kubernetes `$(VAR)` expansion; `command[0]` names an entry
  point of the agent's own venv (`python`, `modelloop-train`, `modelloop-serve`, ...), never a host path.
- `HostMap`: container paths (volume mounts, the termination-message path) to host paths, and
  0.0.0.0 to the pod IP; applied to every env value and argument the pod spec supplies.
- `container_env`: the process environment: a minimal base, the pod's `envFrom`/`env`, and the
  variables through which the agent tells the process where things are (`MODELLOOP_*`).
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

RUNTIME_REPOSITORY = "ghcr.io/modelloop/runtime"
DEFAULT_ENTRYPOINT = "modelloop-serve"
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
ENV_NAME = re.compile(r"^[ -<>-~]+$")  # printable ASCII but "=" (Kubernetes' relaxed env var names)


class ImageNotRunnable(Exception):
    """The container's image is not one the local node can run as a process."""


class CommandNotFound(Exception):
    """`command[0]` names no entry point of the runtime's venv."""


class ConfigError(Exception):
    """The container's environment refers to a missing Secret/ConfigMap/key (kubelet: CreateContainerConfigError)."""


# ------------------------------------------------------------------------------------------------
# Images


def image_repository(image: str) -> str:
    """`ghcr.io/modelloop/runtime:0.1@sha256:..` -> `ghcr.io/modelloop/runtime`; Docker Hub names are normalised."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    first, _, rest = name.partition("/")
    if not rest:
        return f"docker.io/library/{name}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{name}"
    return name


def runnable_image(image: str, extra: Iterable[str] = ()) -> bool:
    """True for modelloop's runtime image (any tag) and for `extra` entries: a bare repository
    matches any tag, a reference with a tag or digest matches exactly."""
    repository = image_repository(image)
    if repository == RUNTIME_REPOSITORY:
        return True
    for allowed in extra:
        if allowed == image or allowed_repository(allowed) == repository:
            return True
    return False


def allowed_repository(allowed: str) -> str | None:
    """The repository of an `--runnable-image` entry without tag or digest, else None (exact match only)."""
    last = allowed.rsplit("/", 1)[-1]
    if "@" in allowed or ":" in last:
        return None
    return image_repository(allowed)


# ------------------------------------------------------------------------------------------------
# $(VAR) expansion, as kubelet does it (k8s.io/kubernetes/third_party/forked/golang/expansion)


def expand(text: str, env: Mapping[str, str]) -> str:
    """Replace `$(NAME)` by env[NAME]; `$$` is a literal `$`; unknown references stay as written."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close == -1:
                out.append("$(")
                i += 2
            else:
                name = text[i + 2:close]
                out.append(env[name] if name in env else f"$({name})")
                i = close + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


# ------------------------------------------------------------------------------------------------
# Container-world strings -> host-world strings

WILDCARD = re.compile(r"(?<![\d.])0\.0\.0\.0(?![\d.])")


@dataclass(frozen=True)
class HostMap:
    """What a container-world string means on this host: container paths (mount points, files) become
    the host paths that stand for them, and the wildcard address 0.0.0.0 (in a container: every
    address of the pod) becomes the pod IP.

    A container path is rewritten where it starts a value or follows `=`, `:`, `,`, whitespace, a
    quote or `file://`, and is followed by `/`, the end, or one of those separators; so
    `--out=/models/v1`, `file:///data/x.csv` and `open('/config/a')` are mapped, `http://h/models` is not.
    """

    paths: tuple[tuple[str, str], ...] = ()
    pod_ip: str = ""

    def __post_init__(self) -> None:
        ordered = tuple(sorted(((c.rstrip("/") or "/", h) for c, h in self.paths), key=lambda p: -len(p[0])))
        object.__setattr__(self, "paths", ordered)
        alternatives = "|".join(re.escape(c) for c, _ in ordered if c != "/")
        regex = None
        if alternatives:
            regex = re.compile(rf"(?:^|(?<=[=:,\s'\"])|(?<=file://))({alternatives})(?=/|$|[:,\s'\"])")
        object.__setattr__(self, "_regex", regex)

    def to_host(self, value: str) -> str:
        if not value:
            return value
        regex = getattr(self, "_regex")
        if regex is not None:
            table = dict(self.paths)
            value = regex.sub(lambda m: table[m.group(1)], value)
        if self.pod_ip:
            value = WILDCARD.sub(self.pod_ip, value)
        return value

    def as_dict(self) -> dict[str, str]:
        return dict(self.paths)


# ------------------------------------------------------------------------------------------------
# Command


def resolve_argv(container: Mapping, env: Mapping[str, str], paths: HostMap, bin_dir: Path,
                 default_entrypoint: str = DEFAULT_ENTRYPOINT) -> list[str]:
    """The argv of the process: `command` (or the image's entry point) + `args`, expanded and mapped.

    `command[0]` is looked up by its base name in `bin_dir` (the runtime venv's bin): the runtime
    image puts these entry points on PATH, so `/usr/local/bin/python` and `python` are the same thing.
    """
    command = [expand(paths.to_host(c), env) for c in container.get("command") or []]
    args = [expand(paths.to_host(a), env) for a in container.get("args") or []]
    argv = command + args if command else [default_entrypoint] + args
    name = Path(argv[0]).name
    executable = bin_dir / name
    if not name or name in (".", "..") or not executable.is_file():
        available = ", ".join(sorted(p.name for p in bin_dir.iterdir() if p.name.startswith(("python", "modelloop-"))))
        raise CommandNotFound(f"command {argv[0]!r} is not an entry point of the runtime image; the local node "
                              f"runs executables of {bin_dir} only ({available})")
    return [str(executable)] + argv[1:]


# ------------------------------------------------------------------------------------------------
# Environment


@dataclass
class EnvSources:
    """Lookups the environment needs; each returns None when the object does not exist."""

    secret: Callable[[str], Mapping[str, str] | None]
    config_map: Callable[[str], Mapping[str, str] | None]
    field: Callable[[str], str]
    resource: Callable[[Mapping], str]


def _from_object(kind: str, ref: Mapping, lookup: Callable[[str], Mapping[str, str] | None]) -> str | None:
    data = lookup(ref["name"])
    optional = bool(ref.get("optional"))
    if data is None:
        if optional:
            return None
        raise ConfigError(f'{kind} "{ref["name"]}" not found')
    if ref["key"] not in data:
        if optional:
            return None
        raise ConfigError(f'couldn\'t find key {ref["key"]} in {kind} {ref["name"]}')
    return data[ref["key"]]


def pod_env(container: Mapping, sources: EnvSources, paths: HostMap, provided: Mapping[str, str]) -> dict[str, str]:
    """The pod-declared environment (envFrom, then env), as kubelet builds it.

    `provided` plays the part of kubelet's service variables: `$(NAME)` in an env value may refer
    to them and to variables defined earlier. Literal values and values read from Secrets and
    ConfigMaps are container-world strings, so container paths in them are mapped to host paths.
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            kind, ref, lookup = "configmap", source["configMapRef"], sources.config_map
        elif "secretRef" in source:
            kind, ref, lookup = "secret", source["secretRef"], sources.secret
        else:
            continue
        data = lookup(ref["name"])
        if data is None:
            if ref.get("optional"):
                continue
            raise ConfigError(f'{kind} "{ref["name"]}" not found')
        for key, value in data.items():
            if ENV_NAME.match(prefix + key):
                env[prefix + key] = paths.to_host(value)
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(paths.to_host(var.get("value", "")), {**provided, **env})
            continue
        source = var["valueFrom"]
        if "secretKeyRef" in source:
            value = _from_object("secret", source["secretKeyRef"], sources.secret)
        elif "configMapKeyRef" in source:
            value = _from_object("configmap", source["configMapKeyRef"], sources.config_map)
        elif "fieldRef" in source:
            value = sources.field(source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            value = sources.resource(source["resourceFieldRef"])
        else:
            raise ConfigError(f"env {name}: unsupported valueFrom {sorted(source)}")
        if value is not None:
            env[name] = paths.to_host(value) if "fieldRef" not in source else value
    return env


def container_env(base: Mapping[str, str], provided: Mapping[str, str], declared: Mapping[str, str],
                  forced: Mapping[str, str], bin_dir: Path) -> dict[str, str]:
    """base < provided < declared (the pod's env) < forced; the venv's bin always leads PATH."""
    env = {**base, **provided, **declared, **forced}
    path = [p for p in env.get("PATH", "").split(":") if p and p != str(bin_dir)]
    env["PATH"] = ":".join([str(bin_dir), *path])
    return env


def mounts_json(paths: HostMap) -> str:
    return json.dumps(paths.as_dict(), sort_keys=True)
