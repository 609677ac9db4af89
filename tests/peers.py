"""
The one loopback test server: real-socket HTTP/1.1 peers on 127.0.0.1 for
the tests, the benchmarks and the docs' scripts (as urllib3's
``dummyserver`` serves its whole suite).

This is a helper module, not a test file. A `Peer` listens on a loopback
port, over plain TCP or, with ``tls=True``, over TLS with a certificate from
a `trustme` CA (`ca_bundle` is the file to pass as ``verify=``). Per path it
plays *behaviours*, and behaviours compose::

    with Peer() as peer:
        peer.on("/flaky", answer(503), answer(503), answer(200))  # in turn, the last repeats
        peer.on("/slow", delay(0.2, drip_body(b"x" * 20, 0.01)))
        peer.on("/worse", sequence(pause(0.1), send(head(200, length=10)), drip(b"xyz", 0.01), reset()))
        peer.on("*", answer(200, b"ok"))                          # any other path
        session.get(peer.url("/flaky"))
        assert peer.hits("/flaky") == 3 and peer.connections == 1

Behaviours: `answer` (any status; `server_error`, `retry_after`, `redirect`,
`redirect_to`, `redirect_chain`), `echo`, `delay`, `hang` (until the client
leaves), `drip_headers`, `drip_body`, `reset` (before the answer, mid-headers
or mid-body: an RST), `close_early` (a FIN), `truncated`, `garbage`,
`oversized_headers`, `flap`, `tail` (a slow answer for a random fraction),
`stall` (held for a while every few seconds), `Switch`, `wsgi` (a WSGI app), and the steps
`pause`, `gate`, `send`, `drip` that `sequence` strings together with any of them.
Connection-level faults are the peer's: ``handshake="stall"`` (a TLS peer
that never answers the ClientHello), ``trusted=False`` (a certificate from
a CA no bundle holds), `Peer.refusing` (the port refuses for a while),
`Peer.blackhole` (a port whose connects time out), and `free_port` (a port
that refuses).

Counts: `Peer.hits`, `Peer.bodies`, `Peer.last`, ``requests``,
``connections`` (accepted), ``handshakes`` (TLS handshakes completed),
`Peer.open_connections` now and ``max_open`` at most. `peer_process` runs a
peer in another process (the benchmarks' peer, off their interpreter lock)
and controls it through a pipe.

Bounded by construction, so a broken test cannot hang the suite: every
socket operation has a timeout, every wait is on the peer's stop event or
the client leaving (`Peer.stop` ends hangs and drips at once), at most
``max_connections`` connections are served at a time, and a peer stops
itself after ``lifetime`` seconds. Threads are daemons, joined (with a
timeout) on stop.

A behaviour is any object with ``serve(conn, request) -> bool`` (True keeps
the connection open for the next request); a plain callable
``(request) -> behaviour`` picks one per request (see `echo`).
"""

from __future__ import annotations

import atexit
import contextlib
import email.utils
import importlib
import io
import json
import multiprocessing
import os
import random
import select
import shutil
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "Behaviour",
    "Blackhole",
    "Conn",
    "Peer",
    "RemotePeer",
    "Request",
    "Switch",
    "answer",
    "blackholed",
    "ca_bundle",
    "close_early",
    "delay",
    "drip",
    "drip_body",
    "drip_headers",
    "echo",
    "flap",
    "free_port",
    "garbage",
    "gate",
    "hang",
    "head",
    "http_date",
    "oversized_headers",
    "pause",
    "peer_process",
    "redirect",
    "redirect_chain",
    "redirect_to",
    "reset",
    "retry_after",
    "send",
    "sequence",
    "server_error",
    "stall",
    "tail",
    "truncated",
    "wsgi",
]

HOST = "127.0.0.1"
_MAX_HEAD = 64 * 1024  # bytes of request line + headers we accept
_MAX_BODY = 8 * 1024 * 1024
_IO_TIMEOUT = 5.0  # no single socket operation of the peer waits longer
_POLL = 0.02  # how often a waiting behaviour looks at its client socket


# -- ports -----------------------------------------------------------------------


