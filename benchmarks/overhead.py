"""
Per-call overhead of `ResilientSession.get` against `requests.Session.get`.

Both sessions call the same loopback keep-alive server (stdlib
ThreadingHTTPServer speaking HTTP/1.1, a 2-byte body, in a child process),
in interleaved rounds so that drift (CPU frequency, other load) hits both
alike; the order within a round alternates. Reported: the median per-call wall time of
each over the rounds, their ratio, the median of the per-round ratios, and
the same ratio of the client process's CPU time (less sensitive to other
load on the machine).

    python benchmarks/overhead.py                 # 15 rounds x 300 calls each
    python benchmarks/overhead.py --rounds 31 --calls 500
    python benchmarks/overhead.py --profile       # cProfile of ResilientSession.get

Loopback only, bounded in calls, and the server stops at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing
import pstats
import statistics
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's package first

import requests
from requests.adapters import HTTPAdapter

import resilient_client


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    # Headers and body leave in one write, with Nagle off: otherwise every
    # call waits ~40 ms for a delayed ACK and the benchmark measures TCP.
    wbufsize = 65536
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # the stdlib's name
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(port_out: Any) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    port_out.send(server.server_address[1])
    server.serve_forever()


def start_server() -> tuple[multiprocessing.Process, str]:
    """The keep-alive server in a child process (stopped by terminate()); returns it and a URL."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_serve, args=(send,), daemon=True)
    proc.start()
    if not receive.poll(30):
        proc.terminate()
        raise RuntimeError("the benchmark server did not start within 30 s")
    return proc, f"http://127.0.0.1:{receive.recv()}/item"


class _StubAdapter(HTTPAdapter):
    """Answers at once without a network: isolates the per-call cost of the session layers."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        resp = requests.Response()
        resp.status_code = 200
        resp._content = b"ok"
        resp.url = request.url or ""
        resp.request = request
        return resp


def _time_calls(session: requests.Session, url: str, calls: int, cpu: list[float] | None = None) -> float:
    """Wall seconds per call over *calls* sequential GETs; appends CPU seconds per call to *cpu*."""
    get = session.get
    cpu_started = time.process_time()  # this process only: the server is another one
    started = time.perf_counter()
    for _ in range(calls):
        get(url).content  # noqa: B018 - the body is part of the call
    wall = (time.perf_counter() - started) / calls
    if cpu is not None:
        cpu.append((time.process_time() - cpu_started) / calls)
    return wall


def measure(url: str, rounds: int, calls: int, config: Any, *, stub: bool = False) -> dict[str, Any]:
    plain = requests.Session()
    ours = resilient_client.ResilientSession(config)
    if stub:
        for s in (plain, ours):
            s.mount("http://", _StubAdapter())
    for s in (plain, ours):  # warm up: connection open, routes cached
        _time_calls(s, url, 50)
    t_plain: list[float] = []
    t_ours: list[float] = []
    c_plain: list[float] = []
    c_ours: list[float] = []
    for r in range(rounds):
        pair = [(plain, t_plain, c_plain), (ours, t_ours, c_ours)]
        for session, out, cpu in pair if r % 2 == 0 else reversed(pair):
            out.append(_time_calls(session, url, calls, cpu))
    plain.close()
    ours.close()
    med_plain, med_ours = statistics.median(t_plain), statistics.median(t_ours)
    cpu_plain, cpu_ours = statistics.median(c_plain), statistics.median(c_ours)
    return {
        "requests_us": med_plain * 1e6,
        "resilient_us": med_ours * 1e6,
        "ratio": med_ours / med_plain,
        "round_ratio": statistics.median(o / p for o, p in zip(t_ours, t_plain, strict=True)),
        "overhead_us": (med_ours - med_plain) * 1e6,
        "cpu_ratio": cpu_ours / cpu_plain,
        "cpu_overhead_us": (cpu_ours - cpu_plain) * 1e6,
    }


def profile(url: str, calls: int, config: Any) -> str:
    ours = resilient_client.ResilientSession(config)
    _time_calls(ours, url, 50)
    prof = cProfile.Profile()
    prof.enable()
    _time_calls(ours, url, calls)
    prof.disable()
    ours.close()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=300, help="calls per session per round")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of ResilientSession.get")
    args = parser.parse_args(argv)
    if not (1 <= args.rounds <= 1000 and 1 <= args.calls <= 100_000):
        parser.error("rounds must be in 1..1000 and calls in 1..100000")

    # The server runs in its own process: in this one it would share the GIL
    # with the client and add noise to what is measured.
    server, url = start_server()
    try:
        if args.profile:
            print(profile(url, args.calls * args.rounds, None))
            return 0
        print(f"python {sys.version.split()[0]}, requests {requests.__version__}, "
              f"{args.rounds} interleaved rounds x {args.calls} keep-alive GETs per session")
        off = {"defaults": {"retry": None, "breaker": None, "budget": None, "bulkhead": None,
                            "timeout": {"total": None}}}
        for label, config, stub in (
            ("built-in defaults", None, False),
            ("retry/breaker/budget/bulkhead off, no total", off, False),
            ("built-in defaults, no network (stub adapter)", None, True),
        ):
            m = measure(url, args.rounds, args.calls, config, stub=stub)
            print(f"{label}\n    wall: requests.Session.get {m['requests_us']:7.1f} us/call, "
                  f"ResilientSession.get {m['resilient_us']:7.1f} us/call, "
                  f"ratio {m['ratio']:.3f} (per-round median {m['round_ratio']:.3f}), "
                  f"{m['overhead_us']:+.1f} us/call\n"
                  f"    client CPU: ratio {m['cpu_ratio']:.3f}, {m['cpu_overhead_us']:+.1f} us/call")
    finally:
        server.terminate()
        server.join(timeout=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
