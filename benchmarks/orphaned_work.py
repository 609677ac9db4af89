"""
Orphaned work: how long B and C keep working after A gave up, with and
without deadline propagation.

Three services on 127.0.0.1 (WSGI apps on the test server): A calls B, which
calls C. C takes longer than anybody is willing to wait: it works in 10 ms
slices and, like any long task written for propagated deadlines, stops when
``resilient_client.current_deadline()`` has passed. B and C run behind
`DeadlineMiddleware`; A and B call with `ResilientSession`, with
``propagation`` on in one chain and off in the other. Rounds alternate
between the two chains and the medians are printed side by side.

    python benchmarks/orphaned_work.py               # 5 rounds each, about 30 s
    python benchmarks/orphaned_work.py --rounds 3 --json out.json
    python benchmarks/run.py --only orphaned         # the same, as result rows

"Orphaned work" of a service is the time its handler kept running after A
had stopped waiting (A's call returned or raised), floored at 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import _util  # this checkout's package and the test server (tests/peers.py)
import requests
from peers import Peer, wsgi

import resilient_client
from resilient_client import DeadlineMiddleware, ResilientSession

SLICE = 0.01  # C checks its deadline between slices of this many seconds


class Service:
    """A WSGI app on the test server, on a free loopback port (a thread per connection)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.peer = Peer(lifetime=900.0).on("*", wsgi(app)).start()
        self.url = self.peer.url("/")

    def close(self) -> None:
        self.peer.stop()


class Chain:
    """A -> B -> C with propagation on or off, timing each hop on time.monotonic."""

    def __init__(self, propagate: bool, a_deadline: float, b_timeout: float, c_work: float,
                 margin: float, c_checks: bool = True) -> None:
        self.c_work = c_work
        self.times: dict[str, float] = {}
        self.done = {"b": threading.Event(), "c": threading.Event()}
        prop: dict[str, Any] = {"propagation": {}} if propagate else {}

        def c_app(environ: dict[str, Any], start: Any) -> list[bytes]:
            self.times["c_start"] = began = time.monotonic()
            status = "200 OK"
            try:
                while time.monotonic() - began < c_work:
                    d = resilient_client.current_deadline() if c_checks else None
                    if d is not None and d.expired():
                        status = "504 Caller Gone"
                        break
                    time.sleep(SLICE)
            finally:
                self.times["c_end"] = time.monotonic()
                self.done["c"].set()
            start(status, [("Content-Type", "text/plain")])
            return [b""]

        self.c = Service(DeadlineMiddleware(c_app, margin=margin))
        b_session = ResilientSession({"defaults": {
            "timeout": {"connect": 1.0, "read": b_timeout, "total": b_timeout},
            "retry": None, "breaker": None, **prop,
        }})

        def b_app(environ: dict[str, Any], start: Any) -> list[bytes]:
            self.times["b_start"] = time.monotonic()
            try:
                status = f"{b_session.get(self.c.url).status_code} From C"
            except requests.RequestException:
                status = "504 Gave Up"
            finally:
                self.times["b_end"] = time.monotonic()
                self.done["b"].set()
            start(status, [("Content-Type", "text/plain")])
            return [b""]

        self.b = Service(DeadlineMiddleware(b_app, margin=margin))
        a_session = ResilientSession({"defaults": {
            "timeout": {"connect": 1.0, "read": a_deadline, "total": a_deadline},
            "retry": None, "breaker": None, **prop,
        }})

        def a_app(environ: dict[str, Any], start: Any) -> list[bytes]:
            self.times["a_start"] = time.monotonic()
            try:
                status = f"{a_session.get(self.b.url).status_code} From B"
            except requests.RequestException:
                status = "504 Gave Up"
            self.times["a_end"] = time.monotonic()
            start(status, [("Content-Type", "text/plain")])
            return [b""]

        self.a = Service(a_app)
        self.sessions = (a_session, b_session)

    def round(self) -> dict[str, float]:
        """One call to A; wait (bounded) for B and C to finish; the round's figures."""
        self.times.clear()
        for e in self.done.values():
            e.clear()
        requests.get(self.a.url, timeout=30).close()
        for name, e in self.done.items():
            if not e.wait(self.c_work + 10):
                raise RuntimeError(f"{name} did not finish")
        t = self.times
        gave_up = t["a_end"]
        return {
            "a_waited": t["a_end"] - t["a_start"],
            "b_orphaned": max(0.0, t["b_end"] - gave_up),
            "c_orphaned": max(0.0, t["c_end"] - gave_up),
            "b_busy": t["b_end"] - t["b_start"],
            "c_busy": t["c_end"] - t["c_start"],
            # Signed: negative when B answered before A's deadline.
            "b_end_vs_a": t["b_end"] - gave_up,
        }

    def close(self) -> None:
        for s in (self.a, self.b, self.c):
            s.close()
        for session in self.sessions:
            session.close()


