"""
Overload (issue 14): a real peer whose capacity is fixed, behind a real
HAProxy with ``maxconn`` and ``timeout queue``, under open-loop load at 3x
its capacity, then 0.5x.

    peer       gunicorn sync workers (``--workers``, 4), each sleeping 50 ms
               per request (`_overload_app`): capacity = workers / 50 ms,
               measured closed-loop before the runs.
    proxy      HAProxy: ``server ... maxconn <workers>`` (the rest queue in
               HAProxy), ``timeout queue 5s``, no ``abortonclose`` (HAProxy's
               default: a queued request whose caller left is still sent),
               and the proxy_errors recipe of docs/overload.md.
    load       open loop: arrivals at a fixed rate (a thread pool runs each
               call; the caller's latency counts from the arrival), 3x
               capacity for ``--high`` s (30), then 0.5x for ``--low`` s (15).
    callers    each call has a 1 s deadline:
               plain       requests.Session, timeout=(1, 1)
               defaults    ResilientSession, today's defaults, total 1 s
               overload    defaults + throttle {window: 10} + concurrency {aimd}
                           + proxy_errors

Reported per caller: goodput (200s the callers got per second while the
overload lasted, over the measured capacity), caller p50/p99 over every call, how
long a shed call took (median wall time in the calling thread, and a
single-threaded measurement of one refusal), calls the peer received
(HAProxy's session count for the server), time to recover (from the load
drop to the last failed call), and how often the breaker opened.

    python benchmarks/bench_overload.py [--workers 4] [--high 30] [--low 15] [--quick]

(or ``python benchmarks/run.py --only overload``; ``--smoke`` there is
``--quick`` here: 3 s + 2 s, for the smoke test).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _util  # this checkout's package and the test server (tests/peers.py)

SERVICE_TIME = 0.050
DEADLINE = 1.0
RECIPE = (
    '    http-error status 503 content-type text/plain string "no server available" hdr X-Proxy-Error 503\n'
    '    http-error status 502 content-type text/plain string "bad gateway" hdr X-Proxy-Error 502\n'
    '    http-error status 504 content-type text/plain string "server timeout" hdr X-Proxy-Error 504\n'
)


@dataclass
class Result:
    scheduled: float
    ended: float
    ok: bool
    shed: bool
    shed_cost: float
    shed_cpu: float = 0.0


# -- the peer and the proxy ---------------------------------------------------------


@contextlib.contextmanager
def gunicorn(workers: int) -> Iterator[int]:
    port = _util.peers.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", str(workers), "-k", "sync", "--backlog", "2048",
         "-b", f"127.0.0.1:{port}", "--chdir", str(_util.HERE), "--log-level", "warning",
         "_overload_app:app"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _util._wait_listening(port, 20.0)
        yield port
    finally:
        _util._stop(proc)


@contextlib.contextmanager
def haproxy(server_port: int, workers: int) -> Iterator[tuple[str, str]]:
    binary = shutil.which("haproxy") or shutil.which("/usr/sbin/haproxy")
    if binary is None:
        raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
    port = _util.peers.free_port()
    with tempfile.TemporaryDirectory(prefix="rc-bench-haproxy-") as d:
        sock = os.path.join(d, "admin.sock")
        cfg = Path(d) / "haproxy.cfg"
        cfg.write_text(
            f"global\n    maxconn 4096\n    stats socket {sock} mode 600 level admin\n\n"
            "defaults\n    mode http\n    retries 0\n    timeout connect 1s\n    timeout client 30s\n"
            f"    timeout server 10s\n    timeout queue 5s\n{RECIPE}\n"
            f"frontend fe\n    bind 127.0.0.1:{port}\n    maxconn 4096\n    default_backend app\n\n"
            f"backend app\n    server g1 127.0.0.1:{server_port} maxconn {workers}\n")
        proc = subprocess.Popen([binary, "-f", str(cfg), "-db"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _util._wait_listening(port)
            yield f"http://127.0.0.1:{port}/work", sock
        finally:
            _util._stop(proc)


def server_sessions(sock: str) -> int:
    """Requests HAProxy sent to the server (its ``stot``)."""
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(2)
        c.connect(sock)
        c.sendall(b"show stat\n")
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    lines = data.decode().splitlines()
    head = lines[0].lstrip("# ").split(",")
    for line in lines[1:]:
        if line.startswith("app,g1,"):
            return int(line.split(",")[head.index("stot")])
    return -1


def wait_idle(sock: str, timeout: float = 15.0) -> None:
    """Until HAProxy's queue has drained (the previous caller's leftovers)."""
    end = time.monotonic() + timeout
    last = -1
    while time.monotonic() < end:
        now = server_sessions(sock)
        if now == last:
            return
        last = now
        time.sleep(0.5)


# -- the callers --------------------------------------------------------------------


def plain_caller() -> tuple[Callable[[str], bool], Callable[[], int], Callable[[], None]]:
    import requests

    s = requests.Session()
    s.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=512))

    def call(url: str) -> bool:
        return s.get(url, timeout=(DEADLINE, DEADLINE)).status_code == 200

    return call, lambda: 0, s.close


def resilient_caller(extra: dict[str, Any]) -> tuple[Callable[[str], bool], Callable[[], int],
                                                     Callable[[], None]]:
    import resilient_client as rc

    opens = [0]

    def listen(e: Any) -> None:
        if isinstance(e, rc.BreakerStateChanged) and e.new == "open":
            opens[0] += 1

    s = rc.ResilientSession({"defaults": {"timeout": {"connect": DEADLINE, "read": DEADLINE,
                                                      "total": DEADLINE}, **extra}},
                            listeners=[listen])

    def call(url: str) -> bool:
        resp = s.get(url)
        return resp.status_code == 200 and not resp.is_fallback

    return call, lambda: opens[0], s.close


CALLERS: dict[str, Callable[[], tuple[Callable[[str], bool], Callable[[], int], Callable[[], None]]]] = {
    "plain requests": plain_caller,
    "resilient_client defaults": lambda: resilient_caller({}),
    "throttle + adaptive concurrency": lambda: resilient_caller({
        "throttle": {"window": 10}, "concurrency": {"algorithm": os.environ.get("BENCH_ALGORITHM", "aimd")},
        "proxy_errors": {"header": "X-Proxy-Error"}}),
}


def one_call(call: Callable[[str], bool], url: str, scheduled: float) -> Result:
    from resilient_client import BulkheadFull, CircuitOpenError, Throttled

    started, cpu = time.perf_counter(), time.thread_time()
    try:
        ok, shed = call(url), False
    except (Throttled, BulkheadFull, CircuitOpenError):
        ok, shed = False, True
    except Exception:
        ok, shed = False, False
    ended = time.perf_counter()
    return Result(scheduled, ended, ok, shed, ended - started, time.thread_time() - cpu)


def open_loop(call: Callable[[str], bool], url: str, phases: list[tuple[float, float]]) -> list[Result]:
    """Arrivals at each phase's rate (per second) for its duration; every call's result."""
    results: list[Result] = []
    lock = threading.Lock()
    with concurrent.futures.ThreadPoolExecutor(max_workers=400) as pool:
        t0 = time.perf_counter()
        at = 0.0
        futures = []
        for rate, duration in phases:
            end = at + duration
            while at < end:
                delay = t0 + at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(one_call, call, url, t0 + at))
                at += 1.0 / rate
        for f in futures:
            r = f.result(timeout=60)
            with lock:
                results.append(Result(r.scheduled - t0, r.ended - t0, r.ok, r.shed, r.shed_cost,
                                      r.shed_cpu))
    return results


def capacity(url: str, workers: int, seconds: float) -> float:
    """
    Closed loop with two callers per worker (HAProxy's queue is never empty,
    so no worker waits for a caller): the answers per second the peer gives.
    """
    import requests

    done = [0]
    end = time.perf_counter() + seconds
    lock = threading.Lock()

    def loop() -> None:
        with requests.Session() as s:
            while time.perf_counter() < end:
                if s.get(url, timeout=5).status_code == 200:
                    with lock:
                        done[0] += 1

    threads = [threading.Thread(target=loop) for _ in range(2 * workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 10)
    return done[0] / seconds


def isolated_shed_cost(calls: int) -> float:
    """One thread, a saturated throttle: the median wall time of one refused call, µs."""
    import requests

    import resilient_client as rc

    s = rc.ResilientSession({"defaults": {"retry": None, "breaker": None,
                                          "throttle": {"max_reject": 1.0, "min_requests": 1}}})
    url = "http://127.0.0.1:9/never"
    state = s._route_for("GET", url).state  # the endpoint's throttle, saturated by hand
    for _ in range(100_000):  # reject probability 1 - 1e-5
        state.overload.throttle.record(False)
    samples = []
    for _ in range(calls):
        t = time.perf_counter()
        try:
            s.get(url)
        except rc.Throttled:
            samples.append(time.perf_counter() - t)
        except requests.RequestException:
            pass  # the rare call the throttle let through (port 9 refuses it)
    s.close()
    return statistics.median(samples) * 1e6 if samples else float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run(*, workers: int = 4, high: float = 30.0, low: float = 15.0, smoke: bool = False,
        quick: bool = False, callers: list[str] | None = None) -> list[_util.Row]:
    if smoke or quick:
        high, low = 3.0, 2.0
    rows: list[_util.Row] = []
    with gunicorn(workers) as gport, haproxy(gport, workers) as (url, sock):
        cap = capacity(url, workers, 1.0 if (smoke or quick) else 3.0)
        nominal = workers / SERVICE_TIME
        rows.append(_util.Row("overload", "peer capacity (closed loop)", round(cap, 1), "calls/s",
                              note=f"{workers} gunicorn sync workers x 50 ms = {nominal:g}/s nominal"))
        for name, make in CALLERS.items():
            if callers and not any(c in name for c in callers):
                continue
            wait_idle(sock)
            call, opens, close = make()
            before = server_sessions(sock)
            results = open_loop(call, url, [(3 * cap, high), (0.5 * cap, low)])
            received = server_sessions(sock) - before
            close()
            # Answers the callers got while the overload lasted, per second.
            answered = sum(r.ok for r in results if r.ended <= high) / high
            goodput = answered / cap
            lat = [(r.ended - r.scheduled) * 1e3 for r in results]
            shed = [r.shed_cost * 1e6 for r in results if r.shed]
            shed_cpu = [r.shed_cpu * 1e6 for r in results if r.shed]
            failed_after = [r.scheduled for r in results if r.scheduled >= high and not r.ok]
            recover = (max(failed_after) - high) if failed_after else 0.0
            note = (f"{answered:.1f} answers/s = {answered / nominal:.2f} of the nominal {nominal:g}/s; "
                    f"{len(results)} calls, {sum(r.ok for r in results)} ok, {len(shed)} shed; "
                    f"peer received {received}; p50 {percentile(lat, 0.5):.0f} ms, "
                    f"p99 {percentile(lat, 0.99):.0f} ms")
            rows += [
                _util.Row("overload", f"{name}: goodput / capacity", round(goodput, 2), "",
                          target=">= 0.9", met=goodput >= 0.9, note=note),
                _util.Row("overload", f"{name}: caller p50", percentile(lat, 0.5), "ms"),
                _util.Row("overload", f"{name}: caller p99", percentile(lat, 0.99), "ms"),
                _util.Row("overload", f"{name}: shed call, median wall time under load",
                          statistics.median(shed) if shed else float("nan"), "µs",
                          target="< 50 µs", met=bool(shed) and statistics.median(shed) < 50,
                          note=f"{len(shed)} shed calls; wall time includes waiting for the GIL "
                               "among the pool's threads"),
                _util.Row("overload", f"{name}: shed call, median CPU time under load",
                          statistics.median(shed_cpu) if shed_cpu else float("nan"), "µs",
                          target="< 50 µs", met=bool(shed_cpu) and statistics.median(shed_cpu) < 50,
                          note="the calling thread's own CPU time (time.thread_time)"),
                _util.Row("overload", f"{name}: calls the peer received", received, "calls"),
                _util.Row("overload", f"{name}: time to recover", recover, "s",
                          target="<= 10 s", met=recover <= 10.0,
                          note=f"last failed call {recover:.1f} s after the load dropped (of {low:g} s)"),
                _util.Row("overload", f"{name}: breaker opened", opens(), "times",
                          target="<= 1", met=opens() <= 1),
            ]
    shed_us = isolated_shed_cost(200 if (smoke or quick) else 5000)
    rows.append(_util.Row("overload", "throttle refusal, one thread, no load", shed_us, "µs",
                          target="< 50 µs", met=shed_us < 50))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--high", type=float, default=30.0, help="seconds at 3x capacity")
    ap.add_argument("--low", type=float, default=15.0, help="seconds at 0.5x capacity after")
    ap.add_argument("--quick", action="store_true", help="3 s + 2 s: check that it runs")
    ap.add_argument("--callers", nargs="+", metavar="WORD",
                    help="only the callers whose name contains one of these words")
    args = ap.parse_args()
    rows = run(workers=args.workers, high=args.high, low=args.low, quick=args.quick,
               callers=args.callers)
    print(f"command: python benchmarks/bench_overload.py {' '.join(sys.argv[1:])}".rstrip())
    _util.print_rows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
