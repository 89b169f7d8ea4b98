"""Images, commands, $(VAR) expansion, container-to-host mapping and the process environment."""
from __future__ import annotations

from pathlib import Path

import pytest

from modelloop_localnode.translate import (CommandNotFound, ConfigError, EnvSources, HostMap, container_env, expand,
                                           image_repository, pod_env, resolve_argv, runnable_image)


@pytest.mark.parametrize("image, repository", [
    ("ghcr.io/modelloop/runtime:0.1.0", "ghcr.io/modelloop/runtime"),
    ("ghcr.io/modelloop/runtime@sha256:abc", "ghcr.io/modelloop/runtime"),
    ("localhost:5000/runtime:dev", "localhost:5000/runtime"),
    ("nginx:1.27", "docker.io/library/nginx"),
    ("bitnami/redis", "docker.io/bitnami/redis"),
])
def test_image_repository_drops_tag_and_digest(image, repository):
    assert image_repository(image) == repository


def test_runtime_image_runs_with_any_tag_and_other_images_only_when_listed():
    assert runnable_image("ghcr.io/modelloop/runtime:latest")
    assert runnable_image("ghcr.io/modelloop/runtime")
    assert not runnable_image("ghcr.io/modelloop/runtime-evil:1")
    assert not runnable_image("nginx:1.27")
    assert runnable_image("example.com/mine:2", extra=["example.com/mine"])
    assert runnable_image("example.com/mine:2", extra=["example.com/mine:2"])
    assert not runnable_image("example.com/mine:3", extra=["example.com/mine:2"])


@pytest.mark.parametrize("text, expected", [
    ("$(A)-$(B)", "1-2"),
    ("$$(A)", "$(A)"),
    ("$(MISSING)", "$(MISSING)"),
    ("$(A", "$(A"),
    ("cost $5", "cost $5"),
    ("end$", "end$"),
])
def test_expand_follows_kubernetes_rules(text, expected):
    assert expand(text, {"A": "1", "B": "2"}) == expected


def test_host_map_rewrites_mount_paths_and_the_wildcard_address_but_not_lookalikes():
    mounts = (("/models", "/h/models"), ("/models/cache", "/h/cache"), ("/dev/termination-log", "/h/msg"))
    m = HostMap(mounts, "10.245.0.9")
    assert m.to_host("/models/v1") == "/h/models/v1"
    assert m.to_host("/models/cache/x") == "/h/cache/x", "the longest mount path wins"
    assert m.to_host("--out=/models") == "--out=/h/models"
    assert m.to_host("file:///models/a.csv") == "file:///h/models/a.csv"
    assert m.to_host("open('/dev/termination-log')") == "open('/h/msg')"
    assert m.to_host("http://host/models") == "http://host/models"
    assert m.to_host("/modelsx") == "/modelsx"
    assert m.to_host("--host=0.0.0.0") == "--host=10.245.0.9"
    assert m.to_host("10.0.0.0/8") == "10.0.0.0/8"


def bin_dir(tmp_path: Path) -> Path:
    for name in ("python", "modelloop-serve", "modelloop-train"):
        (tmp_path / name).write_text("")
    return tmp_path


def test_command_resolves_to_an_entry_point_of_the_venv_never_a_host_path(tmp_path):
    bins = bin_dir(tmp_path)
    env = {"PORT": "8080"}
    m = HostMap((("/data", "/h/data"),))
    argv = resolve_argv({"command": ["/usr/local/bin/python"], "args": ["-m", "x", "$(PORT)", "/data/in"]}, env, m, bins)
    assert argv == [str(bins / "python"), "-m", "x", "8080", "/h/data/in"]
    assert resolve_argv({"args": ["--port", "9"]}, env, m, bins) == [str(bins / "modelloop-serve"), "--port", "9"]
    with pytest.raises(CommandNotFound, match="'/bin/sh'"):
        resolve_argv({"command": ["/bin/sh", "-c", "id"]}, env, m, bins)


def sources(secrets=None, config_maps=None) -> EnvSources:
    return EnvSources(secret=lambda n: (secrets or {}).get(n), config_map=lambda n: (config_maps or {}).get(n),
                      field=lambda path: {"metadata.name": "p1"}[path], resource=lambda ref: "2")


def test_pod_env_orders_envfrom_then_env_and_expands_only_earlier_names():
    container = {
        "envFrom": [{"configMapRef": {"name": "cm"}}, {"prefix": "S_", "secretRef": {"name": "s"}}],
        "env": [{"name": "URL", "value": "http://$(MODELLOOP_POD_IP):$(PORT)/$(LATER)"},
                {"name": "PORT", "value": "override"},
                {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "LATER", "value": "x"},
                {"name": "OUT", "value": "/models/out"}],
    }
    env = pod_env(container, sources({"s": {"key": "v"}}, {"cm": {"PORT": "80", "dotted.name": "kept"}}),
                  HostMap((("/models", "/h/m"),)), {"MODELLOOP_POD_IP": "10.245.0.3"})
    assert env == {"PORT": "override", "S_key": "v", "URL": "http://10.245.0.3:80/$(LATER)", "NAME": "p1",
                   "LATER": "x", "OUT": "/h/m/out", "dotted.name": "kept"}


def test_missing_references_are_config_errors_unless_optional():
    with pytest.raises(ConfigError, match='secret "nope" not found'):
        missing = {"name": "A", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}
        pod_env({"env": [missing]}, sources(), HostMap(), {})
    with pytest.raises(ConfigError, match="couldn't find key k"):
        pod_env({"env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}]},
                sources(config_maps={"cm": {}}), HostMap(), {})
    optional = {"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}}}],
                "envFrom": [{"configMapRef": {"name": "nope", "optional": True}}]}
    assert pod_env(optional, sources(), HostMap(), {}) == {}


def test_container_env_is_minimal_and_keeps_the_venv_first_on_path(tmp_path):
    env = container_env({"PATH": "/usr/bin", "HOME": "/h"}, {"POD_IP": "1"}, {"PATH": "/opt/bin:/usr/bin", "POD_IP": "2"},
                        {"PYTHONUNBUFFERED": "1"}, tmp_path)
    assert env == {"PATH": f"{tmp_path}:/opt/bin:/usr/bin", "HOME": "/h", "POD_IP": "2", "PYTHONUNBUFFERED": "1"}
