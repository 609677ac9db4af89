"""
The Grafana dashboard (dashboards/grafana/): it queries only what the library
exports, its queries parse (promtool), and they show an outage when a real
Prometheus scrapes a loopback app through one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prom_support import (
    DASHBOARD,
    PROMETHEUS,
    PROMTOOL,
    concrete,
    dashboard_targets,
    query_range,
    selectors,
    with_outage,
)

from resilient_client._metrics import PROMETHEUS_METRICS

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "resilient_client_"

#: Metrics the library exports that no panel shows, each with why: a new
#: metric gets a panel (one `Panel(...)` line in dashboards/grafana/build.py)
#: or one line here.
NOT_ON_THE_DASHBOARD: dict[str, str] = {}


#: The labels Prometheus adds to every series it scrapes.
TARGET_LABELS = ("job", "instance")


def exported() -> dict[str, set[str]]:
    """Every series name the Prometheus listener exports -> its labels (as scraped)."""
    out: dict[str, set[str]] = {}
    for name, (kind, labels_, _) in PROMETHEUS_METRICS.items():
        labels = (*labels_, *TARGET_LABELS)
        full = PREFIX + name
        if kind == "histogram":
            out[full + "_bucket"] = {*labels, "le"}
            out[full + "_sum"] = out[full + "_count"] = set(labels)
        else:
            out[full] = set(labels)
    return out


def family(series: str) -> str:
    """The PROMETHEUS_METRICS key of a series name."""
    name = series[len(PREFIX):]
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in PROMETHEUS_METRICS:
            return name[: -len(suffix)]
    return name


TARGETS = dashboard_targets()


def _build_module() -> Any:
    path = ROOT / "dashboards" / "grafana" / "build.py"
    spec = importlib.util.spec_from_file_location("grafana_build", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class TestDashboardFile:
    def test_the_json_is_the_build_scripts_output(self):
        """resilient_client.json is what build.py writes: nobody edited one without the other."""
        assert DASHBOARD.read_text(encoding="utf-8") == _build_module().render()

    def test_it_provisions_as_is(self):
        """A data source variable, no fixed data source uid, and a provisioning file pointing at a folder."""
        board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
        assert board["uid"] == "resilient-client"
        names = [v["name"] for v in board["templating"]["list"]]
        assert names == ["datasource", "job", "endpoint"]
        for panel in board["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        provisioning = yaml.safe_load((DASHBOARD.parent / "provisioning.yaml").read_text(encoding="utf-8"))
        [provider] = provisioning["providers"]
        assert provider["type"] == "file" and provider["options"]["path"]

    def test_panels_do_not_overlap(self):
        """Each panel has its own place on the 24-column grid."""
        board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
        cells = set()
        for p in board["panels"]:
            g = p["gridPos"]
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & mine, p["title"]
            assert g["x"] + g["w"] <= 24
            cells |= mine


class TestQueriesAgainstTheLibrary:
    @pytest.mark.parametrize(("title", "expr"), [(t, e) for t, e, _ in TARGETS])
    def test_every_metric_and_label_queried_is_exported(self, title, expr):
        """Names and labels of each query are the Prometheus listener's (histogram suffixes, le included)."""
        known = exported()
        metrics, grouping = selectors(expr)
        assert metrics, f"{title}: no metric found in {expr}"
        for name, labels in metrics:
            assert name in known, f"{title}: {name} is not exported by prometheus_listener()"
            assert labels <= known[name], f"{title}: {name} has no label {labels - known[name]}"
            assert grouping <= known[name], f"{title}: {name} has no label {grouping - known[name]}"

    def test_every_exported_metric_has_a_panel(self):
        """A metric the library exports is on the dashboard, or NOT_ON_THE_DASHBOARD says why not."""
        shown = {family(name) for _, expr, _ in TARGETS for name, _ in selectors(expr)[0]}
        missing = set(PROMETHEUS_METRICS) - shown - set(NOT_ON_THE_DASHBOARD)
        assert not missing, f"no panel shows {sorted(missing)}: add one in dashboards/grafana/build.py"

    def test_the_drift_check_can_fail(self):
        """A misspelt metric or label, or a grouping label the metric lacks, is caught."""
        known = exported()
        [(name, _)], _ = selectors('rate(resilient_client_request_total{endpoint=~"$endpoint"}[1m])')
        assert name not in known
        [(name, labels)], grouping = selectors(
            'sum by (endpoint, status) (rate(resilient_client_requests_total{outcom="ok"}[1m]))')
        assert not labels <= known[name] and not grouping <= known[name]


# Skipped where Debian's prometheus package is missing, except in CI (.ci/run installs it).
IN_CI = bool(os.environ.get("CI"))


