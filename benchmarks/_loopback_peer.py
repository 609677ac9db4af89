"""
A loopback HTTP/1.1 keep-alive peer for the benchmarks, run in its own
process so that its work does not compete with the client for the GIL.

It answers 200, or 503 to everything while the outage flag is set, and
counts the requests and connections it sees in shared memory.
"""

from __future__ import annotations

import multiprocessing as mp
import socketserver
from multiprocessing.sharedctypes import Synchronized
from typing import Any

_HEAD = "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {length}\r\n\r\n"


def _answer(status: int, body: bytes) -> bytes:
    reason = "OK" if status == 200 else "Service Unavailable"
    return _HEAD.format(status=status, reason=reason, length=len(body)).encode("ascii") + body


_OK = _answer(200, b"ok")
_UNAVAILABLE = _answer(503, b"unavailable")


def _serve(port_out: Any, requests: Synchronized[int], connections: Synchronized[int],
           outage: Synchronized[int]) -> None:
    class Handler(socketserver.StreamRequestHandler):
        disable_nagle_algorithm = True  # one write per answer, no delayed-ACK stalls

        def handle(self) -> None:
            with connections.get_lock():
                connections.value += 1
            rfile, wfile = self.rfile, self.wfile
            while True:
                line = rfile.readline(65537)
                if not line:
                    return
                length = 0
                for _ in range(100):  # bounded: requests have few headers
                    h = rfile.readline(65537)
                    if h in (b"\r\n", b"\n", b""):
                        break
                    if h[:15].lower() == b"content-length:":
                        length = int(h[15:])
                if length:
                    rfile.read(length)
                with requests.get_lock():
                    requests.value += 1
                wfile.write(_UNAVAILABLE if outage.value else _OK)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 128

    with Server(("127.0.0.1", 0), Handler) as server:
        port_out.send(server.server_address[1])
        server.serve_forever(poll_interval=0.1)


class Peer:
    """The peer process and its shared counters."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._requests = ctx.Value("q", 0)
        self._connections = ctx.Value("q", 0)
        self._outage = ctx.Value("b", 0)
        parent, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_serve,
            args=(child, self._requests, self._connections, self._outage),
            daemon=True,
        )
        self._process.start()
        if not parent.poll(30):
            self._process.kill()
            raise RuntimeError("the loopback peer did not start")
        self.port = int(parent.recv())
        self.url = f"http://127.0.0.1:{self.port}"

    def set_outage(self, on: bool) -> None:
        self._outage.value = 1 if on else 0

    @property
    def requests(self) -> int:
        return int(self._requests.value)

    @property
    def connections(self) -> int:
        return int(self._connections.value)

    def stop(self) -> None:
        self._process.kill()
        self._process.join(5)

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
