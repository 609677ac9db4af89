"""
The fake transport under `resilient_client.testing`: a
`responses.RequestsMock` whose scripted peers fail the way real ones do, on
a fake clock.

Everything that needs the ``responses`` package lives here, so that the
pytest plugin (loaded in every project that installs resilient_client)
imports without it; this module is imported only when a `FakePeers`
registry is created.

What a failure looks like to the session is what requests and urllib3
would really raise, so the session classifies it as it would in production:

=================  ==========================================================
refused            ``requests.ConnectionError(MaxRetryError(NewConnectionError))``
connect timeout    ``requests.ConnectTimeout(MaxRetryError(ConnectTimeoutError))``
read timeout       ``requests.ReadTimeout(ReadTimeoutError)``
drip cut short     the body reader raises ``socket.timeout``; urllib3 and requests
                   turn it into ``requests.ConnectionError(ReadTimeoutError)``
=================  ==========================================================

Time: a wait of *needed* seconds against a socket timeout of *limit* moves
the fake clock by *needed* when the data comes in time, else by *limit* and
fails. The session caps each attempt's timeouts by the time left before its
deadline, so a wait that the deadline cut short lands exactly on the
deadline, and the session then raises `DeadlineExceeded` as it would live.
"""

from __future__ import annotations

import io
import math
import re
import threading
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import requests
import responses
from responses.registries import FirstMatchRegistry
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.response import HTTPResponse
from urllib3.util import Timeout as Urllib3Timeout

from .. import _deadline

if TYPE_CHECKING:
    from requests.adapters import HTTPAdapter

    from ._fake_clock import FakeClock
    from ._peer import FakePeer
    from ._records import PeerCall
    from ._registry import FakePeers

__all__ = ["Mock", "Registry", "Script", "ServeContext", "refused"]

_ANY_URL = re.compile(".*")
# A fake peer never waits forever: a request without a timeout against a
# peer that never answers is a bug the test should show, not a hang.
_NO_TIMEOUT = "the request has no {} timeout: against this peer it would hang forever"


class Script(responses.BaseResponse):
    """One `FakePeer` as a registered response: it matches and answers through the peer."""

    def __init__(self, peer: FakePeer) -> None:
        super().__init__(method=peer.method or "*", url=_ANY_URL)
        self.peer = peer

    def matches(self, request: requests.PreparedRequest) -> tuple[bool, str]:
        return self.peer._matches(request)

    def get_response(self, request: requests.PreparedRequest) -> HTTPResponse:
        return self.peer._serve(request)

    def __repr__(self) -> str:
        return repr(self.peer)


class Registry(FirstMatchRegistry):
    """
    responses' first-match registry, except that a matching script is never
    popped: a script answers every request it matches, in order, and keeps
    its own count. Plain responses added through ``peers.mock`` behave as in
    responses (several matching responses are used one after the other).
    """

    def find(
        self, request: requests.PreparedRequest
    ) -> tuple[responses.BaseResponse | None, list[str]]:
        for registered in self.registered:
            ok, _ = registered.matches(request)
            if ok:
                if isinstance(registered, Script):
                    return registered, []
                break
        found, reasons = super().find(request)
        if found is None:
            request.rc_unmatched = True  # type: ignore[attr-defined]
        return found, reasons


class Mock(responses.RequestsMock):
    """The `responses.RequestsMock` of one registry; users may add plain responses to it."""

    def __init__(self, peers: FakePeers) -> None:
        # The registry runs its own, more detailed strict checks.
        super().__init__(assert_all_requests_are_fired=False, registry=Registry)
        self._peers = peers

    def _on_request(
        self,
        adapter: HTTPAdapter,
        request: requests.PreparedRequest,
        *,
        retries: Any = None,
        **kwargs: Any,
    ) -> requests.Response:
        peers = self._peers
        call = peers._arrive(adapter, request)
        try:
            resp = super()._on_request(adapter, request, retries=retries, **kwargs)
        except BaseException as exc:
            if getattr(request, "rc_unmatched", False):
                raise peers._unmatched(call) from None
            peers._departed(call, None, exc)
            raise
        peers._departed(call, resp, None)
        return resp


def _timeouts(request: requests.PreparedRequest) -> tuple[float | None, float | None]:
    """The (connect, read) timeouts the request was sent with, as requests accepts them."""
    kwargs: dict[str, Any] = getattr(request, "req_kwargs", None) or {}
    value = kwargs.get("timeout")
    if isinstance(value, Urllib3Timeout):
        c: object = value.connect_timeout
        r: object = value.read_timeout
    elif isinstance(value, tuple):
        c, r = value
    else:
        c = r = value
    return (
        float(c) if isinstance(c, (int, float)) else None,
        float(r) if isinstance(r, (int, float)) else None,
    )