@pytest.mark.skipif(PROMTOOL is None and not IN_CI, reason="promtool (Debian's prometheus) is not installed")
class TestPromtool:
    def test_every_query_parses(self, tmp_path):
        """promtool checks every query as a recording rule, Grafana's variables filled in."""
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:query_{i}", "expr": concrete(expr)}
            for i, (_, expr, _) in enumerate(TARGETS)
        ]}]}
        path = tmp_path / "rules.yml"
        path.write_text(yaml.safe_dump(rules), encoding="utf-8")
        assert PROMTOOL is not None, "promtool is not installed"
        out = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"SUCCESS: {len(TARGETS)} rules found" in out.stdout


    def _evaluate(self, tmp_path, title: str, series: list[dict[str, str]],
                  expected: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
        """promtool's rule unit test: the panel's first query over *series*, at 1 minute."""
        [expr] = [e for t, e, _ in TARGETS if t == title][:1]
        (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [
            {"record": "panel", "expr": concrete(expr)}]}]}), encoding="utf-8")
        (tmp_path / "test.yml").write_text(yaml.safe_dump({
            "rule_files": ["rules.yml"], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series,
                       "promql_expr_test": [{"expr": "panel", "eval_time": "1m",
                                             "exp_samples": expected}]}]}), encoding="utf-8")
        assert PROMTOOL is not None
        return subprocess.run([PROMTOOL, "test", "rules", "test.yml"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)

    def test_breaker_state_is_the_worst_among_replicas(self, tmp_path):
        """One replica open, another half-open: the panel says open (2), not 3."""
        def gauge(instance: str, state: str, value: int) -> dict[str, str]:
            return {"series": f'{PREFIX}breaker_state{{job="app", instance="{instance}", '
                              f'endpoint="inv", state="{state}"}}', "values": f"{value}x2"}
        series = [gauge("a", "open", 1), gauge("a", "half-open", 0), gauge("a", "closed", 0),
                  gauge("b", "open", 0), gauge("b", "half-open", 1), gauge("b", "closed", 0)]
        out = self._evaluate(tmp_path, "Breaker state", series,
                             [{"labels": 'panel{endpoint="inv"}', "value": 2}])
        assert out.returncode == 0, out.stdout + out.stderr

    def test_call_latency_leaves_out_calls_refused_without_the_network(self, tmp_path):
        """Fast refusals (circuit_open) do not pull the call latency down: p50 of the tried calls only."""
        def bucket(outcome: str, le: str, values: str) -> dict[str, str]:
            return {"series": f'{PREFIX}request_duration_seconds_bucket{{job="app", instance="a", '
                              f'endpoint="inv", method="GET", outcome="{outcome}", le="{le}"}}',
                    "values": values}
        series = [bucket("ok", "0.001", "0 0"), bucket("ok", "1", "0 10"), bucket("ok", "+Inf", "0 10"),
                  bucket("circuit_open", "0.001", "0 100"), bucket("circuit_open", "1", "0 100"),
                  bucket("circuit_open", "+Inf", "0 100")]
        out = self._evaluate(tmp_path, "Call latency percentiles", series,
                             [{"labels": 'panel{endpoint="inv"}', "value": 0.5005}])
        assert out.returncode == 0, out.stdout + out.stderr


def _values(result: list[dict[str, Any]]) -> list[float]:
    return [float(v) for series in result for _, v in series["values"] if v not in ("NaN", "+Inf", "-Inf")]


@pytest.mark.skipif(PROMETHEUS is None and not IN_CI, reason="Debian's prometheus package is not installed")
class TestRealPrometheus:
    def test_every_panel_shows_the_outage(self):
        """
        A real Prometheus scrapes a loopback app every 0.5 s while its peer
        answers 503 for 2 s: every query runs, and the panels show the
        breaker opening, fallbacks served and calls by outcome.
        """
        phases = [(0.0, "healthy"), (1.0, "503"), (3.0, "healthy")]
        with with_outage(phases, 4.0, workers=2, reset_timeout=0.5, scrape=0.5) as (base, t0, t1):
            results = {(title, expr): query_range(base, concrete(expr, "2s"), t0, t1, 0.5)
                       for title, expr, _ in TARGETS}
        by_title: dict[str, list[dict[str, Any]]] = {}
        for (title, _), result in results.items():
            by_title.setdefault(title, []).extend(result)
        outcomes = {s["metric"].get("outcome") for s in by_title["Calls per second by outcome"]}
        assert {"ok", "status"} <= outcomes, outcomes
        assert 2.0 in _values(by_title["Breaker state"])  # open
        assert max(_values(by_title["Fallbacks served"])) > 0
        assert max(_values(by_title["Call latency percentiles"])) > 0
        reasons = {s["metric"].get("reason") for s in by_title["Retries by reason"]}
        assert "status 503" in reasons, reasons
        empty = [title for title, result in by_title.items() if not result]
        assert len(empty) <= 3, f"panels with no data: {empty}"


def test_prometheus_helpers_are_importable_without_matplotlib():
    """The test helpers and the dashboard build need no matplotlib (CI has none)."""
    code = ("import sys; sys.modules['matplotlib'] = None; sys.path.insert(0, 'tests'); "
            "import prom_support, runpy; runpy.run_path('dashboards/grafana/build.py', run_name='x')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
