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
Run by hand::

    python benchmarks/retry_overhead.py [--rounds 150] [--calls 60]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from requests.adapters import BaseAdapter

# Run from a checkout: import this worktree's package, not an installed one.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _loopback_peer import Peer

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=150, help="interleaved rounds (default 150)")
    parser.add_argument("--calls", type=int, default=60,
                        help="calls per client per round (default 60)")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 500 or not 1 <= args.calls <= 10_000:
        parser.error("keep it bounded: 1-500 rounds of 1-10,000 calls")

    print(f"{args.rounds} interleaved rounds x {args.calls} calls per client, one thread; "
          f"Python {sys.version.split()[0]}, requests {requests.__version__}")

    with Peer() as peer:
        sessions = clients()
        wall, cpu = measure(sessions, peer.url + "/items/42", args.rounds, args.calls)
        for s in sessions.values():
            s.close()
    report("Loopback keep-alive peer (its own process):", wall, cpu)

    sessions = clients()
    for s in sessions.values():
        s.mount("http://instant.test/", InstantAdapter())
    wall, cpu = measure(sessions, "http://instant.test/items/42", args.rounds, args.calls)
    report("No network (a transport that answers at once): the client's own work only:", wall, cpu)


if __name__ == "__main__":
    main()
