"""
Real-socket HTTP/1.1 peers on 127.0.0.1 for network-behaviour tests.

This is a helper module, not a test file. A `Peer` listens on a loopback
port and, per path, plays one *behaviour*: answer normally (keep-alive),
hang, drip the headers or the body one byte at a time, reset the connection
(RST) before or in the middle of a response, close early (FIN), or answer
5xx. `refused_port()` gives a port with no listener and `Blackhole` a port
whose connects time out. The peer counts requests and accepted connections
so tests can assert what reached it::

    with Peer() as peer:
        peer.on("/slow", hang())
        peer.on("/flaky", answer(503), answer(503), answer(200))  # in turn, the last repeats
        peer.on("/drip", drip_body(b"x" * 20, interval=0.1))
        session.get(peer.url("/flaky"))
        assert peer.hits("/flaky") == 3 and peer.connections == 1

Bounded by construction, so a broken test cannot hang the suite: every
socket operation has a timeout, every wait is on the peer's stop event
(`Peer.stop` ends hangs and drips at once), at most `max_connections`
connections are served at a time, and a peer stops itself after `lifetime`
seconds. Threads are daemons and are joined (with a timeout) on stop.

A behaviour is any object with ``serve(conn, request) -> bool`` (True keeps
the connection open for the next request); a plain callable
``(request) -> behaviour`` picks one per request (see `echo`).
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "Blackhole",
    "Conn",
    "Peer",
    "Request",
    "answer",
    "close_early",
    "drip_body",
    "drip_headers",
    "echo",
    "hang",
    "redirect",
    "refused_port",
    "reset",
    "server_error",
]

HOST = "127.0.0.1"
_MAX_HEAD = 64 * 1024  # bytes of request line + headers we accept
_MAX_BODY = 8 * 1024 * 1024
_IO_TIMEOUT = 5.0  # no single socket operation of the peer waits longer


@dataclass(frozen=True)
class Request:
    """One request as the peer read it."""

    method: str
    target: str  # path with query, as sent
    headers: Mapping[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    connection: int  # which accepted connection (1-based) carried it

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)


class Conn:
    """The server side of one accepted connection, as behaviours see it."""

    def __init__(self, sock: socket.socket, peer: Peer, number: int) -> None:
        self.sock = sock
        self.peer = peer
        self.number = number
        self._buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def drip(self, data: bytes, interval: float) -> bool:
        """Send *data* one byte every *interval* seconds; False if the peer stopped or the client left."""
        for i in range(len(data)):
            if i and self.peer.wait(interval):
                return False
            try:
                self.sock.sendall(data[i : i + 1])
            except OSError:
                return False
        return True

    def reset(self) -> None:
        """Abort the connection: SO_LINGER 0 makes close() send an RST instead of a FIN."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            self.sock.close()

    # -- reading requests ----------------------------------------------------

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError
        return chunk

    def _read_until(self, marker: bytes, limit: int) -> bytes:
        while marker not in self._buf:
            if len(self._buf) > limit:
                raise ValueError("request head too large")
            self._buf += self._recv()
        head, _, self._buf = self._buf.partition(marker)
        return head

    def _read_exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._buf += self._recv()
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def read_request(self) -> Request:
        head = self._read_until(b"\r\n\r\n", _MAX_HEAD).decode("latin-1")
        line, *lines = head.split("\r\n")
        method, target, _version = line.split(" ", 2)
        headers: dict[str, str] = {}
        for h in lines:
            name, _, value = h.partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._read_chunked()
        else:
            length = int(headers.get("content-length", "0") or 0)
            if length > _MAX_BODY:
                raise ValueError("request body too large")
            body = self._read_exactly(length)
        return Request(method, target, headers, body, self.number)

    def _read_chunked(self) -> bytes:
        body = b""
        for _ in range(100_000):  # bounded: a chunk is at least one byte
            size = int(self._read_until(b"\r\n", 1024).split(b";")[0], 16)
            if size == 0:
                self._read_until(b"\r\n", _MAX_HEAD)  # trailers (we take none) and the last CRLF
                return body
            body += self._read_exactly(size)
            self._read_exactly(2)
            if len(body) > _MAX_BODY:
                raise ValueError("request body too large")
        raise ValueError("too many chunks")


class Behaviour(Protocol):
    """What a path does with a request it received."""

    def serve(self, conn: Conn, request: Request) -> bool:
        """Answer (or not); return True to keep the connection for another request."""
        ...


Handler = Behaviour | Callable[[Request], Behaviour]


def _head(status: int, headers: Mapping[str, str] | Iterable[tuple[str, str]], reason: str = "") -> bytes:
    items = headers.items() if isinstance(headers, Mapping) else headers
    lines = [f"HTTP/1.1 {status} {reason or _REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in items]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_REASONS = {200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently", 302: "Found",
            303: "See Other", 307: "Temporary Redirect", 308: "Permanent Redirect", 404: "Not Found",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}


