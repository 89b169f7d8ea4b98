"""A thin JSON client for the Kubernetes API: plain dicts in and out, REST paths, one watch helper.

It reuses the `kubernetes` package for what it does well (kubeconfig loading, TLS, connection
pooling) and skips its generated models: the agent reads and writes the same JSON a reader sees
with `kubectl get -o json`.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.watch.watch import iter_resp_lines

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer from the API server (`status` is the HTTP status code)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class Kube:
    def __init__(self, kubeconfig: str | Path | None, timeout: float = 15) -> None:
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None, client_configuration=cfg)
        cfg.connection_pool_maxsize = 64
        self.configuration = cfg
        self.api = client.ApiClient(cfg)
        self.api.user_agent = "modelloop-localnode"
        self.timeout = timeout

    @property
    def host(self) -> str:
        """The API server URL, e.g. https://127.0.0.1:6443."""
        return self.configuration.host

    def _call(self, method: str, path: str, query: dict[str, Any] | None, body: Any, content_type: str,
              timeout: Any):
        headers = {"Accept": JSON, "Content-Type": content_type}
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        request = self.api.param_serialize(method, path, query_params=params, header_params=headers, body=body,
                                           auth_settings=["BearerToken"])
        return self.api.call_api(*request, _request_timeout=timeout)

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
                content_type: str = JSON, timeout: float | None = None) -> dict:
        response = self._call(method, path, query, body, content_type, timeout or self.timeout)
        data = response.read()
        if not 200 <= response.status <= 299:
            try:
                status = json.loads(data)
                reason, message = status.get("reason", ""), status.get("message", "")
            except ValueError:
                reason, message = response.reason or "", data.decode(errors="replace")[:500]
            raise ApiError(response.status, reason, message)
        return json.loads(data) if data else {}

    def get(self, path: str, **query: Any) -> dict:
        return self.request("GET", path, query=query)

    def get_or_none(self, path: str) -> dict | None:
        try:
            return self.get(path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def create(self, path: str, body: dict) -> dict:
        return self.request("POST", path, body=body)

    def patch(self, path: str, body: Any, content_type: str = STRATEGIC_MERGE_PATCH,
              timeout: float | None = None) -> dict:
        return self.request("PATCH", path, body=body, content_type=content_type, timeout=timeout)

    def delete(self, path: str, body: dict | None = None) -> dict:
        return self.request("DELETE", path, body=body)

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 300, **query: Any) -> Iterator[dict]:
        """Yield watch events (`{"type": ..., "object": {...}}`) until the server ends the watch.

        An `ERROR` event (e.g. 410 Gone: the resource version is too old) is raised as ApiError so
        that the caller lists again.
        """
        query = {**query, "watch": "true", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": timeout_seconds}
        response = self._call("GET", path, query, None, JSON, (10, timeout_seconds + 30))
        raw = response.response
        try:
            if not 200 <= response.status <= 299:
                data = response.read()
                raise ApiError(response.status, response.reason or "", data.decode(errors="replace")[:500])
            for line in iter_resp_lines(raw):
                if not line:
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    obj = event.get("object", {})
                    raise ApiError(obj.get("code", 500), obj.get("reason", ""), obj.get("message", ""))
                yield event
        finally:
            raw.close()
            raw.release_conn()

    def close(self) -> None:
        self.api.close()
