"""
`AsyncResilientClient`: an ``httpx.AsyncClient`` whose ``send`` runs every
request through its endpoint's policy, on the same core as
`ResilientSession` (config, routing, verdict, retry strategies, budget,
bulkhead, breaker machine and stores, events, propagation)::

    send                      route (cached), deadline, then:
    _send_in_bulkhead         overload control's admission (`_admission`), then
    _send_in_slot             bulkhead slot, fallback on failure
    _send_with_retries        tenacity's AsyncRetrying, inside the retry budget
    _attempt                  breaker, timeouts capped by the deadline, httpx's
                              own send (auth, redirects, hooks) and the body
                              read, all under the time left

What differs from the requests front: redirect hops are httpx's, inside one
attempt, each charged where it goes (`_async_hops`); the deadline is a cancel scope
(anyio's, so asyncio and trio both work) rather than a per-read check, so a
drip-fed body is cut at ``total`` wherever the attempt is; a breaker whose
state is in Redis is asked on threads of our own, within the deadline
(`_async_breaker`), so the loop never blocks on the network (``state:
host`` takes a few-microsecond ``flock`` in the loop).

Why it is long: it is the httpx front, every layer of a call in one class
as `_session` is for requests; its helpers already live in `_async_parts`,
`_async_retry`, `_async_hooks` and `_async_errors`.

Cancellation: every slot, trial and connection is given back in ``finally``
blocks (the connection's close shielded from the cancellation; a Redis
breaker's trial by the worker that claimed it), so a task cancelled
mid-call, or an ``asyncio.timeout()`` around it, leaks nothing.

Why it is long: the four layers read top to bottom as the sync session's
do, each next to the one it calls; what is not a layer lives beside it
(`_async_hooks`, `_async_parts`, `_async_retry`, `_async_breaker`).
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import tenacity

from ._admission import answer_outcome, finished, hold_on, refusal_event
from ._async_errors import AsyncBulkheadFull, AsyncDeadlineExceeded, AsyncThrottled, classify_error
from ._async_hooks import Reporting
from ._async_hops import RedirectHops
from ._async_log import TASK_SECRETS, install_httpx_log_filter
from ._async_parts import (
    ATTEMPT_ROUTE,
    CURRENT_CALL,
    AsyncCall,
    AsyncRetryPredicate,
    AsyncRetrySafely,
    Pools,
    SlotStream,
    async_sleep,
    current_task,
    cut_at,
    decide,
    is_replayable,
    mark,
    was_cut,
)
from ._async_retry import AsyncReplayFirst, fallback_or_none
from ._async_seam import TestSeam
from ._async_verbs import PerCallPolicy, take_call_policy
from ._clock import SYSTEM_CLOCK, Clock
from ._config import Config, ConfigSource
from ._endpoints import Endpoints, Route
from ._events import (
    AttemptFinished,
    BulkheadRejected,
    DeadlinePassed,
    Event,
    EventBus,
    load_listeners,
)
from ._hedge import warn_unhedged
from ._live import LIVE_ASYNC_CLIENTS
from ._overload import HOLD, LIMIT, OverloadStatus
from ._policy import Policy
from ._propagation import call_deadline, header_value, retries_allowed
from ._redact import redact_exception
from ._responses import tell_attempts
from ._retry_core import strategies
from ._routing import Router
from ._urls import URLLIB3_FORM
from ._verdict import AttemptOutcome

if TYPE_CHECKING:
    from ._health import HealthTracker

__all__ = ["AsyncResilientClient"]

_DEADLINE = AttemptOutcome("deadline", None, False, False)
_CURRENT = CURRENT_CALL  # (the old name)
_TRANSPORT_KEYS = ("verify", "cert", "http1", "http2", "trust_env")


class AsyncResilientClient(Reporting, TestSeam, PerCallPolicy, RedirectHops, httpx.AsyncClient):
    """
    A drop-in ``httpx.AsyncClient`` that enforces, per endpoint, mandatory
    timeouts, a total deadline, retries within a budget, a circuit breaker,
    a bulkhead and a fallback: the same config and behaviours as
    `ResilientSession`.

    Args:
        config: a mapping, a path to a YAML/TOML/JSON file, a `Config`, or None.
        clock: where time comes from; tests pass a fake one.
        listeners: callables receiving every `Event`.
        retry_if: ``(request, response_or_exception) -> bool | None``.
        rng: the random source for backoff jitter.
        **kwargs: ``httpx.AsyncClient``'s own arguments. A client-wide
            ``timeout=`` replaces the policy's connect/read for every call,
            as a per-call ``timeout=`` does (never infinite: None parts are
            the policy's).

    .. versionadded:: 0.2.0
    """

    def __init__(
        self,
        config: ConfigSource = None,
        *,
        clock: Clock | None = None,
        listeners: Iterable[Callable[[Event], None]] = (),
        retry_if: AsyncRetryPredicate | None = None,
        rng: random.Random | None = None,
        **kwargs: Any,
    ) -> None:
        self._timeout_given = "timeout" in kwargs
        super().__init__(**kwargs)
        # Our pools per endpoint unless the caller chose transports or limits, or proxies apply.
        own = not ({"transport", "mounts", "limits"} & kwargs.keys()) and not self._mounts
        args = {k: kwargs[k] for k in _TRANSPORT_KEYS if k in kwargs}
        self._pools = Pools(args, self._transport) if own else None
        self.config: Config = Config.load(config)
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._bus = EventBus([*load_listeners(self.config.listeners), *listeners])
        self._retry_if = retry_if
        self._rng = rng
        self._health: HealthTracker | None = None
        self._router = Router(self.config.endpoints, self.config.defaults, URLLIB3_FORM)
        install_httpx_log_filter()  # its own INFO line carries the URL: passwords, secret query values
        self._lock = threading.Lock()  # for the endpoint maps: taken only when a route is new
        self._endpoints = Endpoints(self._router, self.config.endpoints, self.clock,
                                    self._breaker_changed, self._build_retrying, self._lock,
                                    state_dir=self.config.state_dir, rng=rng)
        warn_unhedged(self.config, "AsyncResilientClient")  # the sync session hedges, this client not yet
        LIVE_ASYNC_CLIENTS.add(self)  # last: complete (the testing kit's seam, `TestSeam`)

    def _build_retrying(self, policy: Policy) -> tenacity.AsyncRetrying | None:
        if policy.retry is None or policy.retry.attempts <= 1:
            return None
        return tenacity.AsyncRetrying(
            sleep=async_sleep(self.clock), retry=AsyncRetrySafely(policy.retry, self._retry_if),
            before_sleep=self._before_sleep, **strategies(policy.retry, rng=self._rng))

    async def _exchange(self, call: AsyncCall) -> httpx.Response:
        """httpx's own send (auth, redirects, hooks), then the body unless streamed."""
        resp = await super().send(call.request, stream=True, auth=call.auth,
                                  follow_redirects=call.follow_redirects)
        if not call.stream:
            try:
                await resp.aread()
            except BaseException:
                with anyio.CancelScope(shield=True):  # cancelled or not, the connection goes
                    await resp.aclose()
                raise
        return resp

    # -- httpx's hooks ---------------------------------------------------------

    def _transport_for_url(self, url: httpx.URL) -> httpx.AsyncBaseTransport:
        if self._test_transport is not None:
            return self._test_transport
        route = ATTEMPT_ROUTE.get()
        if route is None or self._pools is None:
            return super()._transport_for_url(url)
        return self._pools.transport_for(route)

    async def aclose(self) -> None:
        """httpx's own, and the endpoints' pools."""
        self._endpoints.flush()
        await super().aclose()
        if self._pools is not None:
            await self._pools.aclose()

    async def __aexit__(self, *exc_info: Any) -> None:
        self._endpoints.flush()
        await super().__aexit__(*exc_info)
        if self._pools is not None:
            await self._pools.aclose()

    # -- the layers ------------------------------------------------------------

    async def send(self, request: httpx.Request, *, stream: bool = False,
                   auth: Any = httpx.USE_CLIENT_DEFAULT,
                   follow_redirects: Any = httpx.USE_CLIENT_DEFAULT,
                   policy: Mapping[str, Any] | None = None) -> httpx.Response:
        """Send *request* through its endpoint's policy (httpx's signature, plus ``policy=``)."""
        route = self._endpoints.route_for(request.method, str(request.url))
        changes = take_call_policy() if policy is None else policy  # a verb's, or request()'s
        if changes is not None:
            route = self._endpoints.changed(route, changes)
        rules = route.policy
        enclosing = _CURRENT.get()
        task = current_task()
        if enclosing is not None and (enclosing.ended or enclosing.task is not task):
            # A task started from a call's hook runs on its own: the call's
            # deadline ends with the call (awaited children, cancelled with
            # it, need none); a call awaited in the hook, in its task, inherits.
            enclosing = None
        deadline = call_deadline(self.clock, rules.timeout.total,
                                 enclosing.deadline if enclosing is not None else None)
        retry = rules.retry
        if (retry is not None and retry.mint_idempotency_key and request.method not in retry.methods
                and retry.key_header not in request.headers):
            request.headers[retry.key_header or "Idempotency-Key"] = str(uuid.uuid4())
        call = AsyncCall(request, route, deadline)
        call.task = task
        key = retry.key_header if retry is not None else None
        call.keyed = key is not None and key in request.headers
        call.idempotent = retry is not None and (request.method in retry.methods or call.keyed)
        call.replayable = is_replayable(request)
        call.stream, call.auth, call.follow_redirects = stream, auth, follow_redirects
        timeout = request.extensions.get("timeout")
        if timeout is None and self._timeout_given:  # a request built elsewhere: the client's
            timeout = httpx.Timeout(self.timeout).as_dict()
        if timeout is not None:
            call.given_timeouts(timeout)
        call.timeout_given = timeout is not None or route.own_timeouts
        hot = self._bus.wants_hot()
        started = self.clock.monotonic() if hot else 0.0
        token = _CURRENT.set(call)
        # httpx logs each request's URL at INFO: the filter redacts it with these.
        log_token = TASK_SECRETS.set(self.config.secrets) if self.config.secrets.query else None
        extensions = request.extensions  # each attempt sets its timeouts: put the caller's back after
        try:
            resp, failure = await self._send_in_bulkhead(call)
        except Exception as exc:
            redact_exception(exc, self._secret_values(call), self.config.secrets)
            tell_attempts(exc, call.attempt)
            if hot:
                self._emit_call(call, None, exc, started)
            raise
        finally:
            call.ended = True
            _CURRENT.reset(token)
            if log_token is not None:
                TASK_SECRETS.reset(log_token)
            request.extensions = extensions
        if hot:
            self._emit_call(call, resp, failure, started)
        return resp

    async def _send_in_bulkhead(
        self, call: AsyncCall
    ) -> tuple[httpx.Response, BaseException | httpx.Response | None]:
        """The call in a bulkhead slot, or the fallback: (response, what a fallback replaced)."""
        route: Route = call.route
        request = call.request
        overload = route.state.overload
        if overload is None:
            return await self._send_in_slot(call)
        why = overload.admit()
        if why is not None:
            url = self._url(request)
            self._emit(refusal_event(route.name, request.method, url, overload, why))
            refused: AsyncThrottled | AsyncBulkheadFull
            if why == LIMIT:
                refused = AsyncBulkheadFull(route.name, overload.limit.limit if overload.limit else 0,
                                            request=request)
            else:
                refused = AsyncThrottled(route.name, why, overload.hold_for() if why == HOLD else None,
                                         request=request)
            return await self._fallback_or_raise(call, refused), refused
        admitted = self.clock.monotonic()
        sample = True
        try:
            return await self._send_in_slot(call)
        except BaseException as exc:
            # A cancelled task (or an interrupt) is no sample of the peer's: its place goes back.
            sample = isinstance(exc, Exception)
            raise
        finally:
            outcome = call.outcome if call.attempt else None
            if not sample and outcome is not None and (outcome.status is None or not outcome.reached_peer):
                outcome = None  # cancelled before the peer answered: nothing of the peer's to count
            # Cancelled after an answer (a retry's backoff, a fallback): the
            # answer counts, but the time in flight is no latency sample.
            for event in finished(route.name, overload, outcome,
                                  self.clock.monotonic() - admitted if sample else None,
                                  left_endpoint=call.left_endpoint, hot=self._bus.wants_hot()):
                self._emit(event)

    async def _send_in_slot(
        self, call: AsyncCall
    ) -> tuple[httpx.Response, BaseException | httpx.Response | None]:
        """`_send_in_bulkhead` once overload control admitted the call (holding its place under the limit)."""
        route: Route = call.route
        request = call.request
        bulkhead = route.state.bulkhead
        if bulkhead is not None and not bulkhead.try_acquire():
            err = AsyncBulkheadFull(route.name, bulkhead.max_concurrent, request=request)
            self._emit(BulkheadRejected(route.name, request.method, self._url(request),
                                        bulkhead.max_concurrent, bulkhead.scope))
            return await self._fallback_or_raise(call, err), err
        held = bulkhead
        try:
            try:
                resp = await self._send_with_retries(call)
            except Exception as exc:
                outcome = call.outcome or classify_error(exc)
                if not outcome.wants_fallback:
                    raise
                return await self._fallback_or_raise(call, exc), exc
            if route.policy.fallback is not None and call.outcome is not None and call.outcome.failure:
                fb = await fallback_or_none(self, call, resp)
                if fb is not None:
                    return fb, resp
            stale = route.state.stale
            if stale is not None and not call.stream and 200 <= resp.status_code < 300 and request.method in (
                    "GET", "HEAD"):
                headers = {k: v for k, v in resp.headers.items()
                           if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")}
                stale.store_parts(request.method, str(request.url), resp.status_code, headers, resp.content)
            if call.stream and held is not None:
                resp.stream = SlotStream(resp.stream, held)  # type: ignore[arg-type]
                held = None
            return resp, None
        finally:
            if held is not None:
                held.release()

    async def _send_with_retries(self, call: AsyncCall) -> httpx.Response:
        route: Route = call.route
        retrying = route.retrying
        if retrying is not None and not retries_allowed():
            retrying, call.stop_reason = None, "caller_retrying"  # our caller retries: one layer only
        try:
            if retrying is None:
                resp = await self._attempt(call)
            else:
                resp = await self._attempt_then_retrying(call, retrying)
        except AsyncDeadlineExceeded:
            self._emit(DeadlinePassed(route.name, call.request.method, self._url(call.request),
                                      call.deadline.total if call.deadline else 0.0, call.attempt))
            raise
        except Exception as exc:
            if call.attempt:
                self._gave_up(call, classify_error(exc).kind)
            raise
        retry = route.policy.retry
        if call.keyed and resp.status_code == 422:
            call.stop_reason = "idempotency_key_reused"
            self._gave_up(call, "status 422")
        elif (call.outcome is not None and call.outcome.failure) or resp.status_code in (
                retry.on_status if retry else ()) or (call.keyed and resp.status_code == 409):
            self._gave_up(call, f"status {resp.status_code}")
        mark(resp, call.attempt, is_fallback=False, stale_age=None)
        return resp

    async def _attempt_then_retrying(self, call: AsyncCall, retrying: Any) -> httpx.Response:
        """The first attempt, then tenacity only if its outcome may be retried (see `_session`)."""
        first: httpx.Response | BaseException
        try:
            first = await self._attempt(call)
        except Exception as exc:  # an interrupt (cancellation) is never retried: it passes
            first = exc
        retry = call.route.policy.retry
        assert retry is not None  # an engine exists only with one
        call.first_verdict = decide(call, first, retry, self._retry_if)
        if not call.first_verdict:
            if isinstance(first, BaseException):
                raise first
            return first
        # A copy per call: tenacity keeps its iteration state per thread, and
        # the calls of one event loop share a thread.
        engine: tenacity.AsyncRetrying = retrying.copy()
        result: httpx.Response = await engine(AsyncReplayFirst(first, self._attempt), call)
        return result

    async def _attempt(self, call: AsyncCall) -> httpx.Response:
        """One try: breaker, timeouts capped by the deadline, httpx's send and the body."""
        route: Route = call.route
        request = call.request
        deadline = call.deadline
        connect, read = call.timeouts
        left = None
        if deadline is not None:
            left = deadline.remaining()
            if left <= 0:
                call.outcome = _DEADLINE
                raise AsyncDeadlineExceeded(route.name, deadline.total, inherited=deadline.inherited,
                                       request=request)
        breaker = route.state.breaker
        is_trial = False
        if breaker is not None:
            is_trial = await self._before_call(call, breaker)
            if deadline is not None and breaker.policy.storage.startswith("redis"):
                left = deadline.remaining()  # the time left after asking Redis (> 0: checked there)
        if left is not None:
            connect, read = min(connect, left), min(read, left)
        prop = route.policy.propagation
        if prop is not None and (deadline is not None or prop.per_attempt):
            told = read if prop.per_attempt or left is None else left
            request.headers[prop.deadline_header] = header_value(told)
        call.attempt += 1
        if call.attempt == 1 and call.budget is not None:
            call.budget.record_request()
        header = route.policy.retry.attempt_header if route.policy.retry else None
        if header:
            request.headers[header] = str(call.attempt)
        # httpx's own two; not given: the policy's read and connect (never infinite).
        write, pool = call.write_pool
        write = route.timeouts[1] if write is None else write
        pool = route.timeouts[0] if pool is None else pool
        if left is not None:
            write, pool = min(write, left), min(pool, left)
        request.extensions = {**request.extensions,
                              "timeout": {"connect": connect, "read": read, "write": write, "pool": pool}}
        started = self.clock.monotonic()
        token = ATTEMPT_ROUTE.set(route)
        cut: Any = None
        call.reached_peer = call.left_endpoint = False  # set by its redirect hops (`RedirectHops`)
        try:
            scope = cut_at(left)
            if scope is None:
                resp = await self._exchange(call)
            elif hasattr(scope, "__aenter__"):
                async with scope as cut:
                    resp = await self._exchange(call)
            else:
                with scope as cut:
                    resp = await self._exchange(call)
        except BaseException as exc:
            duration = self.clock.monotonic() - started
            # Our deadline's cut (or the fake clock's, the testing kit's), told
            # apart from a TimeoutError of the caller's own code (a hook's).
            ours = deadline is not None and isinstance(exc, TimeoutError) and (
                was_cut(cut) or deadline.expired())
            expired = deadline is not None and (ours or deadline.expired())
            outcome = call.outcome = classify_error(exc, deadline_passed=expired)
            if ours:
                outcome = call.outcome = AttemptOutcome("deadline", None, True, False)
            elif call.reached_peer and not outcome.reached_peer:  # a hop after the first failed
                outcome = call.outcome = AttemptOutcome(outcome.kind, None, True, outcome.failure)
            if self._bus.wants_hot():
                self._emit(AttemptFinished(route.name, request.method, self._url(request), call.attempt,
                                           outcome.kind, None, duration, type(exc).__name__))
            if breaker is not None:
                await self._settle_raised(call, breaker, outcome, is_trial, duration,
                                          wait=isinstance(exc, Exception))
            if (outcome.kind == "deadline" and deadline is not None
                    and not isinstance(exc, AsyncDeadlineExceeded)):
                raise AsyncDeadlineExceeded(route.name, deadline.total, inherited=deadline.inherited,
                                       request=request) from exc
            raise
        finally:
            ATTEMPT_ROUTE.reset(token)
        duration = self.clock.monotonic() - started
        status = resp.status_code
        proxy = route.policy.proxy_errors
        outcome = call.outcome = answer_outcome(status, route.policy,
                                                proxy is not None and proxy.header in resp.headers)
        overload = route.state.overload
        if overload is not None and status in (429, 503) and not outcome.proxy and not call.left_endpoint:
            # (a redirect into another endpoint: its hop held that one)
            hold_on(overload, route.policy, resp.headers.get("Retry-After"))
        if self._bus.wants_hot():
            self._emit(AttemptFinished(route.name, request.method, self._url(request), call.attempt,
                                       outcome.kind, status, duration, proxy_error=outcome.proxy))
        if breaker is not None:
            await self._record(breaker, call.left_endpoint or not outcome.failure, is_trial, duration,
                               deadline)
        return resp

    def overload(self, name_or_url: str, method: str = "GET") -> OverloadStatus:
        """
        The overload control of an endpoint name, or of the endpoint a URL
        resolves to (as `ResilientSession.overload`).

        Raises:
            KeyError: no such endpoint, or it has neither ``throttle`` nor ``concurrency``.

        .. versionadded:: 0.2.0
        """
        if "://" in name_or_url:
            state = self._endpoints.route_for(method.upper(), name_or_url).state
        else:
            state = self._state_named(name_or_url)
        if state.overload is None:
            raise KeyError(f"endpoint {state.name!r} has no overload control "
                           "(throttle and concurrency: null)")
        return state.overload.status()

    def __repr__(self) -> str:
        return f"<AsyncResilientClient endpoints={[e.name for e in self.config.endpoints]}>"
