"""
``resilient-client demo --fleet``: the cascade demo with real processes.

On 127.0.0.1 only, the demo starts and always stops (process groups,
bounded waits):

* ``redis-server`` on a free port, without persistence;
* ``gunicorn`` with a few sync workers serving the upstream app
  (`resilient_client.tools._demo_fleet_app`): one `ResilientSession` per worker,
  its breaker state in that Redis, a static fallback;
* ``haproxy`` in front of gunicorn (``maxconn`` = workers, ``timeout queue``
  2 s), the way sync workers are usually deployed.

The downstream runs in this process on the same outage schedule as the
threaded demo (hang, drip-feed, 503, recover), and a load generator sends
requests through HAProxy at a fixed rate. The table is the threaded demo's,
plus how many calls reached the failing downstream before the *shared*
breaker opened: about ``failure_threshold`` for the whole fleet (plus the
calls already in flight in the other workers), not per worker.

Why it is long: it starts, watches and always stops three kinds of
real processes (redis-server, gunicorn, haproxy) besides running the load;
the start-up and clean-up code is what makes it safe to run anywhere.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import requests

from . import _demo
from ._demo import HOST, QUEUE_TIMEOUT, Result, Schedule, _Downstream, _Job

__all__ = ["FLEET_SCHEDULE", "QUICK_FLEET_SCHEDULE", "missing_tools", "run_fleet"]

#: gunicorn sync workers: each serves one request at a time.
FLEET_WORKERS = 4
FAILURE_THRESHOLD = int(
    _demo.demo_policy("http://x/", reset_timeout=1.0)["endpoints"][0]["breaker"]["failure_threshold"]
)
FLEET_SCHEDULE = Schedule.of(
    ("healthy", 8), ("hang", 14), ("drip", 10), ("503", 10), ("recovered", 12)
)
QUICK_FLEET_SCHEDULE = Schedule.of(
    ("healthy", 3), ("hang", 4), ("drip", 3), ("503", 3), ("recovered", 4)
)
#: How long the load generator waits for HAProxy's answer.
CLIENT_TIMEOUT = 10.0
STARTUP_TIMEOUT = 15.0
OPENED_KEY = "rc-demo:opened_at"

_HAPROXY_CFG = """\
global
    maxconn 512
defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    timeout queue {queue}s
frontend upstream_in
    bind {host}:{port}
    default_backend upstream
backend upstream
    server gunicorn {host}:{gport} maxconn {workers}
"""


def _haproxy_path() -> str | None:
    found = shutil.which("haproxy")
    if found is None and os.access("/usr/sbin/haproxy", os.X_OK):
        found = "/usr/sbin/haproxy"  # Debian puts it in sbin, often not on PATH
    return found


def missing_tools() -> list[str]:
    """What ``--fleet`` needs and cannot find, each with how to install it."""
    missing = []
    if importlib.util.find_spec("gunicorn") is None:
        missing.append("gunicorn (pip install 'resilient_client[fleet]')")
    if importlib.util.find_spec("redis") is None:
        missing.append("redis-py (pip install 'resilient_client[fleet]')")
    if _haproxy_path() is None:
        missing.append("haproxy (Debian/Ubuntu: apt-get install haproxy)")
    if shutil.which("redis-server") is None:
        missing.append("redis-server (Debian/Ubuntu: apt-get install redis-server)")
    return missing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _answers(port: int, probe: bytes, expect: bytes) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as s:
            s.sendall(probe)
            return s.recv(64).startswith(expect)
    except OSError:
        return False


class _Fleet:
    """The processes of the fleet; `stop` always leaves none behind."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        try:
            # Own process group: stop() kills gunicorn's workers along with it.
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        self.procs.append((name, proc))

    def wait_until(self, name: str, port: int, probe: bytes, expect: bytes) -> None:
        proc = dict(self.procs)[name]
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _answers(port, probe, expect):
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (self.workdir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} did not start on {HOST}:{port}:\n{log}")
            time.sleep(0.05)

    def stop(self) -> None:
        # Reverse order: the proxy first, Redis last. TERM, then KILL after a bound.
        for _name, proc in reversed(self.procs):
            self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        for _name, proc in reversed(self.procs):
            with suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.05, deadline - time.monotonic()))
            self._signal(proc, signal.SIGKILL)  # stragglers in the group too
            with suppress(subprocess.TimeoutExpired):
                proc.wait(2.0)
        self.procs.clear()

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


class _TimedDownstream(_Downstream):
    """The demo's downstream, also noting the wall-clock time of each call."""

    def __init__(self, schedule: Schedule, t0: float) -> None:
        super().__init__(schedule, t0)
        self.stamps: list[tuple[float, str]] = []

    def count(self) -> str:
        phase = super().count()
        with self.lock:
            self.stamps.append((time.time(), phase))
        return phase


@dataclass
class _Load:
    label: str
    jobs: list[_Job]


@dataclass
class FleetResult:
    """Each fleet's `Result` (plain requests first) and what the shared breaker did."""

    results: list[Result]
    before_open: int | None  # calls that reached the failing downstream before it opened
    opened_after: float | None  # seconds from the start of the outage to the breaker opening