def free_port(host: str = HOST) -> int:
    """
    A port on *host* with no listener: connecting to it is refused at once
    (until something else binds it), and a server may bind it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# -- TLS: one CA per process, made on first use ----------------------------------------

_tls_lock = threading.Lock()
_tls: dict[str, Any] = {}


def _authority(trusted: bool) -> Any:
    """The trustme CA whose bundle `ca_bundle` holds, or (untrusted) another one no bundle holds."""
    import trustme  # the test extra; imported only by TLS peers

    key = "ca" if trusted else "untrusted"
    with _tls_lock:
        if key not in _tls:
            _tls[key] = trustme.CA()
        return _tls[key]


def _server_context(trusted: bool) -> ssl.SSLContext:
    key = f"ctx-{trusted}"
    with _tls_lock:
        ctx = _tls.get(key)
    if ctx is None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        _authority(trusted).issue_cert(HOST, "localhost").configure_cert(ctx)
        with _tls_lock:
            ctx = _tls.setdefault(key, ctx)
    return ctx  # type: ignore[no-any-return]


def ca_bundle() -> str:
    """
    The path of a PEM file holding the CA that signs every trusted TLS peer's
    certificate: pass it as ``verify=`` per call (never as ``session.verify``,
    which ``REQUESTS_CA_BUNDLE`` in the environment overrides).
    """
    ca = _authority(True)
    with _tls_lock:
        path = _tls.get("bundle")
        if path is None:
            folder = tempfile.mkdtemp(prefix="rc-peers-ca-")
            atexit.register(shutil.rmtree, folder, True)
            path = os.path.join(folder, "ca.pem")
            ca.cert_pem.write_to_path(path)
            _tls["bundle"] = path
        return str(path)


# -- requests and connections -----------------------------------------------------------


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

    def finish(self) -> None:
        """End the connection cleanly: a FIN (no TLS close_notify), the client sees EOF."""
        self.sock.shutdown(socket.SHUT_WR)

    def gone(self) -> bool:
        """Whether the client closed its end (EOF or an error); bytes it sent meanwhile are kept."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable:
                return False
            self.sock.settimeout(_POLL)
            try:
                chunk = self.sock.recv(65536)
            finally:
                self.sock.settimeout(_IO_TIMEOUT)
        except (ssl.SSLWantReadError, TimeoutError):
            return False  # a partial TLS record: still there
        except (OSError, ValueError):
            return True
        if not chunk:
            return True
        self._buf += chunk  # a pipelined request, read by the next read_request
        return False

    def wait(self, seconds: float) -> bool:
        """Wait up to *seconds*; False when the client left or the peer stopped first."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return True
            if self.peer.wait(min(_POLL, left)) or self.gone():
                return False

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
Headers = Mapping[str, str] | Iterable[tuple[str, str]]

_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 301: "Moved Permanently",
            302: "Found", 303: "See Other", 307: "Temporary Redirect", 308: "Permanent Redirect",
            401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}


def _header_items(headers: Headers | None) -> tuple[tuple[str, str], ...]:
    if headers is None:
        return ()
    return tuple(headers.items() if isinstance(headers, Mapping) else headers)


def head(status: int = 200, headers: Headers | None = None, *, length: int | None = None,
         reason: str = "") -> bytes:
    """The bytes of a status line and header block (with ``Content-Length: length`` when given)."""
    items = list(_header_items(headers))
    if length is not None:
        items.append(("Content-Length", str(length)))
    lines = [f"HTTP/1.1 {status} {reason or _REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in items]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _wants_close(request: Request) -> bool:
    return request.headers.get("connection", "").lower() == "close"


# -- answers -------------------------------------------------------------------------


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
        conn.send(head(self.status, [*self.headers, *extra]) + body)
        return keep


def answer(status: int = 200, body: bytes | str = b"", headers: Headers | None = None, *,
           keep_alive: bool = True) -> Behaviour:
    """Answer at once with *status*, *headers* (a list allows repeats) and *body*; keep-alive by default."""
    data = body.encode() if isinstance(body, str) else body
    return _Answer(status, data, _header_items(headers), keep_alive)


def server_error(status: int = 503, body: bytes | str = b"", headers: Headers | None = None) -> Behaviour:
    """Answer with a 5xx status (503 by default)."""
    if not 500 <= status <= 599:
        raise ValueError(f"server_error wants a 5xx status, got {status}")
    return answer(status, body, headers)


def retry_after(status: int, value: str) -> Behaviour:
    """Answer *status* with ``Retry-After: value`` (keep-alive, empty body)."""
    return answer(status, b"", {"Retry-After": value})


def http_date(offset: float) -> str:
    """An HTTP date *offset* seconds from now (for ``Retry-After``)."""
    return email.utils.formatdate(time.time() + offset, usegmt=True)


def redirect(location: str, status: int = 302) -> Behaviour:
    """Answer with a redirect to *location*."""
    return answer(status, b"", {"Location": location})


def echo(status: int = 200, headers: Headers | None = None) -> Handler:
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


# -- steps, and sequences of them ----------------------------------------------------------


@dataclass(frozen=True)
class _Sequence:
    steps: tuple[Behaviour, ...]

    def serve(self, conn: Conn, request: Request) -> bool:
        keep = True
        for step in self.steps:
            keep = step.serve(conn, request)
            if not keep:
                return False  # the step ended the connection (or the client left)
        return keep


def sequence(*steps: Behaviour) -> Behaviour:
    """
    Play *steps* in order on one request, stopping at the first that ends
    the connection: ``sequence(pause(0.1), send(head(200, length=9)),
    drip(b"abc", 0.01), reset())`` is "delay, then drip, then reset".
    """
    if not steps:
        raise ValueError("give at least one step")
    return _Sequence(steps)


@dataclass(frozen=True)
class _Pause:
    seconds: float

    def serve(self, conn: Conn, request: Request) -> bool:
        return conn.wait(self.seconds)


def pause(seconds: float) -> Behaviour:
    """A step: wait *seconds* (ends the sequence early if the client leaves or the peer stops)."""
    return _Pause(seconds)


@dataclass(frozen=True)
class _Send:
    data: bytes

    def serve(self, conn: Conn, request: Request) -> bool:
        conn.send(self.data)
        return True


def send(data: bytes) -> Behaviour:
    """A step: send *data* at once (see `head` for a status line and headers)."""
    return _Send(data)


@dataclass(frozen=True)
class _Drip:
    data: bytes
    interval: float

    def serve(self, conn: Conn, request: Request) -> bool:
        return conn.drip(self.data, self.interval)


def drip(data: bytes, interval: float = 0.1) -> Behaviour:
    """A step: send *data* one byte every *interval* seconds."""
    return _Drip(data, interval)


@dataclass(frozen=True)
class _Gate:
    event: threading.Event
    timeout: float

    def serve(self, conn: Conn, request: Request) -> bool:
        end = time.monotonic() + self.timeout
        while not self.event.wait(_POLL):
            if time.monotonic() >= end or conn.peer.wait(0) or conn.gone():
                return False
        return True


def gate(event: threading.Event, timeout: float = 5.0) -> Behaviour:
    """A step: wait until the test sets *event* (at most *timeout* seconds, less if the client leaves)."""
    return _Gate(event, timeout)


def delay(seconds: float, then: Behaviour | None = None) -> Behaviour:
    """Wait *seconds* (less if the client leaves), then play *then* (200 ``ok`` by default)."""
    return sequence(pause(seconds), then if then is not None else answer(200, b"ok"))


@dataclass(frozen=True)
class _Hang:
    def serve(self, conn: Conn, request: Request) -> bool:
        conn.wait(conn.peer.lifetime)
        return False


def hang() -> Behaviour:
    """Read the request and never answer, until the client leaves or the peer stops."""
    return _Hang()


def drip_headers(interval: float = 0.1, *, status: int = 200, body: bytes = b"ok") -> Behaviour:
    """Send the status line and headers one byte every *interval* seconds, then *body* at once."""
    h = head(status, {"Connection": "close"}, length=len(body))
    return sequence(drip(h, interval), send(body), close_early(after_headers=False))


def drip_body(body: bytes = b"x" * 50, interval: float = 0.1, *, status: int = 200) -> Behaviour:
    """Send the headers at once (with Content-Length), then *body* one byte every *interval* seconds."""
    h = head(status, {"Connection": "close"}, length=len(body))
    return sequence(send(h), drip(body, interval), close_early(after_headers=False))


# -- broken connections ------------------------------------------------------------------


@dataclass(frozen=True)
class _End:
    """Send *data* (if any), then end the connection with a FIN, or an RST when *rst*."""

    data: bytes
    rst: bool

    def serve(self, conn: Conn, request: Request) -> bool:
        if self.data:
            conn.send(self.data)
        if self.rst:
            if self.data:
                conn.peer.wait(0.02)  # let the client read what came before the RST
            conn.reset()
        else:
            conn.finish()
        return False


def reset(*, mid_response: bool = False, mid_headers: bool = False, body_size: int = 100) -> Behaviour:
    """
    Abort with an RST: right after reading the request; or (*mid_headers*)
    after the status line and part of the headers; or (*mid_response*) after
    the headers and half of a *body_size*-byte body.
    """
    if mid_headers:
        return _End(b"HTTP/1.1 200 OK\r\nContent-Type: text/pl", rst=True)
    if mid_response:
        return _End(head(200, length=body_size) + b"x" * (body_size // 2), rst=True)
    return _End(b"", rst=True)


def close_early(*, after_headers: bool = True, body_size: int = 100) -> Behaviour:
    """
    Close the connection cleanly (FIN) before the response is complete:
    after the headers and a tenth of a *body_size*-byte body, or
    (``after_headers=False``) without sending anything.
    """
    if not after_headers:
        return _End(b"", rst=False)
    return _End(head(200, length=body_size) + b"x" * (body_size // 10), rst=False)


def truncated(body_size: int = 100, sent: int = 10) -> Behaviour:
    """Announce a *body_size*-byte body (Content-Length), send *sent* bytes, close cleanly."""
    return _End(head(200, length=body_size) + b"x" * sent, rst=False)


def garbage(data: bytes = b"\x16\x03\x01\x00\xa5SSH-2.0-not-http\r\n\r\n") -> Behaviour:
    """Answer bytes that are not HTTP at all, then close."""
    return _End(data, rst=False)


def oversized_headers(count: int = 150) -> Behaviour:
    """Answer a header block with *count* headers (http.client refuses more than 100)."""
    headers = {f"X-Filler-{i}": "y" * 40 for i in range(count)}
    return _End(head(200, headers, length=0), rst=False)


# -- behaviours that change over time ---------------------------------------------------------


class _Flap:
    """
    Play *behaviours* in turn, round and round (thread-safe): each for
    *every* requests, or, with *period*, each for *period* seconds.
    """

    def __init__(self, behaviours: tuple[Behaviour, ...], every: int, period: float | None) -> None:
        self._behaviours = behaviours
        self._every = every
        self._period = period
        self._started = time.monotonic()
        self._n = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # picklable, for a peer in another process
        return {"behaviours": self._behaviours, "every": self._every, "period": self._period}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["behaviours"], state["every"], state["period"])  # type: ignore[misc]

    def serve(self, conn: Conn, request: Request) -> bool:
        if self._period is not None:
            i = int((time.monotonic() - self._started) / self._period)
        else:
            with self._lock:
                n, self._n = self._n, self._n + 1
            i = n // self._every
        return self._behaviours[i % len(self._behaviours)].serve(conn, request)


def flap(*behaviours: Behaviour, every: int = 1, period: float | None = None) -> Behaviour:
    """
    Alternate between *behaviours* (by default a 503 and a 200): *every*
    requests each, or *period* seconds each.
    """
    return _Flap(behaviours or (server_error(503), answer(200, b"ok")), every, period)


class _Tail:
    """A slow answer for a *fraction* of requests at random (seeded), a fast one for the rest."""

    def __init__(self, fast: float, slow: float, fraction: float, seed: int) -> None:
        self._args = (fast, slow, fraction, seed)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def __getstate__(self) -> tuple[float, float, float, int]:  # picklable, for a peer in another process
        return self._args

    def __setstate__(self, state: tuple[float, float, float, int]) -> None:
        self.__init__(*state)  # type: ignore[misc]

    def serve(self, conn: Conn, request: Request) -> bool:
        fast, slow, fraction, _ = self._args
        with self._lock:
            slow_one = self._rng.random() < fraction
        return delay(slow if slow_one else fast, answer(200, b"ok")).serve(conn, request)


def tail(fast: float = 0.005, slow: float = 0.2, fraction: float = 0.05, seed: int = 1) -> Behaviour:
    """
    Answer 200 ``ok`` after *fast* seconds, or after *slow* seconds for a
    *fraction* of requests drawn at random (seeded: the same sequence every
    run): a peer with a slow tail, as a GC pause or a noisy neighbour makes.
    """
    return _Tail(fast, slow, fraction, seed)


@dataclass(frozen=True)
class _Stall:
    every: float
    stall: float
    then: Behaviour

    def serve(self, conn: Conn, request: Request) -> bool:
        # Stalled for the first *stall* seconds of each *every*-second period
        # (of the monotonic clock): a request arriving then waits for the end.
        into = time.monotonic() % self.every
        if into < self.stall and not conn.wait(self.stall - into):
            return False
        return self.then.serve(conn, request)


def stall(every: float, seconds: float, then: Behaviour | None = None) -> Behaviour:
    """
    Play *then* (200 ``ok`` by default), except that for *seconds* out of
    every *every* seconds the peer stalls: requests arriving then are held
    until the stall ends (less if the client leaves).
    """
    if not 0 < seconds < every:
        raise ValueError(f"a stall of {seconds} s needs a period longer than that, got {every}")
    return _Stall(every, seconds, then if then is not None else answer(200, b"ok"))


class Switch:
    """A behaviour that plays whichever behaviour it was last switched `to` (thread-safe)."""

    def __init__(self, initial: Behaviour) -> None:
        self._current = initial

    def to(self, behaviour: Behaviour) -> None:
        self._current = behaviour  # one reference swap: atomic for readers

    def serve(self, conn: Conn, request: Request) -> bool:
        return self._current.serve(conn, request)


# -- redirects whose target is worked out when the request comes ------------------------------

#: A Location, or how to work it out from the serving peer when the request comes.
Location = str | Callable[["Peer"], str]


@dataclass(frozen=True)
class _RedirectTo:
    location: Location
    status: int

    def serve(self, conn: Conn, request: Request) -> bool:
        where = self.location if isinstance(self.location, str) else self.location(conn.peer)
        return redirect(where, self.status).serve(conn, request)


def redirect_to(location: Location, status: int = 302) -> Behaviour:
    """
    Answer *status* with a Location: *location* itself, or what it returns
    for the serving peer (see `blackholed`).
    """
    return _RedirectTo(location, status)


def blackholed(path: str = "/") -> Callable[[Peer], str]:
    """A Location for `redirect_to`: *path* on the serving peer's blackhole (connects time out)."""

    def where(peer: Peer) -> str:
        return peer.blackhole().url(path)

    return where


