"""
The cascade demo: ``resilient-client demo`` (its options: `_demo_command`).

Everything runs on 127.0.0.1 in this process. Three identical set-ups run
side by side, on the same outage schedule, each with its own downstream:

* a **downstream** service (a threaded stdlib HTTP server) that, on a
  schedule, is healthy, then *hangs* (accepts the request, never answers),
  then *drip-feeds* (one byte every 200 ms, so no read timeout ever trips),
  then answers *503*, then recovers;
* an **upstream** service: requests arrive at a fixed rate into a queue
  served by a few worker threads, like sync workers behind a load balancer
  (HAProxy) that answers 503 to a request still queued after 2 s
  (``timeout queue``). Each request makes one call to the downstream.

The three upstreams differ only in the HTTP client they call it with: plain
``requests`` with no timeout, ``requests`` with ``timeout=(1, 3)``, and
`ResilientSession` with a policy (timeouts, a total deadline, one retry
within a budget, a breaker, a bulkhead) and a static fallback. The run ends
with a side-by-side table; ``--plot FILE.png`` draws latency and success
rate over time (needs the ``plot`` extra: matplotlib).

Connections accepted while the downstream hangs are never answered, as with
a deadlocked peer: only the end of the demo releases them.

Why it is long: it is a whole program, read top to bottom by people
who want to see how the demo works: the downstream server, the upstream's
queue and workers, the load, the per-phase summary, the table and the plot.
"""

from __future__ import annotations

import http.server
import json
import math
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

import requests

from .._session import ResilientSession

__all__ = ["demo_policy", "plot", "render_table", "run", "verdict"]

HOST = "127.0.0.1"
WORKERS = 8
#: Seconds a request may wait in the upstream's queue before the load
#: balancer answers 503 for it (HAProxy's ``timeout queue``).
QUEUE_TIMEOUT = 2.0
#: Seconds between two bytes of a drip-fed response.
DRIP_INTERVAL = 0.2
#: Width of the time buckets of the timeline (plot, time to recover).
BUCKET = 0.5
#: A bucket counts as recovered when this share of its requests got a real answer.
RECOVERED_RATIO = 0.9
#: After the last arrival, how long the run waits for calls in flight.
GRACE = 1.0
PLAIN_TIMEOUT = (1.0, 3.0)


# -- the outage schedule ------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """One stretch of the schedule: ``name`` from ``start`` to ``end`` seconds."""

    name: str
    start: float
    end: float


@dataclass(frozen=True)
class Schedule:
    """The downstream's behaviour over time, as consecutive phases."""

    phases: tuple[Phase, ...]

    @classmethod
    def of(cls, *spans: tuple[str, float]) -> Schedule:
        t = 0.0
        phases = []
        for name, length in spans:
            phases.append(Phase(name, t, t + length))
            t += length
        return cls(tuple(phases))

    @property
    def total(self) -> float:
        return self.phases[-1].end

    def at(self, t: float) -> str:
        for p in self.phases:
            if t < p.end:
                return p.name
        return self.phases[-1].name

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)


DEFAULT_SCHEDULE = Schedule.of(
    ("healthy", 5), ("hang", 8), ("drip", 6), ("503", 5), ("recovered", 8)
)
QUICK_SCHEDULE = Schedule.of(
    ("healthy", 2), ("hang", 3), ("drip", 2.5), ("503", 2), ("recovered", 2.5)
)
OUTAGE = ("hang", "drip", "503")


# -- the downstream -------------------------------------------------------------


class _Downstream(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, schedule: Schedule, t0: float) -> None:
        super().__init__((HOST, 0), _Handler)
        self.schedule = schedule
        self.t0 = t0
        self.release = threading.Event()  # set at the end: hung handlers return
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {p.name: 0 for p in schedule.phases}

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/recommendations"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout, a deadline) closes its end: expected here.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def count(self) -> str:
        phase = self.schedule.at(time.monotonic() - self.t0)
        with self.lock:
            self.calls[phase] += 1
        return phase


_OK_BODY = json.dumps({"recommendations": [1, 2, 3]}).encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in one write, and without Nagle's algorithm
    # loopback round trips stay well under a millisecond.
    disable_nagle_algorithm = True
    server: _Downstream

    def do_GET(self) -> None:
        phase = self.server.count()
        if phase == "hang":
            # Never answer; keep the connection open until the demo ends.
            self.server.release.wait(self.server.schedule.total + 60)
            self.close_connection = True
            return
        if phase == "drip":
            # Each drip-fed response lasts as long as the drip phase.
            drip = self.server.schedule.phase("drip")
            length = max(1, round((drip.end - drip.start) / DRIP_INTERVAL))
            self.wfile.write(self._head(200, length))
            for _ in range(length):
                if self.server.release.wait(DRIP_INTERVAL):
                    self.close_connection = True
                    return
                self.wfile.write(b" ")
            return
        if phase == "503":
            body = b'{"error": "unavailable"}'
            self.wfile.write(self._head(503, len(body)) + body)
            return
        time.sleep(0.002)  # a little work
        self.wfile.write(self._head(200, len(_OK_BODY)) + _OK_BODY)

    @staticmethod
    def _head(status: int, length: int) -> bytes:
        reason = {200: "OK", 503: "Service Unavailable"}[status]
        return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {length}\r\n\r\n").encode()

    def log_message(self, format: str, *args: Any) -> None:
        pass