@dataclass
class _Variant:
    """One fleet: its client, label, downstream and HAProxy URL."""

    client: str
    label: str
    down: _TimedDownstream
    url: str = ""


def _send(session: Callable[[], requests.Session], url: str, job: _Job, t0: float) -> None:
    try:
        resp = session().get(url, timeout=CLIENT_TIMEOUT)
        if resp.status_code == 503 and "X-Demo-Outcome" not in resp.headers:
            outcome = "queue"  # HAProxy's timeout queue
        else:
            outcome = resp.headers.get("X-Demo-Outcome", "error")
    except requests.RequestException:
        outcome = "error"
    job.finished = time.monotonic() - t0
    job.outcome = outcome


class _Sessions:
    """One requests.Session per sender thread (keep-alive to HAProxy), all closed at the end."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[requests.Session] = []

    def get(self) -> requests.Session:
        s: requests.Session | None = getattr(self._local, "s", None)
        if s is None:
            s = self._local.s = requests.Session()
            with self._lock:
                self._all.append(s)
        return s

    def close(self) -> None:
        with self._lock:
            for s in self._all:
                s.close()


@contextmanager
def _thread_sessions() -> Iterator[_Sessions]:
    sessions = _Sessions()
    try:
        yield sessions
    finally:
        sessions.close()


def run_fleet(schedule: Schedule, *, rate: float, reset_timeout: float, out: TextIO) -> FleetResult:
    """Start both fleets, run *schedule* against them, stop everything; return the results."""
    haproxy = _haproxy_path()
    redis_server = shutil.which("redis-server")
    assert haproxy is not None and redis_server is not None  # checked by the caller
    with tempfile.TemporaryDirectory(prefix="rc-fleet-") as tmp:
        workdir = Path(tmp)
        fleet = _Fleet(workdir)
        variants: list[_Variant] = []
        try:
            rport = _free_port()
            redis_url = f"redis://{HOST}:{rport}/0"
            fleet.spawn("redis", [redis_server, "--port", str(rport), "--bind", HOST,
                                  "--save", "", "--appendonly", "no"])
            fleet.wait_until("redis", rport, b"PING\r\n", b"+PONG")
            for client, label in (("plain", f"requests timeout={_demo.PLAIN_TIMEOUT[0]:g},"
                                            f"{_demo.PLAIN_TIMEOUT[1]:g}"),
                                  ("resilient", "resilient_client")):
                # Each fleet has its own downstream; its clock starts with the load.
                down = _TimedDownstream(schedule, time.monotonic() + 3600)
                threading.Thread(target=down.serve_forever, kwargs={"poll_interval": 0.05},
                                 daemon=True).start()
                variant = _Variant(client, label, down)
                variants.append(variant)
                variant.url = _start_variant(fleet, workdir, haproxy, variant, redis_url,
                                             reset_timeout)
                print(f"{label}: haproxy {variant.url} -> gunicorn, {FLEET_WORKERS} sync workers",
                      file=out)
            print(f"breaker state of the resilient_client fleet in redis {HOST}:{rport}", file=out)
            return _drive(schedule, variants, rate, redis_url, out)
        finally:
            fleet.stop()
            for v in variants:
                v.down.release.set()
                v.down.shutdown()
                v.down.server_close()


def _start_variant(fleet: _Fleet, workdir: Path, haproxy: str, variant: _Variant,
                   redis_url: str, reset_timeout: float) -> str:
    gport, hport = _free_port(), _free_port()
    env = dict(os.environ)
    # The workers import this very package, wherever it is.
    pkg_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    env.update(RC_DEMO_DOWNSTREAM=variant.down.url, RC_DEMO_REDIS=redis_url,
               RC_DEMO_RESET_TIMEOUT=str(reset_timeout), RC_DEMO_CLIENT=variant.client)
    name = variant.client
    fleet.spawn(f"gunicorn-{name}", [
        sys.executable, "-m", "gunicorn", "--bind", f"{HOST}:{gport}",
        "--workers", str(FLEET_WORKERS), "--worker-class", "sync",
        "--timeout", "30", "--graceful-timeout", "1", "--log-level", "warning",
        "resilient_client.tools._demo_fleet_app:app"], env=env)
    cfg = workdir / f"haproxy-{name}.cfg"
    cfg.write_text(_HAPROXY_CFG.format(host=HOST, port=hport, gport=gport,
                                       workers=FLEET_WORKERS, queue=f"{QUEUE_TIMEOUT:g}"))
    fleet.spawn(f"haproxy-{name}", [haproxy, "-db", "-f", str(cfg)])
    http_probe = b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n"
    fleet.wait_until(f"gunicorn-{name}", gport, http_probe, b"HTTP/")
    fleet.wait_until(f"haproxy-{name}", hport, http_probe, b"HTTP/")
    return f"http://{HOST}:{hport}/"


def _drive(schedule: Schedule, variants: Sequence[_Variant], rate: float,
           redis_url: str, out: TextIO) -> FleetResult:
    import redis

    # Warm up: every worker builds its session (and connects to Redis) before t0.
    with requests.Session() as s:
        for v in variants:
            for _ in range(FLEET_WORKERS * 2):
                s.get(v.url, timeout=CLIENT_TIMEOUT)
    for v in variants:
        with v.down.lock:
            v.down.calls = dict.fromkeys(v.down.calls, 0)
            v.down.stamps.clear()
    client = redis.Redis.from_url(redis_url, socket_timeout=1.0)
    client.delete(OPENED_KEY)
    t0 = time.monotonic() + 0.2
    wall0 = time.time() + 0.2
    loads = [_Load(v.label, []) for v in variants]
    for v in variants:
        v.down.t0 = t0
    print(f"{rate:g} requests/s through each HAProxy; downstream schedule: "
          + ", ".join(f"{p.name} {p.start:g}-{p.end:g}s" for p in schedule.phases), file=out)
    print("per second:  ok = answered by downstream, fb = fallback, err = failed call, "
          "503q = HAProxy's queue timeout", file=out)
    print("                  | " + " | ".join(f"{v.label:<31}" for v in variants), file=out)
    n = int(rate * schedule.total)
    # Enough senders that HAProxy, not the load generator, does the queueing.
    with _thread_sessions() as local, ThreadPoolExecutor(max_workers=64 * len(variants)) as pool:
        next_tick = 1.0
        for i in range(n):
            at = t0 + i / rate
            delay = at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for v, load in zip(variants, loads, strict=True):
                job = _Job(at - t0)
                job.started = job.arrived
                load.jobs.append(job)
                pool.submit(_send, local.get, v.url, job, t0)
            t = time.monotonic() - t0
            if t >= next_tick:
                print(f"{t:5.1f}s {schedule.at(t):<9} | "
                      + " | ".join(_progress(t, load.jobs) for load in loads),
                      file=out, flush=True)
                next_tick = math.floor(t) + 1.0
        # Bounded: every send times out after CLIENT_TIMEOUT; the grace covers the tail.
        end = t0 + schedule.total + _demo.GRACE
        time.sleep(max(0.0, end - time.monotonic()))
        cutoff = time.monotonic() - t0
        for v in variants:
            v.down.release.set()  # hung downstream calls return; pending sends finish
    raw = client.get(OPENED_KEY)
    client.close()
    opened_at = float(raw) if raw else None
    results = [_demo.summarise(load, v.down, schedule, cutoff)
               for v, load in zip(variants, loads, strict=True)]
    outage_start = wall0 + schedule.phase("hang").start
    before_open: int | None = None
    opened_after: float | None = None
    resilient = variants[-1].down
    with resilient.lock:
        failing = [ts for ts, phase in resilient.stamps if phase in _demo.OUTAGE]
    if opened_at is not None:
        before_open = sum(1 for ts in failing if ts < opened_at)
        opened_after = opened_at - outage_start
    return FleetResult(results, before_open, opened_after)


def _progress(t: float, jobs: Sequence[_Job]) -> str:
    done = [j for j in jobs if j.finished is not None and t - 1.0 <= j.finished < t]
    counts = {k: sum(1 for j in done if j.outcome == k) for k in ("ok", "fallback", "error", "queue")}
    return (f"ok {counts['ok']:3d} fb {counts['fallback']:3d} "
            f"err {counts['error']:3d} 503q {counts['queue']:3d}")


def render_fleet_table(fr: FleetResult) -> str:
    """The threaded demo's table for the fleets, plus the shared breaker's rows."""
    pad = ["-"] * (len(fr.results) - 1)
    extra = [
        ("calls before the shared breaker opened",
         [*pad, "never opened" if fr.before_open is None else str(fr.before_open)]),
        ("  breaker opened after outage start",
         [*pad, "-" if fr.opened_after is None else f"{fr.opened_after:.2f} s"]),
        ("  failure_threshold (whole fleet)", [*pad, str(FAILURE_THRESHOLD)]),
        ("gunicorn workers", [str(FLEET_WORKERS)] * len(fr.results)),
    ]
    return _demo.render_table(fr.results, extra)


def fleet_verdict(fr: FleetResult) -> str:
    """One paragraph saying what the fleet table shows."""
    r = fr.results[-1]
    failing = sum(r.calls.get(p, 0) for p in _demo.OUTAGE)
    if fr.before_open is None:
        opened = "the shared breaker never opened"
    else:
        opened = (f"{fr.before_open} calls reached the failing downstream before the shared "
                  f"breaker opened (failure_threshold {FAILURE_THRESHOLD} for the whole fleet "
                  f"of {FLEET_WORKERS} workers)")
    others = ", ".join(f"{o.label}: {o.throughput:.1f}" for o in fr.results[:-1])
    return (f"The resilient_client fleet answered {r.throughput:.1f} requests/s ({others}) with "
            f"{r.errors + r.queue_rejected + r.unanswered} errors and {r.fallback} fallbacks;\n"
            f"{opened}, and {failing} in the whole outage.")
