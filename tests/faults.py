"""
Fault kinds for the fault matrix, stress and process tests, on top of `peers`.

`peers.Peer` already hangs, drips, resets, closes early and answers 5xx; this
module adds what a reliability suite needs besides, without repeating it:

* `FaultPeer`, a `peers.Peer` that also counts the connections open on its
  side (now and at most), the request bodies it received, and can refuse
  connections for a while (`FaultPeer.refusing`), so a flap can include
  "down" phases;
* behaviours that notice when the client leaves (`hang_until_gone`,
  `delay`), so a test can assert that no connection stayed open;
* the faults `peers` lacks: a reset in the middle of the headers, a
  truncated body, garbage instead of HTTP, an oversized header block,
  ``Retry-After`` in every form, and `flap`;
* redirects whose target fails: `redirect_to` a Location worked out at
  serve time (a port that refuses, or `blackholed`, a port whose connects
  time out, owned by the peer), and `redirect_chain`, hop after hop;
* `FAULTS`, the table of every fault kind with what one attempt against it
  produces, which the matrix turns into expected outcomes, and
  `REDIRECT_FAULTS`, the same for a first hop that redirects to a failure.

Bounded like `peers`: every wait is on the peer's stop event or a client
socket with a timeout, and a peer stops itself after ``lifetime`` seconds.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import importlib
import multiprocessing
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from peers import (
    Behaviour,
    Blackhole,
    Conn,
    Peer,
    Request,
    answer,
    close_early,
    drip_body,
    drip_headers,
    redirect,
    refused_port,
    reset,
    server_error,
)

__all__ = [
    "FAULTS",
    "REDIRECT_FAULTS",
    "REDIRECT_TARGET",
    "RETRY_AFTER_FORMS",
    "Fault",
    "FaultPeer",
    "Switch",
    "blackholed",
    "client_sockets",
    "delay",
    "flap",
    "garbage",
    "hang_until_gone",
    "oversized_headers",
    "peer_process",
    "redirect_chain",
    "redirect_to",
    "reset_mid_headers",
    "retry_after",
    "truncated",
]

_POLL = 0.02  # how often a waiting behaviour looks at its client socket


# -- the peer ----------------------------------------------------------------------


class FaultPeer(Peer):
    """
    A `peers.Peer` that also counts open connections and bodies, can
    refuse connections for a while, and owns a `Blackhole` for redirects to
    point at (`blackhole`).

    ``open_connections`` is how many accepted connections are being served
    now (server side), ``max_open`` the most at any one time.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.max_open = 0
        self._parked: socket.socket | None = None
        self._blackhole: Blackhole | None = None

    # -- counts ------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet closed by the peer."""
        with self._lock:
            return len(self._open)

    def bodies(self, path: str | None = None) -> int:
        """Requests (to *path*) that carried a non-empty body."""
        with self._lock:
            return sum(1 for r in self.requests if r.body and (path is None or r.path == path))

    def start(self) -> FaultPeer:
        super().start()
        return self

    def __enter__(self) -> FaultPeer:
        return self.start()

    def wait_open_at_most(self, n: int, timeout: float = 1.0) -> int:
        """Wait (bounded) until at most *n* connections are open; return how many are."""
        end = time.monotonic() + timeout
        while True:
            now_open = self.open_connections
            if now_open <= n or time.monotonic() >= end:
                return now_open
            time.sleep(0.01)

    def _serve(self, conn: Conn) -> None:
        with self._lock:
            self.max_open = max(self.max_open, len(self._open))
        super()._serve(conn)

    def blackhole(self) -> Blackhole:
        """A port whose connects time out, made on first use and closed when the peer stops."""
        with self._lock:
            if self._blackhole is None:
                self._blackhole = Blackhole(self.host)
            return self._blackhole

    # -- refusing -------------------------------------------------------------------

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
            parked = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            parked.bind((self.host, 0))
            parked.listen(1)
            parked.settimeout(0.05)
            real, self._listener = self._listener, parked
            self._parked = parked
        real.close()

    def accept(self) -> None:
        """Listen on the peer's port again after `refuse`."""
        with self._lock:
            parked = self._parked
            if parked is None:
                return
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(64)
            sock.settimeout(0.05)
            self._listener = sock
            self._parked = None
        parked.close()

    def stop(self) -> None:
        super().stop()
        with self._lock:
            parked, self._parked = self._parked, None
            hole, self._blackhole = self._blackhole, None
        if parked is not None:
            parked.close()
        if hole is not None:
            hole.close()


