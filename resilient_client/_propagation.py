"""
Deadlines that travel between services.

Outbound, the session sends each attempt's remaining time in a header
(`PropagationPolicy`). Inbound, `DeadlineMiddleware` (WSGI) or
`ASGIDeadlineMiddleware` reads that header and, for the duration of the
request, sets the current *scope*: the inherited deadline and whether onward
calls may retry. `deadline()` sets the same scope from Python, for workers
that pull jobs from a queue. Every `ResilientSession` call made inside a
scope uses ``min(own total, inherited remaining)`` and, when the scope says
so, no retries.

Why a `contextvars.ContextVar`: a value set while serving one request is
seen by everything that request runs (on its thread, in its asyncio task,
through ``asyncio.to_thread``) and by nothing else, and resetting it with
its token means a worker thread never carries one request's deadline into
the next.

Inbound values are never trusted: a header that is not plain digits is
ignored, a huge one is capped at ``max_seconds``, and a scope can only
shorten the deadline around it, never lengthen it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

from ._clock import SYSTEM_CLOCK, Clock, Deadline
from ._policy import DEFAULT_DEADLINE_HEADER, _duration, _header_name

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = [
    "DEFAULT_ATTEMPT_HEADER",
    "DEFAULT_DEADLINE_HEADER",
    "ASGIDeadlineMiddleware",
    "DeadlineMiddleware",
    "call_deadline",
    "current_deadline",
    "deadline",
    "header_value",
    "parse_attempt",
    "parse_timeout_ms",
    "retries_allowed",
]

#: The header the middleware reads the caller's attempt number from (the
#: client sends it when ``retry.attempt_header`` names it).
DEFAULT_ATTEMPT_HEADER = "X-Retry-Attempt"

# Longer than this is more than 31 years in milliseconds: capped without
# being converted (int() of a huge digit string is slow, or refused).
_MAX_DIGITS = 12
# A header value longer than this is not a number anyone meant to send.
_MAX_HEADER_LENGTH = 256


class _Scope:
    """What the current request inherited: a deadline (or None) and whether retries are allowed."""

    __slots__ = ("deadline", "retries")

    def __init__(self, deadline: Deadline | None, retries: bool) -> None:
        self.deadline = deadline
        self.retries = retries

    def __repr__(self) -> str:
        return f"<scope deadline={self.deadline!r} retries={self.retries}>"


_scope: ContextVar[_Scope | None] = ContextVar("resilient_client_scope", default=None)


def _narrow(outer: _Scope | None, inner: Deadline | None, retries: bool) -> _Scope:
    """The scope inside *outer*: the sooner deadline; retries only if both allow them."""
    if outer is not None:
        retries = retries and outer.retries
        od = outer.deadline
        # Compare what is left rather than instants: the two may be on different clocks.
        if od is not None and (inner is None or od.remaining() <= inner.remaining()):
            inner = od
    return _Scope(inner, retries)


# -- Python API --------------------------------------------------------------


def current_deadline() -> Deadline | None:
    """
    The deadline inherited by the code running now (from `DeadlineMiddleware`,
    `ASGIDeadlineMiddleware` or `deadline`), or None.

    Long work can poll it to stop once nobody is waiting for the answer::

        d = resilient_client.current_deadline()
        if d is not None and d.expired():
            raise TimeoutError("the caller has given up")

    .. versionadded:: 0.1.0
    """
    s = _scope.get()
    return None if s is None else s.deadline


@contextlib.contextmanager
def deadline(
    seconds: float | None, *, retries: bool = True, clock: Clock | None = None
) -> Iterator[Deadline | None]:
    """
    Give every `ResilientSession` call inside the block at most *seconds*
    from now: each call uses ``min(its own total, what is left)``, and one
    that starts with nothing left fails at once with `DeadlineExceeded`,
    without touching the network. For queue workers, which have no inbound
    header to inherit a deadline from::

        with resilient_client.deadline(job.expires_at - time.time()):
            session.post(url, json=job.payload)

    Blocks nest, and an inner block can only shorten the deadline. Zero or
    negative *seconds* means already spent; None sets no deadline (useful
    with ``retries=False``, for a job that is itself a redelivery).

    Args:
        seconds: the time budget, from now.
        retries: False turns retries off for calls inside (an inner block
            cannot turn them back on).
        clock: where time comes from (tests pass a fake one).

    Yields:
        The deadline in force inside the block (maybe an outer, sooner one),
        or None.

    .. versionadded:: 0.1.0
    """
    inner: Deadline | None = None
    if seconds is not None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"seconds must be a number or None, got {seconds!r}")
        if math.isnan(seconds):
            raise ValueError("seconds must be a number, got nan")
        if seconds != math.inf:  # +inf is "no deadline"; -inf is "already spent"
            inner = Deadline(clock or SYSTEM_CLOCK, max(float(seconds), 0.0))
    if not isinstance(retries, bool):
        raise TypeError(f"retries must be True or False, got {retries!r}")
    scope = _narrow(_scope.get(), inner, retries)
    token = _scope.set(scope)
    try:
        yield scope.deadline
    finally:
        _scope.reset(token)


# -- what the session asks ---------------------------------------------------


def call_deadline(clock: Clock, total: float | None, enclosing: Deadline | None = None) -> Deadline | None:
    """
    The deadline of a call starting now on *clock*: its own *total*, or the
    inherited deadline when that comes sooner. *enclosing* is the deadline of
    a call this one is made from (a response hook, a listener): its time is
    the enclosing call's time, so it inherits that deadline too.
    """
    s = _scope.get()
    inherited = None if s is None else s.deadline
    if enclosing is not None and (inherited is None or enclosing.remaining() < inherited.remaining()):
        inherited = enclosing
    if inherited is None:
        return None if total is None else Deadline(clock, total)
    now = clock.monotonic()
    # Same clock: keep the exact instant; otherwise carry over what is left.
    at = inherited.at if inherited.clock is clock else now + inherited.remaining()
    if total is not None and now + total <= at:
        return Deadline(clock, total, at=now + total)
    return Deadline(clock, max(0.0, at - now), at=at, inherited=True)


def retries_allowed() -> bool:
    """False inside a scope that turned retries off (the request is itself a retry)."""
    s = _scope.get()
    return s is None or s.retries


def header_value(seconds: float) -> str:
    """*seconds* as the header's whole milliseconds, rounded down (never promise time we lack)."""
    return str(max(0, int(seconds * 1000.0)))


