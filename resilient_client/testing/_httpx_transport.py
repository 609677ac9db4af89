"""
The fake transport for `AsyncResilientClient`: the same peers, scripts,
clock and records as the requests one (`_transport`), played through an
``httpx.AsyncBaseTransport`` that the registry installs on every live async
client (its test seam's ``_use_transport``). Imported only when the registry
wires an async client, so the kit never imports httpx otherwise.

Why not ``httpx.MockTransport``: a script's failures must be raised from
inside the transport with the fake clock moved first, and a drip must be a
stream that moves the clock chunk by chunk; MockTransport's handler returns
a finished response. The small class below does both.

The peers' matchers and records read a `requests.PreparedRequest`; each
httpx request is copied into one (`as_prepared`), so a script, a matcher
and a test's assertions are written once for both fronts. Failures are what
httpx raises live:

=================  =====================================================
refused            ``httpx.ConnectError``
connect timeout    ``httpx.ConnectTimeout`` (the fake clock moves by the connect timeout)
read timeout       ``httpx.ReadTimeout``
deadline           a wait the deadline cut lands on it exactly; the client
                   then raises `DeadlineExceeded` as it would live
=================  =====================================================
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from .._async_client import _CURRENT
from .._async_seam import as_prepared
from ._records import UnmatchedRequest
from ._scripts import Hold

if TYPE_CHECKING:
    import requests

    from ._fake_clock import FakeClock
    from ._records import PeerCall
    from ._registry import FakePeers

__all__ = ["FakeAsyncTransport"]

_NO_TIMEOUT = "the request has no {} timeout: against this peer it would hang forever"


class FakeAsyncTransport(httpx.AsyncBaseTransport):
    """Every request an async client sends while *peers* is active."""

    def __init__(self, peers: FakePeers) -> None:
        self._peers = peers

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        prepared = as_prepared(request)
        peers = self._peers
        call = peers._arrived(prepared, peers._calling_session())
        found, _ = peers.mock._registry.find(prepared)
        if found is None:
            err = peers._unmatched(call)
            if isinstance(err, UnmatchedRequest):
                raise err
            raise httpx.ConnectError(f"Connection refused ({err})", request=request)
        ctx: Any = AsyncServeContext(request, prepared, peers.clock, call)
        resp: Any
        try:
            peer = getattr(found, "peer", None)
            if peer is None:  # a plain `responses` response added through peers.mock
                raw = found.get_response(prepared)
                found._calls.add(prepared, None)
                resp = ctx.respond(raw.status, dict(raw.headers), raw.read())
            else:
                outcome, n = peer._pick(call)
                if isinstance(outcome, Hold):
                    await _held(outcome, call)
                    outcome = outcome.answer
                resp = outcome.serve(ctx, n)  # duck-typed: the context answers with httpx's objects
        except BaseException as exc:
            peers._departed(call, None, exc)
            raise
        peers._departed(call, resp, None)
        answer: httpx.Response = resp
        return answer


async def _held(hold: Hold, call: PeerCall) -> None:
    """`Hold` without blocking the event loop: poll the gate every millisecond, bounded."""
    gate = hold.gate
    call.outcome = "held"
    with gate.cv:
        gate.held += 1
        gate.cv.notify_all()
    with anyio.move_on_after(hold.timeout):
        while not gate.open.is_set():
            await anyio.sleep(0.001)
        return
    raise AssertionError(f"fake peer {call.peer!r}: a held request was not released "
                         f"within {hold.timeout:g}s (call release())")


class AsyncServeContext:
    """`_transport.ServeContext` for httpx: the same questions, httpx's answers."""

    def __init__(self, request: httpx.Request, prepared: requests.PreparedRequest,
                 clock: FakeClock, call: PeerCall) -> None:
        self.request = request
        self.prepared = prepared
        self.clock = clock
        self.call = call
        timeout: dict[str, Any] = request.extensions.get("timeout") or {}
        self.connect_timeout: float | None = timeout.get("connect")
        self.read_timeout: float | None = timeout.get("read")
        # The client's call running in this task: its deadline, when on our clock.
        current = _CURRENT.get()
        d = current.deadline if current is not None else None
        self.deadline = d if d is not None and d.clock is clock else None

    def wait(self, needed: float, limit: float | None) -> bool:
        """Spend *needed* seconds against a timeout of *limit*; False when it timed out (see `_transport`)."""
        if limit is None or needed < limit:
            if math.isinf(needed):
                raise AssertionError(f"fake peer {self.call.peer!r}: {_NO_TIMEOUT.format('socket')}")
            self.clock.advance(needed)
            return True
        target = self.clock.monotonic() + limit
        if self.deadline is not None and target >= self.deadline.at - 1e-9:
            target = max(target, self.deadline.at)  # land on the deadline exactly
        self.clock.advance_to(target)
        return False

    def respond(self, status: int, headers: dict[str, str], body: Any) -> httpx.Response:
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "text/plain"
        if isinstance(body, _Drip):
            return httpx.Response(status, headers=headers, stream=body, request=self.request)
        return httpx.Response(status, headers=headers, content=body, request=self.request)

    def drip_body(self, body: bytes, chunk: int, every: float) -> _Drip:
        return _Drip(self, body, chunk, every)

    def _expired(self) -> bool:
        return self.deadline is not None and self.deadline.expired()

    def refused(self) -> httpx.ConnectError:
        return httpx.ConnectError("[Errno 111] Connection refused (fake peer)", request=self.request)

    def connect_timed_out(self) -> httpx.ConnectTimeout:
        if self.connect_timeout is None:
            raise AssertionError(f"fake peer {self.call.peer!r}: {_NO_TIMEOUT.format('connect')}")
        return httpx.ConnectTimeout(
            f"Connection timed out (fake peer). (connect timeout={self.connect_timeout:g})",
            request=self.request)

    def read_timed_out(self) -> httpx.ReadTimeout:
        if self.read_timeout is None:
            raise AssertionError(f"fake peer {self.call.peer!r}: {_NO_TIMEOUT.format('read')}")
        return httpx.ReadTimeout(
            f"Read timed out (fake peer). (read timeout={self.read_timeout:g})", request=self.request)


class _Drip(httpx.AsyncByteStream):
    """A body arriving *chunk* bytes every *every* fake seconds, cut by the read timeout or the deadline."""

    def __init__(self, ctx: AsyncServeContext, body: bytes, chunk: int, every: float) -> None:
        self._ctx, self._body, self._chunk, self._every = ctx, body, chunk, every
        self._pos = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        ctx = self._ctx
        while self._pos < len(self._body):
            limit = ctx.read_timeout
            d = ctx.deadline
            if d is not None:
                left = d.remaining()
                if left <= 0:
                    self._cut()
                    raise TimeoutError("total deadline passed while reading the response")
                limit = left if limit is None or left < limit else limit
            if not ctx.wait(self._every, limit):
                self._cut()
                if ctx._expired():
                    raise TimeoutError("total deadline passed while reading the response")
                raise httpx.ReadTimeout("timed out", request=ctx.request)
            piece = self._body[self._pos:self._pos + self._chunk]
            self._pos += len(piece)
            ctx.call.duration = ctx.clock.monotonic() - ctx.call.at
            await anyio.sleep(0)
            yield piece

    def _cut(self) -> None:
        call = self._ctx.call
        call.outcome = f"{call.status} body cut after {self._pos} of {len(self._body)} bytes"
        call.duration = self._ctx.clock.monotonic() - call.at