# -- the upstream -----------------------------------------------------------------


class _Job:
    __slots__ = ("arrived", "finished", "outcome", "started")

    def __init__(self, arrived: float) -> None:
        self.arrived = arrived
        self.started: float | None = None
        self.finished: float | None = None
        #: ok (the downstream answered), fallback, error, or queue (the
        #: load balancer gave up on it); None while unanswered.
        self.outcome: str | None = None


Caller = Callable[[str], str]


@dataclass
class _Upstream:
    """Requests arriving at a fixed rate, served by worker threads through *call*."""

    label: str
    call: Caller
    url: str
    rate: float
    duration: float
    t0: float
    jobs: list[_Job] = field(default_factory=list)
    busy: int = 0

    def __post_init__(self) -> None:
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._arrivals, name=f"{self.label}-arrivals", daemon=True)
        ]
        self._threads += [
            threading.Thread(target=self._work, name=f"{self.label}-worker-{i}", daemon=True)
            for i in range(WORKERS)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))

    def _arrivals(self) -> None:
        n = int(self.rate * self.duration)
        for i in range(n):
            at = self.t0 + i / self.rate
            delay = at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            job = _Job(at - self.t0)
            self.jobs.append(job)
            self._queue.put(job)

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            now = time.monotonic() - self.t0
            if now - job.arrived > QUEUE_TIMEOUT:
                continue  # the load balancer already answered 503 for it
            job.started = now
            with self._lock:
                self.busy += 1
            try:
                outcome = self.call(self.url)
            except Exception:
                outcome = "error"
            finally:
                with self._lock:
                    self.busy -= 1
            job.finished = time.monotonic() - self.t0
            job.outcome = outcome


def _plain_caller(session: requests.Session, timeout: tuple[float, float] | None) -> Caller:
    def call(url: str) -> str:
        resp = session.get(url, timeout=timeout)
        return "ok" if resp.status_code == 200 else "error"

    return call


def _resilient_caller(session: ResilientSession) -> Caller:
    def call(url: str) -> str:
        resp = session.get(url)
        if getattr(resp, "is_fallback", False):
            return "fallback"
        return "ok" if resp.status_code == 200 else "error"

    return call


def demo_policy(url: str, *, reset_timeout: float) -> dict[str, Any]:
    """The policy the demo gives resilient_client for the downstream."""
    return {
        "endpoints": [
            {
                "name": "downstream",
                "match": url.rsplit("/", 1)[0] + "/",
                "timeout": {"connect": 0.5, "read": 1.0, "total": 1.5},
                "retry": {"attempts": 2, "backoff": {"initial": 0.05, "max": 0.2}},
                "budget": {"ratio": 0.2, "min_per_second": 2},
                "breaker": {"failure_threshold": 3, "reset_timeout": reset_timeout},
                "bulkhead": {"max_concurrent": 6},  # of 8 workers: two stay free
                "fallback": {"status": 200, "json": {"recommendations": [], "degraded": True}},
            }
        ]
    }


# -- results ----------------------------------------------------------------------


@dataclass
class Result:
    """What one client's run measured."""

    label: str
    arrived: int
    ok: int
    fallback: int
    errors: int
    queue_rejected: int
    unanswered: int
    latencies: list[float]
    calls: dict[str, int]
    recover: float | None
    timeline: list[tuple[float, float, float, float | None, float | None]]
    duration: float

    @property
    def throughput(self) -> float:
        return (self.ok + self.fallback) / self.duration

    def percentile(self, q: float) -> float | None:
        return _percentile(self.latencies, q)


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def _outcome_at(job: _Job, cutoff: float) -> tuple[str | None, float | None]:
    """The job's outcome as seen at *cutoff*: (kind, latency), (None, None) when unanswered."""
    waited_out = job.arrived + QUEUE_TIMEOUT
    if job.started is None or job.started - job.arrived > QUEUE_TIMEOUT:
        if waited_out <= cutoff:
            return "queue", QUEUE_TIMEOUT
        return None, None
    if job.finished is None or job.finished > cutoff or job.outcome is None:
        return None, None
    return job.outcome, job.finished - job.arrived


