"""
Real gunicorn workers on one host calling one peer, with the breaker,
budget and bulkhead per worker (``state: memory``), shared on the host
(``state: host``) or the breaker in Redis (``state: redis://...``, when
``redis-server`` is on PATH). Each run starts gunicorn (``--preload``, sync
workers unless said) on a fresh ``state_dir``, loads it for a few seconds
and counts at the peer (tests/peers.py, in this process):

    503 peer          calls reaching a peer that answers 503 (after 20 ms)
                      before every worker fails fast: one client thread per
                      worker, closed loop, 2 s; failure_threshold 5, no
                      retry, reset_timeout 60 s (no trial during the run).
                      Goal with host: 5 + the calls in flight when it opens.
    hanging peer      the same against a peer that never answers (read
                      timeout 0.5 s, 4 s of load): the calls in flight at
                      the outage start (one per worker) + what follows
                      before the breaker opens. Goal with host: at most
                      N workers + 5.
    trials            calls reaching the 503 peer per reset_timeout (0.5 s)
                      once the breaker is open, over 3 s. Goal with host: 1.
    amplification     16 workers, 100 calls/s in total (open loop) against
                      a peer answering 503 at once: peer requests per call
                      over the 5 s after a 10 s warm-up (the budget's
                      window: steady state), with 3 attempts and the
                      default budget (ratio 0.2, 10 retries/s) and no
                      breaker. Goal with host: <= 1.35 (1 + 0.2 + 10/100).
    bulkhead          16 gthread workers x 4 threads, 64 client threads, a
                      peer answering after 0.2 s: the most calls in flight
                      at the peer with max_concurrent 20. Goal with host: 20.

    python benchmarks/bench_host_fleet.py [--workers 8 16] [--quick] [--smoke]

About 3 minutes; ``--quick`` about a minute (8 workers, shorter loads).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import _util
import peers
from peers import Peer, answer, delay, hang, server_error

WORKERS = (8, 16)


class _InFlight:
    """A peer behaviour that answers 200 after *seconds*, counting requests in flight at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.now = self.most = 0
        self._lock = threading.Lock()

    def serve(self, conn: Any, request: Any) -> bool:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            conn.wait(self.seconds)
        finally:
            with self._lock:
                self.now -= 1
        return bool(answer(200, b"ok").serve(conn, request))


@contextlib.contextmanager
def _gunicorn(config: dict[str, Any], peer_url: str, workers: int, *options: str) -> Iterator[int]:
    """gunicorn on a free port serving benchmarks/_fleet_app.py with *config*; its port."""
    port = peers.free_port()
    env = {**os.environ, "RC_BENCH_CONFIG": json.dumps(config), "RC_BENCH_PEER": peer_url,
           "PYTHONPATH": os.pathsep.join([str(_util.ROOT), str(_util.HERE), *sys.path])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--preload", "--workers", str(workers), *options,
         "--bind", f"127.0.0.1:{port}", "--log-level", "error", "--backlog", "512", "_fleet_app:app"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _util._wait_listening(port, timeout=30)
        time.sleep(0.3 + workers * 0.02)  # the workers forked and ready
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGQUIT)  # gunicorn's quick shutdown
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _get(port: int, timeout: float = 10.0) -> str:
    import requests

    try:
        r = requests.get(f"http://127.0.0.1:{port}/", timeout=timeout, headers={"Connection": "close"})
        return r.headers.get("X-Outcome", str(r.status_code))
    except requests.RequestException as exc:
        return type(exc).__name__


def _closed_loop(port: int, clients: int, seconds: float) -> list[str]:
    """*clients* threads calling one after another for *seconds*; every outcome."""
    outcomes: list[str] = []
    end = time.monotonic() + seconds

    def client() -> None:
        for _ in range(100_000):  # bounded; ends by time long before
            if time.monotonic() >= end:
                return
            outcomes.append(_get(port))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    return outcomes


def _open_loop(port: int, rate: float, seconds: float, mark: Any = None, at: float = 0.0) -> list[str]:
    """*rate* calls per second for *seconds*, whatever the answers take (bounded pool);
    *mark()* is called once *at* seconds in, before that call is sent."""
    with ThreadPoolExecutor(max_workers=64) as pool:
        futures = []
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if mark is not None and i == int(rate * at):
                mark()
            futures.append(pool.submit(_get, port))
        return [f.result(timeout=60) for f in futures]


def _config(state: str, state_dir: str, **sections: Any) -> dict[str, Any]:
    return {"state_dir": state_dir, "defaults": {"state": state, **sections}}


def _states(redis_url: str | None) -> list[tuple[str, str]]:
    return [("memory", "memory"), ("host", "host"), *([("Redis", redis_url)] if redis_url else [])]


_BREAKER = {"failure_threshold": 5, "reset_timeout": 60}


def _outage(kind: str, state: str, workers: int, seconds: float) -> tuple[int, int]:
    """Peer requests before every worker fails fast, and how many calls were made."""
    with Peer(max_connections=256) as peer, tempfile.TemporaryDirectory(prefix="rc-fleet-") as d:
        if kind == "503":
            peer.on("/", delay(0.02, server_error(503)))
            timeout = {"read": 2.0, "total": 3.0}
        else:
            peer.on("/", hang())
            timeout = {"read": 0.5, "total": 1.0}
        config = _config(state, d, retry=None, timeout=timeout, breaker=_BREAKER)
        with _gunicorn(config, peer.url("/"), workers) as port:
            outcomes = _closed_loop(port, workers, seconds)
        return peer.hits(), len(outcomes)


