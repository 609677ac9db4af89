"""
The httpx front's small parts: the per-call state its retry engine carries,
the retry decision on httpx objects, a streamed response's bulkhead slot,
fallback responses, per-endpoint connection pools and the clock's sleep.

The decisions are the core's (`retry_verdict`, `_retry_core`'s waits and
stops); what is here only reads httpx's objects for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import tenacity
from httpx._multipart import MultipartStream  # what httpx makes of files=: its fields say what they read
from tenacity import RetryCallState

from ._clock import SYSTEM_CLOCK, Clock
from ._policy import RetryPolicy
from ._verdict import AttemptOutcome, retry_verdict

if TYPE_CHECKING:
    from ._bulkhead import Bulkhead
    from ._clock import Deadline
    from ._endpoints import Route

__all__ = ["ATTEMPT_ROUTE", "CURRENT_CALL", "AsyncCall", "AsyncRetrySafely", "Pools", "SlotStream",
           "async_sleep", "current_task", "cut_at", "decide", "is_replayable", "mark", "slow",
           "static_response", "was_cut"]

#: The route of the attempt running in this task: which endpoint's pool its
#: connections come from (httpx picks a transport deep inside ``send``).
ATTEMPT_ROUTE: contextvars.ContextVar[Route | None] = contextvars.ContextVar(
    "resilient_client_attempt_route", default=None)

#: The call this task is making: a call made from its event hook inherits
#: its deadline; a redirect hop of its attempt is told apart by its request.
CURRENT_CALL: contextvars.ContextVar[AsyncCall | None] = contextvars.ContextVar(
    "resilient_client_async_call", default=None)

#: ``(request, response_or_exception) -> bool | None``, as `ResilientSession`'s ``retry_if``.
AsyncRetryPredicate = Callable[[httpx.Request, "httpx.Response | BaseException"], "bool | None"]


class AsyncCall:
    """Per-call state shared by the attempt function and the retry strategies."""

    __slots__ = ("attempt", "auth", "budget", "deadline", "ended", "first_verdict", "follow_redirects",
                 "idempotent", "keyed", "left_endpoint", "outcome", "prev_sleep", "reached_peer",
                 "replayable", "request", "retry_after", "route", "stop_reason", "stream", "task",
                 "timeout_given", "timeouts", "write_pool")

    def __init__(self, request: httpx.Request, route: Route, deadline: Deadline | None) -> None:
        self.request = request
        self.route = route
        self.deadline = deadline
        self.budget = route.state.budget
        self.attempt = 0
        self.prev_sleep = 0.0
        self.retry_after: float | None = None
        self.stop_reason = ""
        self.outcome: AttemptOutcome | None = None
        self.first_verdict: bool | None = None
        self.idempotent = False
        self.replayable = True
        self.keyed = False
        self.stream = False
        self.timeouts: tuple[float, float] = route.timeouts
        #: httpx's write and pool timeouts when the caller gave them.
        self.write_pool: tuple[float | None, float | None] = (None, None)
        self.auth: Any = None
        self.follow_redirects: Any = None
        #: The caller's own timeouts (timeout=, or policy=): they hold on every redirect hop.
        self.timeout_given = False
        #: This attempt followed a redirect (a hop was answered) / into another endpoint.
        self.reached_peer = False
        self.left_endpoint = False
        #: The call has returned: a task it started (from a hook) no longer inherits its deadline.
        self.ended = False
        #: The task making it (`current_task`): only a call in the same task inherits its deadline.
        self.task: object = None

    def given_timeouts(self, timeout: dict[str, float | None]) -> None:
        """The caller's own httpx timeouts (None parts: the policy's, never infinite)."""
        c, r = timeout.get("connect"), timeout.get("read")
        policy = self.route.timeouts
        self.timeouts = (policy[0] if c is None else c, policy[1] if r is None else r)
        self.write_pool = (timeout.get("write"), timeout.get("pool"))


def is_replayable(request: httpx.Request) -> bool:
    """
    Whether the body can be sent again: bytes (content, json, form), or
    ``files=`` whose every file is bytes, str or seekable (httpx's multipart
    stream seeks each file back to 0 when it is sent again; requests makes
    the same body into bytes up front, so the sync session retries it too).
    Not a generator or an unseekable file.
    """
    stream = request.stream
    if type(stream) is httpx.ByteStream or isinstance(stream, httpx.ByteStream):
        return True
    if isinstance(stream, MultipartStream):
        return all(_rewindable(getattr(field, "file", b"")) for field in stream.fields)
    return False


def _rewindable(file: object) -> bool:
    if isinstance(file, (bytes, str)):
        return True
    seekable = getattr(file, "seekable", None)
    try:
        return bool(seekable()) if seekable is not None else False
    except (OSError, ValueError):  # closed, or a pipe that says so by raising
        return False


def decide(call: AsyncCall, outcome: httpx.Response | BaseException, policy: RetryPolicy,
           predicate: AsyncRetryPredicate | None) -> bool:
    """The one retry verdict, asked about an httpx outcome (see `_retry.decide`)."""
    classified = call.outcome
    if classified is None or classified.refused or not isinstance(outcome, (Exception, httpx.Response)):
        # Our own refusals and interrupts (cancellation) end the call.
        return False
    return retry_verdict(policy, classified, idempotent=call.idempotent, replayable=call.replayable,
                         user=None if predicate is None else predicate(call.request, outcome),
                         keyed=call.keyed)


class AsyncRetrySafely(tenacity.retry_base):
    """tenacity's retry strategy for the async client: `decide`."""

    def __init__(self, policy: RetryPolicy, predicate: AsyncRetryPredicate | None) -> None:
        self.policy = policy
        self.predicate = predicate

    def __call__(self, rs: RetryCallState) -> bool:
        call: AsyncCall = rs.args[0]
        if rs.attempt_number == 1 and call.first_verdict is not None:
            return call.first_verdict  # the shortcut asked already: ask nobody twice
        outcome = rs.outcome
        assert outcome is not None
        exc = outcome.exception()
        return decide(call, exc if exc is not None else outcome.result(), self.policy, self.predicate)


