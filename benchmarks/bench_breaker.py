"""
Circuit breakers: what an open breaker costs per rejected call, and how much
concurrency one closed breaker lets through to a 20 ms peer.

    python benchmarks/bench_breaker.py [--smoke]

Rejection: the cost of one call refused by an open breaker, for our
`CircuitBreaker.before_call` and pybreaker's ``call`` (the breakers alone),
and end to end for ``ResilientSession.get`` (which includes requests'
building and preparing of the request, done before any breaker can look at
it).

Concurrency: 8 threads share one session and one breaker and call a peer
that answers after 20 ms; calls in flight = the 8 threads' throughput over
one thread's (8 is perfect). pybreaker holds its lock for the whole call, so it lets one
call through at a time.

Storage: the happy path through a closed breaker kept in memory or in Redis,
against ``requests.Session``, and the rejection and the concurrency with the
breaker in Redis too (a throwaway ``redis-server`` on loopback; left out when
none is on PATH). These come from ``benchmarks/breaker_cost.py``, merged here.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from collections.abc import Callable

import _util
import pybreaker
import requests

import resilient_client
from resilient_client import BreakerPolicy, CircuitBreaker, CircuitOpenError
from resilient_client._clock import SYSTEM_CLOCK

PEER_DELAY = 0.020


def _per_call(fn: Callable[[], object], n: int, catch: type[BaseException]) -> float:
    t = time.perf_counter()
    for _ in range(n):
        with contextlib.suppress(catch):
            fn()
    return (time.perf_counter() - t) / n


def rejection(*, rounds: int, n: int, redis_url: str | None = None) -> list[_util.Row]:
    ours = CircuitBreaker("bench", BreakerPolicy(), clock=SYSTEM_CLOCK)
    ours.open()
    theirs = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=3600)
    theirs.open()
    session = resilient_client.ResilientSession(
        {"endpoints": [{"name": "bench", "match": "http://127.0.0.1:9/"}]}
    )
    session.circuit("bench").open()
    url = "http://127.0.0.1:9/items"  # never connected to: the breaker is open
    in_redis = None
    if redis_url is not None:
        in_redis = resilient_client.ResilientSession({"endpoints": [
            {"name": "bench", "match": "http://127.0.0.1:9/", "breaker": {"storage": redis_url}}]})
        in_redis.circuit("bench").open()

    def noop() -> None:
        return None

    cases = {
        "resilient_client breaker": lambda: _per_call(ours.before_call, n, CircuitOpenError),
        "pybreaker": lambda: _per_call(lambda: theirs.call(noop), n, pybreaker.CircuitBreakerError),
        "ResilientSession.get, open": lambda: _per_call(
            lambda: session.get(url), n // 10, CircuitOpenError),
        "requests.Session.prepare_request": lambda: _per_call(
            lambda: session.prepare_request(requests.Request("GET", url)), n // 10, Exception),
    }
    if in_redis is not None:
        cases["ResilientSession.get, open, breaker in Redis"] = lambda: _per_call(
            lambda: in_redis.get(url), n // 10, CircuitOpenError)
    samples = _util.interleaved(cases, rounds)
    session.close()
    if in_redis is not None:
        in_redis.close()
    bench = "open-breaker rejection"
    rows = []
    for name, values in samples.items():
        us = _util.median(values) * 1e6
        row = _util.Row(bench, f"{name} (µs/call)", us, "µs")
        if name == "resilient_client breaker":
            row.target, row.met = "<= 5 µs", us <= 5.0
        if name == "ResilientSession.get, open":
            row.note = "includes requests' own request building, which comes first"
        if name == "requests.Session.prepare_request":
            row.note = "for scale: requests' work before any send"
        rows.append(row)
    return rows


def _in_flight(call: Callable[[], object], calls_per_thread: int, threads: int) -> float:
    """Calls in flight on average: 8 threads' throughput over one thread's, measured back to back."""
    t = time.perf_counter()
    for _ in range(calls_per_thread):
        call()
    one = (time.perf_counter() - t) / calls_per_thread
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        barrier.wait()
        for _ in range(calls_per_thread):
            call()

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for th in pool:
        th.start()
    barrier.wait()
    t = time.perf_counter()
    for th in pool:
        th.join(120)
    return threads * calls_per_thread * one / (time.perf_counter() - t)


def _through_breaker(base: str, storage: str = "memory") -> resilient_client.ResilientSession:
    return resilient_client.ResilientSession(
        {"endpoints": [{"name": "peer", "match": base + "/",
                        "breaker": {"failure_threshold": 5, "storage": storage}}]}
    )


def concurrency(*, calls_per_thread: int, rounds: int, threads: int = 8,
                redis_url: str | None = None) -> list[_util.Row]:
    rows = []
    with _util.peer("slow") as p:
        rc = _through_breaker(p.base)
        pb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
        hand = requests.Session()
        plain = requests.Session()
        cases: dict[str, Callable[[], object]] = {
            "resilient_client": lambda: rc.get(p.url).content,
            "pybreaker (hand-wired)": lambda: pb.call(
                lambda: hand.get(p.url, timeout=(1, 5)).content),
            "requests.Session (no breaker)": lambda: plain.get(p.url, timeout=(1, 5)).content,
        }
        sessions: list[requests.Session] = [rc, hand, plain]
        if redis_url is not None:
            in_redis = _through_breaker(p.base, redis_url)
            sessions.append(in_redis)
            cases["resilient_client, breaker in Redis"] = lambda: in_redis.get(p.url).content
        for call in cases.values():
            for _ in range(3):
                call()
        samples = _util.interleaved(
            {name: (lambda c=call: _in_flight(c, calls_per_thread, threads))
             for name, call in cases.items()}, rounds)
        base = _util.median(samples["requests.Session (no breaker)"])
        for name, values in samples.items():
            conc = _util.median(values)
            row = _util.Row("concurrency through one breaker, 20 ms peer",
                            f"{name}: calls in flight (of {threads})", round(conc, 2), "",
                            note=f"median of {rounds} rounds of {threads * calls_per_thread} calls; "
                                 f"{conc / base:.2f} of requests without a breaker")
            if name == "resilient_client":
                row.target, row.met = ">= 7 of 8", conc >= 7.0
            rows.append(row)
        for s in sessions:
            s.close()
    return rows


def storage(*, rounds: int, calls: int, redis_url: str | None) -> list[_util.Row]:
    """The happy path through a closed breaker in memory and in Redis, against requests.Session."""
    with _util.peer("ok") as p:
        sessions: dict[str, requests.Session] = {
            "requests.Session": requests.Session(),
            "breaker in memory": _through_breaker(p.base),
        }
        if redis_url is not None:
            sessions["breaker in Redis"] = _through_breaker(p.base, redis_url)
        for s in sessions.values():
            s.trust_env = False  # the same environment look-ups for every variant: none
            for _ in range(50):
                s.get(p.url, timeout=(1, 5)).content  # noqa: B018 - warm up
        cases = {name: (lambda s=s: _per_call(lambda: s.get(p.url, timeout=(1, 5)).content, calls, Exception))
                 for name, s in sessions.items()}
        samples = _util.interleaved(cases, rounds)
        for s in sessions.values():
            s.close()
    rel = _util.ratios(samples, "requests.Session")
    rows = [_util.Row("breaker storage on the happy path", f"{name}: vs requests.Session", rel[name],
                      "x", note=f"{_util.median(values) * 1e6:.0f} µs/call, median of {rounds} rounds")
            for name, values in samples.items()]
    if redis_url is None:
        rows.append(_util.Row("breaker storage on the happy path", "breaker in Redis", 0, "",
                              note="not measured: no redis-server on PATH"))
    return rows


def run(*, smoke: bool = False) -> list[_util.Row]:
    with _util.redis_server() as redis_url:
        rows = rejection(rounds=3 if smoke else 9, n=2000 if smoke else 20000, redis_url=redis_url)
        rows += concurrency(calls_per_thread=3 if smoke else 20, rounds=1 if smoke else 3,
                            redis_url=redis_url)
        rows += storage(rounds=2 if smoke else 15, calls=20 if smoke else 200, redis_url=redis_url)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true")
    _util.print_rows(run(smoke=ap.parse_args().smoke))


if __name__ == "__main__":
    main()
