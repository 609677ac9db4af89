"""
What a breaker costs: the happy path with the breaker in memory or in Redis,
against requests.Session; the open-breaker rejection; and 8 threads calling
a 400 ms peer through one breaker.

    python benchmarks/breaker_cost.py            # starts its own redis-server on loopback

Ratios come from interleaved rounds in one run (medians), so machine noise
hits every variant alike. Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import http.server
import shutil
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from _loopback_peer import Peer

import resilient_client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis() -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is not on PATH (apt-get install redis-server)")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
        except OSError:
            time.sleep(0.02)
    return proc, f"redis://127.0.0.1:{port}/0"


def _session(url: str, storage: str | None) -> requests.Session:
    if storage is None:
        s = requests.Session()
    else:
        breaker = {"failure_threshold": 5, "storage": storage}
        s = resilient_client.ResilientSession(
            {"endpoints": [{"name": "peer", "match": url + "/", "breaker": breaker}]}
        )
    s.trust_env = False  # the same environment lookups for every variant: none
    return s


def _per_call(fn: Callable[[], Any], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n


def happy_path(url: str, redis_url: str, rounds: int, n: int) -> dict[str, float]:
    variants = {
        "requests.Session": _session(url, None),
        "breaker in memory": _session(url, "memory"),
        "breaker in Redis": _session(url, redis_url),
    }
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for s in variants.values():
        for _ in range(50):
            s.get(url + "/x")
    for _ in range(rounds):
        for name, s in variants.items():
            samples[name].append(_per_call(lambda s=s: s.get(url + "/x"), n))
    return {k: statistics.median(v) for k, v in samples.items()}


def rejection(redis_url: str, n: int) -> dict[str, float]:
    out = {}
    for storage in ("memory", redis_url):
        s = resilient_client.ResilientSession({"endpoints": [
            {"name": "dead", "match": "http://127.0.0.1:9/", "breaker": {"storage": storage}}
        ]})
        s.circuit("dead").open()

        def call(s: resilient_client.ResilientSession = s) -> None:
            with contextlib.suppress(resilient_client.CircuitOpenError):
                s.get("http://127.0.0.1:9/x")

        for _ in range(200):
            call()
        out["memory" if storage == "memory" else "Redis"] = statistics.median(
            _per_call(call, n) for _ in range(5)
        )
    return out


class _Slow(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        time.sleep(0.4)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


def concurrency(redis_url: str) -> dict[str, float]:
    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    srv = Server(("127.0.0.1", 0), _Slow)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    out = {}
    try:
        for label, storage in (("memory", "memory"), ("Redis", redis_url)):
            s = _session(url, storage)
            s.get(url + "/warm")
            threads = [threading.Thread(target=s.get, args=(url + "/x",)) for _ in range(8)]
            started = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            out[label] = time.monotonic() - started
    finally:
        srv.shutdown()
        srv.server_close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200, help="calls per round and variant")
    args = parser.parse_args()
    redis, redis_url = _start_redis()
    try:
        with Peer() as peer:
            happy = happy_path(peer.url, redis_url, args.rounds, args.calls)
        base = happy["requests.Session"]
        print(f"Happy path, 1 thread, {args.rounds} interleaved rounds x {args.calls} calls (median):")
        print(f"  {'variant':<20} {'us/call':>9} {'ratio':>7}")
        for name, t in happy.items():
            print(f"  {name:<20} {t * 1e6:9.1f} {t / base:7.3f}")
        print(f"  Redis vs memory breaker: {happy['breaker in Redis'] / happy['breaker in memory']:.3f}x")
        rej = rejection(redis_url, 20000)
        print("Open-breaker rejection (CircuitOpenError raised, no network):")
        for name, t in rej.items():
            print(f"  {name:<8} {t * 1e6:6.2f} us/call")
        conc = concurrency(redis_url)
        print("8 threads through one breaker, peer answers in 400 ms (serialised: 3.2 s):")
        for name, t in conc.items():
            print(f"  {name:<8} {t:.3f} s")
    finally:
        redis.kill()
        redis.wait(5)


if __name__ == "__main__":
    main()
