"""
Draw docs/img/dashboard.png: what a Prometheus dashboard shows during an
outage, from a real run (about 25 s, loopback only).

A peer on 127.0.0.1 is healthy, then answers 503, then hangs, then
recovers. Four threads call it through one ResilientSession with a
`prometheus_listener`; a scraper reads the registry every half second, as
Prometheus would, and computes what the dashboard panels would plot (rates
over the scrape interval, latency quantiles from the histogram buckets the
way ``histogram_quantile`` does). The health view is sampled at the same
time, as HAProxy's check would see it.

    python docs/scripts/dashboard.py [--out docs/img/dashboard.png]

Needs matplotlib and prometheus-client.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import threading
import time
from typing import Any

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]  # this checkout's package, and the test server

from peers import Peer, Request, answer, delay, hang  # noqa: E402

import resilient_client as rc  # noqa: E402

#: (start second, what the peer does)
PHASES = [(0.0, "healthy"), (6.0, "503"), (12.0, "hang"), (17.0, "healthy")]
DURATION = 25.0
SCRAPE = 0.5
WORKERS = 4
PAUSE = 0.02  # between calls, per worker
OUTCOMES_SHOWN = ["ok", "status", "read_timeout", "circuit_open", "deadline"]


_BODY = b'{"items": [42]}'
_JSON = {"Content-Type": "application/json"}
#: What the peer plays in each phase; it does a little work (4 ms) before answering.
BEHAVIOURS = {
    "healthy": delay(0.004, answer(200, _BODY, _JSON)),
    "503": delay(0.004, answer(503, _BODY, _JSON)),
    "hang": hang(),  # until the client gives up (its read timeout)
}


def current_phase(t: float) -> str:
    name = PHASES[0][1]
    for start, what in PHASES:
        if t >= start:
            name = what
    return name


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over (upper bound, cumulative count) pairs."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / max(count - prev_count, 1e-9)
        prev_bound, prev_count = bound, count
    return prev_bound


def run() -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    started = [time.monotonic()]

    def by_phase(request: Request) -> Any:
        return BEHAVIOURS[current_phase(time.monotonic() - started[0])]

    peer = Peer(lifetime=DURATION + 30.0).on("/items", by_phase).start()
    base = peer.origin
    registry = CollectorRegistry()
    session = rc.ResilientSession(
        {
            "endpoints": [{
                "name": "inventory",
                "match": base + "/",
                "timeout": {"connect": 0.2, "read": 0.25, "total": 0.6},
                "retry": {"attempts": 3, "backoff": {"initial": 0.05, "max": 0.2}},
                "breaker": {"failure_threshold": 5, "reset_timeout": 2.0},
                "bulkhead": {"max_concurrent": 8},
                "fallback": {"status": 200, "json": {"items": []}},
            }],
        },
        listeners=[rc.prometheus_listener(registry)],
    )
    session.health()  # count the error rate from the start
    started[0] = t0 = time.monotonic()
    done = threading.Event()

    def worker() -> None:
        while not done.is_set():
            with contextlib.suppress(Exception):  # every outcome is in the metrics
                session.get(base + "/items")
            time.sleep(PAUSE)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(WORKERS)]
    for t in threads:
        t.start()

    def sample() -> dict[str, Any]:
        values: dict[str, float] = {}
        buckets: list[tuple[float, float]] = []
        for family in registry.collect():
            for s in family.samples:
                if s.labels.get("endpoint") not in (None, "inventory"):
                    continue
                key = s.name + "|" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())
                                              if k not in ("endpoint", "method", "le"))
                if s.name == "resilient_client_request_duration_seconds_bucket":
                    buckets.append((float(s.labels["le"]), s.value))
                    continue
                values[key] = values.get(key, 0.0) + s.value
        merged: dict[float, float] = {}
        for le, v in buckets:
            merged[le] = merged.get(le, 0.0) + v
        h = session.health()
        return {"t": time.monotonic() - t0, "values": values, "buckets": sorted(merged.items()),
                "healthy": h.healthy, "breaker": h["inventory"].breaker}

    samples = [sample()]
    while samples[-1]["t"] < DURATION:
        time.sleep(SCRAPE - ((time.monotonic() - t0) % SCRAPE))
        samples.append(sample())
    done.set()
    peer.stop()  # ends the hangs
    for t in threads:
        t.join(timeout=5)
    return {"samples": samples}


def series(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-scrape rates and quantiles, as the dashboard's queries would compute them."""

    def rate(key: str) -> list[float]:
        out = []
        for a, b in itertools.pairwise(samples):
            out.append((b["values"].get(key, 0.0) - a["values"].get(key, 0.0)) / (b["t"] - a["t"]))
        return out

    t = [b["t"] for b in samples[1:]]
    req = "resilient_client_requests_total|"
    calls = {o: rate(f"{req}outcome={o}") for o in OUTCOMES_SHOWN}
    attempts = [sum(x) for x in zip(*(rate(f"resilient_client_attempts_total|outcome={o}")
                                      for o in ("ok", "status", "read_timeout", "connect_error")),
                                    strict=True)]
    retries = [sum(x) for x in zip(*(rate(f"resilient_client_retries_total|reason={r}")
                                     for r in ("status 503", "read_timeout")), strict=True)]
    rejected = rate("resilient_client_rejections_total|by=breaker")
    fallbacks = rate("resilient_client_fallbacks_total|fallback=static")
    p50, p99 = [], []
    for a, b in itertools.pairwise(samples):
        same = len(a["buckets"]) == len(b["buckets"])
        delta = ([(le, vb - va) for (le, vb), (_, va) in zip(b["buckets"], a["buckets"], strict=True)]
                 if same else b["buckets"])
        p50.append(histogram_quantile(0.50, delta))
        p99.append(histogram_quantile(0.99, delta))
    return {"t": t, "calls": calls, "attempts": attempts, "retries": retries, "rejected": rejected,
            "fallbacks": fallbacks, "p50": p50, "p99": p99,
            "breaker": [b["breaker"] for b in samples[1:]], "healthy": [b["healthy"] for b in samples[1:]]}


