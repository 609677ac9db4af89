"""
Circuit breakers sharing their state through a real Redis: across breakers,
sessions and processes, and without Redis becoming a point of failure.

Each test gets its own ``redis-server`` (see ``conftest.redis_server``). In
Redis mode ``reset_timeout`` is measured on Redis's clock, so these tests use
real time, with timeouts of a few hundred milliseconds at most.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pybreaker
import pytest

import resilient_client
from resilient_client import _breaker_redis
from resilient_client._breaker import BreakerState, CircuitBreaker
from resilient_client._policy import BreakerPolicy
from resilient_client.exceptions import CircuitOpenError

if TYPE_CHECKING:
    from conftest import RedisServer

pytestmark = pytest.mark.redis

#: Every wait in this file polls with this bound, instead of sleeping.
WAIT = 3.0
#: Starting a fresh interpreter can be slow on a loaded CI machine.
SPAWN_WAIT = 15.0


def eventually(check: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def policy(url: str, **kw: Any) -> BreakerPolicy:
    kw.setdefault("failure_threshold", 3)
    kw.setdefault("reset_timeout", 30.0)
    return BreakerPolicy(storage=url, **kw)


def fail(breaker: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        is_trial = breaker.before_call()
        breaker.record(success=False, is_trial=is_trial, duration=0.01)


def refused(breaker: CircuitBreaker) -> bool:
    try:
        is_trial = breaker.before_call()
    except CircuitOpenError:
        return True
    breaker.record(success=True, is_trial=is_trial)
    return False


@pytest.fixture(autouse=True)
def _fast_reconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    # Try a returning Redis every 50 ms rather than every second.
    monkeypatch.setattr(_breaker_redis, "_REDIS_RETRY_INTERVAL", 0.05)


class TestSharedState:
    def test_two_breakers_with_one_name_share_state(self, redis_url: str) -> None:
        """
        Failures recorded by one breaker open its namesake, and a trial's
        success through the other closes both; other names are unaffected.
        """
        p = policy(redis_url, reset_timeout=0.15)
        a = CircuitBreaker("inventory", p)
        b = CircuitBreaker("inventory", p)
        other = CircuitBreaker("billing", p)
        fail(a, 2)
        fail(b)  # failures in any process add up
        assert b.state == "open"
        eventually(lambda: a.state == "open")  # once its cached view (20 ms) expires
        assert refused(b)
        assert b.stats().shared is True
        assert other.state == "closed"
        eventually(lambda: b.state == "half-open")
        assert b.before_call() is True
        assert refused(a)  # the trial is b's
        b.record(success=True, is_trial=True)
        eventually(lambda: a.state == "closed")

    def test_two_sessions_share_a_circuit(self, redis_url: str) -> None:
        """
        session.circuit(name).open() in one session opens it in another
        session with the same endpoint name, and .close() closes it there.
        """
        config = {"endpoints": [{"name": "inventory", "match": "http://inventory.invalid/",
                                 "breaker": {"storage": redis_url}}]}
        s1 = resilient_client.ResilientSession(config)
        s2 = resilient_client.ResilientSession(config)
        try:
            s1.circuit("inventory").open()
            eventually(lambda: s2.circuit("inventory").state == "open")
            with pytest.raises(CircuitOpenError):
                s2.get("http://inventory.invalid/items/1")
            s2.circuit("inventory").close()
            eventually(lambda: s1.circuit("inventory").state == "closed")
        finally:
            s1.close()
            s2.close()

    def test_forced_open_allows_no_trial_anywhere(self, redis_url: str) -> None:
        """
        A breaker forced open in one place refuses everywhere, with no trial
        call even after reset_timeout, until it is closed.
        """
        p = policy(redis_url, reset_timeout=0.05)
        a = CircuitBreaker("inventory", p)
        b = CircuitBreaker("inventory", p)
        a.open()
        time.sleep(0.1)
        with pytest.raises(CircuitOpenError) as info:
            b.before_call()
        assert info.value.retry_in is None
        a.close()
        eventually(lambda: not refused(b))

    def test_callbacks_report_changes_seen_from_elsewhere(self, redis_url: str) -> None:
        """
        A breaker reports a change made by another process when it notices it.
        """
        seen: list[tuple[str, str]] = []
        p = policy(redis_url)
        watcher = CircuitBreaker("inventory", p, on_state_change=lambda b, o, n: seen.append((o, n)))
        assert watcher.state == "closed"
        CircuitBreaker("inventory", p).open()
        eventually(lambda: watcher.state == "open")
        assert seen == [(BreakerState.CLOSED, BreakerState.OPEN)]

    def test_opened_at_has_sub_second_precision(self, redis_url: str) -> None:
        """
        opened_at is kept to the sub-millisecond, so a 150 ms reset_timeout
        works across processes; a pybreaker CircuitBreaker on the same
        storage reads the same state.
        """
        p = policy(redis_url, failure_threshold=1, reset_timeout=0.15)
        breaker = CircuitBreaker("inventory", p)
        started = time.monotonic()
        fail(breaker)
        storage = breaker._store.storage  # type: ignore[attr-defined]
        assert storage is not None
        opened_at = storage.opened_at
        assert opened_at is not None
        assert abs(opened_at.timestamp() - time.time()) < 1.0
        assert opened_at.microsecond != 0
        assert pybreaker.CircuitBreaker(state_storage=storage).current_state == pybreaker.STATE_OPEN
        assert refused(breaker)
        eventually(lambda: breaker.state == "half-open")
        assert 0.14 <= time.monotonic() - started < 1.0

    def test_constructing_needs_no_redis(self, caplog: pytest.LogCaptureFixture) -> None:
        """
        Building a breaker does no network I/O, and with no Redis at all it
        works on in-process state, each call paying at most one fast failure.
        The log names Redis without its password.
        """
        # Nothing listens on the discard port: connections are refused.
        p = policy("redis://:s3cret@127.0.0.1:9/0", failure_threshold=2)
        breaker = CircuitBreaker("inventory", p)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="resilient_client"):
            assert breaker.before_call() is False
            fail(breaker, 2)
        assert breaker.state == "open"
        assert time.monotonic() - started < 1.0
        assert breaker.stats().shared is False
        assert "redis://127.0.0.1:9/0" in caplog.text
        assert "s3cret" not in caplog.text


class TestRedisOutage:
    def test_keeps_working_logs_once_and_resyncs(
        self, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """
        With Redis killed mid-test the breaker carries on in-process (it
        still opens), logs the outage once, and when Redis returns on the same
        port it pushes the opening there, so other processes see it.
        """
        p = policy(redis_server.url, failure_threshold=3)
        breaker = CircuitBreaker("inventory", p)
        assert refused(breaker) is False
        assert breaker.stats().shared is True

        redis_server.stop()
        with caplog.at_level(logging.INFO, logger="resilient_client"):
            started = time.monotonic()
            for _ in range(20):
                assert refused(breaker) is False
                time.sleep(0.005)  # several reconnect intervals pass
            fail(breaker, 3)
            assert breaker.state == "open"
            assert refused(breaker)
            assert time.monotonic() - started < 2.0  # no call waited on the dead Redis
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1
            assert "unreachable" in warnings[0].getMessage()
            assert breaker.stats().shared is False

            redis_server.start()  # empty: it remembers nothing
            eventually(lambda: breaker.stats().shared is True)
            assert breaker.state == "open"
            assert "answers again" in caplog.text
        assert CircuitBreaker("inventory", p).state == "open"
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1

    def test_a_returning_redis_is_adopted(self, redis_server: RedisServer) -> None:
        """
        A breaker that saw nothing happen during the outage takes Redis's
        state when it returns.
        """
        p = policy(redis_server.url)
        breaker = CircuitBreaker("inventory", p)
        assert breaker.state == "closed"
        redis_server.stop()
        assert refused(breaker) is False
        redis_server.start()
        CircuitBreaker("inventory", p).open()  # done elsewhere, on the new Redis
        eventually(lambda: breaker.state == "open")


# -- several processes ---------------------------------------------------------
#
# Each worker builds its own breaker, hence its own Redis connections, after
# it starts: the processes share nothing but Redis. They are forked where
# possible because a fresh interpreter takes a second or more to import all
# this on a slow machine; they report through queues.


def _worker_sees_failures(url: str, role: int, ready: Any, tripped: Any, out: Any) -> None:
    breaker = CircuitBreaker("inventory", policy(url, failure_threshold=5))
    breaker.before_call()  # warm the connection before the clock starts
    ready.wait(timeout=SPAWN_WAIT)
    if role == 0:
        fail(breaker, 5)
        tripped.set()
        out.put((role, "tripped"))
        return
    assert tripped.wait(timeout=WAIT)
    deadline = time.monotonic() + WAIT
    while not refused(breaker):
        if time.monotonic() > deadline:
            out.put((role, "never refused"))
            return
        time.sleep(0.005)
    out.put((role, "refused"))


def _worker_trial(url: str, role: int, ready: Any, answered: Any, done: Any, out: Any) -> None:
    import threading

    breaker = CircuitBreaker("inventory", policy(url, failure_threshold=1, reset_timeout=0.2))
    results: list[str] = []
    lock = threading.Lock()

    def call() -> None:
        try:
            is_trial = breaker.before_call()
        except CircuitOpenError:
            outcome = "refused"
            is_trial = False
        else:
            outcome = "trial" if is_trial else "let through"
        with lock:
            results.append(outcome)
        answered.put(outcome)
        if is_trial:
            # Hold the trial until every caller in every process was answered.
            done.wait(timeout=WAIT)
            breaker.record(success=True, is_trial=True)

    ready.wait(timeout=SPAWN_WAIT)
    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=WAIT)
    out.put((role, sorted(results)))


@pytest.fixture
def ctx() -> Iterator[Any]:
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    procs: list[Any] = []
    context.procs = procs  # type: ignore[attr-defined]
    yield context
    for proc in procs:
        proc.join(timeout=WAIT)
        if proc.is_alive():
            proc.kill()


def _start(ctx: Any, target: Callable[..., None], *args: Any) -> None:
    proc = ctx.Process(target=target, args=args, daemon=True)
    proc.start()
    ctx.procs.append(proc)


class TestAcrossProcesses:
    def test_failures_in_one_process_open_it_for_all(self, redis_url: str, ctx: Any) -> None:
        """
        Three processes: the failures one of them records open the breaker
        for the other two.
        """
        ready, tripped, out = ctx.Barrier(3), ctx.Event(), ctx.Queue()
        for role in range(3):
            _start(ctx, _worker_sees_failures, redis_url, role, ready, tripped, out)
        results = dict(out.get(timeout=SPAWN_WAIT) for _ in range(3))
        assert results == {0: "tripped", 1: "refused", 2: "refused"}

    def test_exactly_one_trial_across_processes(self, redis_url: str, ctx: Any) -> None:
        """
        Three processes with four threads each arrive together at a breaker
        whose reset_timeout has passed: exactly one call, in one process, is
        the trial; every other one is refused while it runs. Its success
        closes the breaker for all.
        """
        p = policy(redis_url, failure_threshold=1, reset_timeout=0.2)
        here = CircuitBreaker("inventory", p)
        fail(here)
        ready, answered, done, out = ctx.Barrier(4), ctx.Queue(), ctx.Event(), ctx.Queue()
        for role in range(3):
            _start(ctx, _worker_trial, redis_url, role, ready, answered, done, out)
        eventually(lambda: here.state == "half-open", timeout=SPAWN_WAIT)
        ready.wait(timeout=SPAWN_WAIT)
        outcomes = [answered.get(timeout=WAIT) for _ in range(12)]
        done.set()
        per_process = dict(out.get(timeout=WAIT) for _ in range(3))
        assert sorted(outcomes) == ["refused"] * 11 + ["trial"]
        assert sum(r.count("trial") for r in per_process.values()) == 1
        eventually(lambda: here.state == "closed")
