"""A DriftMonitor's report for a person (pure): one self-contained HTML page, charts drawn as inline SVG (no script,
no network, opens from a file or a store), and the bounded history it is drawn from.

What the page shows, in the order a person asks:
1. the verdicts of the last check (conditions) and the decisions taken over time (events);
2. live performance over time per served version, its 95% interval, the label-free estimate and the hold-out
   value beside it;
3. the share of drifted features over time;
4. the tests of the last decided window (feature, test, score, threshold, p-value);
5. per feature, the reference distribution against the last live window (sketches: docs/contracts.md).

The monitor keeps the history (one point per decided check, `history_point`) and writes the page and the history
to the store at each decision (controllers/drift.py; where: `report_location`). `modelloop report` prints it.
"""
from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

from .reasons import DriftEvent as Event

# The history a report draws: the last MAX_POINTS decided checks within MAX_AGE_SECONDS (a check a minute: 1.4 days
# at full rate; decisions are rarer than checks once a window must fill). ~300 bytes a point: under 2 MiB.
MAX_POINTS = 2000
MAX_AGE_SECONDS = 30 * 86400
MAX_DECISIONS_SHOWN = 200
REPORT_FILE = "report.html"
HISTORY_FILE = "history.json"
HISTORY_FORMAT = "modelloop.report-history/v1"

LIVE, ESTIMATED, HOLDOUT, REFERENCE, DRIFT = "#1f6fd1", "#e8710a", "#1e8e3e", "#9aa0a6", "#c5221f"
SERIES_DASH = {"live": "", "estimated": "6 3", "holdout": "2 3"}
SERIES_COLOUR = {"live": LIVE, "estimated": ESTIMATED, "holdout": HOLDOUT}
# Numeric features are sketched over 100 reference-quantile bins; the page groups them into this many bars.
DISPLAY_BINS = 20
MAX_CATEGORIES_SHOWN = 20


def report_location(model_base_uri: str, monitor: str) -> str:
    """Where a monitor's report and history live: beside the versions of the model it watches."""
    return f"{model_base_uri.rstrip('/')}/reports/{monitor}"


# ----------------------------------------------------------------------------------------------- history

def history_point(*, millis: int, version: int, samples: int, drift: dict | None, performance: Sequence[dict],
                  decisions: Sequence[tuple[str, str, str]]) -> dict:
    """One decided check, as the history keeps it: what the charts and the decisions table need, nothing else."""
    point: dict[str, Any] = {"t": millis, "version": version, "samples": samples}
    if drift is not None:
        point["driftShare"] = round(float(drift["drift_share"]), 4)
        point["drifted"] = bool(drift["dataset_drift"])
    perf = [{k: e[k] for k in ("version", "source", "metric", "value", "low", "high", "holdout", "labelled")
             if e.get(k) is not None} for e in performance]
    if perf:
        point["performance"] = perf
    if decisions:
        point["decisions"] = [{"type": kind, "reason": reason, "message": message[:500]}
                              for kind, reason, message in decisions]
    return point


def append_history(history: Sequence[dict], point: dict) -> list[dict]:
    """The history with `point` added, bounded by MAX_POINTS and MAX_AGE_SECONDS."""
    oldest = point["t"] - MAX_AGE_SECONDS * 1000
    kept = [p for p in history if p.get("t", 0) >= oldest]
    kept.append(point)
    return kept[-MAX_POINTS:]


def decode_history(doc: Any) -> list[dict]:
    """The points of a stored history document; [] for anything else (a report is never worth failing a check)."""
    if not isinstance(doc, dict) or doc.get("format") != HISTORY_FORMAT or not isinstance(doc.get("points"), list):
        return []
    return [p for p in doc["points"] if isinstance(p, dict) and isinstance(p.get("t"), int)][-MAX_POINTS:]


def encode_history(points: Sequence[dict]) -> dict:
    return {"format": HISTORY_FORMAT, "points": list(points)}


# ----------------------------------------------------------------------------------------------- the page