class _Jobs(Protocol):
    label: str
    jobs: list[_Job]


def summarise(up: _Jobs, down: _Downstream, schedule: Schedule, cutoff: float) -> Result:
    counts = {"ok": 0, "fallback": 0, "error": 0, "queue": 0, "unanswered": 0}
    latencies: list[float] = []
    nb = math.ceil(schedule.total / BUCKET)
    b_arrived = [0] * nb
    b_ok = [0] * nb
    b_answered = [0] * nb
    b_lat: list[list[float]] = [[] for _ in range(nb)]
    for job in list(up.jobs):
        kind, latency = _outcome_at(job, cutoff)
        counts[kind or "unanswered"] += 1
        b = min(nb - 1, int(job.arrived / BUCKET))
        b_arrived[b] += 1
        if latency is not None:
            latencies.append(latency)
            b_lat[b].append(latency)
        if kind == "ok":
            b_ok[b] += 1
        if kind in ("ok", "fallback"):
            b_answered[b] += 1
    timeline = [
        (i * BUCKET, b_ok[i] / b_arrived[i] if b_arrived[i] else math.nan,
         b_answered[i] / b_arrived[i] if b_arrived[i] else math.nan,
         _percentile(b_lat[i], 0.5), _percentile(b_lat[i], 0.99))
        for i in range(nb)
    ]
    # Time to recover: from the start of the recovered phase to the first
    # bucket from which every later bucket got real answers again.
    start = schedule.phase("recovered").start
    recover: float | None = None
    for i in range(nb - 1, -1, -1):
        t = i * BUCKET
        if t < start:
            break
        ratio = timeline[i][1]
        if math.isnan(ratio) or ratio < RECOVERED_RATIO:
            break
        recover = t - start
    with down.lock:
        calls = dict(down.calls)
    return Result(up.label, len(up.jobs), counts["ok"], counts["fallback"], counts["error"],
                  counts["queue"], counts["unanswered"], latencies, calls, recover, timeline,
                  schedule.total)


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s"


