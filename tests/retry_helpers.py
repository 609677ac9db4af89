"""
Helpers shared by the retry test files: a fake clock, a scripted transport
(an adapter mounted on the session, so every layer above it runs for real)
and a small loopback HTTP/1.1 peer that counts the connections it accepts.
"""

from __future__ import annotations

import io
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

import resilient_client
from resilient_client.testing import FakeClock as PublicFakeClock

PEER = "http://peer.test"


# -- time -------------------------------------------------------------------


class FakeClock(PublicFakeClock):
    """The public fake clock, also logging (start, length) of every sleep for deadline checks."""

    def __init__(self, start: float = 1000.0) -> None:
        super().__init__(start)
        self.sleep_log: list[tuple[float, float]] = []

    def sleep(self, seconds: float) -> None:
        self.sleep_log.append((self.monotonic(), float(seconds)))
        super().sleep(float(seconds))


# -- failures as requests raises them ----------------------------------------


def connect_error(url: str = PEER) -> requests.ConnectionError:
    """What requests raises for a refused connection (nothing was sent)."""
    reason = NewConnectionError(
        None, "Failed to establish a new connection: [Errno 111] Connection refused"
    )  # type: ignore[arg-type]
    return requests.ConnectionError(MaxRetryError(None, url, reason))  # type: ignore[arg-type]


def connect_timeout(url: str = PEER) -> requests.ConnectTimeout:
    """What requests raises when the TCP handshake times out (nothing was sent)."""
    reason = ConnectTimeoutError(None, "Connection to peer.test timed out. (connect timeout=1)")
    return requests.ConnectTimeout(MaxRetryError(None, url, reason))  # type: ignore[arg-type]


def read_timeout(url: str = PEER) -> requests.ReadTimeout:
    """What requests raises when the response does not come in time (the request was sent)."""
    reason = ReadTimeoutError(None, url, "Read timed out. (read timeout=5)")  # type: ignore[arg-type]
    return requests.ReadTimeout(MaxRetryError(None, url, reason))  # type: ignore[arg-type]


def read_error(url: str = PEER) -> requests.ConnectionError:
    """What requests raises when the peer resets the connection mid-response."""
    reason = ProtocolError(
        "Connection aborted.", ConnectionResetError(104, "Connection reset by peer")
    )
    return requests.ConnectionError(reason)


FAILURES: dict[str, Callable[[], BaseException]] = {
    "connect_error": connect_error,
    "connect_timeout": connect_timeout,
    "read_timeout": read_timeout,
    "read_error": read_error,
}
#: Failures that happen before any byte of the request reached the peer.
BEFORE_SEND = frozenset({"connect_error", "connect_timeout"})


# -- a scripted transport -----------------------------------------------------

Step = Any  # int status | (status, headers) | BaseException | callable(request) -> Step


class ScriptedAdapter(BaseAdapter):
    """
    A transport answering from a script, one step per request; the last step
    repeats. A step is a status, ``(status, headers)``, or an exception to
    raise. Exceptions of the kinds that happen after sending consume the body,
    as a real transport would have.
    """

    def __init__(
        self, script: Iterable[Step], *, clock: FakeClock | None = None, cost: float = 0.0
    ) -> None:
        super().__init__()
        self.script = list(script)
        self.clock = clock
        self.cost = cost
        self.requests: list[requests.PreparedRequest] = []
        self.timeouts: list[Any] = []
        self.bodies: list[bytes | None] = []
        self.responses: list[requests.Response] = []
        self._lock = threading.Lock()

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        with self._lock:
            step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
            self.requests.append(request)
            self.timeouts.append(timeout)
        if self.clock is not None and self.cost:
            self.clock.advance(self.cost)
        if callable(step) and not isinstance(step, BaseException):
            step = step(request)
        before_send = isinstance(step, BaseException) and _is_before_send(step)
        self.bodies.append(None if before_send else _consume(request.body))
        if isinstance(step, BaseException):
            step.request = request  # type: ignore[attr-defined]
            raise step
        status, headers = (step, {}) if isinstance(step, int) else step
        resp = requests.Response()
        resp.status_code = status
        resp.headers = CaseInsensitiveDict(headers)
        resp.raw = io.BytesIO(b"")
        resp.url = request.url or ""
        resp.request = request
        resp.reason = "scripted"
        resp.connection = self  # type: ignore[attr-defined]
        self.responses.append(resp)
        return resp

    def close(self) -> None:
        pass