def _trials(state: str, workers: int, seconds: float, reset: float = 0.5) -> float:
    """Calls reaching the 503 peer per reset_timeout once the breaker is open."""
    with Peer(max_connections=256) as peer, tempfile.TemporaryDirectory(prefix="rc-fleet-") as d:
        peer.on("/", delay(0.02, server_error(503)))
        config = _config(state, d, retry=None, breaker={"failure_threshold": 5, "reset_timeout": reset})
        with _gunicorn(config, peer.url("/"), workers) as port:
            _closed_loop(port, workers, 1.0)  # every worker sees it open
            before = peer.hits()
            _closed_loop(port, workers, seconds)
            return (peer.hits() - before) / (seconds / reset)


def _amplification(state: str, workers: int, warm: float, seconds: float, rate: float = 100.0
                   ) -> tuple[float, int]:
    """Peer requests per call over *seconds* after *warm* seconds of the same load."""
    with Peer(max_connections=256) as peer, tempfile.TemporaryDirectory(prefix="rc-fleet-") as d:
        peer.on("/", server_error(503))
        retry = {"attempts": 3, "backoff": {"initial": 0.01, "max": 0.05}}
        config = _config(state, d, breaker=None, retry=retry)
        marks: list[int] = []
        with _gunicorn(config, peer.url("/"), workers) as port:
            _open_loop(port, rate, warm + seconds, lambda: marks.append(peer.hits()), warm)
        calls = int(rate * seconds)
        # The calls of the last moment are answered (the pool waits): their retries count.
        return (peer.hits() - marks[0]) / calls, calls


def _bulkhead(state: str, workers: int, seconds: float) -> int:
    with Peer(max_connections=512) as peer, tempfile.TemporaryDirectory(prefix="rc-fleet-") as d:
        slow = _InFlight(0.2)
        peer.on("/", slow)
        config = _config(state, d, retry=None, breaker=None, bulkhead={"max_concurrent": 20})
        with _gunicorn(config, peer.url("/"), workers, "--worker-class", "gthread", "--threads", "4") as port:
            _closed_loop(port, workers * 4, seconds)
        return slow.most


def run(*, workers: tuple[int, ...] = WORKERS, quick: bool = False, smoke: bool = False) -> list[_util.Row]:
    if shutil.which("gunicorn") is None and not _has("gunicorn"):
        return [_util.Row("host fleet", "skipped: gunicorn is not installed", 0, "")]
    if smoke:
        workers, quick = (2,), True
    elif quick:
        workers = (8,)
    short = 1.0 if smoke else 2.0
    rows: list[_util.Row] = []
    with _util.redis_server() as redis_url:
        states = _states(redis_url)
        for n in workers:
            # Against a hang, a worker of its own needs 5 read timeouts (2.5 s) to open.
            for kind, seconds in (("503", short), ("hanging", short + 2.0)):
                for label, state in states:
                    hits, calls = _outage(kind, state, n, seconds)
                    goal = f"<= {5 + n}" if label == "host" else ""
                    rows.append(_util.Row(
                        "host fleet", f"{kind} peer, {n} workers, {label}: calls reaching it", hits, "",
                        target=goal, met=(hits <= 5 + n) if goal else None,
                        note=f"{calls} calls in {seconds:g} s; failure_threshold 5",
                    ))
        n = max(workers)
        for label, state in states:
            per = _trials(state, n, 1.5 if smoke else 3.0)
            rows.append(_util.Row(
                "host fleet", f"trials per reset_timeout, {n} workers, {label}", per, "",
                target="~1" if label == "host" else "", met=(per <= 1.5) if label == "host" else None,
                note="503 peer, reset_timeout 0.5 s",
            ))
        amp_workers = 2 if smoke else 16
        for label, state in states[:2]:  # Redis shares the budget on the host as host does
            warm, seconds = (0.5, 0.5) if smoke else ((5.0, 3.0) if quick else (10.0, 5.0))
            amp, calls = _amplification(state, amp_workers, warm, seconds)
            rows.append(_util.Row(
                "host fleet", f"retry amplification, {amp_workers} workers at 100/s, {label}", amp, "x",
                target="<= 1.35" if label == "host" else "", met=(amp <= 1.35) if label == "host" else None,
                note=f"{calls} calls after {warm:g} s; 3 attempts, budget 0.2 + 10/s, no breaker",
            ))
        for label, state in states[:2]:
            most = _bulkhead(state, amp_workers, short)
            rows.append(_util.Row(
                "host fleet", f"most in flight at the peer, max_concurrent 20, {amp_workers} x 4 threads, "
                f"{label}", most, "", target="<= 20" if label == "host" else "",
                met=(most <= 20) if label == "host" else None,
            ))
    return rows


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=list(WORKERS))
    ap.add_argument("--quick", action="store_true", help="8 workers, shorter loads (about a minute)")
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    _util.print_rows(run(workers=tuple(a.workers), quick=a.quick, smoke=a.smoke))


if __name__ == "__main__":
    main()
