"""
Helpers for the dashboard's tests and its docs picture: the Grafana
dashboard's queries, a real Prometheus (Debian's ``prometheus``) scraping a
loopback app, and an outage played on a loopback peer.

This is a helper module, not a test file. Every process and thread it starts
is bounded (a Prometheus is terminated on leaving its context, a peer stops
itself after its lifetime, the workers stop at the end of the run).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from peers import Peer, Request, answer, delay, free_port, hang

import resilient_client as rc

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "dashboards" / "grafana" / "resilient_client.json"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(panel title, PromQL as written, legend) of every query of the dashboard."""
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [(p["title"], t["expr"], t.get("legendFormat", ""))
            for p in board["panels"] for t in p["targets"]]


def concrete(expr: str, rate_interval: str = "1m") -> str:
    """*expr* with Grafana's variables as Grafana would fill them in (every job and endpoint)."""
    return (expr.replace("$__rate_interval", rate_interval).replace("$endpoint", ".*")
            .replace("$job", ".*"))


@contextlib.contextmanager
def prometheus(targets: list[str], scrape: float = 0.5) -> Iterator[str]:
    """A Prometheus on a free loopback port scraping *targets* (host:port); yields its base URL."""
    assert PROMETHEUS is not None, "Debian's prometheus package is not installed"
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="rc-prom-") as tmp:
        config = Path(tmp) / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": f"{int(scrape * 1000)}ms",
                       "scrape_timeout": f"{int(scrape * 1000)}ms"},
            "scrape_configs": [{"job_name": "app", "static_configs": [{"targets": targets}]}],
        }), encoding="utf-8")
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 15.0
            while True:
                with contextlib.suppress(OSError), \
                        urllib.request.urlopen(base + "/-/ready", timeout=1.0) as r:
                    if r.status == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise RuntimeError(f"prometheus did not become ready: {err[-2000:]}")
                time.sleep(0.1)
            # Prometheus applies discovered targets at most every 5 s: the
            # first scrape comes that long after start. Wait for it, so that
            # whatever runs next is scraped from its first second.
            while not _query(base, "up"):
                if time.monotonic() > deadline:
                    raise RuntimeError("prometheus scraped nothing within 15 s")
                time.sleep(0.1)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            if proc.stderr:
                proc.stderr.close()


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{base}/api/v1/query?{q}", timeout=10) as r:
        result: list[dict[str, Any]] = json.load(r)["data"]["result"]
    return result


def query_range(base: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    """The result of a range query (Prometheus' HTTP API); raises on an error status."""
    q = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                "step": f"{step}"})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{q}", timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


_BODY = b'{"items": [42]}'
_JSON = {"Content-Type": "application/json"}
#: What the peer plays in each phase; it does a little work (4 ms) before answering.
BEHAVIOURS = {
    "healthy": delay(0.004, answer(200, _BODY, _JSON)),
    "503": delay(0.004, answer(503, _BODY, _JSON)),
    "hang": hang(),  # until the client gives up (its read timeout)
}


def endpoint_config(base: str, reset_timeout: float) -> dict[str, Any]:
    """The endpoint the outage is played on: every protection on."""
    return {"endpoints": [{
        "name": "inventory",
        "match": base + "/",
        "timeout": {"connect": 0.2, "read": 0.25, "total": 0.6},
        "retry": {"attempts": 3, "backoff": {"initial": 0.05, "max": 0.2}},
        "budget": {"ratio": 0.2, "min_per_second": 2},
        "breaker": {"failure_threshold": 5, "reset_timeout": reset_timeout},
        "bulkhead": {"max_concurrent": 8},
        "fallback": {"status": 200, "json": {"items": []}},
    }]}


@contextlib.contextmanager
def with_outage(
    phases: list[tuple[float, str]], duration: float, *, workers: int = 4, pause: float = 0.02,
    reset_timeout: float = 2.0, scrape: float = 0.5,
) -> Iterator[tuple[str, float, float]]:
    """
    Play *phases* ((start second, behaviour name)) on a loopback peer for
    *duration* seconds while *workers* threads call it through a session
    whose `prometheus_listener` a real Prometheus scrapes every *scrape*
    seconds; yields (Prometheus base URL, start, end) as Unix times, with
    the Prometheus still running for the queries.
    """
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    app_port = free_port()
    server, thread = start_http_server(app_port, addr="127.0.0.1", registry=registry)
    started = [time.monotonic()]

    def by_phase(request: Request) -> Any:
        t = time.monotonic() - started[0]  # -inf before the clock starts: the first phase
        name = phases[0][1]
        for start, what in phases:
            if t >= start:
                name = what
        return BEHAVIOURS[name]

    try:
        with Peer(lifetime=duration + 60.0, max_connections=64).on("/items", by_phase) as peer:
            session = rc.ResilientSession(endpoint_config(peer.origin, reset_timeout),
                                          listeners=[rc.prometheus_listener(registry)])
            done = threading.Event()

            def worker() -> None:
                while not done.is_set():
                    with contextlib.suppress(Exception):  # every outcome is in the metrics
                        session.get(peer.origin + "/items")
                    done.wait(pause)

            threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
            # The first phase plays from now on, while Prometheus starts (it
            # scrapes for the first time about 5 s after): the phases' clock
            # starts when it has.
            started[0] = float("inf")
            for t in threads:
                t.start()
            try:
                with prometheus([f"127.0.0.1:{app_port}"], scrape) as base:
                    t0 = time.time()
                    started[0] = time.monotonic()
                    done.wait(duration)
                    done.set()
                    for t in threads:
                        t.join(timeout=5)
                    time.sleep(scrape * 2.5)  # the last samples scraped
                    yield base, t0, time.time()
            finally:
                done.set()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# The metric names and labels a PromQL expression reads, for the drift test.

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\[[^\]]*\]|[A-Za-z_:][A-Za-z0-9_:]*|=~|!~|!=|\S')
#: Words of PromQL that are not metric names (functions are told by the "(" after
#: them; aggregations may have "by (...)" in between).
KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                      "and", "or", "unless", "offset", "inf", "nan", "sum", "min", "max", "avg",
                      "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
                      "quantile"})
_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})


def selectors(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """
    (each metric selector as (name, label names matched), the labels named
    in by/without/on/ignoring clauses) of *expr*.
    """
    tokens = _TOKEN.findall(concrete(expr))
    metrics: list[tuple[str, set[str]]] = []
    grouping: set[str] = set()
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if tok in _GROUPING and nxt == "(":
            j = i + 2
            while j < len(tokens) and tokens[j] != ")":
                if tokens[j] != ",":
                    grouping.add(tokens[j])
                j += 1
            i = j + 1
            continue
        if re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", tok) and tok not in KEYWORDS and nxt != "(":
            labels: set[str] = set()
            if nxt == "{":
                j = i + 2
                while j < len(tokens) and tokens[j] != "}":
                    is_name = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", tokens[j])
                    if is_name and tokens[j + 1] in ("=", "=~", "!=", "!~"):
                        labels.add(tokens[j])
                    j += 1
                i = j
            metrics.append((tok, labels))
        i += 1
    return metrics, grouping