# -- parsing inbound headers -------------------------------------------------


def parse_timeout_ms(value: str, max_seconds: float) -> float | None:
    """
    Seconds from a deadline header value (whole milliseconds, ASCII digits),
    capped at *max_seconds*. A list (the header sent more than once) gives
    its smallest valid member. None when nothing in it is valid.
    """
    if len(value) > _MAX_HEADER_LENGTH:
        return None
    best: float | None = None
    for part in value.split(","):
        part = part.strip(" \t")
        # isdigit() alone accepts "²" and Arabic-Indic digits.
        if not part or not part.isascii() or not part.isdigit():
            continue
        seconds = max_seconds if len(part) > _MAX_DIGITS else min(int(part) / 1000.0, max_seconds)
        if best is None or seconds < best:
            best = seconds
    return best


def parse_attempt(value: str) -> int | None:
    """The attempt number in an attempt header value, or None when malformed."""
    value = value.strip(" \t")
    if not value or len(value) > 9 or not value.isascii() or not value.isdigit():
        return None
    return int(value)


class _Inbound:
    """The settings shared by both middlewares, validated once."""

    __slots__ = ("attempt_header", "clock", "header", "margin", "max_seconds")

    def __init__(
        self,
        header: str,
        margin: float,
        max_seconds: float,
        attempt_header: str | None,
        clock: Clock | None,
    ) -> None:
        self.header = _header_name("header", header)
        self.margin = _duration("margin", margin, allow_zero=True)
        self.max_seconds = _duration("max_seconds", max_seconds)
        self.attempt_header = (
            None if attempt_header is None else _header_name("attempt_header", attempt_header)
        )
        self.clock = clock or SYSTEM_CLOCK

    def scope_for(self, timeout_value: str | None, attempt_value: str | None) -> _Scope | None:
        """The scope for a request carrying these header values, or None to leave it alone."""
        inner: Deadline | None = None
        if timeout_value is not None:
            seconds = parse_timeout_ms(timeout_value, self.max_seconds)
            if seconds is not None:
                # From the moment we saw it, minus the margin we keep for
                # answering (and for the time the request spent reaching us).
                inner = Deadline(self.clock, seconds - self.margin)
        retries = True
        if attempt_value is not None:
            n = parse_attempt(attempt_value)
            retries = n is None or n <= 1
        if inner is None and retries:
            return None
        return _narrow(_scope.get(), inner, retries)


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


# -- WSGI ----------------------------------------------------------------------


