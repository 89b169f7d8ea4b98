#!/usr/bin/env python3
"""A Prometheus server for the embedded cluster, scraping modelloop as a user's Prometheus would; used by
`make demo` and the end-to-end suite.

    .venv/bin/python hack/prometheus.py up [--interval 5s] [--for ALERT=DURATION ...]   start or reuse; prints its URL
    .venv/bin/python hack/prometheus.py down

- Binary: `prometheus` from the same Go module and version as promtool (hack/build-binaries.sh prometheus),
  with only the Kubernetes service discovery compiled in.
- Targets, through Kubernetes service discovery with the cluster's kubeconfig:
  - the operator, through the endpoints of the chart's metrics Service (`job` is the Service's name, as a
    Prometheus Operator ServiceMonitor names it, which the chart's ModelloopOperatorDown alert expects), with
    `honor_labels` (its series' `namespace` is the resource's);
  - every model server pod, through the endpoints (port `http`) of the Services the operator renders
    (`app.kubernetes.io/name: modelloop-server`), labelled besides with `deployment` and `model_version`
    (from the pod's label and annotation).
  Both are labelled `namespace`, `service` and `pod`, as the chart's ServiceMonitors label them.
  Only pods on the real node: kwok's pods have no network.
- Rules: the chart's PrometheusRule, rendered by `helm template` (the template users install) with the given
  per-alert `for` overrides (`metrics.prometheusRule.for`).
- Runs on the host like CoreDNS and metrics-server, on 127.0.0.1:<port>; its files are in
  .cluster/prometheus/; `make cluster-down` stops it. Needs the venv (PyYAML).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from modelloop.names import ANNOTATION_MODEL_VERSION

sys.path.insert(0, str(Path(__file__).resolve().parent))
import node  # noqa: E402  (hack/node.py)
from cluster import BIN, ROOT, STATE_DIR, alive, free_port, log, register_extra, stop_pids  # noqa: E402

CHART = ROOT / "charts" / "modelloop"
HOME = STATE_DIR / "prometheus"
NAME = "prometheus"
OPERATOR_SERVICE_LABEL = ("app.kubernetes.io/name", "modelloop-operator")  # the chart's modelloop.labels
SERVER_LABEL = ("app.kubernetes.io/name", "modelloop-server")  # modelloop.render.deployment.selector
DEPLOYMENT_LABEL = "modelloop.dev/deployment"  # modelloop.render.deployment.LABEL_DEPLOYMENT


def meta(kind: str, key: str) -> str:
    """Prometheus' service-discovery meta label for a Kubernetes label or annotation key."""
    return f"__meta_kubernetes_{kind}_" + "".join(c if c.isalnum() else "_" for c in key)


def rules(overrides: dict[str, str]) -> dict[str, Any]:
    """The rule groups of the chart's PrometheusRule, as `helm template` renders them with `overrides`."""
    k8s = json.loads((STATE_DIR / "state.json").read_text())["versions"]["K8S_VERSION"].lstrip("v")
    out = subprocess.run(
        [str(BIN / "helm"), "template", "modelloop", str(CHART), "--kube-version", k8s,
         "--show-only", "templates/prometheusrule.yaml", "--set", "metrics.prometheusRule.enabled=true",
         "--set-json", "metrics.prometheusRule.for=" + json.dumps(overrides)],
        capture_output=True, text=True, check=True).stdout
    return yaml.safe_load(out)["spec"]


