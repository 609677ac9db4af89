"""
The httpx front's replay of a first attempt into tenacity, and its
fallbacks (static, stale, callable: a callable may be a coroutine function).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import httpx

from ._async_parts import AsyncCall, static_response
from ._events import FallbackServed
from ._policy import CallableFallback, StaleFallback, StaticFallback
from ._redact import redact_exception

if TYPE_CHECKING:
    from ._async_hooks import Reporting

__all__ = ["AsyncReplayFirst", "fallback_or_none"]


class AsyncReplayFirst:
    """An attempt function whose first call replays an outcome already had."""

    __slots__ = ("_attempt", "_first")

    def __init__(self, first: httpx.Response | BaseException,
                 attempt: Callable[[AsyncCall], Awaitable[httpx.Response]]) -> None:
        self._first: httpx.Response | BaseException | None = first
        self._attempt = attempt

    async def __call__(self, call: AsyncCall) -> httpx.Response:
        first = self._first
        if first is None:
            return await self._attempt(call)
        self._first = None
        if isinstance(first, BaseException):
            raise first
        return first


async def fallback_or_none(
    client: Reporting, call: AsyncCall, failure: BaseException | httpx.Response
) -> httpx.Response | None:
    """The fallback's response for *failure*, or None when there is none to give."""
    route = call.route
    fb = route.policy.fallback
    request = call.request
    if fb is None:
        return None
    stale_age = None
    if isinstance(fb, StaticFallback):
        resp = static_response(request, fb.status, fb.body, dict(fb.headers))
        kind = "static"
    elif isinstance(fb, StaleFallback):
        stale = route.state.stale
        found = stale.parts_for(request.method, str(request.url)) if stale is not None else None
        if found is None:
            return None
        status, headers, body, stale_age = found
        resp, kind = static_response(request, status, body, headers), "stale"
    else:
        assert isinstance(fb, CallableFallback)
        kind = "callable"
        try:
            made: object = fb.function(request, failure)  # type: ignore[arg-type]  # user code
            if inspect.isawaitable(made):
                made = await made
        except Exception as fb_exc:
            if isinstance(failure, BaseException):
                raise fb_exc from failure
            raise
        if not isinstance(made, httpx.Response):
            fn = fb.function
            shown = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
            err = TypeError(f"the fallback of endpoint {route.name!r} ({shown}) returned "
                            f"{type(made).__name__}, expected an httpx.Response")
            if isinstance(failure, BaseException):
                raise err from failure
            raise err
        resp = made
    if isinstance(failure, httpx.Response) and failure is not resp:
        await failure.aclose()
    resp.attempts = call.attempt  # type: ignore[attr-defined]
    resp.is_fallback = True  # type: ignore[attr-defined]
    resp.stale_age = stale_age  # type: ignore[attr-defined]
    if isinstance(failure, httpx.Response):
        described = f"status {failure.status_code}"
    else:
        redact_exception(failure, client._secret_values(call), client.config.secrets)
        described = f"{type(failure).__name__}: {failure}"
    client._emit(FallbackServed(route.name, request.method, client._url(request), kind, described))
    return resp