def _wants_close(request: Request) -> bool:
    return request.headers.get("connection", "").lower() == "close"


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]
    keep_alive: bool

    def serve(self, conn: Conn, request: Request) -> bool:
        keep = self.keep_alive and not _wants_close(request)
        names = {k.lower() for k, _ in self.headers}
        extra = []
        if "content-length" not in names and "transfer-encoding" not in names:
            extra.append(("Content-Length", str(len(self.body))))
        if not keep:
            extra.append(("Connection", "close"))
        body = b"" if request.method == "HEAD" else self.body
        conn.send(_head(self.status, [*self.headers, *extra]) + body)
        return keep


def _header_items(
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None,
) -> tuple[tuple[str, str], ...]:
    if headers is None:
        return ()
    return tuple(headers.items() if isinstance(headers, Mapping) else headers)


def answer(
    status: int = 200,
    body: bytes | str = b"",
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    *,
    keep_alive: bool = True,
) -> Behaviour:
    """Answer at once with *status*, *headers* (a list allows repeats) and *body*; keep-alive by default."""
    data = body.encode() if isinstance(body, str) else body
    return _Answer(status, data, _header_items(headers), keep_alive)


def server_error(
    status: int = 503, body: bytes | str = b"", headers: Mapping[str, str] | None = None
) -> Behaviour:
    """Answer with a 5xx status (503 by default)."""
    if not 500 <= status <= 599:
        raise ValueError(f"server_error wants a 5xx status, got {status}")
    return answer(status, body, headers)


def redirect(location: str, status: int = 302) -> Behaviour:
    """Answer with a redirect to *location*."""
    return answer(status, b"", {"Location": location})


@dataclass(frozen=True)
class _Hang:
    def serve(self, conn: Conn, request: Request) -> bool:
        conn.peer.wait(conn.peer.lifetime)  # until the peer stops
        return False


def hang() -> Behaviour:
    """Read the request and never answer (until the peer stops)."""
    return _Hang()


@dataclass(frozen=True)
class _DripHeaders:
    interval: float
    status: int
    body: bytes

    def serve(self, conn: Conn, request: Request) -> bool:
        head = _head(self.status, {"Content-Length": str(len(self.body)), "Connection": "close"})
        if conn.drip(head, self.interval):
            conn.send(self.body)
        return False


def drip_headers(interval: float = 0.1, *, status: int = 200, body: bytes = b"ok") -> Behaviour:
    """Send the status line and headers one byte every *interval* seconds, then *body* at once."""
    return _DripHeaders(interval, status, body)


@dataclass(frozen=True)
class _DripBody:
    body: bytes
    interval: float
    status: int

    def serve(self, conn: Conn, request: Request) -> bool:
        conn.send(_head(self.status, {"Content-Length": str(len(self.body)), "Connection": "close"}))
        conn.drip(self.body, self.interval)
        return False


def drip_body(body: bytes = b"x" * 50, interval: float = 0.1, *, status: int = 200) -> Behaviour:
    """Send the headers at once (with Content-Length), then *body* one byte every *interval* seconds."""
    return _DripBody(body, interval, status)


@dataclass(frozen=True)
class _Reset:
    partial: bytes | None

    def serve(self, conn: Conn, request: Request) -> bool:
        if self.partial is not None:
            conn.send(self.partial)
            conn.peer.wait(0.02)  # let the client read what came before the RST
        conn.reset()
        return False