def async_sleep(clock: Clock) -> Callable[[float], Any]:
    """The retry engine's sleep: the event loop's, or a fake clock's (which then yields once)."""
    if clock is SYSTEM_CLOCK:
        return anyio.sleep

    async def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        await anyio.sleep(0)

    return sleep


class SlotStream(httpx.AsyncByteStream):
    """A streamed body that gives its bulkhead slot back when it is closed (or read to the end)."""

    def __init__(self, inner: httpx.AsyncByteStream, bulkhead: Bulkhead) -> None:
        self._inner = inner
        self._bulkhead: Bulkhead | None = bulkhead

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    def release(self) -> None:
        bulkhead, self._bulkhead = self._bulkhead, None
        if bulkhead is not None:
            bulkhead.release()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self.release()

    def __del__(self) -> None:
        # A response dropped unread and unclosed: its slot comes back when collected.
        self.release()


def static_response(request: httpx.Request, status: int, body: bytes,
                    headers: dict[str, str]) -> httpx.Response:
    """A response made here (a fallback), as httpx would hand it over: read."""
    return httpx.Response(status, headers=headers, content=body, request=request)


#: Transports per endpoint. httpcore's pool does O(requests in it) work on
#: every request's start and end, so 1,000 calls in flight on one pool cost
#: the event loop seconds (`benchmarks/bench_async.py`, the hung peer);
#: spread over shards, each task always on the same one (keep-alive reuse),
#: that work is divided by the shard count.
SHARDS = 8
_SHARD: contextvars.ContextVar[int] = contextvars.ContextVar("resilient_client_pool_shard", default=-1)


