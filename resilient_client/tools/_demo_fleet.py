"""
``resilient-client demo --fleet``: the cascade demo with real processes.

On 127.0.0.1 only, the demo starts and always stops (process groups,
bounded waits):

* ``redis-server`` on a free port, without persistence (when it is there);
* per fleet, ``gunicorn`` with a few sync workers serving the upstream app
  (`resilient_client.tools._demo_fleet_app`), and ``haproxy`` in front of
  it (``maxconn`` = workers, ``timeout queue`` 2 s), the way sync workers
  are usually deployed. The fleets differ in their client: a plain
  ``requests.Session``, then one `ResilientSession` per worker with
  ``state: memory`` (a breaker per worker), ``state: host`` (one for the
  host) and, with Redis, ``state: redis://...``; each has a static fallback.

The downstream runs in this process on the same outage schedule as the
threaded demo (hang, drip-feed, 503, recover), and a load generator sends
requests through HAProxy at a fixed rate. The table is the threaded demo's,
plus how many calls reached the failing downstream before a breaker
opened (the first worker's, with ``memory``): with a shared one, about
``failure_threshold`` for the whole fleet (plus the calls already in flight
in the other workers), not per worker.

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
    if _haproxy_path() is None:
        missing.append("haproxy (Debian/Ubuntu: apt-get install haproxy)")
    return missing


def _redis_server() -> str | None:
    """redis-server, when it and redis-py are both there: the Redis fleet is optional."""
    if importlib.util.find_spec("redis") is None:
        return None
    return shutil.which("redis-server")


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
    """Each fleet's `Result` (plain requests first) and what its breakers did (None for plain)."""

    results: list[Result]
    before_open: list[int | None]  # calls that reached the failing downstream before one opened
    opened_after: list[float | None]  # seconds from the start of the outage to it opening
    states: list[str]  # each fleet's state: "-" (plain), memory, host, Redis


@dataclass
class _Variant:
    """One fleet: its client, label, state, downstream and HAProxy URL."""

    client: str
    label: str
    down: _TimedDownstream
    state: str = ""
    url: str = ""
    opened: Path | None = None


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
    """Start every fleet, run *schedule* against them, stop everything; return the results."""
    haproxy = _haproxy_path()
    assert haproxy is not None  # checked by the caller
    redis_server = _redis_server()
    with tempfile.TemporaryDirectory(prefix="rc-fleet-") as tmp:
        workdir = Path(tmp)
        fleet = _Fleet(workdir)
        variants: list[_Variant] = []
        try:
            plain = f"requests timeout={_demo.PLAIN_TIMEOUT[0]:g},{_demo.PLAIN_TIMEOUT[1]:g}"
            fleets = [("plain", plain, ""),
                      ("memory", "rc, state memory", "memory"), ("host", "rc, state host", "host")]
            if redis_server is not None:
                rport = _free_port()
                fleet.spawn("redis", [redis_server, "--port", str(rport), "--bind", HOST,
                                      "--save", "", "--appendonly", "no"])
                fleet.wait_until("redis", rport, b"PING\r\n", b"+PONG")
                fleets.append(("redis", "rc, state Redis", f"redis://{HOST}:{rport}/0"))
            for client, label, state in fleets:
                # Each fleet has its own downstream; its clock starts with the load.
                down = _TimedDownstream(schedule, time.monotonic() + 3600)
                threading.Thread(target=down.serve_forever, kwargs={"poll_interval": 0.05},
                                 daemon=True).start()
                variant = _Variant(client, label, down, state)
                variants.append(variant)
                variant.url = _start_variant(fleet, workdir, haproxy, variant, reset_timeout)
                print(f"{label}: haproxy {variant.url} -> gunicorn, {FLEET_WORKERS} sync workers",
                      file=out)
            if redis_server is None:
                print("(no redis-server or redis-py: no Redis fleet)", file=out)
            return _drive(schedule, variants, rate, out)
        finally:
            fleet.stop()
            for v in variants:
                v.down.release.set()
                v.down.shutdown()
                v.down.server_close()


