"""
Stress: 32 threads sharing one session against a flapping peer on 127.0.0.1.

The peer alternates, every `PHASE` seconds, between healthy (200) and failing
(503, RST, a hang past the read timeout, in turn), so the breaker opens,
half-opens and closes again many times while every thread keeps calling.
Afterwards: the breaker's counters agree with the attempts the peer saw and
with what the callers got, only the expected typed exceptions escaped, the
client never held more sockets than its pool size, none is left over, and
memory is flat across repeated equal runs (tracemalloc).

The short version runs by default (a few seconds); the long one is marked
``stress`` and left out of CI's ``-m "not stress"``. Run it with::

    python -m pytest tests/test_stress.py -m stress -s

(``-s`` prints the figures: threads x calls, duration, max sockets, memory delta.)
"""

from __future__ import annotations

import gc
import multiprocessing
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from faults import client_sockets
from peers import Peer, answer, flap, hang, peer_process, reset, server_error

from resilient_client import (
    AttemptFinished,
    BreakerRejected,
    BreakerStateChanged,
    BulkheadFull,
    CircuitOpenError,
    DeadlineExceeded,
    Event,
    ResilientSession,
)
from resilient_client._deadline import DeadlineAdapter

THREADS = 32
POOL = THREADS  # connections the client's pool keeps: one per thread
PHASE = 0.2  # seconds healthy, then seconds failing, and so on
PAUSE = 0.01  # between two calls of one thread, so that a run spans several phases
TOTAL = 0.6
#: What callers may get besides a response: each is a typed, documented outcome.
EXPECTED = (
    CircuitOpenError,
    DeadlineExceeded,
    BulkheadFull,
    requests.ConnectionError,
    requests.ReadTimeout,
    requests.exceptions.ChunkedEncodingError,
)

CONFIG: dict[str, Any] = {
    "defaults": {
        "timeout": {"connect": 0.2, "read": 0.1, "total": TOTAL},
        "retry": {"attempts": 3, "backoff": {"initial": 0.002, "max": 0.01}},
        "budget": {"ratio": 0.2, "min_per_second": 50},
        "breaker": {"failure_threshold": 5, "reset_timeout": 0.05},
        "bulkhead": {"max_concurrent": THREADS},
    }
}


def flapping_peer() -> Peer:
    failing = flap(server_error(503), reset(), hang())
    peer = Peer(lifetime=600.0, max_connections=4 * THREADS)
    peer.on("/s", flap(answer(200, b"ok"), failing, period=PHASE))
    return peer.start()


def stress_session(listeners: list[Any] | None = None) -> ResilientSession:
    session = ResilientSession(CONFIG, listeners=listeners or [])
    # One connection per thread: with more threads than connections, urllib3
    # opens extra ones and drops them, which is churn, not a leak.
    session.mount("http://", DeadlineAdapter(pool_maxsize=POOL))
    return session


@dataclass
class Run:
    """What one bounded run did."""

    calls: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[type] = field(default_factory=Counter)
    unexpected: list[BaseException] = field(default_factory=list)
    slowest: float = 0.0
    duration: float = 0.0
    max_sockets: int = 0


def run(session: ResilientSession, url: str, calls: int, *, cap: float = 60.0) -> Run:
    """THREADS threads make *calls* calls each (or stop at *cap* seconds); return the tally."""
    result = Run()
    lock = threading.Lock()
    start = threading.Barrier(THREADS + 1)
    stop_at = [0.0]
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])

    def worker() -> None:
        local = Run()
        start.wait()
        for _ in range(calls):
            if time.monotonic() > stop_at[0]:
                break
            t = time.monotonic()
            try:
                resp = session.get(url)
                local.statuses[resp.status_code] += 1
            except EXPECTED as exc:
                local.errors[type(exc)] += 1
            except BaseException as exc:  # anything else is what this test looks for
                local.unexpected.append(exc)
            local.calls += 1
            local.slowest = max(local.slowest, time.monotonic() - t)
            time.sleep(PAUSE)
        with lock:
            result.calls += local.calls
            result.statuses.update(local.statuses)
            result.errors.update(local.errors)
            result.unexpected += local.unexpected
            result.slowest = max(result.slowest, local.slowest)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(THREADS)]
    for t in threads:
        t.start()
    began = time.monotonic()
    stop_at[0] = began + cap
    start.wait()
    while any(t.is_alive() for t in threads) and time.monotonic() < began + cap + 5:
        result.max_sockets = max(result.max_sockets, client_sockets(port))
        time.sleep(0.005)
    for t in threads:
        t.join(timeout=5)
    result.duration = time.monotonic() - began
    return result


class _Tally:
    """A listener that counts events (a bounded amount of memory, unlike a list)."""

    def __init__(self) -> None:
        self.attempts = 0
        self.rejected = 0
        self.changes: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            if isinstance(event, AttemptFinished):
                self.attempts += 1
            elif isinstance(event, BreakerRejected):
                self.rejected += 1
            elif isinstance(event, BreakerStateChanged):
                self.changes.append((event.old, event.new))


@pytest.fixture
def peer() -> Iterator[Peer]:
    p = flapping_peer()
    try:
        yield p
    finally:
        p.stop()