class Pools:
    """
    The transports of each endpoint, sized like the sync session's pools:
    ``policy.pool_size`` connections kept for reuse in all (spread over
    `SHARDS`), and never a wait for one (as urllib3's non-blocking pools:
    the bulkhead is the limit).
    """

    def __init__(self, transport_args: dict[str, Any], default: httpx.AsyncBaseTransport) -> None:
        self._args = transport_args
        self._transports: dict[tuple[int, int], httpx.AsyncHTTPTransport] = {}
        # The client's own transport was built from the same arguments: its
        # TLS context is ours too (made at construction, as httpx makes it,
        # not in the event loop at the first call).
        self._tls: Any = getattr(getattr(default, "_pool", None), "_ssl_context", None)
        self._deal = itertools.count()

    def _transport_args(self) -> dict[str, Any]:
        """The client's transport arguments, with one TLS context for all (loading CAs takes ~50 ms)."""
        if self._tls is None:
            args = self._args
            self._tls = httpx.create_ssl_context(verify=args.get("verify", True), cert=args.get("cert"),
                                                 trust_env=args.get("trust_env", True))
        return {**{k: v for k, v in self._args.items() if k not in ("verify", "cert")}, "verify": self._tls}

    def transport_for(self, route: Route) -> httpx.AsyncHTTPTransport:
        index = route.resolution.index
        shard = _SHARD.get()
        if shard < 0:
            # This task's shard from now on (a context variable is per task), dealt in turn.
            shard = next(self._deal) % SHARDS
            _SHARD.set(shard)
        # Bounded: SHARDS per endpoint rule, and SHARDS for the unmatched rest.
        key = (-1 if index is None else index, shard)
        transport = self._transports.get(key)
        if transport is None:
            kept = -(-route.policy.pool_size // SHARDS)  # rounded up: at least one each
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=kept)
            transport = httpx.AsyncHTTPTransport(limits=limits, **self._transport_args())
            self._transports[key] = transport
        return transport

    async def aclose(self) -> None:
        transports, self._transports = list(self._transports.values()), {}
        for transport in transports:
            await transport.aclose()


#: asyncio's own timeout (3.11+): a few microseconds, where anyio's cancel
#: scope costs tens on the happy path. anyio's serves trio and 3.10.
_ASYNCIO_TIMEOUT: Callable[[float], contextlib.AbstractAsyncContextManager[Any]] | None = getattr(
    asyncio, "timeout", None)


def cut_at(left: float | None) -> Any:
    """
    A context manager putting the attempt under the time left (a cancel
    scope: no read can outlast it; TimeoutError when it cuts), or none.
    Async under asyncio 3.11+ (``asyncio.timeout``), else anyio's (sync).
    """
    if left is None:
        return None
    if _ASYNCIO_TIMEOUT is not None and asyncio._get_running_loop() is not None:
        return _ASYNCIO_TIMEOUT(left)
    return anyio.fail_after(left)


def current_task() -> object:
    """The running task: asyncio's (cheap), else anyio's (trio)."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return anyio.get_current_task().id


def was_cut(cut: Any) -> bool:
    """Whether the scope `cut_at` made (as entered) is what ended the attempt: its time ran out."""
    if cut is None:
        return False
    expired = getattr(cut, "expired", None)  # asyncio.Timeout
    if expired is not None:
        return bool(expired())
    return bool(getattr(cut, "cancelled_caught", False))  # anyio's CancelScope


def slow(route: Route, duration: float) -> bool:
    """Whether an attempt that lasted *duration* is a slow call for the route's breaker."""
    policy = route.policy.breaker
    limit = policy.slow_call_duration if policy is not None else None
    return limit is not None and duration > limit


def mark(resp: httpx.Response, attempts: int, *, is_fallback: bool, stale_age: float | None) -> None:
    """What every response the client returns carries (see the contract)."""
    resp.attempts = attempts  # type: ignore[attr-defined]
    resp.is_fallback = is_fallback  # type: ignore[attr-defined]
    resp.stale_age = stale_age  # type: ignore[attr-defined]