# -- behaviours that notice the client leaving ---------------------------------------


def _client_gone(conn: Conn) -> bool:
    """Whether the client closed its end (readable with nothing to read, or an error)."""
    try:
        readable, _, _ = select.select([conn.sock], [], [], 0)
        if not readable:
            return False
        return conn.sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _wait_while_client_stays(conn: Conn, seconds: float) -> bool:
    """Wait up to *seconds*; False when the client left or the peer stopped first."""
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return True
        if conn.peer.wait(min(_POLL, left)) or _client_gone(conn):
            return False


@dataclass(frozen=True)
class _HangUntilGone:
    def serve(self, conn: Conn, request: Request) -> bool:
        _wait_while_client_stays(conn, conn.peer.lifetime)
        return False


def hang_until_gone() -> Behaviour:
    """Read the request and never answer, until the client leaves or the peer stops."""
    return _HangUntilGone()


@dataclass(frozen=True)
class _Delay:
    seconds: float
    then: Behaviour

    def serve(self, conn: Conn, request: Request) -> bool:
        if not _wait_while_client_stays(conn, self.seconds):
            return False
        return self.then.serve(conn, request)


def delay(seconds: float, then: Behaviour | None = None) -> Behaviour:
    """Wait *seconds* (less if the client leaves), then play *then* (200 ``ok`` by default)."""
    return _Delay(seconds, then if then is not None else answer(200, b"ok"))


# -- malformed responses --------------------------------------------------------------