def config(kubeconfig: Path, rule_file: Path, interval: str) -> dict[str, Any]:
    """Two jobs through the endpoints of Services, labelled as the chart's two ServiceMonitors label their
    targets (job = the Service's name; namespace, service, pod), so that the chart's alerts and dashboard
    work the same against this Prometheus and a Prometheus Operator's."""

    def job(name: str, service_label: tuple[str, str], port: str, extra: list[dict], **options: Any) -> dict:
        return {"job_name": name, **options,
                "kubernetes_sd_configs": [{"role": "endpoints", "kubeconfig_file": str(kubeconfig)}],
                "relabel_configs": [
                    {"source_labels": [meta("service_label", service_label[0])], "regex": service_label[1],
                     "action": "keep"},
                    {"source_labels": ["__meta_kubernetes_endpoint_port_name"], "regex": port, "action": "keep"},
                    {"source_labels": ["__meta_kubernetes_pod_node_name"], "regex": node.NODE_NAME,
                     "action": "keep"},
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                    {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
                    *extra]}

    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": [str(rule_file)],
        "scrape_configs": [
            # honor_labels: the operator's series carry the `namespace` of the resource they are about; the
            # target's own namespace must not rename it to exported_namespace (the alerts group by it).
            job("modelloop-operator", OPERATOR_SERVICE_LABEL, "metrics", [], honor_labels=True),
            job("modelloop-servers", SERVER_LABEL, "http", [
                {"source_labels": [meta("pod_label", DEPLOYMENT_LABEL)], "target_label": "deployment"},
                {"source_labels": [meta("pod_annotation", ANNOTATION_MODEL_VERSION)], "target_label": "model_version"}]),
        ],
    }


def up(overrides: dict[str, str] | None = None, interval: str = "5s") -> str:
    """Start Prometheus with this configuration, or reuse the running one when it has the same; its URL."""
    HOME.mkdir(parents=True, exist_ok=True)
    rule_file, config_file, pidfile = HOME / "rules.yaml", HOME / "prometheus.yaml", HOME / "process.json"
    rule_text = yaml.safe_dump(rules(overrides or {}), sort_keys=False)
    config_text = yaml.safe_dump(config(STATE_DIR / "kubeconfig", rule_file, interval), sort_keys=False)
    if pidfile.exists():
        running = json.loads(pidfile.read_text())
        if alive(running["pid"]) and running.get("config") == config_text and running.get("rules") == rule_text:
            return running["url"]
        stop_pids({NAME: running["pid"]}, grace=10)
    rule_file.write_text(rule_text)
    config_file.write_text(config_text)
    # No promtool check first: Prometheus checks its configuration and rule files as it starts and exits on an
    # error, which the tail of its log then shows (promtool is for the tests' rule unit tests only).
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    logs = STATE_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [str(BIN / "prometheus"), f"--config.file={config_file}", f"--storage.tsdb.path={HOME / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=2d", "--log.level=warn"],
        stdout=open(logs / "prometheus.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    register_extra(NAME, proc.pid)
    pidfile.write_text(json.dumps({"pid": proc.pid, "url": url, "config": config_text, "rules": rule_text}))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (logs / "prometheus.log").read_text(errors="replace").splitlines()[-10:]
            raise SystemExit(f"prometheus exited with {proc.returncode}; the end of {logs / 'prometheus.log'}:\n"
                             + "\n".join(tail))
        try:
            if urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200:
                log(f"prometheus ready at {url}")
                return url
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"prometheus not ready after 60 s; see {logs / 'prometheus.log'}")


def down() -> None:
    pidfile = HOME / "process.json"
    if pidfile.exists():
        stop_pids({NAME: json.loads(pidfile.read_text())["pid"]}, grace=10)
        pidfile.unlink()


def api(url: str, path: str, **params: str) -> Any:
    """GET Prometheus' HTTP API; the `data` of a successful answer."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}/api/v1/{path}{query}", timeout=10) as response:
        body = json.loads(response.read())
    if body.get("status") != "success":
        raise RuntimeError(f"prometheus {path}: {body}")
    return body["data"]


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query's vector: [{"metric": {...}, "value": [time, "value"]}, ...]."""
    return api(url, "query", query=promql)["result"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up")
    start.add_argument("--interval", default="5s", help="scrape and rule evaluation interval")
    start.add_argument("--for", dest="overrides", action="append", default=[], metavar="ALERT=DURATION",
                       help="override an alert's `for` (the chart's metrics.prometheusRule.for)")
    sub.add_parser("down")
    args = parser.parse_args()
    if args.command == "down":
        down()
        return
    print(up(dict(o.split("=", 1) for o in args.overrides), args.interval))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    main()
