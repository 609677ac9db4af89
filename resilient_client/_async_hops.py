"""
Redirect hops on the async client, as `ResilientSession._send_hop` handles
them: httpx follows redirects inside one attempt (``_send_handling_redirects``
calls ``_send_single_request`` once per hop), so each hop after the first
passes here. A hop runs under the time left now (its connect, read, write
and pool timeouts capped by it, the deadline header updated), not the
timeouts capped when the attempt began; a hop into another endpoint takes
that endpoint's timeouts (unless the call gave its own), its pool, and its
breaker, which records the hop's outcome (the source answered, with a
redirect: it is not blamed for the target). A hop into an endpoint whose
breaker is open is not followed: ``httpx.ConnectError`` (not
`CircuitOpenError`, which promises nothing touched the network: the first
hop did). The attempt's cancel scope bounds every hop by ``total`` as well.
`AsyncResilientClient` mixes it in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import httpx

from ._admission import answer_outcome, held_redirect, hold_on
from ._async_errors import AsyncDeadlineExceeded, classify_error
from ._async_parts import ATTEMPT_ROUTE, CURRENT_CALL, AsyncCall
from ._events import BreakerRejected
from ._propagation import header_value
from ._verdict import AttemptOutcome, of_status
from .exceptions import CircuitOpenError

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker
    from ._clock import Clock
    from ._endpoints import Endpoints, Route
    from ._events import Event
    from ._overload import Overload

    _Base = httpx.AsyncClient
else:
    _Base = object

__all__ = ["RedirectHops"]


class RedirectHops(_Base):
    """``_send_single_request``: the first hop as httpx sends it, each later one charged where it goes."""

    if TYPE_CHECKING:
        clock: Clock
        _endpoints: Endpoints

        def _emit(self, event: Event) -> None: ...
        def _url(self, request: httpx.Request) -> str: ...
        async def _record(self, breaker: CircuitBreaker, success: bool, is_trial: bool,
                          duration: float) -> None: ...
        async def _release_trial(self, breaker: CircuitBreaker) -> None: ...

    async def _send_single_request(self, request: httpx.Request) -> httpx.Response:
        call = CURRENT_CALL.get()
        if call is None or request is call.request:
            return await super()._send_single_request(request)
        return await self._send_hop(call, request)

    async def _send_hop(self, call: AsyncCall, request: httpx.Request) -> httpx.Response:
        call.reached_peer = True  # the hop before this one was answered
        route = call.route
        target = self._endpoints.route_for(request.method, str(request.url))
        call.left_endpoint = target.state is not route.state
        connect, read = call.timeouts
        write, pool = call.write_pool
        breaker = None
        if call.left_endpoint:
            route, breaker = target, target.state.breaker
            if not call.timeout_given:
                connect, read = target.timeouts
                write = pool = None
        write = read if write is None else write
        pool = connect if pool is None else pool
        deadline = call.deadline
        if deadline is not None:
            left = deadline.remaining()
            if left <= 0:
                raise AsyncDeadlineExceeded(call.route.name, deadline.total, request=request)
            connect, read, write, pool = (min(t, left) for t in (connect, read, write, pool))
            prop = call.route.policy.propagation
            if prop is not None:
                request.headers[prop.deadline_header] = header_value(read if prop.per_attempt else left)
        request.extensions = {**request.extensions,
                              "timeout": {"connect": connect, "read": read, "write": write, "pool": pool}}
        token = ATTEMPT_ROUTE.set(route)  # its endpoint's pool
        try:
            overload = target.state.overload if call.left_endpoint else None
            if overload is None:
                return await self._hop(route, breaker, request)
            return await self._hop_charged(target, overload, request, call)
        finally:
            ATTEMPT_ROUTE.reset(token)

    async def _hop(self, route: Route, breaker: CircuitBreaker | None,
                   request: httpx.Request) -> httpx.Response:
        if breaker is None:
            return await super()._send_single_request(request)
        return await self._hop_in_breaker(route.name, route.policy.failure_status, breaker, request)

    async def _hop_charged(self, target: Route, overload: Overload, request: httpx.Request,
                           call: AsyncCall) -> httpx.Response:
        """
        A hop into another endpoint with overload control: its answer is that
        endpoint's (its Retry-After hold, throttle counts and limit signal), not
        the source's, which answered with a redirect (as `ResilientSession`'s).
        """
        held = held_redirect(target.name, overload)
        if held is not None:
            raise httpx.ConnectError(held, request=request)
        overload.enter()
        started = self.clock.monotonic()
        outcome: AttemptOutcome | None = None
        try:
            resp = await self._hop(target, target.state.breaker, request)
        except Exception as exc:
            deadline = call.deadline
            outcome = classify_error(exc, deadline_passed=deadline is not None and deadline.expired())
            outcome = AttemptOutcome(outcome.kind, None, True, outcome.failure)
            raise
        else:
            policy = target.policy
            proxy = policy.proxy_errors
            outcome = answer_outcome(resp.status_code, policy,
                                     proxy is not None and proxy.header in resp.headers)
            if resp.status_code in (429, 503) and not outcome.proxy:
                hold_on(overload, policy, resp.headers.get("Retry-After"))
            return resp
        finally:
            # A cancelled hop (outcome None) gives its place back without a sample.
            overload.finish(outcome, self.clock.monotonic() - started if outcome is not None else None)

    async def _hop_in_breaker(self, name: str, failure_status: Any, breaker: CircuitBreaker,
                              request: httpx.Request) -> httpx.Response:
        try:
            if breaker.policy.storage.startswith("redis"):  # off the loop, as `Reporting._before_call`
                is_trial = await anyio.to_thread.run_sync(breaker.before_call)
            else:
                is_trial = breaker.before_call()
        except CircuitOpenError as exc:
            self._emit(BreakerRejected(name, request.method, self._url(request), exc._retry_at, exc.retry_in,
                                       breaker.scope))
            raise httpx.ConnectError(
                f"not following the redirect into endpoint {name!r}: its breaker is open",
                request=request) from exc
        started = self.clock.monotonic()
        try:
            resp = await super()._send_single_request(request)
        except BaseException as exc:
            if classify_error(exc).failure:
                await self._record(breaker, False, is_trial, self.clock.monotonic() - started)
            elif is_trial:
                await self._release_trial(breaker)
            raise
        await self._record(breaker, not of_status(resp.status_code, failure_status).failure, is_trial,
                           self.clock.monotonic() - started)
        return resp