def render_table(results: Sequence[Result],
                 extra: Sequence[tuple[str, Sequence[str]]] = ()) -> str:
    """The side-by-side table printed at the end of the demo (*extra*: more rows, one cell per result)."""
    rows: list[tuple[str, Callable[[Result], str]]] = [
        ("requests arrived", lambda r: str(r.arrived)),
        ("throughput (answers/s)", lambda r: f"{r.throughput:.1f}"),
        ("answered by downstream", lambda r: str(r.ok)),
        ("fallbacks served", lambda r: str(r.fallback)),
        ("errors", lambda r: str(r.errors + r.queue_rejected + r.unanswered)),
        ("  call failed", lambda r: str(r.errors)),
        ("  503 from queue timeout", lambda r: str(r.queue_rejected)),
        ("  never answered", lambda r: str(r.unanswered)),
        ("p50 latency", lambda r: _ms(r.percentile(0.5))),
        ("p99 latency", lambda r: _ms(r.percentile(0.99))),
        ("calls reaching downstream", lambda r: str(sum(r.calls.values()))),
        ("  while it hung", lambda r: str(r.calls.get("hang", 0))),
        ("  while it drip-fed", lambda r: str(r.calls.get("drip", 0))),
        ("  while it answered 503", lambda r: str(r.calls.get("503", 0))),
        ("time to recover", lambda r: "never" if r.recover is None else f"{r.recover:.1f} s"),
    ]
    head = ["", *(r.label for r in results)]
    body = [[name, *(fn(r) for r in results)] for name, fn in rows]
    body += [[name, *cells] for name, cells in extra]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = "  ".join(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return f"{first}  {rest}".rstrip()

    sep = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([line(head), sep, *(line(b) for b in body)])


# -- the run ------------------------------------------------------------------------


def _progress_line(t: float, phase: str, ups: Sequence[_Upstream]) -> str:
    parts = []
    for up in ups:
        done = [j for j in up.jobs if j.finished is not None and t - 1.0 <= j.finished < t]
        ok = sum(1 for j in done if j.outcome == "ok")
        fb = sum(1 for j in done if j.outcome == "fallback")
        err = sum(1 for j in done if j.outcome == "error")
        parts.append(f"ok {ok:3d} fb {fb:3d} err {err:3d} busy {up.busy}/{WORKERS}")
    return f"{t:5.1f}s {phase:<9} | " + " | ".join(parts)


def run(schedule: Schedule, *, rate: float, reset_timeout: float, out: TextIO) -> list[Result]:
    """Run the three clients side by side on *schedule*; return their results."""
    t0 = time.monotonic() + 0.2  # a moment to start every thread
    downs = [_Downstream(schedule, t0) for _ in range(3)]
    for d in downs:
        threading.Thread(target=d.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
    plain, timed = requests.Session(), requests.Session()
    resilient = ResilientSession(demo_policy(downs[2].url, reset_timeout=reset_timeout))
    labels = ["requests (no timeout)",
              f"requests timeout={PLAIN_TIMEOUT[0]:g},{PLAIN_TIMEOUT[1]:g}",
              "resilient_client"]
    callers = [_plain_caller(plain, None), _plain_caller(timed, PLAIN_TIMEOUT),
               _resilient_caller(resilient)]
    ups = [_Upstream(lbl, c, d.url, rate, schedule.total, t0)
           for lbl, c, d in zip(labels, callers, downs, strict=True)]
    print(f"{WORKERS} upstream workers per client, {rate:g} requests/s arriving, "
          f"queue timeout {QUEUE_TIMEOUT:g} s; downstream schedule: "
          + ", ".join(f"{p.name} {p.start:g}-{p.end:g}s" for p in schedule.phases), file=out)
    print("per second:  ok = answered by downstream, fb = fallback, err = failed call, "
          "busy = workers in a call", file=out)
    print("                  | " + " | ".join(f"{lbl[:33]:<33}" for lbl in labels), file=out)
    try:
        for up in ups:
            up.start()
        tick = 1.0
        while True:
            now = time.monotonic() - t0
            if now >= schedule.total + GRACE:
                break
            nxt = (math.floor(max(now, 0) / tick) + 1) * tick
            time.sleep(max(0.0, nxt - now))
            t = time.monotonic() - t0
            phase = schedule.at(t) if t < schedule.total else "draining"
            print(_progress_line(t, phase, ups), file=out, flush=True)
        cutoff = time.monotonic() - t0
        for up in ups:
            up.stop()
        results = [summarise(up, d, schedule, cutoff) for up, d in zip(ups, downs, strict=True)]
    finally:
        for up in ups:
            up.stop()
        for d in downs:
            d.release.set()
        for up in ups:
            up.join(5.0)
        for s in (plain, timed, resilient):
            s.close()
        for d in downs:
            d.shutdown()
            d.server_close()
    return results


def plot(results: Sequence[Result], schedule: Schedule, path: str) -> None:
    """Draw latency and success rate over time per client, outage phases shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_ok) = plt.subplots(2, 1, figsize=(12, 6.5), sharex=True)
    colours = ["tab:red", "tab:orange", "tab:green"]
    shades = {"hang": "#bbbbbb", "drip": "#d5c4a1", "503": "#f2b8b5"}
    for ax in (ax_lat, ax_ok):
        for p in schedule.phases:
            if p.name in shades:
                ax.axvspan(p.start, p.end, color=shades[p.name], alpha=0.45, lw=0)
    for p in schedule.phases:
        ax_lat.text((p.start + p.end) / 2, 1.01, p.name, transform=ax_lat.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=9)
    for r, colour in zip(results, colours, strict=False):
        xs = [b[0] + BUCKET / 2 for b in r.timeline]
        p99 = [b[4] * 1000 if b[4] is not None else math.nan for b in r.timeline]
        p50 = [b[3] * 1000 if b[3] is not None else math.nan for b in r.timeline]
        ax_lat.plot(xs, p99, color=colour, lw=1.8, label=f"{r.label} p99")
        ax_lat.plot(xs, p50, color=colour, lw=1, ls=":", label=f"{r.label} p50")
        ax_ok.plot(xs, [b[1] * 100 for b in r.timeline], color=colour, lw=1.8,
                   label=f"{r.label}: by downstream")
        if r.fallback:
            ax_ok.plot(xs, [b[2] * 100 for b in r.timeline], color=colour, lw=1, ls="--",
                       label=f"{r.label}: incl. fallback")
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("upstream latency (ms, log)")
    ax_lat.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax_ok.set_ylabel("requests answered (%)")
    ax_ok.set_ylim(-3, 103)
    ax_ok.set_xlabel("seconds (by arrival time)")
    ax_ok.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Upstream under a downstream outage: requests vs resilient_client", y=0.995)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdict(results: Sequence[Result]) -> str:
    """One paragraph saying what the table shows."""
    rc = results[-1]
    others = results[:-1]
    errors = rc.errors + rc.queue_rejected + rc.unanswered
    lines = [
        f"resilient_client answered {rc.throughput:.1f} requests/s ("
        + ", ".join(f"{o.label}: {o.throughput:.1f}" for o in others) + ")",
        f"with {errors} errors and {rc.fallback} fallbacks served; "
        f"{rc.calls.get('hang', 0)} calls reached the hung downstream and "
        f"{sum(rc.calls.get(p, 0) for p in OUTAGE)} the failing one in all "
        "(the breaker and the bulkhead kept the rest away).",
    ]
    return "\n".join(lines)
