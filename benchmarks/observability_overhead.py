"""
Per-call cost of events, logging and metrics on the happy path.

One GET after another on a loopback keep-alive server (the test server in
another process, so it does not share our GIL), through sessions that
differ only in what listens to their events:

    requests.Session    plain requests, for reference
    bare                ResilientSession, nothing listening (the default:
                        the logging listener is there, logs at WARNING)
    log-info            the 'resilient_client' logger at INFO, to a handler
    log-debug           ... at DEBUG: every attempt and call is a log line
    prometheus          prometheus_listener() on its own registry
    otel                otel_listener() on an SDK MeterProvider
    health              session.health() asked once: its error-rate tracker
    all                 log-debug + prometheus + otel + health

Rounds are interleaved (each round times a batch of calls through every
session, in a rotating order) and the medians are compared, as ratios to
`bare` measured in the same run: wall time, and the calling thread's CPU
time, which other load on the machine disturbs less. Then the same event
work is timed alone, without the network, for a figure free of the
loopback's noise.

"Without the extras installed": a second process, in which importing
prometheus_client and opentelemetry fails, times `bare` against
requests.Session the same way; its ratio is compared with this process's.

    python benchmarks/observability_overhead.py [--rounds 15] [--calls 300] [--instructions] [--smoke]

(or ``python benchmarks/run.py --only observability``).

With ``--instructions``, each configuration is also run under valgrind's
callgrind and its instructions per call counted: a figure that other load
on the machine cannot move.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import _util  # this checkout's package and the test server (tests/peers.py)

NAMES = ["requests.Session", "bare", "log-info", "log-debug", "prometheus", "otel", "health", "all"]

BLOCK_EXTRAS = textwrap.dedent(
    """
    import importlib.abc, sys

    class _NoExtras(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("prometheus_client", "opentelemetry"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, _NoExtras())
    """
)


class Config:
    """One configuration: its logger level (set before each batch) and its get."""

    def __init__(self, get: Callable[[str], object], level: int = logging.WARNING) -> None:
        self.get = get
        self.level = level


def build(names: list[str]) -> dict[str, Config]:
    """A `Config` per configuration name."""
    import requests

    import resilient_client as rc

    configs: dict[str, Config] = {}
    for name in names:
        if name == "requests.Session":
            configs[name] = Config(requests.Session().get)
        elif name == "bare":
            configs[name] = Config(rc.ResilientSession().get)
        elif name == "log-info":
            configs[name] = Config(rc.ResilientSession().get, logging.INFO)
        elif name == "log-debug":
            configs[name] = Config(rc.ResilientSession().get, logging.DEBUG)
        elif name == "prometheus":
            from prometheus_client import CollectorRegistry

            s = rc.ResilientSession(listeners=[rc.prometheus_listener(CollectorRegistry())])
            configs[name] = Config(s.get)
        elif name == "otel":
            s = rc.ResilientSession(listeners=[rc.otel_listener(_otel_provider())])
            configs[name] = Config(s.get)
        elif name == "health":
            s = rc.ResilientSession()
            s.health()
            configs[name] = Config(s.get)
        elif name == "all":
            from prometheus_client import CollectorRegistry

            s = rc.ResilientSession(listeners=[rc.prometheus_listener(CollectorRegistry()),
                                               rc.otel_listener(_otel_provider())])
            s.health()
            configs[name] = Config(s.get, logging.DEBUG)
        else:
            raise SystemExit(f"unknown configuration {name!r}")
    return configs


def _otel_provider() -> object:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    return MeterProvider(metric_readers=[InMemoryMetricReader()])


def measure(configs: dict[str, Config], url: str, rounds: int, calls: int
            ) -> tuple[dict[str, float], dict[str, float]]:
    """
    Median microseconds per call of each configuration, rounds interleaved:
    wall time, and the calling thread's CPU time (what the client itself
    spends; steadier when other work shares the machine).
    """
    # Records go to a real handler (formatting included) writing to memory.
    log = logging.getLogger("resilient_client")
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    names = list(configs)
    for c in configs.values():  # warm up: connections, caches, first-event paths
        log.setLevel(c.level)
        for _ in range(50):
            c.get(url)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            c = configs[name]
            log.setLevel(c.level)  # process-wide, so per batch, outside the timing
            sink.seek(0)
            sink.truncate()
            get = c.get
            t0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(calls):
                get(url)
            c1, t1 = time.thread_time(), time.perf_counter()
            wall[name].append((t1 - t0) / calls * 1e6)
            cpu[name].append((c1 - c0) / calls * 1e6)
    log.setLevel(logging.NOTSET)
    return ({n: statistics.median(v) for n, v in wall.items()},
            {n: statistics.median(v) for n, v in cpu.items()})


def isolated(rounds: int) -> dict[str, float]:
    """
    Microseconds of event work per happy-path call, without the network:
    what `_attempt` and `send` add when someone listens (redact the URL,
    build AttemptFinished and CallFinished, hand both to every listener).
    """
    import timeit

    from prometheus_client import CollectorRegistry

    import resilient_client as rc
    from resilient_client._clock import SYSTEM_CLOCK
    from resilient_client._events import EventBus
    from resilient_client._health import HealthTracker
    from resilient_client._redact import redact_url

    secrets = rc.Secrets(query=["token"])
    url = "http://127.0.0.1:8080/items/42?page=2"
    log = logging.getLogger("resilient_client")
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    setups: dict[str, tuple[list[Callable[[rc.Event], None]], int]] = {
        "log-debug": ([], logging.DEBUG),
        "prometheus": ([rc.prometheus_listener(CollectorRegistry())], logging.WARNING),
        "otel": ([rc.otel_listener(_otel_provider())], logging.WARNING),
        "health": ([HealthTracker(SYSTEM_CLOCK)], logging.WARNING),
        "all": ([rc.prometheus_listener(CollectorRegistry()), rc.otel_listener(_otel_provider()),
                 HealthTracker(SYSTEM_CLOCK)], logging.DEBUG),
    }
    out: dict[str, float] = {}
    for name, (listeners, level) in setups.items():
        bus = EventBus(listeners)
        log.setLevel(level)

        def one_call(bus: EventBus = bus) -> None:
            if bus.wants_hot():
                shown = redact_url(url, secrets)
                bus.emit(rc.AttemptFinished("inventory", "GET", shown, 1, "ok", 200, 0.0004))
            if bus.wants_hot():
                bus.emit(rc.CallFinished("inventory", "GET", redact_url(url, secrets), 1, "ok", 200,
                                         0.0005, False))

        runs = timeit.repeat(one_call, number=2000, repeat=max(rounds, 5))
        out[name] = statistics.median(runs) / 2000 * 1e6
        handler.stream.seek(0)
        handler.stream.truncate()
    log.setLevel(logging.NOTSET)
    log.removeHandler(handler)
    return out


def child(url: str, rounds: int, calls: int) -> None:
    """Run in a process without the extras: print bare and requests.Session medians."""
    exec(BLOCK_EXTRAS, {})
    configs = build(["requests.Session", "bare"])
    import resilient_client as rc

    try:
        rc.prometheus_listener()
    except ImportError:
        pass
    else:
        raise SystemExit("the extras were not blocked")
    loaded = [m for m in sys.modules if m.split(".")[0] in ("prometheus_client", "opentelemetry")]
    assert not loaded, loaded
    wall, cpu = measure(configs, url, rounds, calls)
    print(wall["requests.Session"], wall["bare"], cpu["requests.Session"], cpu["bare"])


def count_calls(url: str, name: str, calls: int) -> None:
    """Warm up one configuration, then make *calls* calls: run under callgrind by `instructions`."""
    c = build([name])[name]
    log = logging.getLogger("resilient_client")
    log.addHandler(logging.StreamHandler(io.StringIO()))
    log.propagate = False
    log.setLevel(c.level)
    for _ in range(20):
        c.get(url)
    for _ in range(calls):
        c.get(url)


def instructions(url: str, names: list[str], calls: int) -> dict[str, float]:
    """
    Instructions per call of each configuration, counted by valgrind's
    callgrind (the same count whatever else the machine does): the
    difference between a run of *calls* calls and a run of none, divided.
    """
    import re
    import tempfile

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            totals = []
            for n in (0, calls):
                cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out",
                       sys.executable, __file__, "--count", url, "--config", name, "--calls", str(n)]
                # A fixed hash seed: the same dict layouts, so the same counts run to run.
                env = dict(os.environ, PYTHONHASHSEED="0")
                err = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stderr
                m = re.search(r"Collected : (\d+)", err)
                assert m, err[-500:]
                totals.append(int(m.group(1)))
            out[name] = (totals[1] - totals[0]) / calls
    return out


Results = tuple[dict[str, float], dict[str, float], tuple[float, ...], dict[str, float], dict[str, float]]


def collect(rounds: int, calls: int, count_instructions: bool = False) -> Results:
    """
    (wall, cpu) per configuration, the extras-blocked child's (requests wall,
    bare wall, requests CPU, bare CPU), instructions per call (or {}), and
    the event work alone.
    """
    with _util.peer("ok") as peer:
        url = peer.base + "/items/42"
        wall, cpu = measure(build(NAMES), url, rounds, calls)
        out = subprocess.run(
            [sys.executable, __file__, "--child", url, "--rounds", str(rounds), "--calls", str(calls)],
            capture_output=True, text=True, check=True, timeout=600,
        )
        blocked = tuple(map(float, out.stdout.split()))
        counted = instructions(url, NAMES, 300) if count_instructions else {}
    return wall, cpu, blocked, counted, isolated(rounds)


def run(*, smoke: bool = False, rounds: int = 15, calls: int = 300) -> list[_util.Row]:
    """The per-call cost of each configuration as result rows (ratios to `bare`)."""
    if smoke:
        rounds, calls = 2, 20
    wall, cpu, (c_req, c_bare, c_req_cpu, c_bare_cpu), _, alone = collect(rounds, calls)
    bench = "observability overhead"
    rows = [_util.Row(bench, f"{name}: vs bare", wall[name] / wall["bare"], "x",
                      note=f"CPU {cpu[name] / cpu['bare']:.2f}x; {cpu[name] - cpu['bare']:+.1f} µs CPU; "
                           f"event work alone {alone[name]:.1f} µs" if name in alone else
                           f"CPU {cpu[name] / cpu['bare']:.2f}x; {cpu[name] - cpu['bare']:+.1f} µs CPU")
            for name in wall]
    rows.append(_util.Row(bench, "bare vs requests.Session, extras not importable", c_bare / c_req, "x",
                          note=f"CPU {c_bare_cpu / c_req_cpu:.2f}x; with the extras installed "
                               f"{wall['bare'] / wall['requests.Session']:.2f}x"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=300, help="calls per batch")
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions per call under valgrind (slow)")
    parser.add_argument("--smoke", action="store_true", help="a tiny run that only checks it works")
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--count", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rounds, args.calls)
        return
    if args.count:
        count_calls(args.count, args.config, args.calls)
        return
    if args.smoke:
        args.rounds, args.calls = 2, 20
    wall, cpu, (c_req, c_bare, c_req_cpu, c_bare_cpu), counted, alone = collect(
        args.rounds, args.calls, args.instructions)
    bare, bare_cpu = wall["bare"], cpu["bare"]
    print(f"Happy-path GET on a loopback keep-alive server (another process); medians of "
          f"{args.rounds} interleaved rounds of {args.calls} calls; Python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs.\n")
    print("| configuration | wall µs/call | ratio to bare | client CPU µs/call | CPU ratio | added CPU µs |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in wall:
        print(f"| {name} | {wall[name]:.1f} | {wall[name] / bare:.3f} | {cpu[name]:.1f} | "
              f"{cpu[name] / bare_cpu:.3f} | {cpu[name] - bare_cpu:+.1f} |")
    print()
    print("The same event work alone, no network (median µs per call; ratio to a bare call's "
          "wall time above):\n")
    print("| configuration | µs per call | share of a bare call |")
    print("| --- | ---: | ---: |")
    for name, us in alone.items():
        print(f"| {name} | {us:.1f} | {us / bare:.1%} |")
    if counted:
        print()
        print("Instructions per call under callgrind (300 calls; deterministic):\n")
        print("| configuration | instructions per call | ratio to bare |")
        print("| --- | ---: | ---: |")
        for name, n in counted.items():
            print(f"| {name} | {n:,.0f} | {n / counted['bare']:.3f} |")
    print()
    print("Extras installed or not: bare against requests.Session, each process on its own.\n")
    print("| process | bare / requests.Session (wall) | (client CPU) |")
    print("| --- | ---: | ---: |")
    print(f"| extras installed, unused | {bare / wall['requests.Session']:.3f} | "
          f"{bare_cpu / cpu['requests.Session']:.3f} |")
    print(f"| extras not importable | {c_bare / c_req:.3f} | {c_bare_cpu / c_req_cpu:.3f} |")


if __name__ == "__main__":
    main()
