"""
Helpers shared by the retry test files: a fake clock and a scripted transport
(an adapter mounted on the session, so every layer above it runs for real).
Real sockets are tests/peers.py's.
"""

from __future__ import annotations

import io
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