def render_report(*, monitor: str, namespace: str, deployment: str, version: int, generated: datetime,
                  history: Sequence[dict], conditions: Sequence[dict], drift: dict | None,
                  reference: dict | None, live: dict | None) -> str:
    """The HTML page. `drift`: the last decided drift report (modelloop.drift.detect's dict) or None;
    `reference` and `live`: the served version's reference sketch and the last live window's merged sketch."""
    esc = html.escape
    title = f"DriftMonitor {namespace}/{monitor}"
    parts = [
        f"<h1>{esc(title)}</h1>",
        f"<p class=sub>watching ModelDeployment <b>{esc(deployment)}</b>, serving version <b>v{version}</b>; "
        f"page written {esc(_rfc3339(generated))} from {len(history)} decided checks</p>",
        "<h2>Verdicts</h2>", _conditions_table(conditions),
        "<h2>Performance over time</h2>", _performance_charts(history),
        "<h2>Drifted share of features over time</h2>", _drift_chart(history),
        "<h2>Decisions and events</h2>", _decisions_table(history),
        "<h2>Tests of the last decided window</h2>", _tests_table(drift),
        "<h2>Reference against the last live window</h2>", _histograms(reference, live, drift),
    ]
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#202124;max-width:1100px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dadce0}
.sub{color:#5f6368;margin:0}table{border-collapse:collapse;margin:4px 0}
td,th{border:1px solid #dadce0;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f1f3f4}
td:first-child{white-space:nowrap}
.bad{color:#c5221f;font-weight:600}.ok{color:#1e8e3e}.none{color:#5f6368;font-style:italic}
.grid{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #dadce0;padding:6px}
.legend span{margin-right:14px}.sw{display:inline-block;width:18px;height:3px;vertical-align:middle;margin-right:4px}
svg text{font:11px system-ui,sans-serif;fill:#3c4043}
"""


def _conditions_table(conditions: Sequence[dict]) -> str:
    if not conditions:
        return "<p class=none>no check has completed yet</p>"
    rows = []
    for c in conditions:
        bad = (c.get("type") == "Ready") != (c.get("status") == "True")
        rows.append(f"<tr><td>{html.escape(str(c.get('type')))}</td><td class={'bad' if bad else 'ok'}>"
                    f"{html.escape(str(c.get('status')))}</td><td>{html.escape(str(c.get('reason')))}</td>"
                    f"<td>{html.escape(str(c.get('message', '')))}</td></tr>")
    return "<table><tr><th>condition</th><th>status</th><th>reason</th><th>message</th></tr>" + "".join(rows) + "</table>"


def _decisions_table(history: Sequence[dict]) -> str:
    rows = [(p["t"], d) for p in history for d in p.get("decisions", [])][-MAX_DECISIONS_SHOWN:]
    if not rows:
        return "<p class=none>no decision yet: no drift, no drop, no retrain</p>"
    body = "".join(f"<tr><td>{_rfc3339(_time(t))}</td><td class={'bad' if d.get('type') == 'Warning' else 'ok'}>"
                   f"{html.escape(str(d.get('reason')))}</td><td>{html.escape(str(d.get('message')))}</td></tr>"
                   for t, d in reversed(rows))
    return "<table><tr><th>time</th><th>decision</th><th>why</th></tr>" + body + "</table>"


def _tests_table(drift: dict | None) -> str:
    if not drift or not drift.get("features"):
        return "<p class=none>no window has been decided yet</p>"
    rows = []
    for f in drift["features"]:
        def num(v: Any) -> str:
            return "-" if v is None else f"{v:.4g}"
        rows.append(f"<tr><td>{html.escape(f['name'])}</td><td>{html.escape(str(f.get('test')))}</td>"
                    f"<td>{num(f.get('score'))}</td><td>{num(f.get('threshold'))}</td><td>{num(f.get('p_value'))}</td>"
                    f"<td class={'bad' if f.get('drifted') else 'ok'}>{'drifted' if f.get('drifted') else 'no'}</td></tr>")
    share = drift.get("drift_share")
    head = (f"<p>{'<b class=bad>dataset drift</b>' if drift.get('dataset_drift') else 'no dataset drift'}: "
            f"{'-' if share is None else f'{share:.0%}'} of the features drifted</p>")
    return (head + "<table><tr><th>feature</th><th>test</th><th>score</th><th>threshold</th><th>p-value</th>"
            "<th>drifted</th></tr>" + "".join(rows) + "</table>")


# ----------------------------------------------------------------------------------------------- charts

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 760, 240, 56, 16, 14, 30


def _performance_charts(history: Sequence[dict]) -> str:
    """One chart per metric: per version a live line with its interval band, the estimate, the hold-out."""
    by_metric: dict[str, dict[tuple[int, str], list[tuple[int, dict]]]] = {}
    for p in history:
        for e in p.get("performance", []):
            by_metric.setdefault(e["metric"], {}).setdefault((e["version"], e["source"]), []).append((p["t"], e))
    if not by_metric:
        return "<p class=none>no performance yet: the deployment has no spec.feedback, or no label or estimate arrived</p>"
    charts = []
    for metric, series in sorted(by_metric.items()):
        lines, bands, values = [], [], []
        for (version, source), points in sorted(series.items()):
            line = [(t, e["value"]) for t, e in points if e.get("value") is not None]
            values += [v for _, v in line]
            if line:
                lines.append((f"v{version} {source}", SERIES_COLOUR[source], SERIES_DASH[source], line))
            band = [(t, e["low"], e["high"]) for t, e in points if e.get("low") is not None]
            values += [x for _, lo, hi in band for x in (lo, hi)]
            if band and source == "live":
                bands.append((LIVE, band))
            holdout = [(t, e["holdout"]) for t, e in points if e.get("holdout") is not None]
            if holdout and source == "live":
                values += [v for _, v in holdout]
                lines.append((f"v{version} hold-out", HOLDOUT, SERIES_DASH["holdout"], holdout))
        if values:
            charts.append(f"<h3>{html.escape(metric)}</h3>" + _time_chart(lines, bands, values, _markers(history)))
    return "".join(charts) or "<p class=none>no performance value yet</p>"


def _drift_chart(history: Sequence[dict]) -> str:
    line = [(p["t"], p["driftShare"]) for p in history if "driftShare" in p]
    if not line:
        return "<p class=none>no input window decided yet</p>"
    return _time_chart([("drifted share", DRIFT, "", line)], [], [0.0, 1.0], _markers(history))


MARKER_LABEL = {Event.RETRAIN_REQUESTED: "retrain", Event.REFERENCE_CHANGED: "new version"}


def _series_name(name: str) -> str:
    """'v2 live' -> 'live': the legend names kinds of line."""
    return name.split(" ", 1)[1] if name.startswith("v") and " " in name else name


def _markers(history: Sequence[dict]) -> list[tuple[int, str]]:
    """Vertical marks where a retrain was requested and where a new version started serving."""
    return [(p["t"], d["reason"]) for p in history for d in p.get("decisions", [])
            if d.get("reason") in (Event.RETRAIN_REQUESTED, Event.REFERENCE_CHANGED)]


def _time_chart(lines: list[tuple[str, str, str, list[tuple[int, float]]]], bands: list[tuple[str, list]],
                values: Iterable[float], markers: list[tuple[int, str]]) -> str:
    times = [t for *_, line in lines for t, _ in line] + [t for _, band in bands for t, *_ in band]
    t0, t1 = min(times), max(times)
    if t1 == t0:
        t0, t1 = t0 - 60_000, t1 + 60_000
    lo, hi = _padded(values)
    x = lambda t: PAD_L + (t - t0) / (t1 - t0) * (W - PAD_L - PAD_R)  # noqa: E731
    y = lambda v: PAD_T + (hi - v) / (hi - lo) * (H - PAD_T - PAD_B)  # noqa: E731
    svg = [_axes(lo, hi, y, [(x(t), _clock(t, t1 - t0)) for t in _ticks(t0, t1)])]
    for colour, band in bands:
        upper = " ".join(f"{x(t):.1f},{y(h):.1f}" for t, _, h in band)
        lower = " ".join(f"{x(t):.1f},{y(lo_):.1f}" for t, lo_, _ in reversed(band))
        svg.append(f'<polygon points="{upper} {lower}" fill="{colour}" fill-opacity="0.15" stroke="none"/>')
    for t, reason in markers:
        if t0 <= t <= t1:
            svg.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{PAD_T}" y2="{H - PAD_B}" stroke="#5f6368" '
                       f'stroke-dasharray="1 3"><title>{html.escape(reason)} at {_rfc3339(_time(t))}</title></line>'
                       f'<text x="{x(t) + 3:.1f}" y="{PAD_T + 10}">{MARKER_LABEL.get(reason, "")}</text>')
    for name, colour, dash, line in lines:
        points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in line)
        svg.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2.5"'
                   f'{f" stroke-dasharray={chr(34)}{dash}{chr(34)}" if dash else ""}><title>{html.escape(name)}</title>'
                   f'</polyline>')
        if name.endswith(" live"):  # the version, where its line starts
            svg.append(f'<text x="{x(line[0][0]) + 3:.1f}" y="{y(line[0][1]) - 6:.1f}" fill="{colour}">'
                       f'{html.escape(name.split()[0])}</text>')
        if len(line) == 1:  # a single point draws no line
            svg.append(f'<circle cx="{x(line[0][0]):.1f}" cy="{y(line[0][1]):.1f}" r="3.5" fill="{colour}"/>')
    named = {_series_name(n): c for n, c, _, _ in lines}  # one entry per kind of line; versions are labelled on it
    legend = "".join(f'<span><i class=sw style="background:{c}"></i>{html.escape(n)}</span>' for n, c in named.items())
    return (f'<div class=card><svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img">{"".join(svg)}</svg>'
            f'<div class=legend>{legend}</div></div>')


def _axes(lo: float, hi: float, y: Any, xticks: list[tuple[float, str]]) -> str:
    out = [f'<rect x="{PAD_L}" y="{PAD_T}" width="{W - PAD_L - PAD_R}" height="{H - PAD_T - PAD_B}" fill="none" '
           f'stroke="#dadce0"/>']
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        out.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#f1f3f4"/>'
                   f'<text x="{PAD_L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    for i, (px, label) in enumerate(xticks):  # the end labels inside the chart, not cut by its edge
        anchor = "start" if i == 0 else "end" if i == len(xticks) - 1 else "middle"
        out.append(f'<text x="{px:.1f}" y="{H - PAD_B + 16}" text-anchor="{anchor}">{html.escape(label)}</text>')
    return "".join(out)


def _padded(values: Iterable[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    span = hi - lo or max(abs(hi), 1.0) * 0.1
    return lo - span * 0.08, hi + span * 0.08


def _ticks(t0: int, t1: int, count: int = 6) -> list[int]:
    return [round(t0 + (t1 - t0) * i / (count - 1)) for i in range(count)]


def _clock(t: int, span_ms: int) -> str:
    moment = _time(t)
    return moment.strftime("%H:%M:%S" if span_ms < 3_600_000 else "%H:%M" if span_ms < 86_400_000 else "%m-%d %H:%M")


# ----------------------------------------------------------------------------------------------- histograms

HW, HH, HPAD = 360, 170, 24


def _histograms(reference: dict | None, live: dict | None, drift: dict | None) -> str:
    if not reference or not reference.get("features"):
        return "<p class=none>the served version has no reference sketch</p>"
    live_by_name = {f["name"]: f for f in (live or {}).get("features", [])}
    drifted = {f["name"]: f for f in (drift or {}).get("features", [])}
    cards = []
    for ref in reference["features"]:
        cur = live_by_name.get(ref["name"])
        test = drifted.get(ref["name"])
        caption = html.escape(ref["name"])
        if test is not None:
            caption += (f" &middot; {html.escape(str(test.get('test')))} {test.get('score') or 0:.3g}"
                        f"{' <b class=bad>drifted</b>' if test.get('drifted') else ''}")
        chart = _numeric_bars(ref, cur) if ref.get("kind") == "numeric" else _category_bars(ref, cur)
        cards.append(f"<div class=card><div>{caption}</div>{chart}</div>")
    legend = (f'<div class=legend><span><i class=sw style="background:{REFERENCE}"></i>reference (training)</span>'
              f'<span><i class=sw style="background:{LIVE}"></i>last live window'
              f'{"" if live else " (none decided yet)"}</span></div>')
    return legend + "<div class=grid>" + "".join(cards) + "</div>"


def _shares(counts: Sequence[float]) -> list[float]:
    total = float(sum(counts))
    return [c / total if total else 0.0 for c in counts]


def _numeric_bars(ref: dict, cur: dict | None) -> str:
    """Densities over the value axis: the reference's quantile bins grouped into DISPLAY_BINS bars; the two
    open-ended bins are drawn one group wide."""
    edges = [float(e) for e in ref.get("edges", [])]
    if len(edges) < 2:
        return _category_bars({"categories": [f"< {edges[0]:.3g}", f">= {edges[0]:.3g}"] if edges else ["all"],
                               "counts": ref["counts"]}, cur and {"counts": cur["counts"]})
    step = max(1, math.ceil((len(edges) + 1) / DISPLAY_BINS))
    groups = list(range(0, len(edges) + 1, step))
    width = (edges[-1] - edges[0]) / max(1, len(groups) - 1)
    bounds = [edges[0] - width] + edges + [edges[-1] + width]  # bin i spans bounds[i]..bounds[i+1]
    spans = [(bounds[g], bounds[min(g + step, len(bounds) - 1)]) for g in groups]
    def grouped(counts: Sequence[float]) -> list[float]:
        shares = _shares(counts)
        return [sum(shares[g:g + step]) / max(hi - lo, 1e-12) for g, (lo, hi) in zip(groups, spans)]
    series = [(REFERENCE, grouped(ref["counts"]))]
    if cur is not None and len(cur.get("counts", [])) == len(ref["counts"]):
        series.append((LIVE, grouped(cur["counts"])))
    top = max(max(s) for _, s in series) or 1.0
    x = lambda v: HPAD + (v - spans[0][0]) / (spans[-1][1] - spans[0][0]) * (HW - 2 * HPAD)  # noqa: E731
    out = []
    for k, (colour, dens) in enumerate(series):
        for (lo, hi), d in zip(spans, dens):
            h = d / top * (HH - 2 * HPAD)
            left, right = x(lo), x(hi)
            if k:  # the live window: an outlined bar over the filled reference
                out.append(f'<rect x="{left + 1:.1f}" y="{HH - HPAD - h:.1f}" width="{max(right - left - 2, 1):.1f}" '
                           f'height="{h:.1f}" fill="{colour}" fill-opacity="0.35" stroke="{colour}" stroke-width="1.5"/>')
            else:
                out.append(f'<rect x="{left:.1f}" y="{HH - HPAD - h:.1f}" width="{max(right - left, 1):.1f}" '
                           f'height="{h:.1f}" fill="{colour}"/>')
    out.append(f'<line x1="{HPAD}" x2="{HW - HPAD}" y1="{HH - HPAD}" y2="{HH - HPAD}" stroke="#5f6368"/>')
    for v in (edges[0], (edges[0] + edges[-1]) / 2, edges[-1]):
        out.append(f'<text x="{x(v):.1f}" y="{HH - HPAD + 14}" text-anchor="middle">{v:.3g}</text>')
    return f'<svg width="{HW}" height="{HH}" viewBox="0 0 {HW} {HH}" role="img">{"".join(out)}</svg>'


def _category_bars(ref: dict, cur: dict | None) -> str:
    names = [str(c) for c in ref.get("categories", [])] + ["other"]
    ref_shares = _shares(ref["counts"])
    cur_shares = _shares(cur["counts"]) if cur is not None and len(cur.get("counts", [])) == len(names) else None
    order = sorted(range(len(names)), key=lambda i: -ref_shares[i])[:MAX_CATEGORIES_SHOWN]
    top = max([ref_shares[i] for i in order] + ([cur_shares[i] for i in order] if cur_shares else [])) or 1.0
    slot = (HW - 2 * HPAD) / max(1, len(order))
    out = []
    for j, i in enumerate(order):
        left = HPAD + j * slot
        for k, (colour, shares) in enumerate([(REFERENCE, ref_shares)] + ([(LIVE, cur_shares)] if cur_shares else [])):
            h = shares[i] / top * (HH - 2 * HPAD)
            out.append(f'<rect x="{left + 2 + k * (slot - 4) / 2:.1f}" y="{HH - HPAD - h:.1f}" '
                       f'width="{max((slot - 4) / 2, 1):.1f}" height="{h:.1f}" fill="{colour}">'
                       f'<title>{html.escape(names[i])}: {shares[i]:.1%}</title></rect>')
        out.append(f'<text x="{left + slot / 2:.1f}" y="{HH - HPAD + 14}" text-anchor="middle">'
                   f'{html.escape(names[i][:10])}</text>')
    out.append(f'<line x1="{HPAD}" x2="{HW - HPAD}" y1="{HH - HPAD}" y2="{HH - HPAD}" stroke="#5f6368"/>')
    return f'<svg width="{HW}" height="{HH}" viewBox="0 0 {HW} {HH}" role="img">{"".join(out)}</svg>'


# ----------------------------------------------------------------------------------------------- time

def _time(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, timezone.utc)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
