"""
Hedged requests against a slow tail: latency percentiles, extra requests and
CPU with no hedging, a fixed hedge delay and a learned ``p95`` delay.

    python benchmarks/bench_hedge.py [--quick] [--calls 2000] [--callers 8] [--no-haproxy]

Case 1: a loopback peer (tests/peers.py, in its own process) answers in
5 ms, except 5 % of requests (drawn at random, seeded) that take 200 ms.
Case 2: three peers behind a real HAProxy (round robin, then least
connections), one of which stalls for 1 s out of every 3 s; the others
answer in 5 ms. A stall hits fewer than 1 % of the calls, so this case
compares p99.9, over three times the calls (to span several stalls).

*callers* threads share one session and make *calls* calls in all per
configuration. For each configuration: p50, p99, p99.9 of the call's
duration, extra requests (requests the peers saw beyond the calls made, in
%), CPU per call (this process's CPU time, hedge threads included, divided
by the calls), calls that ran past their ``total`` deadline, and what was
left behind once the session is closed and dropped: sockets this process
still holds, connections still open at the peers (behind HAProxy: HAProxy's
own idle connections to them, not ours), and threads alive beyond those
there before (the hedge pool's workers are reported apart: they are kept
for reuse, at most ``HEDGE_THREADS``). The configurations run one after the
other on the same peers.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _util
import peers

import resilient_client
from resilient_client._hedge import hedge_pool

TOTAL = 2.0  # every call's deadline, seconds
#: name -> the hedge section of the session's config.
CONFIGS: dict[str, dict[str, Any] | None] = {
    "no hedging": None,
    "fixed 20 ms": {"delay": 0.02},
    "p95": {"delay": "p95"},
    "p90": {"delay": "p90"},
}


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest rank."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]


def drive(url: str, hedge: dict[str, Any] | None, callers: int, calls: int,
          hits: Any, open_connections: Any) -> dict[str, float]:
    """*callers* threads, *calls* calls in all through one session; the figures of one configuration."""
    config: dict[str, Any] = {"timeout": {"total": TOTAL, "read": TOTAL}, "bulkhead": {"max_concurrent": 64}}
    if hedge is not None:
        config["hedge"] = hedge
    sockets_before = own_sockets()
    session = resilient_client.ResilientSession({"defaults": config})
    holder = [session]  # the callers' way to it, dropped at the end (a closure cell cannot be)
    threads_before = {t for t in threading.enumerate() if not t.name.startswith("resilient_client-hedge")}
    hits_before = hits()
    durations: list[float] = []
    hedged = [0]
    errors: list[BaseException] = []
    lock = threading.Lock()
    each = max(1, calls // callers)
    start = threading.Barrier(callers)

    def caller() -> None:
        mine: list[float] = []
        n_hedged = 0
        start.wait(timeout=30)
        for _ in range(each):  # bounded
            t0 = time.perf_counter()
            try:
                resp = holder[0].get(url)
                resp.raise_for_status()
                n_hedged += bool(resp.hedged)
            except Exception as exc:
                with lock:
                    errors.append(exc)
            mine.append(time.perf_counter() - t0)
        with lock:
            durations.extend(mine)
            hedged[0] += n_hedged

    pool = [threading.Thread(target=caller, daemon=True) for _ in range(callers)]
    cpu0 = time.process_time()
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=600)
    cpu = time.process_time() - cpu0
    made = each * callers
    window = session._route_for("GET", url).state.latency
    learned = window.value * 1000 if window is not None else float("nan")
    session.close()
    holder.clear()
    del session
    # Give abandoned copies' sockets a moment to be seen closed by the peer.
    deadline = time.monotonic() + 2.0
    left_open = open_connections()
    while left_open and time.monotonic() < deadline:  # bounded
        time.sleep(0.05)
        left_open = open_connections()
    leaked = own_sockets() - sockets_before
    extra_threads = [t for t in threading.enumerate()
                     if t not in threads_before and not t.name.startswith("resilient_client-hedge")]
    durations.sort()
    return {
        "calls": made,
        "p50": percentile(durations, 50) * 1000,
        "p99": percentile(durations, 99) * 1000,
        "p99.9": percentile(durations, 99.9) * 1000,
        "extra": 100.0 * (hits() - hits_before - made) / made,
        "hedged": 100.0 * hedged[0] / made,
        "cpu_us": cpu / made * 1e6,
        "late": sum(1 for d in durations if d > TOTAL),
        "errors": len(errors),
        "open": left_open,
        "sockets": leaked,
        "learned": learned,
        "threads": len(extra_threads),
        "pool": hedge_pool().threads(),
    }


def own_sockets() -> int:
    """Sockets this process holds open now."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


