"""
Several processes, each with its own `ResilientSession`, sharing one
endpoint's breaker through a real Redis that is killed and restarted while
they run.

The script, on one monotonic clock (system-wide on Linux, so the processes
can compare times)::

    0.0  every process calls the peer in a loop (healthy: 200)
    0.5  the parent forces the shared breaker open   -> every process refuses
    1.0  ... and closes it                            -> 200 again
    1.2  the peer fails (503)                         -> the shared breaker opens
    1.5  the peer recovers                            -> a trial closes it
    2.3  Redis is killed (SIGKILL)                    -> calls go on, on local state
    3.1  Redis is started again, empty                -> the processes resync
    4.1  the parent forces the breaker open again     -> every process refuses
    4.7  ... and closes it; the processes stop at 5.0

Each process reports every call (when, outcome, how long). The test checks
that every process kept completing calls throughout, with no exception other
than the expected typed ones and no call slower than the deadline allows, and
that the forced opens, before the outage and after it, reached every process.

Existing tests cover the breaker alone across processes and a Redis outage in
one process (test_breaker_redis.py); this one runs whole sessions over HTTP.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import TYPE_CHECKING, Any

import pytest
import requests
from peers import Peer, Switch, answer, server_error

from resilient_client import CircuitOpenError, ResilientSession
from resilient_client._breaker import CircuitBreaker
from resilient_client._policy import BreakerPolicy

if TYPE_CHECKING:
    from conftest import RedisServer

pytestmark = pytest.mark.redis

PROCESSES = 3
TOTAL = 0.5
THRESHOLD = 3
RESET = 0.3
END = 5.0
SPAWN_WAIT = 20.0
#: When the parent does what, in seconds after the common start.
FORCE_1, CLOSE_1, FAIL, RECOVER, KILL, RESTART, FORCE_2, CLOSE_2 = 0.5, 1.0, 1.2, 1.5, 2.3, 3.1, 4.1, 4.7
#: How long a forced open may take to reach a process (shared-state cache, a Redis round trip).
PROPAGATION = 0.25


def policy(redis_url: str) -> BreakerPolicy:
    return BreakerPolicy(failure_threshold=THRESHOLD, reset_timeout=RESET, storage=redis_url)


def child(peer_url: str, redis_url: str, start: Any, out: Any) -> None:
    """One service process: call the peer every few ms until END; report every call."""
    config = {
        "defaults": {
            "timeout": {"connect": 0.2, "read": 0.3, "total": TOTAL},
            "retry": None,
            "budget": None,
        },
        "endpoints": [{
            "name": "svc",
            "match": peer_url,
            "breaker": {"failure_threshold": THRESHOLD, "reset_timeout": RESET, "storage": redis_url},
        }],
    }
    calls: list[tuple[float, str, float]] = []
    with ResilientSession(config) as session:
        session.get(peer_url + "warm")  # connections to the peer and Redis, before the clock starts
        t0 = start.get(timeout=SPAWN_WAIT)
        while time.monotonic() < t0 + END:
            began = time.monotonic()
            try:
                outcome = str(session.get(peer_url + "p").status_code)
            except (CircuitOpenError, requests.RequestException) as exc:
                outcome = type(exc).__name__
            except Exception as exc:  # anything else is a failure of the test
                outcome = f"UNEXPECTED {type(exc).__name__}: {exc}"
            calls.append((began - t0, outcome, time.monotonic() - began))
            time.sleep(0.005)
    out.put(calls)


def window(calls: list[tuple[float, str, float]], lo: float, hi: float) -> list[str]:
    return [outcome for t, outcome, _ in calls if lo <= t < hi]


class TestProcessesShareABreakerThroughRedis:
    def test_service_keeps_answering_while_redis_dies_and_returns(self, redis_server: RedisServer) -> None:
        """
        Three processes keep answering while Redis dies and returns; forced opens reach all of them.
        """
        redis_url = redis_server.url
        switch = Switch(answer(200, b"ok"))
        with Peer(lifetime=60.0) as peer:
            peer.on("/p", switch)
            peer.on("/warm", answer(200))
            ctx = multiprocessing.get_context("spawn")
            start, out = ctx.Queue(), ctx.Queue()
            procs = [
                ctx.Process(target=child, args=(peer.url("/"), redis_url, start, out), daemon=True)
                for _ in range(PROCESSES)
            ]
            for p in procs:
                p.start()
            try:
                deadline = time.monotonic() + SPAWN_WAIT
                while peer.hits("/warm") < PROCESSES and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert peer.hits("/warm") == PROCESSES, "the processes did not start"
                operator = CircuitBreaker("svc", policy(redis_url))
                t0 = time.monotonic()
                for _ in procs:
                    start.put(t0)

                def at(t: float) -> None:
                    time.sleep(max(0.0, t0 + t - time.monotonic()))

                at(FORCE_1)
                operator.open()
                at(CLOSE_1)
                operator.close()
                at(FAIL)
                switch.to(server_error(503))
                at(RECOVER)
                switch.to(answer(200, b"ok"))
                at(KILL)
                redis_server.stop()
                at(RESTART)
                redis_server.start()
                at(FORCE_2)
                operator.open()
                at(CLOSE_2)
                operator.close()
                results = [out.get(timeout=SPAWN_WAIT) for _ in procs]
            finally:
                for p in procs:
                    p.join(timeout=5)
                    if p.is_alive():
                        p.kill()

        for calls in results:
            outcomes = {o for _, o, _ in calls}
            assert outcomes <= {"200", "503", "CircuitOpenError"}, outcomes
            # Kept answering: calls completed in every quarter of a second, and none too slow.
            for lo in (i / 4 for i in range(int(END * 4) - 1)):
                assert window(calls, lo, lo + 0.25), f"no call completed in [{lo:.2f}, {lo + 0.25:.2f})"
            assert max(d for _, _, d in calls) <= TOTAL + 0.3
            # The operator's forced opens reached this process, before and after the outage.
            for opened, closed in ((FORCE_1, CLOSE_1), (FORCE_2, CLOSE_2)):
                refused = window(calls, opened + PROPAGATION, closed)
                assert refused and set(refused) == {"CircuitOpenError"}, (
                    opened, [c for c in calls if opened - 0.3 <= c[0] < closed + 0.1]
                )
            # With Redis gone, the peer (healthy) was still called and answered.
            assert "200" in window(calls, KILL + 0.1, RESTART)
            # The shared breaker opened while the peer failed, and closed again after.
            assert "CircuitOpenError" in window(calls, FAIL, RECOVER)
            assert window(calls, RECOVER + 2 * RESET, KILL)[-3:] == ["200"] * 3
        # Shared: while the peer failed, the processes together sent it about
        # one threshold of failures (plus trials), not one per process.
        failing = sum(window(calls, FAIL, RECOVER).count("503") for calls in results)
        print(f"\n503s seen by {PROCESSES} processes while the peer failed: {failing}; calls: "
              f"{[len(c) for c in results]}; slowest {max(d for c in results for _, _, d in c):.3f} s")
        assert THRESHOLD <= failing < PROCESSES * THRESHOLD + 3
