"""
The async client (`AsyncResilientClient`) against a plain ``httpx.AsyncClient``,
side by side in one run, on loopback:

- happy path: sequential GETs to a keep-alive peer (its own process), every
  protection on; the ratio of wall time (value) and of CPU time (note) per
  call, medians of interleaved rounds (goal <= 1.10x);
- a hung peer: 1,000 concurrent calls to a port that accepts connections and
  never answers, ``total: 1.0``: the wall time until all have ended, the
  latest end, and the tasks and sockets left afterwards;
- open-breaker rejection: the cost of a call refused by an open breaker;
- event-loop stall: the longest gap between ticks of a 1 ms ticker while
  1,000 calls to a refusing port fail, ours and a plain client's.

    python benchmarks/bench_async.py [--smoke|--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import _util
import httpx

import resilient_client
from resilient_client import AsyncResilientClient

TIMEOUT = httpx.Timeout(5.0, connect=1.0)


def config(total: float = 10.0, **changes: Any) -> dict[str, Any]:
    """Every protection on (as bench_happy's sync session), with *changes* to the defaults."""
    return {"defaults": {
        "timeout": {"connect": 1.0, "read": 5.0, "total": total},
        "retry": {"attempts": 3}, "budget": {"ratio": 0.2},
        "breaker": {"failure_threshold": 5, "reset_timeout": 30.0},
        "bulkhead": {"max_concurrent": 50}, **changes}}


def _sockets() -> int:
    """Sockets this process holds open now."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return n


async def happy(url: str, rounds: int, calls: int) -> list[_util.Row]:
    async with httpx.AsyncClient(timeout=TIMEOUT) as plain, AsyncResilientClient(config()) as ours:
        async def batch(client: httpx.AsyncClient) -> tuple[float, float]:
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                (await client.get(url)).raise_for_status()
            return time.perf_counter() - wall, time.process_time() - cpu

        await batch(plain)
        await batch(ours)  # warm: connections, routes
        wall: dict[str, list[float]] = {"plain": [], "ours": []}
        cpu: dict[str, list[float]] = {"plain": [], "ours": []}
        for i in range(rounds):
            order = [("plain", plain), ("ours", ours)]
            for name, client in order if i % 2 else reversed(order):
                w, c = await batch(client)
                wall[name].append(w)
                cpu[name].append(c)
    wall_ratio = _util.ratios(wall, "plain")["ours"]
    cpu_ratio = _util.ratios(cpu, "plain")["ours"]
    per_call = _util.median(wall["plain"]) / calls * 1e6
    return [_util.Row("async", "happy path vs httpx.AsyncClient (wall)", wall_ratio, "x", "<= 1.10x",
                      wall_ratio <= 1.10, f"CPU {cpu_ratio:.2f}x; plain {per_call:.0f} µs/call")]


async def _hang_all(client: httpx.AsyncClient, url: str, n: int) -> tuple[float, list[float]]:
    """*n* concurrent GETs of *url*: (wall time until all ended, when each ended)."""
    ends: list[float] = []
    started = time.perf_counter()

    async def one() -> None:
        with contextlib.suppress(httpx.TimeoutException):  # DeadlineExceeded is one
            await client.get(url)
        ends.append(time.perf_counter() - started)

    await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - started, ends


async def hung(n: int, total: float) -> list[_util.Row]:
    tarpit = socket.create_server(("127.0.0.1", 0), backlog=4096)  # accepts (the kernel), never answers
    url = f"http://127.0.0.1:{tarpit.getsockname()[1]}/items"
    sockets_before, tasks_before = _sockets(), len(asyncio.all_tasks())
    try:
        async with AsyncResilientClient(config(total, bulkhead={"max_concurrent": 2 * n})) as client:
            wall, ends = await _hang_all(client, url, n)
        tasks_left = len(asyncio.all_tasks()) - tasks_before
        sockets_left = _sockets() - sockets_before - 1  # the tarpit's own listener
        # The plain client, bounded the only way httpx can (a read timeout of
        # `total`), with a pool that never makes a call wait, as ours.
        plain = httpx.AsyncClient(timeout=httpx.Timeout(total, connect=1.0),
                                  limits=httpx.Limits(max_connections=None))
        async with plain:
            _, plain_ends = await _hang_all(plain, url, n)
    finally:
        tarpit.close()
    ok = len(ends) == n and max(ends) < total + 0.5 and tasks_left == 0 and sockets_left <= 0
    return [_util.Row("async", f"{n} calls to a hung peer, total {total:g} s: all ended", wall, "s",
                      f"~{total:g} s", ok, f"first {min(ends):.2f} s, last {max(ends):.2f} s; "
                      f"tasks left {tasks_left}, sockets left {max(0, sockets_left)}; plain "
                      f"httpx.AsyncClient (read timeout {total:g} s): first {min(plain_ends):.2f} s, "
                      f"last {max(plain_ends):.2f} s")]


async def rejection(url: str, n: int) -> list[_util.Row]:
    async with AsyncResilientClient(config()) as client:
        client.circuit(url).open()
        started = time.perf_counter()
        for _ in range(n):
            with contextlib.suppress(resilient_client.CircuitOpenError):
                await client.get(url)
        cost = (time.perf_counter() - started) / n * 1e6
    return [_util.Row("async", "open-breaker rejection, per call", cost, "µs")]


async def stall(n: int) -> list[_util.Row]:
    refused = f"http://127.0.0.1:{_util.peers.free_port()}/items"

    async def longest_gap(run: Callable[[], Awaitable[None]]) -> float:
        gap, stop = 0.0, False

        async def ticker() -> None:
            nonlocal gap
            last = time.perf_counter()
            while not stop:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gap, last = max(gap, now - last), now

        tick = asyncio.ensure_future(ticker())
        await asyncio.sleep(0.01)
        try:
            await run()
        finally:
            stop = True
            await tick
        return gap

    async def fail_all(client: httpx.AsyncClient) -> None:
        async def one() -> None:
            with contextlib.suppress(httpx.HTTPError):
                await client.get(refused)

        await asyncio.gather(*(one() for _ in range(n)))

    async with httpx.AsyncClient(timeout=TIMEOUT) as plain, \
            AsyncResilientClient(config(bulkhead={"max_concurrent": 2 * n})) as ours:
        plain_gap = await longest_gap(lambda: fail_all(plain))
        ours_gap = await longest_gap(lambda: fail_all(ours))
    return [_util.Row("async", f"event-loop stall while {n} calls fail (longest tick gap)", ours_gap * 1e3,
                      "ms", note=f"plain httpx.AsyncClient {plain_gap * 1e3:.1f} ms")]


async def _run(smoke: bool) -> list[_util.Row]:
    with _util.peer("ok") as peer:
        rows = await happy(peer.url, rounds=3 if smoke else 15, calls=20 if smoke else 300)
        rows += await rejection(peer.url, 200 if smoke else 20000)
    rows += await hung(50 if smoke else 1000, 0.3 if smoke else 1.0)
    rows += await stall(50 if smoke else 1000)
    return rows


def run(*, smoke: bool = False) -> list[_util.Row]:
    return asyncio.run(_run(smoke))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", "--quick", action="store_true", help="tiny counts: checks it runs")
    _util.print_rows(run(smoke=ap.parse_args().smoke))


if __name__ == "__main__":
    main()
