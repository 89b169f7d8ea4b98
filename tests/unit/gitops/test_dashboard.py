"""The chart's Grafana dashboard (charts/modelloop/files/dashboard.json): every PromQL expression parses
(promtool, on a generated rules file) and names only metrics that modelloop registers: the operator's
(operator/modelloop/metrics.py) and the model server's (model-server/modelloop_server/metrics.py), with the
sample suffixes Prometheus exposes for each metric type."""
from __future__ import annotations

import json
import re
import subprocess
from types import SimpleNamespace

import yaml

from tests.fixtures.gitops import ROOT, binary

DASHBOARD = ROOT / "charts" / "modelloop" / "files" / "dashboard.json"
# Grafana's built-in interval variables, and what the user's template variables stand for in a parse.
GRAFANA_INTERVALS = ("$__rate_interval", "$__interval", "$__range")
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}


def expressions() -> dict[str, str]:
    """Every PromQL expression of the dashboard, by where it is: panel targets and variable queries."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            out[f"panel {panel['id']} ({panel['title']}) {target['refId']}"] = target["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert match, f"variable {var['name']}: only label_values(<selector>, <label>) is used, got {query}"
            out[f"variable {var['name']}"] = match.group(1)
    return out


def concrete(expr: str) -> str:
    """The expression as Prometheus would get it from Grafana: variables replaced by values."""
    for interval in GRAFANA_INTERVALS:
        expr = expr.replace(interval, "5m")
    return re.sub(r"\$\{?(\w+)\}?", "x", expr)


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers left once strings, label matchers, ranges,
    grouping label lists, function calls and keywords are taken out."""
    text = re.sub(r'"(\\.|[^"\\])*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):  # not the unit of 5m or 1e3
        following = text[m.end():].lstrip()[:1]
        if following == "(" or m.group(0).lower() in PROMQL_WORDS:
            continue
        names.add(m.group(0))
    return names


def registered_metrics() -> set[str]:
    """Sample names modelloop exposes, from the metric objects themselves."""
    import prometheus_client

    import modelloop.metrics  # noqa: F401 - registers the operator's metrics in the default registry
    from modelloop_server.metrics import ServerMetrics

    families = [f for f in prometheus_client.REGISTRY.collect() if f.name.startswith("modelloop_")]
    for classifier in (True, False):  # the prediction metric differs by task
        server = ServerMetrics()
        server.set_model(SimpleNamespace(name="m", version=1, sha256="0" * 64, classifier=classifier,
                                         runtime="onnx"), [0.5])
        families += [f for f in server.registry.collect() if f.name.startswith("modelloop_")]
    return {f.name + suffix for f in families for suffix in SUFFIXES[f.type]}


def test_dashboard_has_panels_for_serving_drift_training_and_rollouts():
    titles = " ".join(p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]).lower()
    for topic in ("requests", "errors", "latency", "drift score", "drifted features", "training runs", "rollbacks",
                  "promotions"):
        assert topic in titles, topic


def test_every_expression_parses_with_promtool(tmp_path):
    exprs = expressions()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"modelloop_dashboard:expr_{i}", "expr": concrete(e)} for i, e in enumerate(exprs.values())]}]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    proc = subprocess.run([str(binary("promtool")), "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout


def test_every_metric_the_dashboard_uses_is_registered_by_modelloop():
    known = registered_metrics()
    assert {"modelloop_server_requests_total", "modelloop_server_request_duration_seconds_bucket",
            "modelloop_server_model_info", "modelloop_drift_score", "modelloop_training_runs_total"} <= known
    used = set()
    for where, expr in expressions().items():
        names = metric_names(concrete(expr))
        assert names, f"{where}: no metric found in {expr}"
        unknown = names - known
        assert not unknown, f"{where} uses metrics modelloop does not register: {sorted(unknown)}"
        used |= names
    operator_metrics = {n for n in known if not n.startswith("modelloop_server_") and not n.endswith("_created")}
    assert operator_metrics <= used, f"operator metrics without a panel: {sorted(operator_metrics - used)}"


def test_metric_name_extraction_sees_through_promql_syntax():
    expr = ('histogram_quantile(0.99, sum by (namespace, le) (rate(a_bucket{x=~"b|c", route="d{e}"}[5m]) '
            '* on (pod) group_left (version) b_info)) / ignoring (code) c_total offset 5m > bool 1')
    assert metric_names(expr) == {"a_bucket", "b_info", "c_total"}
