"""
What the async client does beside its layers, kept apart so each module
reads as one concern: the public helpers it shares with `ResilientSession`
(``policy_for``, ``resolve``, ``circuit``, ``subscribe``, ``health``), the
breaker asked off the event loop when its state is remote (Redis:
`_async_breaker`), and the
events, retry hooks and fallbacks' reporting.
`AsyncResilientClient` mixes it in; it holds no state of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import tenacity

from . import _async_breaker as remote
from ._async_errors import AsyncCircuitOpenError, AsyncDeadlineExceeded, classify_error
from ._async_parts import AsyncCall, slow
from ._async_retry import fallback_or_none
from ._breaker import BreakerState, CircuitBreaker
from ._events import (
    BreakerRejected,
    BreakerStateChanged,
    BudgetExhausted,
    CallFinished,
    Event,
    EventBus,
    GaveUp,
    RetryScheduled,
)
from ._redact import redact_url, secret_values
from ._retry_core import gave_up_reason, retry_reason
from ._verdict import AttemptOutcome, of_status
from .exceptions import CircuitOpenError

if TYPE_CHECKING:
    from ._clock import Clock, Deadline
    from ._config import Config
    from ._endpoints import Endpoints, EndpointState, Route
    from ._health import Health, HealthTracker
    from ._policy import Policy
    from ._routing import Resolution, Router

__all__ = ["Reporting"]

_CIRCUIT_OPEN = AttemptOutcome("circuit_open", None, False, False)
_DEADLINE = AttemptOutcome("deadline", None, False, False)


class Reporting:
    """The async client's breaker calls, retry hooks, fallback entry and events."""

    config: Config
    clock: Clock
    _bus: EventBus
    _router: Router
    _endpoints: Endpoints
    _lock: Any
    _health: HealthTracker | None

    # -- public helpers, as ResilientSession's --------------------------------

    def policy_for(self, method: str, url: str) -> Policy:
        """The policy that applies to *method* *url*."""
        return self.resolve(method, url).policy

    def resolve(self, method: str, url: str) -> Resolution:
        """Which rule applies to *method* *url* and why (``str()`` explains)."""
        return self._router.resolve(method, url)

    def circuit(self, name_or_url: str, method: str = "GET") -> CircuitBreaker:
        """The breaker of an endpoint name or URL (KeyError: none)."""
        if "://" in name_or_url:
            state = self._endpoints.route_for(method.upper(), name_or_url).state
        else:
            state = self._state_named(name_or_url)
        if state.breaker is None:
            raise KeyError(f"endpoint {state.name!r} has no breaker (breaker: null)")
        return state.breaker

    def subscribe(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Send every `Event` to *listener*; returns a function that unsubscribes it."""
        return self._bus.subscribe(listener)

    def health(self) -> Health:
        """Every endpoint's breaker state, bulkhead usage and recent error rate."""
        from ._health import collect

        return collect(self)  # type: ignore[arg-type]  # duck-typed: the parts collect reads

    def _all_states(self) -> list[EndpointState]:
        return self._endpoints.all_states()

    def _state_named(self, name: str) -> EndpointState:
        return self._endpoints.state_named(name)

    def _refuse_early(self, method: str, url: str) -> None:
        """Raise CircuitOpenError when *url*'s breaker is open and no fallback applies (a local store)."""
        method = method.upper()
        route = self._endpoints.route_for(method, url)
        breaker = route.state.breaker
        if (breaker is None or route.policy.fallback is not None or breaker.policy.storage.startswith("redis")
                or breaker.state is not BreakerState.OPEN):
            return
        try:
            is_trial = breaker.before_call()
        except CircuitOpenError as exc:
            shown = redact_url(url, self.config.secrets)
            self._emit(BreakerRejected(route.name, method, shown, exc._retry_at, exc.retry_in, breaker.scope))
            if self._bus.wants_hot():
                self._emit(CallFinished(route.name, method, shown, 0, "circuit_open", None, 0.0, False))
            err = AsyncCircuitOpenError(exc.endpoint, exc._retry_at, retry_in=exc.retry_in,
                                        trial_in_flight=exc.trial_in_flight,
                                        request=httpx.Request(method, url))
            err.attempts = 0  # type: ignore[attr-defined]  # refused before any try
            raise err from None
        if is_trial:
            breaker.release_trial()  # the trial became possible meanwhile: the normal path takes it

    async def _before_call(self, call: AsyncCall, breaker: CircuitBreaker) -> bool:
        try:
            if not breaker.policy.storage.startswith("redis"):
                return breaker.before_call()
            is_trial = await remote.before_call(breaker, call.deadline)
        except CircuitOpenError as exc:
            call.outcome = _CIRCUIT_OPEN
            route, request = call.route, call.request
            self._emit(BreakerRejected(route.name, request.method, self._url(request),
                                       exc._retry_at, exc.retry_in, breaker.scope))
            raise AsyncCircuitOpenError(exc.endpoint, exc._retry_at, retry_in=exc.retry_in,
                                        trial_in_flight=exc.trial_in_flight, request=request) from None
        deadline = call.deadline
        if deadline is not None and deadline.expired():  # spent waiting for Redis
            if is_trial:
                await self._release_trial(breaker, wait=False)
            call.outcome = _DEADLINE
            raise AsyncDeadlineExceeded(call.route.name, deadline.total, inherited=deadline.inherited,
                                        request=call.request)
        return is_trial

    @staticmethod
    async def _record(breaker: CircuitBreaker, success: bool, is_trial: bool, duration: float,
                      deadline: Deadline | None = None, *, wait: bool = True) -> None:
        """Record an outcome; a Redis breaker's on its own threads (`_async_breaker`), never lost."""
        if breaker.policy.storage.startswith("redis"):
            await remote.record(breaker, success=success, is_trial=is_trial, duration=duration,
                                deadline=deadline, wait=wait)
        else:
            breaker.record(success=success, is_trial=is_trial, duration=duration)

    @staticmethod
    async def _release_trial(breaker: CircuitBreaker, deadline: Deadline | None = None, *,
                             wait: bool = True) -> None:
        if breaker.policy.storage.startswith("redis"):
            await remote.release_trial(breaker, deadline, wait=wait)
        else:
            breaker.release_trial()

    async def _settle_raised(self, call: AsyncCall, breaker: CircuitBreaker, outcome: AttemptOutcome,
                             is_trial: bool, duration: float, *, wait: bool) -> None:
        """
        The breaker's share of an attempt that raised: a failure (or a
        success, when it had left the endpoint on a redirect); a slow call
        cut by the deadline (a drip-fed body never trips ``read``: past
        ``slow_call_duration`` it counts, as a slow success, which the
        machine takes for a failure); or else its trial back. *wait*: False
        when cancelled, the record is handed over, never waited for.
        """
        deadline = call.deadline
        if call.left_endpoint or outcome.failure:  # left: the source answered, a redirect
            await self._record(breaker, call.left_endpoint, is_trial, duration, deadline, wait=wait)
        elif outcome.kind == "deadline" and slow(call.route, duration):
            await self._record(breaker, True, is_trial, duration, deadline, wait=wait)
        elif is_trial:
            await self._release_trial(breaker, deadline, wait=wait)

    # -- retry hooks, fallbacks, events ------------------------------------------

    async def _before_sleep(self, rs: tenacity.RetryCallState) -> None:
        """Close the discarded attempt's response, then say why we retry."""
        call: AsyncCall = rs.args[0]
        outcome = rs.outcome
        assert outcome is not None
        reason = retry_reason(rs, call.outcome.kind if call.outcome is not None else None)
        if not outcome.failed:
            await outcome.result().aclose()
        route: Route = call.route
        self._emit(RetryScheduled(route.name, call.request.method, self._url(call.request),
                                  call.attempt, rs.upcoming_sleep, reason))

    def _gave_up(self, call: AsyncCall, outcome: str) -> None:
        route: Route = call.route
        reason = gave_up_reason(call.stop_reason, outcome, route.retrying is not None)
        method, url = call.request.method, self._url(call.request)
        if reason == "budget":
            budget = route.state.budget
            self._emit(BudgetExhausted(route.name, method, url, call.attempt,
                                       "process" if budget is None else budget.scope))
        self._emit(GaveUp(route.name, method, url, call.attempt, reason, outcome))

    async def _fallback_or_raise(self, call: AsyncCall, exc: BaseException) -> httpx.Response:
        resp = await fallback_or_none(self, call, exc)
        if resp is None:
            raise exc
        return resp

    def _breaker_changed(self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
        failures = breaker.stats().consecutive_failures
        self._emit(BreakerStateChanged(breaker.name, str(old), str(new), failures, breaker.scope))

    def _emit(self, event: Event) -> None:
        self._bus.emit(event)

    def _emit_call(self, call: AsyncCall, resp: httpx.Response | None,
                   failure: BaseException | httpx.Response | None, started: float) -> None:
        route: Route = call.route
        if isinstance(failure, BaseException):
            outcome = classify_error(failure).kind
        elif failure is not None:
            outcome = "status"
        else:
            assert resp is not None
            outcome = of_status(resp.status_code, route.policy.failure_status).kind
        self._emit(CallFinished(route.name, call.request.method, self._url(call.request),
                                call.attempt, outcome,
                                resp.status_code if resp is not None else None,
                                self.clock.monotonic() - started,
                                resp is not None and getattr(resp, "is_fallback", False)))

    def _url(self, request: httpx.Request) -> str:
        return redact_url(str(request.url), self.config.secrets)

    def _secret_values(self, call: AsyncCall) -> set[str]:
        return secret_values(str(call.request.url), call.request.headers, self.config.secrets)