def check_run(session: ResilientSession, peer: Peer, tally: _Tally, r: Run, calls: int) -> None:
    """The assertions shared by the short and the long run."""
    url = peer.url("/s")
    assert not r.unexpected, r.unexpected[:3]
    assert r.calls == THREADS * calls
    # Nothing ran past the deadline (plus scheduling slack on a busy box).
    assert r.slowest <= TOTAL + 0.5
    # The peer flapped for real: successes, failures and an open breaker were all seen.
    assert r.statuses[200] > 0 and r.errors[CircuitOpenError] > 0
    assert ("closed", "open") in tally.changes and ("half-open", "closed") in tally.changes

    stats = session.circuit(url).stats()
    # Every attempt let through was recorded exactly once, and reached the peer.
    assert stats.successes + stats.failures == tally.attempts == peer.hits("/s")
    # Every rejection was counted once and reached a caller as CircuitOpenError.
    assert stats.rejected == tally.rejected == r.errors[CircuitOpenError]
    # State changes chain: each starts where the previous one ended.
    for (_, new), (old, _) in zip(tally.changes, tally.changes[1:], strict=False):
        assert new == old, tally.changes

    # Sockets: about the pool size at once, and none left but idle pooled ones.
    # A connection the peer dropped in a failing phase sits in CLOSE_WAIT until
    # the collector frees the failed call's traceback that holds it, so a few
    # may overlap the pool's new ones for a moment (36 of 32 seen once on a
    # busy box); a leak grows with the 1,280 calls instead, and the strict
    # check below, after a collection, finds any.
    assert r.max_sockets <= POOL + POOL // 4
    session.close()
    # urllib3 2 closes idle pooled connections when they are collected, not
    # on close(): collect, then none may be left.
    gc.collect()
    deadline = time.monotonic() + 2.0
    while client_sockets(peer.port) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client_sockets(peer.port) == 0


def report(name: str, r: Run, calls: int, memory: int | None = None) -> None:
    extra = f", memory delta {memory / 1024:.1f} KiB" if memory is not None else ""
    print(
        f"\n{name}: {THREADS} threads x {calls} calls = {r.calls} calls in {r.duration:.2f} s, "
        f"max client sockets {r.max_sockets} (pool {POOL}), slowest call {r.slowest:.3f} s, "
        f"statuses {dict(r.statuses)}, errors { {t.__name__: n for t, n in r.errors.items()} }"
        f"{extra}"
    )


def _measure(url: str, calls: int, out: Any) -> None:
    """In a fresh process: warm up, then trace two equal runs; report the growth of the second."""
    session = stress_session([_Tally()])
    run(session, url, calls)  # warm-up: routes, pools, breaker, caches
    tracemalloc.start()
    sizes = []
    for _ in range(2):
        r = run(session, url, calls)
        if r.unexpected:
            out.put(("unexpected", [repr(e) for e in r.unexpected[:3]]))
            return
        # Idle pooled connections (up to the pool size, each with its
        # buffers) vary from run to run; what must stay flat is the rest.
        session.get_adapter(url).poolmanager.clear()
        gc.collect()
        sizes.append(tracemalloc.get_traced_memory()[0])
    tracemalloc.stop()
    session.close()
    report("memory", r, calls, sizes[1] - sizes[0])
    out.put(("delta", sizes[1] - sizes[0]))


def memory_delta(calls: int) -> int:
    """
    Bytes the client holds after a second run of THREADS x *calls* beyond what
    it held after the first (after a warm-up run that fills routes, pools,
    breaker and caches). The client runs in a fresh process and the peer in
    another, so that what is traced is the client's alone, whatever else the
    test session has running.
    """
    ctx = multiprocessing.get_context("spawn")
    with peer_process("test_stress:flapping_peer") as remote:
        out = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(remote.url("/s"), calls, out), daemon=True)
        proc.start()
        try:
            kind, value = out.get(timeout=120)
        finally:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    assert kind == "delta", value
    return int(value)


class TestStress:
    def test_short_run_under_flapping_peer(self, peer: Peer) -> None:
        """
        32 threads sharing a session through a flapping peer end with consistent counters and no leak.
        """
        calls = 40
        tally = _Tally()
        session = stress_session([tally])
        r = run(session, peer.url("/s"), calls)
        report("short", r, calls)
        check_run(session, peer, tally, r, calls)

    def test_memory_is_flat_across_equal_runs(self) -> None:
        """
        A second bounded run allocates no more than the first left behind (tracemalloc).
        """
        delta = memory_delta(calls=10)
        assert delta < 32 * 1024

    @pytest.mark.stress
    def test_long_run_under_flapping_peer(self, peer: Peer) -> None:
        """
        The long version: 32 threads x 400 calls each through a flapping peer, same checks.
        """
        calls = 400
        tally = _Tally()
        session = stress_session([tally])
        r = run(session, peer.url("/s"), calls, cap=300.0)
        report("long", r, calls)
        check_run(session, peer, tally, r, calls)

    @pytest.mark.stress
    def test_long_memory_is_flat_across_equal_runs(self) -> None:
        """
        The long version: two runs of 32 threads x 150 calls leave memory flat (tracemalloc).
        """
        assert memory_delta(calls=150) < 32 * 1024