@dataclass(frozen=True)
class _Chain:
    hops: int
    each: float
    path: str

    def serve(self, conn: Conn, request: Request) -> bool:
        try:
            n = int(request.query.get("hop", ["0"])[0])
        except ValueError:
            n = 0
        if n >= self.hops:
            return answer(200, b"ok").serve(conn, request)
        return delay(self.each, redirect(f"{self.path}?hop={n + 1}")).serve(conn, request)


def redirect_chain(hops: int, each: float, path: str = "/target") -> Behaviour:
    """
    One link of a chain of *hops* redirects, each answered after *each*
    seconds (less if the client leaves), then a 200 ``ok``. Play it at the
    first path and at *path*: it redirects to ``path?hop=N`` (N counts from
    1), and the request with ``hop=hops`` gets the 200.
    """
    if not 1 <= hops <= 30:  # requests follows 30 redirects at most
        raise ValueError(f"a chain has 1 to 30 hops, got {hops}")
    return _Chain(hops, each, path)


# -- a WSGI application as a behaviour ---------------------------------------------------------


@dataclass(frozen=True)
class _Wsgi:
    app: Callable[..., Iterable[bytes]]

    def serve(self, conn: Conn, request: Request) -> bool:
        split = urlsplit(request.target)
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": split.path,
            "QUERY_STRING": split.query,
            "SERVER_NAME": conn.peer.host,
            "SERVER_PORT": str(conn.peer.port),
            "SERVER_PROTOCOL": "HTTP/1.1",
            "CONTENT_LENGTH": str(len(request.body)),
            "CONTENT_TYPE": request.headers.get("content-type", ""),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if conn.peer.tls else "http",
            "wsgi.input": io.BytesIO(request.body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for k, v in request.headers.items():
            if k not in ("content-type", "content-length"):
                environ["HTTP_" + k.upper().replace("-", "_")] = v
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started[:] = [status, headers]
            return lambda data: None

        result = self.app(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = started
        code, _, reason = status.partition(" ")
        items = [(k, v) for k, v in headers if k.lower() not in ("content-length", "connection")]
        conn.send(head(int(code), [*items, ("Connection", "close")], length=len(body), reason=reason) + body)
        return False  # one request per connection, as wsgiref's server


def wsgi(app: Callable[..., Iterable[bytes]]) -> Behaviour:
    """Answer with what the WSGI application *app* returns (one request per connection)."""
    return _Wsgi(app)


# -- the peer -----------------------------------------------------------------------------------


@dataclass
class _Route:
    handlers: list[Handler]
    served: int = 0

    def next(self) -> Handler:
        h = self.handlers[min(self.served, len(self.handlers) - 1)]
        self.served += 1
        return h


_NOT_FOUND = answer(404, b"not found")


@dataclass
class Peer:
    """
    An HTTP/1.1 server on 127.0.0.1 that plays a behaviour per path.

    Unknown paths get what ``"*"`` plays, else 404. Use it as a context
    manager, or call `start` and `stop`. ``lifetime`` bounds how long it runs
    (it stops itself after); ``max_connections`` bounds how many connections
    it serves at once (more are closed at once). ``tls`` serves HTTPS with a
    certificate for 127.0.0.1 and localhost from the CA in `ca_bundle`
    (``trusted=False``: from a CA no bundle holds); ``handshake="stall"``
    accepts connections and never answers their ClientHello. ``record=False``
    keeps counts only (not every `Request`), for long benchmark runs.
    """

    host: str = HOST
    lifetime: float = 30.0
    max_connections: int = 32
    tls: bool = False
    trusted: bool = True
    handshake: str = "ok"
    record: bool = True
    requests: list[Request] = field(default_factory=list)
    connections: int = 0  # accepted connections so far
    handshakes: int = 0  # TLS handshakes completed
    max_open: int = 0  # most connections open at once

    def __post_init__(self) -> None:
        if self.handshake not in ("ok", "stall"):
            raise ValueError(f"handshake is 'ok' or 'stall', got {self.handshake!r}")
        self._routes: dict[str, _Route] = {}
        self._hits: Counter[str] = Counter()
        self._bodies: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._parked: socket.socket | None = None
        self._blackhole: Blackhole | None = None
        self._context = _server_context(self.trusted) if self.tls else None
        self.port = 0

    # -- set-up --------------------------------------------------------------

    def on(self, path: str, *handlers: Handler) -> Peer:
        """Play *handlers* in turn for requests to *path* (the last one repeats); ``"*"``: any other path."""
        if not handlers:
            raise ValueError("give at least one behaviour")
        with self._lock:
            self._routes[path] = _Route(list(handlers))
        return self

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def url(self, path: str = "/", host: str | None = None) -> str:
        """The URL of *path* on this peer (*host* may name it differently, e.g. ``localhost``)."""
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    @property
    def origin(self) -> str:
        """``scheme://host:port``, without a path."""
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self) -> Peer:
        self._listener = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self._started = time.monotonic()
        t = threading.Thread(target=self._accept_loop, name=f"peer-{self.port}", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _listen(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, port))
        sock.listen(128)
        sock.settimeout(0.05)  # the accept loop checks the stop event this often
        return sock

    def stop(self) -> None:
        """Stop serving: ends hangs and drips, closes every socket, joins the threads (bounded)."""
        self._stop.set()
        with self._lock:
            socks = list(self._open)
        for s in socks:
            with contextlib.suppress(OSError):
                # The plain socket's shutdown, also for a TLS one: SSLSocket.shutdown
                # would drop the TLS state under the thread still serving it.
                socket.socket.shutdown(s, socket.SHUT_RDWR)
        for t in list(self._threads):
            t.join(timeout=2.0)
        with self._lock:
            listener, parked, hole = self._listener, self._parked, self._blackhole
            self._parked = self._blackhole = None
        for sock in (listener, parked):
            if sock is not None:
                sock.close()
        if hole is not None:
            hole.close()

    def __enter__(self) -> Peer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what happened -------------------------------------------------------

    def hits(self, path: str | None = None) -> int:
        """Requests received (to *path*, or in all)."""
        with self._lock:
            return self._hits[path] if path is not None else sum(self._hits.values())

    def bodies(self, path: str | None = None) -> int:
        """Requests (to *path*) that carried a non-empty body."""
        with self._lock:
            return self._bodies[path] if path is not None else sum(self._bodies.values())

    def last(self, path: str | None = None) -> Request:
        """The last request received (to *path*)."""
        with self._lock:
            for r in reversed(self.requests):
                if path is None or r.path == path:
                    return r
        raise LookupError(f"no request to {path!r} yet")

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet closed by the peer."""
        with self._lock:
            return len(self._open)

    def wait_open_at_most(self, n: int, timeout: float = 1.0) -> int:
        """Wait (bounded) until at most *n* connections are open; return how many are."""
        end = time.monotonic() + timeout
        while True:
            now_open = self.open_connections
            if now_open <= n or time.monotonic() >= end:
                return now_open
            time.sleep(0.01)

    def wait(self, seconds: float) -> bool:
        """Sleep up to *seconds*; True when the peer was stopped meanwhile."""
        return self._stop.wait(seconds)

    # -- connection-level faults ---------------------------------------------

    def blackhole(self) -> Blackhole:
        """A port whose connects time out, made on first use and closed when the peer stops."""
        with self._lock:
            if self._blackhole is None:
                self._blackhole = Blackhole(self.host)
            return self._blackhole

    @contextlib.contextmanager
    def refusing(self) -> Iterator[None]:
        """
        Refuse new connections while the block runs (connections already
        open are untouched): the listening socket is closed, and bound again
        on the same port afterwards.
        """
        self.refuse()
        try:
            yield
        finally:
            self.accept()

    def refuse(self) -> None:
        """Close the listening socket: connects to the port are refused until `accept`."""
        with self._lock:
            if self._parked is not None or self._listener is None:
                return
            # The accept loop keeps polling a listener; give it a throwaway one
            # on another port (it times out like the real one) instead of a
            # closed socket, on which accept() would fail at once and spin.
            parked = self._listen(0)
            real, self._listener = self._listener, parked
            self._parked = parked
        # shutdown() first: close() alone leaves the port listening until the
        # accept loop's poll on it returns, and a connect in between is reset.
        with contextlib.suppress(OSError):
            real.shutdown(socket.SHUT_RDWR)
        real.close()

    def accept(self) -> None:
        """Listen on the peer's port again after `refuse`."""
        with self._lock:
            parked = self._parked
            if parked is None:
                return
            self._listener = self._listen(self.port)
            self._parked = None
        parked.close()

    # -- serving -------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() - self._started > self.lifetime:
                self._stop.set()  # stops itself: a forgotten peer cannot outlive its test for long
                break
            listener = self._listener
            assert listener is not None
            try:
                sock, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            sock.settimeout(_IO_TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                number = self.connections
                if len(self._open) >= self.max_connections:
                    sock.close()
                    continue
                self._open.add(sock)
                self.max_open = max(self.max_open, len(self._open))
                self._threads = [t for t in self._threads if t.is_alive()]
            t = threading.Thread(target=self._serve, args=(sock, number), daemon=True)
            with self._lock:
                self._threads.append(t)
            t.start()

    def _handshake(self, sock: socket.socket) -> socket.socket | None:
        """Wrap *sock* in TLS (or stall, as asked); None when the connection is over."""
        assert self._context is not None
        if self.handshake == "stall":
            # Read (and drop) the ClientHello and whatever follows, never answer,
            # until the client leaves or the peer stops.
            while not self.wait(_POLL):
                try:
                    readable, _, _ = select.select([sock], [], [], 0)
                    if readable and not sock.recv(65536):
                        return None
                except OSError:
                    return None
            return None
        try:
            wrapped = self._context.wrap_socket(sock, server_side=True)
        except (OSError, ValueError):
            return None  # an untrusted certificate: the client gave up
        with self._lock:
            self._open.discard(sock)
            self._open.add(wrapped)
            self.handshakes += 1
        return wrapped

    def _serve(self, sock: socket.socket, number: int) -> None:
        try:
            if self._context is not None:
                wrapped = self._handshake(sock)
                if wrapped is None:
                    return
                sock = wrapped
            conn = Conn(sock, self, number)
            while not self._stop.is_set():
                try:
                    request = conn.read_request()
                except (EOFError, OSError, ValueError):
                    return
                with self._lock:
                    if self.record:
                        self.requests.append(request)
                    self._hits[request.path] += 1
                    if request.body:
                        self._bodies[request.path] += 1
                    route = self._routes.get(request.path) or self._routes.get("*")
                    handler: Handler = route.next() if route is not None else _NOT_FOUND
                behaviour = handler if hasattr(handler, "serve") else handler(request)
                try:
                    if not behaviour.serve(conn, request):
                        return
                except OSError:
                    return
        finally:
            with self._lock:
                self._open.discard(sock)
            with contextlib.suppress(OSError):
                sock.close()


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


# -- a peer in another process ----------------------------------------------------------------


def _serve_in_child(factory: str | None, options: dict[str, Any], pipe: Any) -> None:
    if factory:
        module, _, name = factory.partition(":")
        peer: Peer = getattr(importlib.import_module(module), name)()
    else:
        peer = Peer(**options).start()
    try:
        pipe.send(peer.port)
        end = time.monotonic() + peer.lifetime
        while time.monotonic() < end:  # bounded by the peer's lifetime
            if not pipe.poll(min(1.0, max(0.0, end - time.monotonic()))):
                continue
            try:
                command, args = pipe.recv()
            except EOFError:
                return  # the parent went away
            if command == "stop":
                return
            if command == "on":
                peer.on(*args)
                pipe.send(None)
            elif command == "counts":
                pipe.send((peer.hits(args), peer.connections))
            elif command == "open":
                pipe.send(peer.open_connections)
    finally:
        peer.stop()


class RemotePeer:
    """
    A `Peer` in a child process, controlled through a pipe: ``port``, `url`,
    `on` (behaviours are pickled across), `hits`, ``connections`` and
    ``open_connections``.
    """

    def __init__(self, port: int, scheme: str, pipe: Any) -> None:
        self.port = port
        self.scheme = scheme
        self._pipe = pipe
        self._lock = threading.Lock()

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://{HOST}:{self.port}{path}"

    def _ask(self, command: str, args: Any) -> Any:
        with self._lock:
            self._pipe.send((command, args))
            if not self._pipe.poll(10.0):
                raise RuntimeError(f"the peer process did not answer {command!r}")
            return self._pipe.recv()

    def on(self, path: str, *behaviours: Behaviour) -> RemotePeer:
        self._ask("on", (path, *behaviours))
        return self

    def hits(self, path: str | None = None) -> int:
        return int(self._ask("counts", path)[0])

    @property
    def connections(self) -> int:
        return int(self._ask("counts", None)[1])

    @property
    def open_connections(self) -> int:
        return int(self._ask("open", None))


@contextlib.contextmanager
def peer_process(
    factory: str | None = None, *, timeout: float = 30.0, **options: Any
) -> Iterator[RemotePeer]:
    """
    Run a `Peer` in a child process (spawned) and yield a `RemotePeer`:
    ``Peer(**options)``, or the started peer that ``module:function``
    *factory* returns. For measuring the client alone (its memory, its CPU)
    without the peer's work in the same interpreter. Stopped on exit (bounded).
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    options.setdefault("lifetime", 900.0)
    proc = ctx.Process(target=_serve_in_child, args=(factory, options, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(timeout):
            raise RuntimeError(f"the peer process did not start within {timeout} s")
        yield RemotePeer(int(parent.recv()), "https" if options.get("tls") else "http", parent)
    finally:
        with contextlib.suppress(OSError):
            parent.send(("stop", None))
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout)
