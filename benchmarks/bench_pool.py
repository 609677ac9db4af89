"""
Connection pools sized per peer: 32 threads call one loopback peer at once.

    python benchmarks/bench_pool.py [--smoke] [--threads 32] [--calls 50]

requests keeps 10 connections per host (``pool_maxsize=10``). With 32
worker threads, a connection that comes back while 10 idle ones already
wait in the pool is closed ("Connection pool is full, discarding
connection") and a later call opens a new one: under load the client churns
sockets into TIME_WAIT. resilient_client's pool follows
``bulkhead.max_concurrent`` (50 by default), so the same 32 threads keep
their 32 connections. Each thread makes its calls with some work of its own
between them (0-40 ms), and the peer answers after 20 ms, in its own
process; the figure is how many connections the peer accepted.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections.abc import Callable

import _util
import requests

import resilient_client

THREADS = 32
#: Mean seconds each thread spends between its calls (uniform over 0-2x), as a service's workers do.
THINK = 0.02


def hammer(get: Callable[[str], object], url: str, threads: int, calls: int) -> float:
    """*threads* threads making *calls* calls each to *url*; returns the seconds it took."""
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def worker() -> None:
        rng = random.Random()
        start.wait(timeout=30)
        try:
            for _ in range(calls):
                get(url)
                # The worker's own work between calls: while some threads are
                # between calls, their idle connections must wait in the pool.
                time.sleep(rng.uniform(0, 2 * THINK))
        except BaseException as exc:  # reported below, not lost in a thread
            errors.append(exc)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    began = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=300)
    if errors:
        raise errors[0]
    return time.perf_counter() - began


def opened(client: str, threads: int, calls: int) -> tuple[int, float]:
    """Connections the peer accepted, and seconds taken, for *client* under *threads* x *calls*."""
    with _util.peer("slow") as p:
        if client == "requests":
            session: requests.Session = requests.Session()
        else:
            session = resilient_client.ResilientSession({"defaults": {"retry": None}})

        def get(url: str) -> object:
            resp = session.get(url, timeout=10)
            resp.raise_for_status()
            return resp.content

        took = hammer(get, p.url, threads, calls)
        session.close()
        return p.connections(), took


def run(*, smoke: bool = False, threads: int = THREADS, calls: int | None = None) -> list[_util.Row]:
    calls = calls or (3 if smoke else 50)
    bench = f"connection pool, {threads} threads x {calls} calls on one peer"
    rows = []
    plain, plain_took = opened("requests", threads, calls)
    ours, ours_took = opened("resilient_client", threads, calls)
    rows.append(_util.Row(bench, "requests.Session (pool of 10): connections opened", plain, "",
                          note=f"{threads * calls} calls in {plain_took:.2f} s"))
    rows.append(_util.Row(bench, "resilient_client (pool follows the bulkhead): connections opened",
                          ours, "", target=f"<= {threads}", met=ours <= threads,
                          note=f"{threads * calls} calls in {ours_took:.2f} s"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--calls", type=int, default=None, help="calls per thread (default 50)")
    args = ap.parse_args()
    _util.print_rows(run(smoke=args.smoke, threads=args.threads, calls=args.calls))


if __name__ == "__main__":
    main()