def _head(status: int, headers: Mapping[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} Status", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True)
class _Raw:
    """Send *data*, then end the connection with a FIN (or an RST when *rst*)."""

    data: bytes
    rst: bool = False

    def serve(self, conn: Conn, request: Request) -> bool:
        conn.send(self.data)
        if self.rst:
            conn.peer.wait(0.02)  # let the client read what came before the RST
            conn.reset()
        else:
            conn.sock.shutdown(socket.SHUT_WR)
        return False


def reset_mid_headers() -> Behaviour:
    """Send the status line and part of the headers, then abort with an RST."""
    return _Raw(b"HTTP/1.1 200 OK\r\nContent-Type: text/pl", rst=True)


def truncated(body_size: int = 100, sent: int = 10) -> Behaviour:
    """Announce a *body_size*-byte body (Content-Length), send *sent* bytes, close cleanly."""
    return _Raw(_head(200, {"Content-Length": str(body_size)}) + b"x" * sent)


def garbage(data: bytes = b"\x16\x03\x01\x00\xa5SSH-2.0-not-http\r\n\r\n") -> Behaviour:
    """Answer bytes that are not HTTP at all, then close."""
    return _Raw(data)


def oversized_headers(count: int = 150) -> Behaviour:
    """Answer a header block with *count* headers (http.client refuses more than 100)."""
    headers = {f"X-Filler-{i}": "y" * 40 for i in range(count)}
    headers["Content-Length"] = "0"
    return _Raw(_head(200, headers))


def retry_after(status: int, value: str) -> Behaviour:
    """Answer *status* with ``Retry-After: value`` (keep-alive, empty body)."""
    return answer(status, b"", {"Retry-After": value})


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


class Switch:
    """A behaviour that plays whichever behaviour it was last switched `to` (thread-safe)."""

    def __init__(self, initial: Behaviour) -> None:
        self._current = initial

    def to(self, behaviour: Behaviour) -> None:
        self._current = behaviour  # one reference swap: atomic for readers

    def serve(self, conn: Conn, request: Request) -> bool:
        return self._current.serve(conn, request)


# -- redirects -------------------------------------------------------------------------

#: The path on the same peer where a redirect fault's Location points; the
#: matrix plays the fault's ``target`` there.
REDIRECT_TARGET = "/target"

#: A Location, or how to work it out from the serving peer when the request comes.
Location = str | Callable[[Peer], str]


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
    """A Location for `redirect_to`: *path* on the serving `FaultPeer`'s blackhole (connects time out)."""

    def where(peer: Peer) -> str:
        if not isinstance(peer, FaultPeer):
            raise TypeError(f"a blackhole needs a FaultPeer, got {type(peer).__name__}")
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


def redirect_chain(hops: int, each: float, path: str = REDIRECT_TARGET) -> Behaviour:
    """
    One link of a chain of *hops* redirects, each answered after *each*
    seconds (less if the client leaves), then a 200 ``ok``. Play it at the
    first path and at *path*: it redirects to ``path?hop=N`` (N counts from
    1), and the request with ``hop=hops`` gets the 200.
    """
    if not 1 <= hops <= 30:  # requests follows 30 redirects at most
        raise ValueError(f"a chain has 1 to 30 hops, got {hops}")
    return _Chain(hops, each, path)


# -- the table of fault kinds ------------------------------------------------------------


def _http_date(offset: float) -> str:
    return email.utils.formatdate(time.time() + offset, usegmt=True)


#: Retry-After values by form, with whether the client may sleep and retry
#: on them inside the matrix's deadline (the others return the response at once).
RETRY_AFTER_FORMS: dict[str, tuple[Callable[[], str], bool]] = {
    "seconds-0": (lambda: "0", True),
    "seconds-past-deadline": (lambda: "5", False),
    "date-past": (lambda: _http_date(-3600), True),
    "date-future": (lambda: _http_date(20), False),
    "huge": (lambda: "99999999999999999999", False),
    "negative": (lambda: "-1", False),
    "decimal": (lambda: "0.5", False),
    "garbage": (lambda: "soon, maybe", False),
}


@dataclass(frozen=True)
class Fault:
    """
    One fault kind and what one attempt against it produces.

    ``make`` builds the behaviour (None: the port refuses). ``attempt`` is
    the outcome of one attempt: an exception class, or an HTTP status.
    ``phase`` says when it fails, which decides what may be retried:
    ``before_send`` (any method), ``after_send`` (idempotent and replayable
    only), ``status`` (a status in ``retry.on_status``: the same), ``final``
    (not retried: a success, a status not retried, or the deadline).
    ``retry_after_ok`` is False when a Retry-After forbids sleeping.

    A redirect fault's first hop reaches the peer and answers a redirect;
    ``attempt`` is what the hop it leads to produces, and ``phase`` is never
    ``before_send``: the first hop was sent (and acted on), so the redirect
    target failing before its own first byte does not make the call safe to
    resend. ``target`` is what the peer plays at `REDIRECT_TARGET`, and
    ``timeout`` the (connect, read) the row needs instead of the matrix's
    (a slow hop must meet the deadline, not the read timeout).
    """

    name: str
    make: Callable[[], Behaviour] | None
    attempt: type[BaseException] | int
    phase: str
    retry_after_ok: bool = True
    #: The statuses the next attempts get (a flap), if not the same.
    then: tuple[int, ...] = ()
    #: What the peer plays at `REDIRECT_TARGET`, for a redirect that points there.
    target: Callable[[], Behaviour] | None = None
    #: (connect, read) instead of the matrix's, or None.
    timeout: tuple[float, float] | None = None


def _faults() -> list[Fault]:
    import requests

    from resilient_client import DeadlineExceeded

    conn_err = requests.ConnectionError
    broken = requests.exceptions.ChunkedEncodingError  # the body was cut off
    faults = [
        Fault("refuse", None, conn_err, "before_send"),
        Fault("hang", hang_until_gone, requests.ReadTimeout, "after_send"),
        Fault("slow-answer", lambda: delay(0.03), 200, "final"),
        Fault("drip-headers", lambda: drip_headers(0.02), DeadlineExceeded, "final"),
        Fault("drip-body", lambda: drip_body(b"x" * 400, 0.02), DeadlineExceeded, "final"),
        Fault("reset-before-answer", lambda: reset(), conn_err, "after_send"),
        Fault("reset-mid-headers", reset_mid_headers, conn_err, "after_send"),
        Fault("reset-mid-body", lambda: reset(mid_response=True), broken, "after_send"),
        Fault("close-early", lambda: close_early(after_headers=False), conn_err, "after_send"),
        Fault("truncated-body", truncated, broken, "after_send"),
        Fault("garbage", garbage, conn_err, "after_send"),
        Fault("oversized-headers", oversized_headers, conn_err, "after_send"),
        Fault("500", lambda: server_error(500), 500, "final"),
        Fault("503", lambda: server_error(503), 503, "status"),
        Fault("flap", flap, 503, "status", then=(200, 503)),
    ]
    for status in (429, 503):
        for form, (value, ok) in RETRY_AFTER_FORMS.items():
            make = functools.partial(_retry_after_now, status, value)
            faults.append(Fault(f"{status}-retry-after-{form}", make, status, "status", retry_after_ok=ok))
    return faults


def _retry_after_now(status: int, value: Callable[[], str]) -> Behaviour:
    """Answer *status* with the Retry-After *value* computes now (dates are relative to now)."""
    return retry_after(status, value())


#: Every fault kind the matrix covers.
FAULTS: tuple[Fault, ...] = tuple(_faults())

#: How long a slow first hop takes to answer its redirect: most of the
#: matrix's 1 s deadline, so that what the next hop may take is what is left.
SLOW_HOP = 0.7


def _redirect_faults() -> list[Fault]:
    import requests

    from resilient_client import DeadlineExceeded

    conn_err = requests.ConnectionError
    # Timeouts longer than what the slow hops leave of the deadline: only the deadline can end them.
    slow = (1.0, 1.0)
    return [
        Fault("redirect-303-refuse", lambda: redirect(refused_url("/receipt"), 303), conn_err, "after_send"),
        Fault("redirect-307-refuse", lambda: redirect(refused_url("/receipt"), 307), conn_err, "after_send"),
        Fault("redirect-303-hang", lambda: redirect(REDIRECT_TARGET, 303), requests.ReadTimeout,
              "after_send", target=hang_until_gone),
        Fault("redirect-303-503", lambda: redirect(REDIRECT_TARGET, 303), 503, "status",
              target=lambda: server_error(503)),
        Fault("redirect-slow-hop-blackhole", lambda: delay(SLOW_HOP, redirect_to(blackholed("/next"))),
              DeadlineExceeded, "final", timeout=slow),
        Fault("redirect-slow-hop-hang", lambda: delay(SLOW_HOP, redirect(REDIRECT_TARGET)),
              DeadlineExceeded, "final", target=hang_until_gone, timeout=slow),
        # Each hop well inside the read timeout; eight of them are not inside the deadline.
        Fault("redirect-chain", lambda: redirect_chain(8, 0.15), DeadlineExceeded, "final",
              target=lambda: redirect_chain(8, 0.15), timeout=slow),
    ]


#: Redirect faults: a first hop that answers (at once or slowly) with a
#: redirect to a target that fails. The matrix picks a few rows of them.
REDIRECT_FAULTS: tuple[Fault, ...] = tuple(_redirect_faults())


def refused_url(path: str = "/") -> str:
    """A URL on 127.0.0.1 whose port refuses connections."""
    return f"http://127.0.0.1:{refused_port()}{path}"


# -- a peer in another process ------------------------------------------------------------


def _serve_in_child(factory: str, conn: Any, stop: Any) -> None:
    module, _, name = factory.partition(":")
    peer: FaultPeer = getattr(importlib.import_module(module), name)()
    try:
        conn.send(peer.port)
        stop.wait(peer.lifetime)
    finally:
        peer.stop()


@contextlib.contextmanager
def peer_process(factory: str, timeout: float = 10.0) -> Iterator[int]:
    """
    Run the started `FaultPeer` that ``module:function`` *factory* returns in
    a child process (spawned) and yield its port; stop it on exit (bounded).
    For measuring the client alone, e.g. its memory, without the peer's.
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    stop = ctx.Event()
    proc = ctx.Process(target=_serve_in_child, args=(factory, child, stop), daemon=True)
    proc.start()
    try:
        if not parent.poll(timeout):
            raise RuntimeError(f"peer process {factory} did not start within {timeout} s")
        yield int(parent.recv())
    finally:
        stop.set()
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout)


# -- client sockets, as the kernel sees them -----------------------------------------------

#: TCP states of a socket that is not closed yet: SYN_SENT, ESTABLISHED, CLOSE_WAIT.
_LIVE_STATES = {"02", "01", "08"}


def client_sockets(port: int) -> int:
    """
    How many TCP sockets on this machine are connected (or connecting) to
    127.0.0.1:*port* and not closed yet, read from ``/proc/net/tcp`` (Linux).

    A client that leaks sockets keeps them ESTABLISHED or CLOSE_WAIT; a closed
    one is in TIME_WAIT or gone, so this counts what the client holds, with
    no lag on the server's side.
    """
    count = 0
    with open("/proc/net/tcp", encoding="ascii") as f:
        next(f)
        for line in f:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state in _LIVE_STATES and int(remote.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count