def reset(*, mid_response: bool = False, body_size: int = 100) -> Behaviour:
    """
    Abort with an RST: right after reading the request, or (*mid_response*)
    after the headers and half of a *body_size*-byte body.
    """
    if not mid_response:
        return _Reset(None)
    partial = _head(200, {"Content-Length": str(body_size)}) + b"x" * (body_size // 2)
    return _Reset(partial)


@dataclass(frozen=True)
class _CloseEarly:
    partial: bytes

    def serve(self, conn: Conn, request: Request) -> bool:
        if self.partial:
            conn.send(self.partial)
        conn.sock.shutdown(socket.SHUT_WR)  # a clean FIN, unlike reset()
        return False


def close_early(*, after_headers: bool = True, body_size: int = 100) -> Behaviour:
    """
    Close the connection cleanly (FIN) before the response is complete:
    after the headers and a tenth of a *body_size*-byte body, or
    (``after_headers=False``) without sending anything.
    """
    if not after_headers:
        return _CloseEarly(b"")
    return _CloseEarly(_head(200, {"Content-Length": str(body_size)}) + b"x" * (body_size // 10))


def echo(status: int = 200, headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None) -> Handler:
    """Answer with a JSON description of the request: method, path, query, headers, body, connection."""

    def pick(request: Request) -> Behaviour:
        doc = {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": dict(request.headers),
            "body": request.body.decode("latin-1"),
            "connection": request.connection,
        }
        items = [("Content-Type", "application/json"), *_header_items(headers)]
        return answer(status, json.dumps(doc).encode(), items)

    return pick


@dataclass
class _Route:
    handlers: list[Handler]
    served: int = 0

    def next(self) -> Handler:
        h = self.handlers[min(self.served, len(self.handlers) - 1)]
        self.served += 1
        return h


@dataclass
class Peer:
    """
    An HTTP/1.1 server on 127.0.0.1 that plays a behaviour per path.

    Unknown paths get 404. Use it as a context manager, or call `start` and
    `stop`. ``lifetime`` bounds how long it runs (it stops itself after);
    ``max_connections`` bounds how many connections it serves at once (more
    are closed at once).
    """

    host: str = HOST
    lifetime: float = 30.0
    max_connections: int = 32
    requests: list[Request] = field(default_factory=list)
    connections: int = 0  # accepted connections so far

    def __post_init__(self) -> None:
        self._routes: dict[str, _Route] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self.port = 0

    # -- set-up --------------------------------------------------------------

    def on(self, path: str, *handlers: Handler) -> Peer:
        """Play *handlers* in turn for requests to *path* (the last one repeats)."""
        if not handlers:
            raise ValueError("give at least one behaviour")
        with self._lock:
            self._routes[path] = _Route(list(handlers))
        return self

    def url(self, path: str = "/", host: str | None = None) -> str:
        """The URL of *path* on this peer (*host* may name it differently, e.g. ``localhost``)."""
        return f"http://{host or self.host}:{self.port}{path}"

    def start(self) -> Peer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(64)
        sock.settimeout(0.05)  # the accept loop checks the stop event this often
        self._listener = sock
        self.port = sock.getsockname()[1]
        self._started = time.monotonic()
        t = threading.Thread(target=self._accept_loop, name=f"peer-{self.port}", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        """Stop serving: ends hangs and drips, closes every socket, joins the threads (bounded)."""
        self._stop.set()
        with self._lock:
            socks = list(self._open)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in list(self._threads):
            t.join(timeout=2.0)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> Peer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what happened -------------------------------------------------------

    def hits(self, path: str | None = None) -> int:
        """Requests received (to *path*, or in all)."""
        with self._lock:
            return sum(1 for r in self.requests if path is None or r.path == path)

    def last(self, path: str | None = None) -> Request:
        """The last request received (to *path*)."""
        with self._lock:
            for r in reversed(self.requests):
                if path is None or r.path == path:
                    return r
        raise LookupError(f"no request to {path!r} yet")

    def wait(self, seconds: float) -> bool:
        """Sleep up to *seconds*; True when the peer was stopped meanwhile."""
        return self._stop.wait(seconds)

    # -- serving -------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            if time.monotonic() - self._started > self.lifetime:
                self._stop.set()  # stops itself: a forgotten peer cannot outlive its test for long
                break
            try:
                sock, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            sock.settimeout(_IO_TIMEOUT)
            with self._lock:
                self.connections += 1
                number = self.connections
                if len(self._open) >= self.max_connections:
                    sock.close()
                    continue
                self._open.add(sock)
                self._threads = [t for t in self._threads if t.is_alive()]
            t = threading.Thread(target=self._serve, args=(Conn(sock, self, number),), daemon=True)
            with self._lock:
                self._threads.append(t)
            t.start()

    def _serve(self, conn: Conn) -> None:
        try:
            while not self._stop.is_set():
                try:
                    request = conn.read_request()
                except (EOFError, OSError, ValueError):
                    return
                with self._lock:
                    self.requests.append(request)
                    route = self._routes.get(request.path)
                    handler: Handler = route.next() if route is not None else answer(404, b"not found")
                behaviour = handler if hasattr(handler, "serve") else handler(request)
                try:
                    if not behaviour.serve(conn, request):
                        return
                except OSError:
                    return
        finally:
            with self._lock:
                self._open.discard(conn.sock)
            with contextlib.suppress(OSError):
                conn.sock.close()


def refused_port(host: str = HOST) -> int:
    """A port on *host* with no listener: connecting to it is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Blackhole:
    """
    A port whose connects time out: a listener with a full backlog that never
    accepts, so the kernel drops further SYNs (a loopback stand-in for an
    unroutable address).
    """

    def __init__(self, host: str = HOST) -> None:
        self.host = host
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((host, 0))
        self._listener.listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._fillers: list[socket.socket] = []
        for _ in range(3):  # backlog 0 still admits a connection or two: fill it
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect((host, self.port))
            self._fillers.append(s)

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def close(self) -> None:
        for s in self._fillers:
            s.close()
        self._listener.close()

    def __enter__(self) -> Blackhole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
