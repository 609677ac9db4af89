"""
Retry storm: N callers against a loopback peer that answers 503 to
everything for a while, then recovers.

Compares, each against a fresh outage of the same length:

* requests + urllib3 ``Retry(total=3, status_forcelist=[503])`` mounted on an
  ``HTTPAdapter`` (up to 4 attempts per call);
* tenacity hand-wired around ``requests.Session.get`` with 3 attempts;
* resilient_client with its default budget (ratio 0.2, 10 retries/s over
  10 s), breaker off so that the budget alone is measured;
* resilient_client with every default (breaker on), for reference.

Reports calls reaching the peer per application call (amplification) and the
peer's request rate during the outage, then the share of calls answered 200
in a short recovery phase. Loopback only, bounded (about 25 s with the
defaults). Run by hand, or by ``python benchmarks/run.py --only storm``::

    python benchmarks/retry_storm.py [--callers 40] [--rate 500] [--seconds 5] [--recovery 1]

The load is open-loop: the callers offer a fixed rate of application calls,
as incoming traffic would, whatever the client does with them; a client
whose retries make calls slower than that falls behind.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from importlib.metadata import version

import _util
import requests
import tenacity
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

import resilient_client
from resilient_client._deadline import DeadlineAdapter

BACKOFF = 0.01  # seconds: the first backoff step of every client

Call = Callable[[str], int]  # url -> status (0 for an exception)


def urllib3_client(callers: int) -> tuple[Call, Callable[[], None]]:
    session = requests.Session()
    retry = Retry(total=3, status_forcelist=[503], backoff_factor=BACKOFF, raise_on_status=False)
    session.mount("http://", HTTPAdapter(max_retries=retry, pool_maxsize=callers))

    def call(url: str) -> int:
        return session.get(url, timeout=(1, 5)).status_code

    return call, session.close


def tenacity_client(callers: int) -> tuple[Call, Callable[[], None]]:
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_maxsize=callers))
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_exponential(multiplier=BACKOFF, max=1.0),
        retry=tenacity.retry_if_result(lambda r: r.status_code == 503)
        | tenacity.retry_if_exception_type(requests.ConnectionError),
        retry_error_callback=lambda rs: rs.outcome.result() if rs.outcome else None,
    )

    def call(url: str) -> int:
        resp = retrying(session.get, url, timeout=(1, 5))
        return int(resp.status_code)

    return call, session.close


def resilient_client_factory(breaker: bool) -> Callable[[int], tuple[Call, Callable[[], None]]]:
    def make(callers: int) -> tuple[Call, Callable[[], None]]:
        defaults: dict[str, object] = {"retry": {"backoff": {"initial": BACKOFF}}}
        if not breaker:
            defaults["breaker"] = None
        # Everything else, the budget included, is the built-in default.
        session = resilient_client.ResilientSession({"defaults": defaults})
        # One pooled connection per caller, as for the other clients (the
        # session's own adapter keeps requests' default of 10).
        for prefix in ("http://", "https://"):
            session.mount(prefix, DeadlineAdapter(pool_maxsize=callers))

        def call(url: str) -> int:
            try:
                return session.get(url).status_code
            except requests.RequestException:
                return 0  # CircuitOpenError once the breaker opens

        return call, session.close

    return make


CLIENTS: list[tuple[str, Callable[[int], tuple[Call, Callable[[], None]]]]] = [
    ("requests + urllib3 Retry(total=3)", urllib3_client),
    ("tenacity, 3 attempts", tenacity_client),
    ("resilient_client, default budget (breaker off)", resilient_client_factory(breaker=False)),
    ("resilient_client, all defaults (breaker on)", resilient_client_factory(breaker=True)),
]


def hammer(
    call: Call, url: str, callers: int, rate: float, seconds: float
) -> tuple[int, list[int]]:
    """
    *callers* threads offering *rate* calls per second between them for
    *seconds* (open loop: a caller that falls behind does not burst to catch
    up); returns (calls made, statuses seen).
    """
    stop = threading.Event()
    counts = [0] * callers
    statuses: list[list[int]] = [[] for _ in range(callers)]
    interval = callers / rate
    start = time.monotonic()

    def worker(i: int) -> None:
        due = start + interval * i / callers  # spread the callers over one interval
        while not stop.is_set():
            now = time.monotonic()
            if due > now:
                if stop.wait(due - now):
                    return
            elif due < now - interval:
                due = now  # behind: carry on at the rate, no catch-up burst
            statuses[i].append(call(url))
            counts[i] += 1
            due += interval

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(callers)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(30)  # in-flight calls finish, retries included
    return sum(counts), [s for per in statuses for s in per]


def storm(callers: int, rate: float, seconds: float, recovery: float) -> list[dict[str, object]]:
    rows = []
    for name, factory in CLIENTS:
        with _util.peer("ok") as peer:  # a fresh peer (and fresh connections) for each client
            call, close = factory(callers)
            url = peer.base + "/items/42"
            call(url)  # warm up: open a connection while healthy
            peer.set_outage(True)
            before = peer.count()
            started = time.monotonic()
            calls, _ = hammer(call, url, callers, rate, seconds)
            elapsed = time.monotonic() - started
            outage_requests = peer.count() - before
            peer.set_outage(False)
            before = peer.count()
            rcalls, statuses = hammer(call, url, callers, rate, recovery)
            recovered = sum(1 for s in statuses if s == 200) / max(1, len(statuses))
            close()
            rows.append({
                "client": name,
                "calls": calls,
                "peer": outage_requests,
                "amplification": outage_requests / max(1, calls),
                "peer_rate": outage_requests / elapsed,
                "app_rate": calls / elapsed,
                "connections": peer.connections(),
                "recovered": recovered,
                "recovery_amp": (peer.count() - before) / max(1, rcalls),
            })
            print(f"  done: {name}", file=sys.stderr)
    return rows


def run(*, smoke: bool = False) -> list[_util.Row]:
    """The storm with the defaults (tiny ones for a smoke run), as result rows."""
    callers, rate, seconds, recovery = (4, 50.0, 0.5, 0.3) if smoke else (40, 500.0, 5.0, 1.0)
    bench = f"retry storm, {callers} callers at {rate:g} calls/s, {seconds:g} s outage"
    rows = []
    for r in storm(callers, rate, seconds, recovery):
        amplification = float(str(r["amplification"]))
        rows.append(_util.Row(bench, f"{r['client']}: calls reaching the peer per call", amplification, "x",
                              note=f"{float(str(r['peer_rate'])):,.0f} peer req/s; "
                                   f"{float(str(r['recovered'])):.0%} 200s after recovery"))
    return rows


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| client | app calls | calls reaching the peer | amplification | peer req/s | app calls/s "
        "| peer connections | 200s after recovery |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['client']} | {r['calls']:,} | {r['peer']:,} | {r['amplification']:.2f} "
            f"| {r['peer_rate']:,.0f} | {r['app_rate']:,.0f} | {r['connections']} "
            f"| {r['recovered']:.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = parser.add_argument
    add("--callers", type=int, default=40, help="caller threads (default 40)")
    add("--rate", type=float, default=500.0,
        help="application calls per second offered by all callers together (default 500)")
    add("--seconds", type=float, default=5.0, help="outage length per client (default 5)")
    add("--recovery", type=float, default=1.0, help="recovery phase length (default 1)")
    args = parser.parse_args()
    if (not 1 <= args.callers <= 64 or not 0 < args.rate <= 5000 or not 0 < args.seconds <= 30
            or not 0 < args.recovery <= 10):
        parser.error("keep it bounded: 1-64 callers, at most 5,000 calls/s, "
                     "30 s of outage, 10 s of recovery")
    print(f"{args.callers} callers offering {args.rate:g} calls/s, "
          f"{args.seconds:g} s outage (503 to everything), "
          f"{args.recovery:g} s recovery, loopback peer in its own process; "
          f"Python {sys.version.split()[0]}, requests {requests.__version__}, "
          f"urllib3 {urllib3.__version__}, tenacity {version('tenacity')}\n")
    rows = storm(args.callers, args.rate, args.seconds, args.recovery)
    print(table(rows))
    # The budget allows ratio x first tries plus min_per_second x window
    # retries in any window: over an outage of T seconds, at most about
    # ratio x calls + min_per_second x max(window, T) retries.
    budget_calls = int(str(rows[2]["calls"]))
    bound = 1 + 0.2 + 10 * max(10.0, args.seconds) / max(1, budget_calls)
    print(f"\nbudget bound for this run: 1 + 0.2 + 10/s x max(10 s, {args.seconds:g} s) / "
          f"{budget_calls:,} calls = {bound:.3f}")


if __name__ == "__main__":
    main()
