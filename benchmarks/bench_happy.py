"""
Happy path: GET on a loopback keep-alive peer, 1 thread and 8 threads
sharing one session. Every client sets the same (connect, read) timeouts.

    python benchmarks/bench_happy.py [--rounds N] [--calls N] [--smoke]

Reports each client's ratio to ``requests.Session`` in wall-clock time per
call (the value) and in the client process's CPU time per call (the note:
steadier on a shared machine, as the peer's own work is not in it), each
the median of the per-round ratios of interleaved rounds.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from typing import Any

import _util
import pybreaker
import requests
import stamina
import tenacity
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

import resilient_client

TIMEOUT = (1.0, 5.0)
RETRY_ON = (requests.ConnectionError, requests.Timeout)

Client = tuple[Callable[[], object], Callable[[], None]]


class _ServerError(Exception):
    pass


def resilient_config(url: str) -> dict[str, object]:
    """Every protection on: timeouts, deadline, retries, budget, breaker, bulkhead, fallback."""
    return {
        "endpoints": [{
            "name": "bench",
            "match": url.rsplit("/", 1)[0] + "/",
            "timeout": {"connect": TIMEOUT[0], "read": TIMEOUT[1], "total": 10.0},
            "retry": {"attempts": 3},
            "budget": {"ratio": 0.2},
            "breaker": {"failure_threshold": 5, "reset_timeout": 30.0},
            "bulkhead": {"max_concurrent": 50},
            "fallback": {"status": 200, "json": {"items": []}},
        }]
    }


def clients(url: str, *, with_before: bool = True) -> dict[str, Client]:
    """name -> (call, close); every call does one GET of *url* and reads the body."""
    out: dict[str, Client] = {}

    pm = urllib3.PoolManager(maxsize=16)
    u3_timeout = urllib3.Timeout(connect=TIMEOUT[0], read=TIMEOUT[1])
    out["urllib3 (floor)"] = (
        lambda: pm.request("GET", url, timeout=u3_timeout, retries=False).data, pm.clear)

    plain = requests.Session()
    out["requests.Session"] = (lambda: plain.get(url, timeout=TIMEOUT).content, plain.close)

    with_retry = requests.Session()
    retry = Retry(total=2, backoff_factor=0.1, status_forcelist=[502, 503, 504])
    adapter = HTTPAdapter(max_retries=retry)
    with_retry.mount("http://", adapter)
    out["requests + urllib3 Retry"] = (
        lambda: with_retry.get(url, timeout=TIMEOUT).content, with_retry.close)

    hand = requests.Session()
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_exponential_jitter(multiplier=0.1, max=5.0),
        retry=tenacity.retry_if_exception_type((*RETRY_ON, _ServerError)),
        reraise=True,
    )

    def hand_get() -> bytes:
        resp = hand.get(url, timeout=TIMEOUT)
        if resp.status_code >= 500:
            raise _ServerError(resp.status_code)
        return resp.content

    out["tenacity + pybreaker"] = (lambda: retrying(breaker.call, hand_get), hand.close)

    st = requests.Session()

    @stamina.retry(on=RETRY_ON, attempts=3)
    def stamina_get() -> bytes:
        return st.get(url, timeout=TIMEOUT).content

    out["stamina"] = (stamina_get, st.close)

    rc = resilient_client.ResilientSession(resilient_config(url))
    out["resilient_client"] = (lambda: rc.get(url).content, rc.close)

    if with_before:
        # The same session with the two hot-path shortcuts undone, to show what each gives.
        class NoEnvCache(resilient_client.ResilientSession):
            merge_environment_settings = requests.Session.merge_environment_settings

        class NoShortcuts(NoEnvCache):
            def _attempt_then_retrying(self, call: Any, retrying: Any) -> Any:
                return retrying(self._attempt, call)

        b1 = NoEnvCache(resilient_config(url))
        out["resilient_client, env cache off"] = (lambda: b1.get(url).content, b1.close)
        b2 = NoShortcuts(resilient_config(url))
        out["resilient_client, both shortcuts off"] = (lambda: b2.get(url).content, b2.close)
    return out


def batch(call: Callable[[], object], calls: int, threads: int) -> tuple[float, float]:
    """(wall seconds, client CPU seconds) per call for *calls* calls over *threads* threads."""
    if threads == 1:
        c, t = time.process_time(), time.perf_counter()
        for _ in range(calls):
            call()
        return (time.perf_counter() - t) / calls, (time.process_time() - c) / calls
    per = calls // threads
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def work() -> None:
        barrier.wait()
        try:
            for _ in range(per):
                call()
        except BaseException as e:  # surfaced below
            errors.append(e)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for th in pool:
        th.start()
    barrier.wait()
    c, t = time.process_time(), time.perf_counter()
    for th in pool:
        th.join(120)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    if errors:
        raise errors[0]
    return wall / (per * threads), cpu / (per * threads)


def measure(
    url: str, *, threads: int, calls: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per client: wall seconds per call and CPU seconds per call, one sample per round."""
    cs = clients(url)
    cpu: dict[str, list[float]] = {name: [] for name in cs}

    def case(name: str, call: Callable[[], object]) -> Callable[[], float]:
        def run() -> float:
            w, c = batch(call, calls, threads)
            cpu[name].append(c)
            return w

        return run

    try:
        for call, _ in cs.values():  # warm up: connections, caches, routes
            for _ in range(30):
                call()
        wall = _util.interleaved({name: case(name, call) for name, (call, _) in cs.items()}, rounds)
        return wall, cpu
    finally:
        for _, close in cs.values():
            close()


def run(*, rounds: int = 11, calls: int = 300, smoke: bool = False) -> list[_util.Row]:
    if smoke:
        rounds, calls = 2, 40
    rows: list[_util.Row] = []
    with _util.peer("ok", prefer_nginx=True) as p:
        for threads in (1, 8):
            wall, cpu = measure(p.url, threads=threads, calls=calls if threads == 1 else calls * 2,
                                rounds=rounds)
            rel, rel_cpu = _util.ratios(wall, "requests.Session"), _util.ratios(cpu, "requests.Session")
            bench = f"happy path, {threads} thread{'s' if threads > 1 else ''} ({p.kind} peer)"
            for name in wall:
                us, cpu_us = _util.median(wall[name]) * 1e6, _util.median(cpu[name]) * 1e6
                row = _util.Row(bench, f"{name}: vs requests.Session", rel[name], "x",
                                note=f"CPU {rel_cpu[name]:.2f}x; {us:.0f} µs/call, {cpu_us:.0f} µs CPU")
                if name == "resilient_client":
                    row.target = "<= 1.00x"
                    row.met = rel[name] <= 1.00 and rel_cpu[name] <= 1.00
                rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--smoke", action="store_true", help="a tiny run that only checks it works")
    a = ap.parse_args()
    _util.print_rows(run(rounds=a.rounds, calls=a.calls, smoke=a.smoke))


if __name__ == "__main__":
    main()
