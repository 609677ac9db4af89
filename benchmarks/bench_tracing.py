"""
Per-call cost of the tracing listener (`otel_trace_listener`) on the happy path.

One GET after another on a loopback keep-alive server (the test server in
another process), through sessions that differ only in tracing:

    requests.Session    plain requests, for reference
    bare                ResilientSession, no tracing listener
    traced              otel_trace_listener() on an SDK TracerProvider with a
                        BatchSpanProcessor and an exporter that drops the
                        spans (what a service exporting to a collector pays on
                        its calling thread), trace context injected
    traced+propagate-off  the same, propagate=False (no header, no copy)

Rounds are interleaved in a shuffled order; each case's ratio to `bare` in
the same round is taken, then the median over rounds (wall time, and the
calling thread's CPU time, which other load disturbs less).

    python benchmarks/bench_tracing.py [--rounds 15] [--calls 300] [--smoke]

(or ``python benchmarks/run.py --only tracing``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import _util  # this checkout's package and the test server (tests/peers.py)

NAMES = ["requests.Session", "bare", "traced", "traced+propagate-off"]


def _provider() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=65536))
    return provider


def build() -> dict[str, Callable[[str], object]]:
    import requests

    import resilient_client as rc

    provider = _provider()
    return {
        "requests.Session": requests.Session().get,
        "bare": rc.ResilientSession().get,
        "traced": rc.ResilientSession(listeners=[rc.otel_trace_listener(provider)]).get,
        "traced+propagate-off": rc.ResilientSession(
            listeners=[rc.otel_trace_listener(provider, propagate=False)]).get,
    }


def measure(rounds: int, calls: int) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """(wall ratios to bare, CPU ratios to bare, median wall µs per call)."""
    with _util.peer("ok") as peer:
        url = peer.base + "/items/42"
        gets = build()
        for get in gets.values():  # warm up: connections, caches
            for _ in range(50):
                get(url)
        cpu: dict[str, list[float]] = {n: [] for n in gets}

        def case(name: str) -> Callable[[], float]:
            get = gets[name]

            def one() -> float:
                t0, c0 = time.perf_counter(), time.thread_time()
                for _ in range(calls):
                    get(url)
                c1, t1 = time.thread_time(), time.perf_counter()
                cpu[name].append((c1 - c0) / calls * 1e6)
                return (t1 - t0) / calls * 1e6

            return one

        wall = _util.interleaved({n: case(n) for n in gets}, rounds)
    return (_util.ratios(wall, "bare"), _util.ratios(cpu, "bare"),
            {n: _util.median(v) for n, v in wall.items()})


def run(*, smoke: bool = False, rounds: int = 15, calls: int = 300) -> list[_util.Row]:
    """The tracing listener's per-call cost as result rows (ratios to `bare`)."""
    if smoke:
        rounds, calls = 2, 20
    wall, cpu, us = measure(rounds, calls)
    bench = "tracing overhead"
    return [_util.Row(bench, f"{name}: vs bare", wall[name], "x",
                      note=f"CPU {cpu[name]:.2f}x; {us[name]:.0f} µs/call wall")
            for name in NAMES if name != "bare"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=300, help="calls per batch")
    parser.add_argument("--smoke", action="store_true", help="a tiny run that only checks it works")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.calls = 2, 20
    wall, cpu, us = measure(args.rounds, args.calls)
    print(f"Happy-path GET on a loopback keep-alive server (another process); medians of "
          f"{args.rounds} interleaved rounds of {args.calls} calls; Python {sys.version.split()[0]}.\n")
    print("| configuration | wall µs/call | wall ratio to bare | CPU ratio to bare |")
    print("| --- | ---: | ---: | ---: |")
    for name in NAMES:
        print(f"| {name} | {us[name]:.0f} | {wall[name]:.2f} | {cpu[name]:.2f} |")


if __name__ == "__main__":
    main()
