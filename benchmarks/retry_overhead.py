"""
Per-call overhead of the retry layer on the happy path.

Three clients call the same loopback keep-alive peer (its own process), one
thread, every call answered 200 at once:

* ``requests.Session``;
* ``ResilientSession`` with ``retry: null`` (every other layer on: deadline,
  breaker, bulkhead, budget bookkeeping, events);
* ``ResilientSession`` with the default retry policy (tenacity in the path).

Then the same three against a transport that answers at once, which leaves
only the client's own work (the layer's cost without network noise).

Rounds are interleaved (the order rotates every round) so that drift in the
machine's speed hits every client alike; each round times a batch of calls
per client, and the report gives the median per-call time over the rounds
and its ratio to ``requests.Session``: wall time, and the calling thread's
CPU time, which leaves out the peer and is steadier on a busy machine.
Run by hand, or by ``python benchmarks/run.py --only retry``::

    python benchmarks/retry_overhead.py [--rounds 150] [--calls 60] [--smoke]
    python benchmarks/retry_overhead.py --profile   # cProfile of ResilientSession.get

(``benchmarks/overhead.py``, which timed ``ResilientSession`` against
``requests.Session`` with and without a network, is merged here: those are
the first and last of the three clients.)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import _util
import requests
from requests.adapters import BaseAdapter

import resilient_client

BASE = "requests.Session"
OFF = "ResilientSession, retry: null"
ON = "ResilientSession, retry on (default)"


def clients() -> dict[str, requests.Session]:
    sessions = {
        BASE: requests.Session(),
        OFF: resilient_client.ResilientSession({"defaults": {"retry": None}}),
        ON: resilient_client.ResilientSession(),
    }
    for s in sessions.values():
        # Proxy look-ups in os.environ cost the same for all three and depend
        # on the machine: leave them out so the ratios show the library.
        s.trust_env = False
    return sessions


class InstantAdapter(BaseAdapter):
    """A transport that answers 200 at once: what is left is the client's own work."""

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Any = None) -> requests.Response:
        resp = requests.Response()
        resp.status_code = 200
        resp.raw = io.BytesIO(b"ok")
        resp.url = request.url or ""
        resp.request = request
        return resp

    def close(self) -> None:
        pass


def measure(sessions: dict[str, requests.Session], url: str, rounds: int, calls: int
            ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Interleaved rounds; per-call wall and CPU seconds of each round, per client."""
    names = list(sessions)
    for s in sessions.values():
        batch(s.get, url, 50)  # warm up: connection, route cache, tenacity object
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            w, c = batch(sessions[name].get, url, calls)
            wall[name].append(w)
            cpu[name].append(c)
    return wall, cpu


def report(title: str, wall: dict[str, list[float]], cpu: dict[str, list[float]]) -> None:
    def med(series: dict[str, list[float]], name: str) -> float:
        return statistics.median(series[name])

    print(f"\n{title}\n")
    print("| client | median wall per call | ratio | median client CPU per call | ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in wall:
        w, c = med(wall, name), med(cpu, name)
        print(f"| {name} | {w * 1e6:,.0f} µs | {w / med(wall, BASE):.2f} "
              f"| {c * 1e6:,.0f} µs | {c / med(cpu, BASE):.2f} |")
    print(f"\nretry layer alone (retry on minus retry: null), client CPU: "
          f"{(med(cpu, ON) - med(cpu, OFF)) * 1e6:+,.1f} µs per call; "
          f"ratio {med(cpu, ON) / med(cpu, OFF):.2f}")


def batch(get: Callable[[str], requests.Response], url: str, calls: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this thread) per call over *calls* sequential calls."""
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(calls):
        resp = get(url)
        if resp.status_code != 200:
            raise RuntimeError(f"unexpected status {resp.status_code}")
    return (time.perf_counter() - wall) / calls, (time.thread_time() - cpu) / calls


def run(*, rounds: int = 150, calls: int = 60, smoke: bool = False) -> list[_util.Row]:
    """Both measurements as result rows: the loopback peer, then no network."""
    if smoke:
        rounds, calls = 3, 10
    rows: list[_util.Row] = []
    for where, (wall, cpu) in (("loopback peer", loopback(rounds, calls)),
                               ("no network", no_network(rounds, calls))):
        base_w, base_c = statistics.median(wall[BASE]), statistics.median(cpu[BASE])
        for name in wall:
            w, c = statistics.median(wall[name]), statistics.median(cpu[name])
            rows.append(_util.Row(f"retry layer overhead, {where}", f"{name}: vs {BASE}", w / base_w, "x",
                                  note=f"CPU {c / base_c:.2f}x; {w * 1e6:.0f} µs/call, {c * 1e6:.0f} µs CPU"))
        on, off = statistics.median(cpu[ON]), statistics.median(cpu[OFF])
        rows.append(_util.Row(f"retry layer overhead, {where}", "retry on vs retry: null, client CPU",
                              on / off, "x", note=f"{(on - off) * 1e6:+.1f} µs per call"))
    return rows


def loopback(rounds: int, calls: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """The three clients against the loopback keep-alive peer (its own process)."""
    with _util.peer("ok") as peer:
        sessions = clients()
        try:
            return measure(sessions, peer.base + "/items/42", rounds, calls)
        finally:
            for s in sessions.values():
                s.close()


def no_network(rounds: int, calls: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """The three clients against a transport that answers at once."""
    sessions = clients()
    for s in sessions.values():
        s.mount("http://instant.test/", InstantAdapter())
    try:
        return measure(sessions, "http://instant.test/items/42", rounds, calls)
    finally:
        for s in sessions.values():
            s.close()


def profile(calls: int) -> str:
    """A cProfile of *calls* default ``ResilientSession.get`` calls to the loopback peer."""
    with _util.peer("ok") as peer:
        url = peer.base + "/items/42"
        ours = resilient_client.ResilientSession()
        batch(ours.get, url, 50)
        prof = cProfile.Profile()
        prof.enable()
        batch(ours.get, url, calls)
        prof.disable()
        ours.close()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=150, help="interleaved rounds (default 150)")
    parser.add_argument("--calls", type=int, default=60,
                        help="calls per client per round (default 60)")
    parser.add_argument("--smoke", action="store_true", help="a tiny run that only checks it works")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of ResilientSession.get")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 500 or not 1 <= args.calls <= 10_000:
        parser.error("keep it bounded: 1-500 rounds of 1-10,000 calls")
    if args.profile:
        print(profile(min(args.calls * 50, 5000)))
        return
    if args.smoke:
        args.rounds, args.calls = 3, 10

    print(f"{args.rounds} interleaved rounds x {args.calls} calls per client, one thread; "
          f"Python {sys.version.split()[0]}, requests {requests.__version__}")
    report("Loopback keep-alive peer (its own process):", *loopback(args.rounds, args.calls))
    report("No network (a transport that answers at once): the client's own work only:",
           *no_network(args.rounds, args.calls))


if __name__ == "__main__":
    main()
