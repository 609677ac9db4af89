"""
``state: redis://...`` on one host: the workers share the Redis breaker's
snapshot through the host file, so the host reads Redis at most once per
refresh interval (20 ms) whatever its worker count, counted at a real
``redis-server`` (``INFO commandstats``) with real processes.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

from resilient_client import CircuitOpenError, ResilientSession
from resilient_client._breaker import CircuitBreaker
from resilient_client._policy import BreakerPolicy

pytestmark = [pytest.mark.redis,
              pytest.mark.skipif(not hasattr(os, "fork"), reason="forks worker processes")]

CTX = multiprocessing.get_context("fork")
WORKERS = 4
SECONDS = 1.0
#: The refresh interval (`_breaker_redis._SHARED_CACHE_TTL`).
TTL = 0.02


def _scripts_run(url: str) -> int:
    """Lua scripts Redis ran since the last reset (every read and write of a breaker is one)."""
    import redis

    stats = redis.Redis.from_url(url).info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))


def _reset_stats(url: str) -> None:
    import redis

    redis.Redis.from_url(url).config_resetstat()


def _poll(queue: Any, url: str, state_dir: str | None, go: Any, seconds: float = SECONDS) -> None:
    """One worker: admit calls on the closed breaker for SECONDS; report how many and what it saw."""
    if state_dir is None:  # a breaker of its own, as with breaker.storage before host files
        breaker = CircuitBreaker("peer", BreakerPolicy(storage=url))
    else:
        session = ResilientSession({"state_dir": state_dir, "defaults": {"state": url},
                                    "endpoints": [{"name": "peer", "match": "http://127.0.0.1:9/"}]})
        breaker = session.circuit("peer")
    go.wait(10)
    calls, refused = 0, 0
    end = time.monotonic() + seconds
    for _ in range(10_000_000):  # bounded; ends by time long before
        if time.monotonic() >= end:
            break
        try:
            trial = breaker.before_call()
        except CircuitOpenError:
            refused += 1
        else:
            breaker.record(success=True, is_trial=trial)
        calls += 1
    queue.put((calls, refused))


def _run(url: str, state_dir: str | None) -> list[tuple[int, int]]:
    queue, go = CTX.Queue(), CTX.Event()
    procs = [CTX.Process(target=_poll, args=(queue, url, state_dir, go), daemon=True) for _ in range(WORKERS)]
    for p in procs:
        p.start()
    time.sleep(0.3)  # every worker built its session
    _reset_stats(url)
    go.set()
    results = [queue.get(timeout=15) for _ in procs]
    for p in procs:
        p.join(timeout=15)
    return results


class TestOneRoundTripPerIntervalPerHost:
    def test_the_host_reads_redis_once_per_interval(self, redis_url: str, tmp_path: Path) -> None:
        """4 workers polling a closed breaker: about SECONDS / TTL reads for the host, not per worker."""
        per_process = _run(redis_url, None)
        alone = _scripts_run(redis_url)
        shared = _run(redis_url, str(tmp_path))
        on_host = _scripts_run(redis_url)
        intervals = SECONDS / TTL
        assert all(calls > 0 for calls, _ in per_process + shared)
        # Each worker first reads for itself (no snapshot at all yet), then one per interval.
        assert on_host <= intervals * 1.25 + WORKERS, (on_host, alone)
        assert alone > 1.5 * on_host, (on_host, alone)  # what the cache saves (CPU-starved workers read less)

    def test_a_breaker_opened_elsewhere_is_seen_through_the_cache(
        self, redis_url: str, tmp_path: Path
    ) -> None:
        """Opened in Redis by another host: the workers of this one refuse within an interval or so."""
        elsewhere = CircuitBreaker("peer", BreakerPolicy(storage=redis_url))
        queue, go = CTX.Queue(), CTX.Event()
        procs = [CTX.Process(target=_poll, args=(queue, redis_url, str(tmp_path), go, 0.4), daemon=True)
                 for _ in range(WORKERS)]
        for p in procs:
            p.start()
        time.sleep(0.3)
        go.set()
        time.sleep(0.1)
        elsewhere.open()
        results = [queue.get(timeout=15) for _ in procs]
        for p in procs:
            p.join(timeout=15)
        assert all(refused > 0 for _, refused in results), results