class DeadlineMiddleware:
    """
    WSGI middleware (Flask, Django, any WSGI app) that makes the caller's
    deadline this request's: every `ResilientSession` call made while
    serving it uses ``min(own total, caller's remaining time - margin)``.

    The deadline header carries whole milliseconds (what `ResilientSession`
    sends with ``propagation`` on). A malformed value is ignored, a huge one
    capped at *max_seconds*; the inherited deadline never lengthens a
    call's own ``total``. A request whose *attempt_header* says it is a
    retry (attempt > 1) makes its onward calls without retries, so that
    retries happen at one layer only.

    Args:
        app: the WSGI application.
        header: the deadline header.
        margin: seconds kept back for building and sending our own answer.
        max_seconds: the most a caller can give us.
        attempt_header: the header with the caller's attempt number, or
            None to ignore it (onward calls keep their retries).
        clock: where time comes from (tests pass a fake one).

    .. code-block:: python

        app.wsgi_app = resilient_client.DeadlineMiddleware(app.wsgi_app)   # Flask

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        header: str = DEFAULT_DEADLINE_HEADER,
        margin: float = 0.05,
        max_seconds: float = 300.0,
        attempt_header: str | None = DEFAULT_ATTEMPT_HEADER,
        clock: Clock | None = None,
    ) -> None:
        self.app = app
        self._inbound = _Inbound(header, margin, max_seconds, attempt_header, clock)
        self._key = _environ_key(header)
        self._attempt_key = None if attempt_header is None else _environ_key(attempt_header)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        attempt = environ.get(self._attempt_key) if self._attempt_key is not None else None
        scope = self._inbound.scope_for(environ.get(self._key), attempt)
        if scope is None:
            return self.app(environ, start_response)
        token = _scope.set(scope)
        try:
            result = self.app(environ, start_response)
        finally:
            _scope.reset(token)
        wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(result, (list, tuple)) or (
            isinstance(wrapper, type) and isinstance(result, wrapper)
        ):
            return result  # nothing of the app's runs while the server sends these
        # A generator body runs app code as the server iterates it: in scope too.
        return _ScopedBody(result, scope)

    def __repr__(self) -> str:
        i = self._inbound
        return (
            f"DeadlineMiddleware({self.app!r}, header={i.header!r}, margin={i.margin:g}, "
            f"max_seconds={i.max_seconds:g}, attempt_header={i.attempt_header!r})"
        )


class _ScopedBody:
    """A WSGI body iterable whose iteration and close() run in the request's scope."""

    __slots__ = ("_body", "_it", "_scope")

    def __init__(self, body: Iterable[bytes], scope: _Scope) -> None:
        self._body = body
        self._scope = scope
        self._it: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        token = _scope.set(self._scope)
        try:
            if self._it is None:
                self._it = iter(self._body)
            return next(self._it)
        finally:
            _scope.reset(token)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            token = _scope.set(self._scope)
            try:
                close()
            finally:
                _scope.reset(token)


# -- ASGI ----------------------------------------------------------------------

_ASGIScope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_ASGIApp = Callable[[_ASGIScope, _Receive, _Send], Awaitable[None]]


class ASGIDeadlineMiddleware:
    """
    The ASGI twin of `DeadlineMiddleware` (Starlette, FastAPI, Django's ASGI
    handler), with the same arguments. Calls made from sync code run through
    ``asyncio.to_thread`` or Starlette's thread pool see the deadline too:
    both copy the context into the thread.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        app: _ASGIApp,
        *,
        header: str = DEFAULT_DEADLINE_HEADER,
        margin: float = 0.05,
        max_seconds: float = 300.0,
        attempt_header: str | None = DEFAULT_ATTEMPT_HEADER,
        clock: Clock | None = None,
    ) -> None:
        self.app = app
        self._inbound = _Inbound(header, margin, max_seconds, attempt_header, clock)
        # ASGI header names arrive lower-cased, as bytes.
        self._name = header.lower().encode("latin-1")
        self._attempt_name = (
            None if attempt_header is None else attempt_header.lower().encode("latin-1")
        )

    async def __call__(self, scope: _ASGIScope, receive: _Receive, send: _Send) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        timeout: list[str] = []
        attempt: str | None = None
        for name, value in scope.get("headers") or ():
            if name == self._name:
                timeout.append(value.decode("latin-1"))
            elif name == self._attempt_name:
                attempt = value.decode("latin-1")
        s = self._inbound.scope_for(",".join(timeout) if timeout else None, attempt)
        if s is None:
            await self.app(scope, receive, send)
            return
        token: Token[_Scope | None] = _scope.set(s)
        try:
            await self.app(scope, receive, send)
        finally:
            _scope.reset(token)

    def __repr__(self) -> str:
        i = self._inbound
        return (
            f"ASGIDeadlineMiddleware({self.app!r}, header={i.header!r}, margin={i.margin:g}, "
            f"max_seconds={i.max_seconds:g}, attempt_header={i.attempt_header!r})"
        )
