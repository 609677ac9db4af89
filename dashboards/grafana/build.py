"""
Build resilient_client.json, the Grafana dashboard over the library's
Prometheus metrics, from the panel list below.

    python dashboards/grafana/build.py          # rewrite resilient_client.json
    python dashboards/grafana/build.py --check  # exit 1 if the JSON is stale

A panel is one `Panel(...)` line in `PANELS`: add it, run this script, and
commit both files. tests/test_dashboard.py checks that the JSON is this
script's output, that every metric and label a query names is one the
library exports, and (with promtool installed) that every query parses; with
Prometheus installed, it runs every query against a real one scraping a
loopback outage.

Queries use three Grafana variables: ``$job`` and ``$endpoint`` (multi-value
regexes over the ``job`` label Prometheus adds and the library's ``endpoint``
label) and ``$__rate_interval``; ``${datasource}`` picks the Prometheus data
source, so the file provisions as is. Every query sums over the replicas
(``instance``) of the jobs picked: a panel shows an endpoint as the fleet
sees it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "resilient_client.json"

#: The selector every query applies: the jobs and endpoints picked at the top of the dashboard.
E = 'job=~"$job", endpoint=~"$endpoint"'
RATE = "$__rate_interval"
#: The three values of hedges_total's `result` label.
SENT, WON, SKIPPED = 'result="sent"', 'result="won"', 'result="skipped"'


def rate(metric: str, matchers: str = "", by: str = "endpoint") -> str:
    """``sum by (by) (rate(metric{endpoint=~...,matchers}[$__rate_interval]))``."""
    sel = ", ".join(x for x in (E, matchers) if x)
    return f"sum by ({by}) (rate({metric}{{{sel}}}[{RATE}]))"


def quantile(q: float, metric: str, matchers: str = "") -> str:
    sel = ", ".join(x for x in (E, matchers) if x)
    return f"histogram_quantile({q}, sum by (endpoint, le) (rate({metric}_bucket{{{sel}}}[{RATE}])))"


def right_axis(ref: str, unit: str) -> dict[str, object]:
    """A field override: query *ref* drawn against a right-hand axis in *unit*."""
    return {"matcher": {"id": "byFrameRefID", "options": ref},
            "properties": [{"id": "unit", "value": unit},
                           {"id": "custom.axisPlacement", "value": "right"}]}


@dataclass(frozen=True)
class Panel:
    """One panel: a title, what it shows, its queries (legend per query) and how to draw it."""

    title: str
    description: str
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    extra: dict[str, object] = field(default_factory=dict)
    overrides: tuple[dict[str, object], ...] = ()


P = "resilient_client_"

#: Calls that reached for the peer: not refused by a breaker or a bulkhead.
NOT_REFUSED = 'outcome!~"circuit_open|bulkhead_full"'

#: The dashboard, top to bottom, two panels a row (width 12 of 24).
PANELS: list[Panel] = [
    Panel("Calls per second by outcome",
          "Calls the application made, by what happened (fallbacks included): ok, status "
          "(a failure_status), connect_error, read_timeout, circuit_open, bulkhead_full...",
          ((rate(P + "requests_total", by="endpoint, outcome"), "{{endpoint}} {{outcome}}"),),
          unit="reqps"),
    Panel("Attempts per call",
          "Attempts per call made: 1 when nothing is retried; the retry budget keeps it "
          "near 1 + ratio under a full outage. A call refused by an open breaker or a "
          "full bulkhead counts as a call with no attempt, so it drops below 1 while "
          "calls are refused. (An attempt is one try: its redirect hops are not counted.)",
          ((f"{rate(P + 'attempts_total')} / {rate(P + 'requests_total')}", "{{endpoint}}"),)),
    Panel("Breaker state",
          "0 closed, 1 half-open (a trial call), 2 open: from the breaker_state gauge. Each "
          "replica has its own breaker (unless they share a store): this is the worst state "
          "among the replicas picked.",
          ((f'max by (endpoint) (({P}breaker_state{{{E}, state="open"}} * 2) '
            f'or {P}breaker_state{{{E}, state="half-open"}})', "{{endpoint}}"),),
          kind="state-timeline",
          extra={"mappings": [{"type": "value", "options": {
              "0": {"text": "closed", "color": "green"},
              "1": {"text": "half-open", "color": "yellow"},
              "2": {"text": "open", "color": "red"}}}]}),
    Panel("Breaker transitions",
          "Breaker state changes, by the state entered (each state's series starts at 0 "
          "at an endpoint's first change, so the first change is counted).",
          ((f"sum by (endpoint, state) (increase({P}breaker_transitions_total{{{E}}}[{RATE}]))",
            "{{endpoint}} {{state}}"),)),
    Panel("Retry budget use",
          "Retries per call made, left axis (the budget allows `ratio` of first tries, plus "
          "min_per_second), and calls per second whose retry the spent budget refused, right "
          "axis (a reason's series appears with its first call: that first one is not counted).",
          ((f"{rate(P + 'retries_total')} / {rate(P + 'requests_total')}", "{{endpoint}} retries per call"),
           (rate(P + "gave_up_total", 'reason="budget"'), "{{endpoint}} refused by the budget /s")),
          overrides=(right_axis("B", "reqps"),)),
    Panel("Retries by reason",
          "Retries scheduled, by the failure that caused them.",
          ((rate(P + "retries_total", by="endpoint, reason"), "{{endpoint}} {{reason}}"),),
          unit="reqps"),
    Panel("Rejected without touching the network",
          "Calls refused by a full bulkhead, an open breaker, the throttle, a Retry-After hold "
          "or the adaptive concurrency limit, and the scope of the state that refused: process, "
          "host (state: host, shared by every worker on the host) or redis.",
          ((rate(P + "rejections_total", by="endpoint, by, scope"), "{{endpoint}} by {{by}} ({{scope}})"),),
          unit="reqps"),
    Panel("Fallbacks served",
          "Responses made by a fallback (static, stale, callable) per second, left axis, and "
          "their share of the calls, right axis (0-100%).",
          ((rate(P + "fallbacks_total", by="endpoint, fallback"), "{{endpoint}} {{fallback}} /s"),
           (f"{rate(P + 'fallbacks_total')} / {rate(P + 'requests_total')}", "{{endpoint}} share")),
          unit="reqps", overrides=(right_axis("B", "percentunit"),)),
    Panel("Call latency percentiles",
          "Whole calls that tried the peer: every attempt and backoff sleep (p50, p95, p99). "
          "Calls refused without touching the network (circuit_open, bulkhead_full) take "
          "microseconds and are left out, so an outage does not look fast.",
          tuple((quantile(q, P + "request_duration_seconds", NOT_REFUSED),
                 f"{{{{endpoint}}}} p{round(q * 100)}") for q in (0.5, 0.95, 0.99)),
          unit="s"),
    Panel("Attempt latency percentiles",
          "Single attempts: against the call's, how much of the time the client adds (retries, backoff).",
          tuple((quantile(q, P + "attempt_duration_seconds"), f"{{{{endpoint}}}} p{round(q * 100)}")
                for q in (0.5, 0.99)),
          unit="s"),
    Panel("Gave up, by reason",
          "Calls that failed with no retry left: attempts, budget, deadline, breaker_open...",
          ((rate(P + "gave_up_total", by="endpoint, reason"), "{{endpoint}} {{reason}}"),),
          unit="reqps"),
    Panel("Hedges",
          "Hedged copies sent per call made, and the share of hedges whose answer was taken "
          "(won): hedges that rarely win cost the peer load for little (see the tail latency docs); "
          "skipped: hedges not sent for want of a hedging thread, budget or bulkhead slot.",
          ((f"{rate(P + 'hedges_total', SENT)} / {rate(P + 'requests_total')}",
            "{{endpoint}} hedges per call"),
           (f"{rate(P + 'hedges_total', WON)} / {rate(P + 'hedges_total', SENT)}",
            "{{endpoint}} won share"),
           (f"{rate(P + 'hedges_total', SKIPPED)} / {rate(P + 'requests_total')}",
            "{{endpoint}} skipped per call"))),
    Panel("Attempts per second by outcome",
          "What the peer saw from this client: every attempt, by outcome.",
          ((rate(P + "attempts_total", by="endpoint, outcome"), "{{endpoint}} {{outcome}}"),),
          unit="reqps"),
    Panel("Overload control",
          "The adaptive concurrency limit (concurrency), and the throttle's refusal "
          "probability when it last refused a call (throttle).",
          ((f"max by (endpoint) ({P}concurrency_limit{{{E}}})", "{{endpoint}} concurrency limit"),
           (f"max by (endpoint) ({P}throttle_reject_rate{{{E}}})", "{{endpoint}} throttle refusing"))),
]


def panel_json(panel: Panel, pid: int, x: int, y: int) -> dict[str, object]:
    defaults: dict[str, object] = {"unit": panel.unit}
    defaults.update(panel.extra)
    return {
        "id": pid,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": list(panel.overrides)},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
             "datasource": {"type": "prometheus", "uid": "${datasource}"}}
            for i, (expr, legend) in enumerate(panel.targets)
        ],
    }


def dashboard() -> dict[str, object]:
    panels, x, y = [], 0, 0
    for i, panel in enumerate(PANELS, start=1):
        if x + panel.width > 24:
            x, y = 0, y + 8
        panels.append(panel_json(panel, i, x, y))
        x += panel.width
    return {
        "uid": "resilient-client",
        "title": "resilient_client",
        "description": "Calls, attempts, breakers, retry budget, fallbacks and latency of "
                       "resilient_client sessions, per endpoint (its Prometheus metrics).",
        "tags": ["resilient_client", "http-client"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "graphTooltip": 1,
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "options": []},
            {"name": "job", "label": "job", "type": "query",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": f"label_values({P}requests_total, job)", "refId": "jobs"},
             "definition": f"label_values({P}requests_total, job)",
             "multi": True, "includeAll": True, "allValue": ".*", "current": {}, "hide": 0,
             "refresh": 2, "sort": 1, "options": []},
            {"name": "endpoint", "label": "endpoint", "type": "query",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": f'label_values({P}requests_total{{job=~"$job"}}, endpoint)',
                       "refId": "endpoints"},
             "definition": f'label_values({P}requests_total{{job=~"$job"}}, endpoint)',
             "multi": True, "includeAll": True, "allValue": ".*", "current": {}, "hide": 0,
             "refresh": 2, "sort": 1, "options": []},
        ]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        stale = not OUT.exists() or OUT.read_text(encoding="utf-8") != text
        print(f"{OUT.name} is {'stale: run python dashboards/grafana/build.py' if stale else 'up to date'}")
        return 1 if stale else 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(PANELS)} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