ROWS = [
    ("a_waited", "A waited for B"),
    ("b_orphaned", "B kept working after A gave up"),
    ("c_orphaned", "C kept working after A gave up"),
    ("b_busy", "B worker busy"),
    ("c_busy", "C worker busy"),
]


def measure(rounds: int, a_deadline: float, b_timeout: float, c_work: float, margin: float,
            c_checks: bool = True) -> dict[str, list[dict[str, float]]]:
    """*rounds* rounds of each chain, interleaved (after one warm-up round each)."""
    chains = {
        "off": Chain(False, a_deadline, b_timeout, c_work, margin, c_checks),
        "on": Chain(True, a_deadline, b_timeout, c_work, margin, c_checks),
    }
    results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    try:
        for chain in chains.values():  # warm-up: imports, first connections
            chain.round()
        for i in range(rounds):
            # Interleaved, alternating which goes first, so drift hits both alike.
            order = ("off", "on") if i % 2 == 0 else ("on", "off")
            for mode in order:
                results[mode].append(chains[mode].round())
            print(f"round {i + 1}/{rounds} done", file=sys.stderr)
    finally:
        for chain in chains.values():
            chain.close()
    return results


def _medians(results: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in results.items()}


def run(*, smoke: bool = False) -> list[_util.Row]:
    """The defaults (a short chain for a smoke run), as result rows."""
    rounds, a_deadline, b_timeout, c_work = (1, 0.2, 0.5, 0.8) if smoke else (5, 1.0, 2.5, 4.0)
    med = _medians(measure(rounds, a_deadline, b_timeout, c_work, 0.05))
    bench = f"orphaned work, A -> B -> C, C needs {c_work:g} s, A waits {a_deadline:g} s"
    rows = [_util.Row(bench, f"{label}, propagation {mode}", med[mode][key], "s")
            for key, label in ROWS for mode in ("off", "on")]
    for mode in ("off", "on"):
        rows.append(_util.Row(bench, f"B + C orphaned, worker-seconds, propagation {mode}",
                              med[mode]["b_orphaned"] + med[mode]["c_orphaned"], "s"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=5, help="rounds per mode (default 5)")
    p.add_argument("--a-deadline", type=float, default=1.0, help="A's total, seconds (1.0)")
    p.add_argument("--b-timeout", type=float, default=2.5, help="B's own total, seconds (2.5)")
    p.add_argument("--c-work", type=float, default=4.0, help="C's work, seconds (4.0)")
    p.add_argument("--margin", type=float, default=0.05, help="middleware margin, seconds (0.05)")
    p.add_argument("--c-ignores-deadline", action="store_true",
                   help="C never checks its deadline (only B can benefit)")
    p.add_argument("--json", help="also write the raw rounds to this file")
    args = p.parse_args(argv)

    results = measure(args.rounds, args.a_deadline, args.b_timeout, args.c_work, args.margin,
                      not args.c_ignores_deadline)
    med = _medians(results)
    sys.stderr.flush()
    print(
        f"Orphaned work, A -> B -> C on loopback, C needs {args.c_work:g} s"
        f"{' and ignores its deadline' if args.c_ignores_deadline else ''} "
        f"(A's deadline {args.a_deadline:g} s, B's own timeout {args.b_timeout:g} s, "
        f"margin {args.margin:g} s); median of {args.rounds} rounds each, interleaved\n"
    )
    print(f"{'':34}{'propagation off':>17}{'propagation on':>16}")
    for key, label in ROWS:
        print(f"{label:34}{med['off'][key]:>15.3f} s{med['on'][key]:>14.3f} s")
    orphan_off = med["off"]["b_orphaned"] + med["off"]["c_orphaned"]
    orphan_on = med["on"]["b_orphaned"] + med["on"]["c_orphaned"]
    print(f"{'B + C orphaned, worker-seconds':34}{orphan_off:>15.3f} s{orphan_on:>14.3f} s")
    lag = -med["on"]["b_end_vs_a"] * 1000
    early = (args.a_deadline - med["on"]["a_waited"]) * 1000
    print(f"\nWith propagation, A's answer (a 504 from B) came {lag:.0f} ms after B finished and "
          f"{early:.0f} ms before A's own deadline: each hop keeps its margin back (medians).")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "rounds": results, "median": med}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