@contextlib.contextmanager
def tail_peer() -> Iterator[tuple[str, Any, Any]]:
    with peers.peer_process(record=False, max_connections=256) as remote:
        remote.on("*", peers.tail(0.005, 0.2, 0.05, seed=7))
        yield remote.url("/items"), remote.hits, lambda: remote.open_connections


@contextlib.contextmanager
def haproxy_peers(balance: str = "roundrobin", every: float = 3.0,
                  stalled: float = 1.0) -> Iterator[tuple[str, Any, Any]]:
    binary = shutil.which("haproxy") or shutil.which("/usr/sbin/haproxy")
    if binary is None:
        raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
    with contextlib.ExitStack() as stack:
        backends = [stack.enter_context(peers.peer_process(record=False, max_connections=256))
                    for _ in range(3)]
        backends[0].on("*", peers.stall(every, stalled, peers.delay(0.005)))
        for b in backends[1:]:
            b.on("*", peers.delay(0.005))
        port = peers.free_port()
        d = stack.enter_context(tempfile.TemporaryDirectory(prefix="rc-bench-haproxy-"))
        cfg = Path(d) / "haproxy.cfg"
        servers = "".join(f"    server s{i} 127.0.0.1:{b.port}\n" for i, b in enumerate(backends))
        cfg.write_text(
            "global\n    maxconn 1024\n\n"
            "defaults\n    mode http\n    timeout connect 1s\n    timeout client 30s\n"
            "    timeout server 30s\n    option http-keep-alive\n\n"
            f"frontend fe\n    bind 127.0.0.1:{port}\n    default_backend app\n\n"
            f"backend app\n    balance {balance}\n{servers}"
        )
        proc = subprocess.Popen([binary, "-f", str(cfg), "-db"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            end = time.monotonic() + 10
            while True:  # bounded by `end`
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > end or proc.poll() is not None:
                        raise RuntimeError("haproxy did not start") from None
                    time.sleep(0.02)

            def hits() -> int:
                return sum(b.hits() for b in backends)

            def open_connections() -> int:
                # HAProxy keeps its own idle server connections: count the client side
                # (ours to leak) as connections HAProxy still holds to the peers is not ours.
                return sum(b.open_connections for b in backends)

            yield f"http://127.0.0.1:{port}/items", hits, open_connections
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def rows_for(bench: str, results: dict[str, dict[str, float]], at: str = "p99") -> list[_util.Row]:
    """One row per configuration, its *at* percentile against no hedging's."""
    rows: list[_util.Row] = []
    base = results["no hedging"][at]
    for name, r in results.items():
        note = (f"p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, p99.9 {r['p99.9']:.1f} ms, "
                f"{r['extra']:.1f} % extra requests, "
                f"{r['hedged']:.1f} % calls hedged, {r['cpu_us']:.0f} µs CPU/call, "
                f"{int(r['late'])} late, {int(r['errors'])} errors, "
                f"{int(r['sockets'])} sockets left open here, {int(r['open'])} conns open at the peers, "
                f"{int(r['threads'])} threads left (+{int(r['pool'])} pool)")
        if r["learned"] == r["learned"]:  # not NaN: a learned delay
            note += f", delay learned {r['learned']:.1f} ms"
        if name == "no hedging":
            rows.append(_util.Row(bench, f"{name}: {at}", round(r[at], 1), "ms", note=note))
        else:
            cut = base / r[at] if r[at] else float("inf")
            ok = cut >= 5 and r["extra"] <= 10 and r["late"] == 0
            rows.append(_util.Row(bench, f"{name}: {at}", round(r[at], 1), "ms",
                                  target=">= 5x cut, <= 10 % extra", met=ok,
                                  note=f"{cut:.1f}x cut; {note}"))
    return rows


def handoff_cost(calls: int, rounds: int = 5) -> list[_util.Row]:
    """
    What hedging costs a call that needs no hedge: one caller, a peer that
    answers at once, ``hedge: {delay: 1.0}`` (never fires) against hedging
    off, alternated over *rounds* rounds (medians of per-round figures).
    """
    bench = f"hedging on, no hedge needed: 1 caller x {calls} calls, immediate answers"
    walls: dict[str, list[float]] = {"off": [], "on": []}
    cpus: dict[str, list[float]] = {"off": [], "on": []}
    with peers.peer_process(record=False) as remote:
        remote.on("*", peers.answer(200, _util.BODY))
        url = remote.url("/items")
        sessions = {
            "off": resilient_client.ResilientSession(),
            "on": resilient_client.ResilientSession({"defaults": {"hedge": {"delay": 1.0}}}),
        }
        for s in sessions.values():
            for _ in range(20):  # warm: connections, routes
                s.get(url).content  # noqa: B018
        for _ in range(rounds):
            for name, s in sessions.items():
                w0, c0 = time.perf_counter(), time.process_time()
                for _ in range(calls):
                    s.get(url).content  # noqa: B018
                walls[name].append((time.perf_counter() - w0) / calls * 1e6)
                cpus[name].append((time.process_time() - c0) / calls * 1e6)
        for s in sessions.values():
            s.close()
    med = statistics.median
    rows = []
    for name in ("off", "on"):
        rows.append(_util.Row(bench, f"hedge {name}: wall per call", round(med(walls[name]), 1), "µs",
                              note=f"CPU {med(cpus[name]):.0f} µs per call"))
    extra = med([b - a for a, b in zip(cpus["off"], cpus["on"], strict=True)])
    rows.append(_util.Row(bench, "hedge on: extra CPU per call (the thread handoff)", round(extra, 1), "µs",
                          note=f"{hedge_pool().threads()} pool threads started in this process"))
    return rows


def run(*, smoke: bool = False, calls: int | None = None, callers: int = 8,
        haproxy: bool = True) -> list[_util.Row]:
    calls = calls or (80 if smoke else 2000)
    rows: list[_util.Row] = []
    # (title, peers, calls, the percentile compared): a stall hits fewer than 1 % of
    # the calls behind HAProxy, so there the tail is p99.9, and the run is longer
    # (three times the calls) to span several stalls.
    cases: list[tuple[str, Any, int, str]] = [("tail: 5 ms, 5 % at 200 ms", tail_peer, calls, "p99")]
    if haproxy:
        for balance in ("roundrobin", "leastconn"):
            cases.append((f"HAProxy ({balance}), 1 of 3 backends stalls 1 s every 3 s",
                          functools.partial(haproxy_peers, balance), calls * 3, "p99.9"))
    for title, make, n, at in cases:
        bench = f"hedging, {title}; {callers} callers x {n // callers} calls"
        results: dict[str, dict[str, float]] = {}
        with make() as (url, hits, open_connections):
            for name, hedge in CONFIGS.items():
                results[name] = drive(url, hedge, callers, n, hits, open_connections)
        rows.extend(rows_for(bench, results, at))
    rows.extend(handoff_cost(50 if smoke else 1000, rounds=2 if smoke else 5))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", "--smoke", dest="smoke", action="store_true",
                    help="tiny counts: checks it runs")
    ap.add_argument("--calls", type=int, default=None, help="calls per configuration (default 2000)")
    ap.add_argument("--callers", type=int, default=8)
    ap.add_argument("--no-haproxy", action="store_true", help="skip the HAProxy case")
    args = ap.parse_args()
    _util.print_rows(run(smoke=args.smoke, calls=args.calls, callers=args.callers,
                         haproxy=not args.no_haproxy))


if __name__ == "__main__":
    main()
