"""
Per-call overhead of `ResilientSession.get` against `requests.Session.get`.

Both sessions call the same loopback keep-alive server (stdlib
ThreadingHTTPServer speaking HTTP/1.1, a 2-byte body), in interleaved
rounds so that drift (CPU frequency, other load) hits both alike; the
order within a round alternates. Reported: the median per-call time of each
over the rounds, their ratio, and the median of the per-round ratios.

    python benchmarks/overhead.py                 # 15 rounds x 300 calls each
    python benchmarks/overhead.py --rounds 31 --calls 500
    python benchmarks/overhead.py --profile       # cProfile of ResilientSession.get

Loopback only, bounded in calls, and the server stops at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's package first

import requests

import resilient_client


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_GET(self) -> None:  # the stdlib's name
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _time_calls(session: requests.Session, url: str, calls: int) -> float:
    """Seconds per call, over *calls* sequential GETs."""
    get = session.get
    started = time.perf_counter()
    for _ in range(calls):
        get(url).content  # noqa: B018 - the body is part of the call
    return (time.perf_counter() - started) / calls


def measure(url: str, rounds: int, calls: int, config: Any) -> dict[str, Any]:
    plain = requests.Session()
    ours = resilient_client.ResilientSession(config)
    for s in (plain, ours):  # warm up: connection open, routes cached
        _time_calls(s, url, 50)
    t_plain: list[float] = []
    t_ours: list[float] = []
    for r in range(rounds):
        pair = [(plain, t_plain), (ours, t_ours)]
        for session, out in pair if r % 2 == 0 else reversed(pair):
            out.append(_time_calls(session, url, calls))
    plain.close()
    ours.close()
    med_plain, med_ours = statistics.median(t_plain), statistics.median(t_ours)
    return {
        "requests_us": med_plain * 1e6,
        "resilient_us": med_ours * 1e6,
        "ratio": med_ours / med_plain,
        "round_ratio": statistics.median(o / p for o, p in zip(t_ours, t_plain, strict=True)),
        "overhead_us": (med_ours - med_plain) * 1e6,
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

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/item"
    try:
        if args.profile:
            print(profile(url, args.calls * args.rounds, None))
            return 0
        print(f"python {sys.version.split()[0]}, requests {requests.__version__}, "
              f"{args.rounds} interleaved rounds x {args.calls} keep-alive GETs per session")
        for label, config in (
            ("built-in defaults", None),
            ("retry/breaker/budget/bulkhead off, no total",
             {"defaults": {"retry": None, "breaker": None, "budget": None, "bulkhead": None,
                           "timeout": {"total": None}}}),
        ):
            m = measure(url, args.rounds, args.calls, config)
            print(f"{label:<45} requests.Session.get {m['requests_us']:7.1f} us/call   "
                  f"ResilientSession.get {m['resilient_us']:7.1f} us/call   "
                  f"ratio {m['ratio']:.3f} (per-round median {m['round_ratio']:.3f}), "
                  f"+{m['overhead_us']:.1f} us/call")
    finally:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