def draw(s: dict[str, Any], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(11, 11), sharex=True,
                             gridspec_kw={"height_ratios": [3, 3, 3, 1.2]})
    t = s["t"]
    shade = {"503": ("#f6c4c4", "peer answers 503"), "hang": ("#f9dfa8", "peer hangs")}
    ends = [p[0] for p in PHASES[1:]] + [DURATION]
    for ax in axes:
        for (start, what), end in zip(PHASES, ends, strict=True):
            if what in shade:
                ax.axvspan(start, end, color=shade[what][0], zorder=0)
        ax.grid(alpha=0.3)

    ax = axes[0]
    colors = {"ok": "#2e7d32", "status": "#c62828", "read_timeout": "#ef6c00",
              "circuit_open": "#6a1b9a", "deadline": "#000000"}
    ax.stackplot(t, *[s["calls"][o] for o in OUTCOMES_SHOWN], labels=OUTCOMES_SHOWN,
                 colors=[colors[o] for o in OUTCOMES_SHOWN], alpha=0.85)
    ax.plot(t, s["fallbacks"], color="#1565c0", lw=2, label="fallbacks served")
    ax.set_ylabel("calls/s")
    ax.set_title("rate(resilient_client_requests_total[scrape]) by outcome; fallbacks_total")
    ax.legend(loc="upper right", fontsize=8, ncol=3)

    ax = axes[1]
    ax.plot(t, s["attempts"], color="#37474f", lw=2, label="attempts/s (reach the peer)")
    ax.plot(t, s["retries"], color="#ef6c00", lw=2, label="retries/s")
    ax.plot(t, s["rejected"], color="#6a1b9a", lw=2, label="rejected by breaker/s")
    ax.set_ylabel("per second")
    ax.set_title("attempts_total, retries_total, rejections_total{by=\"breaker\"}")
    ax.legend(loc="upper right", fontsize=8)

    ax = axes[2]
    ax.plot(t, [None if v is None else v * 1000 for v in s["p50"]], color="#1565c0", lw=2, label="p50")
    ax.plot(t, [None if v is None else v * 1000 for v in s["p99"]], color="#c62828", lw=2, label="p99")
    ax.set_ylabel("ms")
    ax.set_title("histogram_quantile over request_duration_seconds (whole calls, retries included)")
    ax.legend(loc="upper right", fontsize=8)

    ax = axes[3]
    state_color = {"closed": "#2e7d32", "open": "#c62828", "half-open": "#f9a825"}
    for i, (x, state, ok) in enumerate(zip(t, s["breaker"], s["healthy"], strict=True)):
        w = (t[i + 1] - x) if i + 1 < len(t) else 0.5
        ax.barh(1, w, left=x, height=0.8, color=state_color.get(state, "#9e9e9e"))
        ax.barh(0, w, left=x, height=0.8, color="#2e7d32" if ok else "#c62828")
    ax.set_yticks([0, 1], ["health check", "breaker"])
    ax.set_title("breaker_state (green closed, red open, yellow half-open); health view 200 green / 503 red")
    ax.set_xlabel("seconds")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c, _ in shade.values()]
    fig.legend(handles, [label for _, label in shade.values()], loc="upper right", ncol=2,
               fontsize=9, bbox_to_anchor=(0.98, 0.975))
    fig.suptitle("resilient_client during an outage: 4 workers calling one peer (real run, loopback)",
                 x=0.02, ha="left", y=0.99)
    fig.tight_layout(rect=(0, 0, 1, 0.965))
    fig.savefig(out, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description="Draw the observability dashboard picture.")
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--out", default=os.path.join(here, "..", "img", "dashboard.png"))
    args = parser.parse_args()
    data = run()
    s = series(data["samples"])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    draw(s, args.out)
    total = {o: sum(v) * SCRAPE for o, v in s["calls"].items()}
    print(f"wrote {args.out}; calls by outcome (approx): "
          + ", ".join(f"{o} {n:.0f}" for o, n in total.items()))


if __name__ == "__main__":
    main()