class _Origin:
    """Stands in for urllib3's pool and connection in error messages: the peer's origin."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)

    def __str__(self) -> str:
        return f"FakePeer(host={self.host!r}, port={self.port})"

    __repr__ = __str__


def refused(
    request: requests.PreparedRequest, detail: str = "fake peer"
) -> requests.ConnectionError:
    """What requests raises when the connection is refused."""
    origin = _Origin(request.url or "")
    reason = NewConnectionError(
        cast(Any, origin),
        f"Failed to establish a new connection: [Errno 111] Connection refused ({detail})",
    )
    return requests.ConnectionError(
        MaxRetryError(cast(Any, origin), request.url, reason), request=request
    )


class ServeContext:
    """What a scripted outcome needs to answer one request: time, timeouts, the deadline."""

    def __init__(self, request: requests.PreparedRequest, clock: FakeClock, call: PeerCall) -> None:
        self.request = request
        self.clock = clock
        self.call = call
        self.connect_timeout, self.read_timeout = _timeouts(request)
        # The session arms the attempt's deadline on this thread just before
        # sending; a deadline on another clock (a real one) is not ours to move.
        arm = getattr(_deadline._local, "arm", None)
        d = arm.deadline if arm is not None else None
        self.arm = arm if d is not None and d.clock is clock else None

    def _deadline_at(self) -> float | None:
        d = self.arm.deadline if self.arm is not None else None
        return d.at if d is not None else None

    def wait(self, needed: float, limit: float | None) -> bool:
        """Spend *needed* seconds against a socket timeout of *limit*; False when it timed out."""
        if limit is None or needed < limit:
            if math.isinf(needed):
                raise AssertionError(
                    f"fake peer {self.call.peer!r}: {_NO_TIMEOUT.format('socket')}"
                )
            self.clock.advance(needed)
            return True
        target = self.clock.monotonic() + limit
        at = self._deadline_at()
        if at is not None and target >= at - 1e-9:
            # The deadline bound this timeout: land on it exactly, so the
            # session sees it expired whatever the float rounding.
            target = max(target, at)
        self.clock.advance_to(target)
        return False

    # -- answers --------------------------------------------------------------

    def respond(
        self, status: int, headers: dict[str, str], body: bytes | io.BufferedReader
    ) -> HTTPResponse:
        content_type = None if any(k.lower() == "content-type" for k in headers) else "text/plain"
        fake = responses.Response(
            method=self.request.method or "GET",
            url=self.request.url or "",
            body=body,
            status=status,
            headers=headers,
            content_type=content_type,
        )
        return fake.get_response(self.request)

    def drip_body(self, body: bytes, chunk: int, every: float) -> io.BufferedReader:
        return io.BufferedReader(_DripReader(self, body, chunk, every), buffer_size=max(chunk, 1))

    # -- failures, shaped as requests raises them -----------------------------

    def refused(self) -> requests.ConnectionError:
        return refused(self.request)

    def connect_timed_out(self) -> requests.ConnectTimeout:
        if self.connect_timeout is None:
            raise AssertionError(f"fake peer {self.call.peer!r}: {_NO_TIMEOUT.format('connect')}")
        origin = _Origin(self.request.url or "")
        reason = ConnectTimeoutError(
            origin, f"Connection timed out (fake peer). (connect timeout={self.connect_timeout:g})"
        )
        return requests.ConnectTimeout(
            MaxRetryError(cast(Any, origin), self.request.url, reason), request=self.request
        )

    def read_timed_out(self) -> requests.ReadTimeout:
        if self.read_timeout is None:
            raise AssertionError(f"fake peer {self.call.peer!r}: {_NO_TIMEOUT.format('read')}")
        reason = ReadTimeoutError(
            cast(Any, _Origin(self.request.url or "")),
            self.request.url,
            f"Read timed out (fake peer). (read timeout={self.read_timeout:g})",
        )
        return requests.ReadTimeout(reason, request=self.request)


class _DripReader(io.RawIOBase):
    """
    A body that arrives *chunk* bytes every *every* seconds of fake time,
    read the way the session's deadline-aware socket reader reads: the armed
    deadline is checked before each read and bounds the wait, and once the
    session disarms it (``stream=True``) only the read timeout applies.
    """

    def __init__(self, ctx: ServeContext, body: bytes, chunk: int, every: float) -> None:
        super().__init__()
        self._ctx = ctx
        self._body = body
        self._chunk = chunk
        self._every = every
        self._pos = 0
        self._lock = threading.Lock()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        with self._lock:
            ctx = self._ctx
            if self._pos >= len(self._body):
                return 0
            limit = ctx.read_timeout
            d = ctx.arm.deadline if ctx.arm is not None else None
            if d is not None:
                left = d.remaining()
                if left <= 0:
                    self._cut()
                    # What a socket read raises on timeout (socket.timeout is TimeoutError).
                    raise TimeoutError("total deadline passed while reading the response")
                limit = left if limit is None or left < limit else limit
            if not ctx.wait(self._every, limit):
                self._cut()
                raise TimeoutError("timed out")
            n = min(self._chunk, len(b), len(self._body) - self._pos)
            b[:n] = self._body[self._pos : self._pos + n]
            self._pos += n
            ctx.call.duration = ctx.clock.monotonic() - ctx.call.at
            return n

    def _cut(self) -> None:
        call = self._ctx.call
        call.outcome = f"{call.status} body cut after {self._pos} of {len(self._body)} bytes"
        call.duration = self._ctx.clock.monotonic() - call.at
