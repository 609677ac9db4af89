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


def rejection(*, rounds: int, n: int) -> list[_util.Row]:
    ours = CircuitBreaker("bench", BreakerPolicy(), clock=SYSTEM_CLOCK)
    ours.open()
    theirs = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=3600)
    theirs.open()
    session = resilient_client.ResilientSession(
        {"endpoints": [{"name": "bench", "match": "http://127.0.0.1:9/"}]}
    )
    session.circuit("bench").open()
    url = "http://127.0.0.1:9/items"  # never connected to: the breaker is open

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
    samples = _util.interleaved(cases, rounds)
    session.close()
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


def concurrency(*, calls_per_thread: int, rounds: int, threads: int = 8) -> list[_util.Row]:
    rows = []
    with _util.peer("slow") as p:
        rc = resilient_client.ResilientSession(
            {"endpoints": [{"name": "slow", "match": p.url.rsplit("/", 1)[0] + "/",
                            "breaker": {"failure_threshold": 5}}]}
        )
        pb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
        hand = requests.Session()
        plain = requests.Session()
        cases: dict[str, Callable[[], object]] = {
            "resilient_client": lambda: rc.get(p.url).content,
            "pybreaker (hand-wired)": lambda: pb.call(
                lambda: hand.get(p.url, timeout=(1, 5)).content),
            "requests.Session (no breaker)": lambda: plain.get(p.url, timeout=(1, 5)).content,
        }
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
        for s in (rc, hand, plain):
            s.close()
    return rows


def run(*, smoke: bool = False) -> list[_util.Row]:
    rows = rejection(rounds=3 if smoke else 9, n=2000 if smoke else 20000)
    rows += concurrency(calls_per_thread=3 if smoke else 20, rounds=1 if smoke else 3)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true")
    _util.print_rows(run(smoke=ap.parse_args().smoke))


if __name__ == "__main__":
    main()
