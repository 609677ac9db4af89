"""
The async client's test seam: the same one `ResilientSession` has (see the
end of `_session`), for resilient_client.testing and nothing else, plus
`_use_transport`, the one thing the kit needs here that requests gives it
for free (``responses`` patches requests' adapter; httpx has no global
transport to patch). Each change comes with the function that undoes it,
holding the client weakly. `AsyncResilientClient` mixes it in; a client
with no test watching pays one attribute read per request
(`_transport_for_url`).
"""

from __future__ import annotations

import random
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from ._live import LIVE_ASYNC_CLIENTS

if TYPE_CHECKING:
    import requests

    from ._async_client import AsyncResilientClient
    from ._clock import Clock
    from ._endpoints import Endpoints
    from ._events import Event, EventBus
    from ._health import HealthTracker

__all__ = ["TestSeam", "as_prepared"]

_T = TypeVar("_T")


def as_prepared(request: httpx.Request) -> requests.PreparedRequest:
    """
    A `requests.PreparedRequest` copy of *request* (method, URL, headers,
    body when it is bytes): what the testing kit's records, matchers and
    redaction read, so one kit serves both fronts.
    """
    import requests

    prepared = requests.PreparedRequest()
    prepared.method = request.method
    prepared.url = str(request.url)
    prepared.headers = requests.structures.CaseInsensitiveDict(request.headers.multi_items())
    stream = request.stream
    prepared.body = request.content if isinstance(stream, httpx.ByteStream) else None
    return prepared


class TestSeam:
    """`ResilientSession`'s test seam, on the async client (see the module docstring)."""

    __test__ = False  # not a pytest test class, whatever its name

    clock: Clock
    _rng: random.Random | None
    _lock: Any
    _endpoints: Endpoints
    _health: HealthTracker | None
    _bus: EventBus
    #: The testing kit's transport while a registry is active: every request goes there.
    _test_transport: httpx.AsyncBaseTransport | None = None

    @staticmethod
    def _live_sessions() -> list[AsyncResilientClient]:
        """Every async client alive in this process, oldest first."""
        return LIVE_ASYNC_CLIENTS.snapshot()

    @staticmethod
    def _on_new_session(callback: Callable[[AsyncResilientClient], None]) -> Callable[[], None]:
        """Call *callback* with every client built from now on; returns what stops it."""
        return LIVE_ASYNC_CLIENTS.watch(callback)

    def _forget_state(self) -> None:
        """Start afresh: endpoint states (breakers, budgets, bulkheads, caches), routes, health."""
        with self._lock:
            self._endpoints.forget(self.clock, self._rng)
            health, self._health = self._health, None
        if health is not None:
            self._bus.subscribe(health)()

    def _use_clock(self, clock: Clock | None, rng: random.Random | None) -> Callable[[], None]:
        """Read time from *clock*, jitter from *rng* (unless the client has its own); see `_session`."""
        with self._lock:
            old: list[Any] = [self.clock, self._rng]
            if clock is not None:
                self.clock = clock
            if rng is not None and self._rng is None:
                self._rng = rng
        self._forget_state()
        me = weakref.ref(self)

        def restore() -> None:
            client = me()
            if client is None or not old:
                return
            with client._lock:
                client.clock, client._rng = old
            old.clear()
            client._forget_state()

        return restore

    def _use_transport(self, transport: httpx.AsyncBaseTransport) -> Callable[[], None]:
        """Send every request (every hop, whatever the mounts) to *transport*; returns the undo."""
        self._test_transport = transport
        me = weakref.ref(self)

        def restore() -> None:
            client = me()
            if client is not None and client._test_transport is transport:
                del client._test_transport
        return restore

    def _watch_events(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """`subscribe`, for the kit."""
        return self._bus.subscribe(listener)

    def _watch_calls(
        self,
        started: Callable[[requests.PreparedRequest], _T | None],
        ended: Callable[[_T, Any, BaseException | None], None],
    ) -> Callable[[], None]:
        """
        Around every ``send``, ``started(request)`` (a `requests.PreparedRequest`
        copy: see `as_prepared`) and, unless that gave None, ``ended(token,
        response, exception)``; returns what stops it.
        """
        inner = self.send  # type: ignore[attr-defined]

        async def send(request: httpx.Request, **kwargs: Any) -> httpx.Response:
            token = started(as_prepared(request))
            if token is None:
                return await inner(request, **kwargs)  # type: ignore[no-any-return]
            try:
                resp = await inner(request, **kwargs)
            except BaseException as exc:
                ended(token, None, exc)
                raise
            ended(token, resp, None)
            return resp  # type: ignore[no-any-return]

        previous = vars(self).get("send")
        vars(self)["send"] = send  # this client only
        me, mine = weakref.ref(self), weakref.ref(send)
        before = weakref.ref(previous) if previous is not None else None

        def unwatch() -> None:
            client, installed = me(), mine()
            if client is None or installed is None or vars(client).get("send") is not installed:
                return
            prior = before() if before is not None else None
            if prior is None:
                del vars(client)["send"]
            else:
                vars(client)["send"] = prior

        return unwatch