def _start_variant(fleet: _Fleet, workdir: Path, haproxy: str, variant: _Variant,
                   reset_timeout: float) -> str:
    gport, hport = _free_port(), _free_port()
    env = dict(os.environ)
    # The workers import this very package, wherever it is.
    pkg_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    name = variant.client
    variant.opened = workdir / f"opened-{name}"
    env.update(RC_DEMO_DOWNSTREAM=variant.down.url, RC_DEMO_STATE=variant.state or "memory",
               RC_DEMO_STATE_DIR=str(workdir / f"state-{name}"), RC_DEMO_OPENED=str(variant.opened),
               RC_DEMO_RESET_TIMEOUT=str(reset_timeout), RC_DEMO_CLIENT="plain" if name == "plain" else "rc")
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


def _drive(schedule: Schedule, variants: Sequence[_Variant], rate: float, out: TextIO) -> FleetResult:
    # Warm up: every worker builds its session (and connects to Redis) before t0.
    with requests.Session() as s:
        for v in variants:
            for _ in range(FLEET_WORKERS * 2):
                s.get(v.url, timeout=CLIENT_TIMEOUT)
    for v in variants:
        with v.down.lock:
            v.down.calls = dict.fromkeys(v.down.calls, 0)
            v.down.stamps.clear()
        if v.opened is not None:
            v.opened.unlink(missing_ok=True)
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
    results = [_demo.summarise(load, v.down, schedule, cutoff)
               for v, load in zip(variants, loads, strict=True)]
    outage_start = wall0 + schedule.phase("hang").start
    before: list[int | None] = []
    after: list[float | None] = []
    for v in variants:
        opened_at = _opened_at(v)
        with v.down.lock:
            failing = [ts for ts, phase in v.down.stamps if phase in _demo.OUTAGE]
        before.append(None if opened_at is None else sum(1 for ts in failing if ts < opened_at))
        after.append(None if opened_at is None else opened_at - outage_start)
    states = ["-" if v.client == "plain" else v.client for v in variants]
    return FleetResult(results, before, after, states)


def _opened_at(v: _Variant) -> float | None:
    if v.client == "plain" or v.opened is None:
        return None
    try:
        return float(v.opened.read_text())
    except (OSError, ValueError):
        return None


def _progress(t: float, jobs: Sequence[_Job]) -> str:
    done = [j for j in jobs if j.finished is not None and t - 1.0 <= j.finished < t]
    counts = {k: sum(1 for j in done if j.outcome == k) for k in ("ok", "fallback", "error", "queue")}
    return (f"ok {counts['ok']:3d} fb {counts['fallback']:3d} "
            f"err {counts['error']:3d} 503q {counts['queue']:3d}")


def render_fleet_table(fr: FleetResult) -> str:
    """The threaded demo's table for the fleets, plus what their breakers did."""
    def cells(values: list[str]) -> list[str]:
        return [v if s != "-" else "-" for v, s in zip(values, fr.states, strict=True)]

    extra = [
        ("calls before the shared breaker opened",
         cells(["never opened" if b is None else str(b) for b in fr.before_open])),
        ("  breaker opened after outage start",
         cells(["-" if a is None else f"{a:.2f} s" for a in fr.opened_after])),
        ("  failure_threshold", cells([
            "per worker" if s == "memory" else "whole host" if s == "host" else "whole fleet"
            for s in fr.states])),
        ("gunicorn workers", [str(FLEET_WORKERS)] * len(fr.results)),
    ]
    return _demo.render_table(fr.results, extra)


def fleet_verdict(fr: FleetResult) -> str:
    """One paragraph saying what the fleet table shows."""
    lines = []
    for r, state, before in zip(fr.results, fr.states, fr.before_open, strict=True):
        if state == "-":
            continue
        failing = sum(r.calls.get(p, 0) for p in _demo.OUTAGE)
        opened = ("its breakers never opened" if before is None else
                  f"{before} calls reached the failing downstream before "
                  + ("the first worker's breaker opened" if state == "memory"
                     else "the shared breaker opened"))
        errors = r.errors + r.queue_rejected + r.unanswered
        lines.append(f"state {state}: {r.throughput:.1f} answers/s, {errors} errors, {r.fallback} "
                     f"fallbacks; {opened}, {failing} in the whole outage")
    plain = fr.results[0]
    return (f"The plain fleet answered {plain.throughput:.1f} requests/s with "
            f"{plain.errors + plain.queue_rejected + plain.unanswered} errors. "
            f"With resilient_client (failure_threshold {FAILURE_THRESHOLD}, {FLEET_WORKERS} workers):\n"
            + "\n".join(lines) + ".")