def _is_before_send(exc: BaseException) -> bool:
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, (NewConnectionError, ConnectTimeoutError)) and not isinstance(
        reason, ReadTimeoutError
    )


def _consume(body: Any) -> bytes | None:
    """Read the body the way a transport sends it (generators and files are used up)."""
    if body is None:
        return None
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    if hasattr(body, "read"):
        return bytes(body.read())
    return b"".join(c if isinstance(c, bytes) else str(c).encode() for c in body)


def session_with(
    script: Iterable[Step],
    config: Mapping[str, Any] | None = None,
    *,
    clock: FakeClock | None = None,
    cost: float = 0.0,
    **kwargs: Any,
) -> tuple[resilient_client.ResilientSession, ScriptedAdapter, FakeClock]:
    """A session on a fake clock whose requests to PEER go to a scripted adapter."""
    clock = clock or FakeClock()
    session = resilient_client.ResilientSession(config, clock=clock, **kwargs)
    session.trust_env = (
        False  # no proxy look-ups in os.environ on every call: same behaviour, faster
    )
    adapter = ScriptedAdapter(script, clock=clock, cost=cost)
    session.mount(PEER, adapter)
    return session, adapter, clock


def retry_config(retry: Mapping[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
    """
    Defaults with the breaker off (it would open under scripted failures) and *retry* merged in.
    """
    defaults: dict[str, Any] = {"breaker": None, "budget": None}
    defaults["retry"] = {
        "backoff": {"initial": 0.1, "multiplier": 2.0, "max": 5.0, "jitter": "none"},
        **(retry or {}),
    }
    defaults.update(sections)
    return {"defaults": defaults}


# -- a loopback peer -----------------------------------------------------------

Handler = Callable[[str, str, Mapping[str, str], bytes], Any]


class LoopbackPeer:
    """
    A small HTTP/1.1 keep-alive server on 127.0.0.1. ``handler(method, path,
    headers, body)`` returns ``(status, headers, body)``, or ``"hang"`` to
    never answer (until the peer stops). Counts accepted connections and
    requests.
    """

    def __init__(self, handler: Handler, *, port: int = 0) -> None:
        self.handler = handler
        self.connections = 0
        self.requests = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        peer = self

        class _Conn(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                with peer.lock:
                    peer.connections += 1
                while not peer.stopping.is_set():
                    if not peer._serve_one(self.rfile, self.wfile):
                        return

        class _Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            block_on_close = False

        self.server = _Server(("127.0.0.1", port), _Conn)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def _serve_one(self, rfile: Any, wfile: Any) -> bool:
        line = rfile.readline(65537)
        if not line:
            return False
        method, path, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        for _ in range(100):  # bounded: a request has few headers
            h = rfile.readline(65537).decode("latin-1")
            if h in ("\r\n", "\n", ""):
                break
            k, _, v = h.partition(":")
            headers[k.strip().lower()] = v.strip()
        body = b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            for _ in range(100_000):
                size = int(rfile.readline().split(b";")[0], 16)
                chunk = rfile.read(size + 2)[:size]
                if size == 0:
                    break
                body += chunk
        elif "content-length" in headers:
            body = rfile.read(int(headers["content-length"]))
        with self.lock:
            self.requests += 1
        answer = self.handler(method, path, headers, body)
        if answer == "hang":
            self.stopping.wait(30)
            return False
        status, extra, payload = answer
        head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(payload)}"]
        head += [f"{k}: {v}" for k, v in extra.items()]
        wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
        wfile.flush()
        return True

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def __enter__(self) -> LoopbackPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def free_port() -> int:
    """A loopback port with nothing listening on it (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
