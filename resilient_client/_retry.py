"""
The retry layer: tenacity is the engine, these are its strategies.

A `tenacity.Retrying` is built once per policy (`build_retrying`) and shared
by every call under it; what differs per call (the request, its deadline,
its endpoint's budget) travels as the single positional argument of the
attempt function, which tenacity keeps in ``retry_state.args[0]``.

Order of decisions after a failed attempt (tenacity computes the wait first,
then asks the stop strategies, in this order):

1. ``retry``: is this outcome retryable at all (`RetrySafely`)? Our own
   errors (`CircuitOpenError`, `DeadlineExceeded`, `BulkheadFull`) and
   interrupts never are, whatever a ``retry_if`` predicate says.
2. ``wait``: backoff with jitter, or the peer's Retry-After (`Backoff`).
3. ``stop``: attempts used up, Retry-After refused, the sleep would pass the
   deadline, the budget is spent (last, so it is only charged for a retry
   that will really happen).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import requests
import tenacity
from tenacity import RetryCallState

from ._outcome import RetryPredicate, classify_error
from ._policy import BackoffPolicy, Jitter, RetryPolicy
from ._retry_after import parse_retry_after
from ._verdict import AttemptOutcome, of_status, retry_verdict

if TYPE_CHECKING:
    from ._budget import RetryBudget
    from ._deadline import Deadline
    from ._traced import TracedCall

__all__ = ["Backoff", "Call", "ReplayFirst", "build_retrying", "decide", "parse_retry_after"]


class Call:
    """Per-call state shared by the attempt function and the strategies."""

    __slots__ = (
        "arm",
        "attempt",
        "budget",
        "deadline",
        "error",
        "first_verdict",
        "hook_error",
        "hook_guard",
        "hook_status",
        "idempotent",
        "keyed",
        "kwargs",
        "left_endpoint",
        "outcome",
        "prev_sleep",
        "reached_peer",
        "replayable",
        "request",
        "retry_after",
        "route",
        "stop_reason",
        "stream",
        "timeout_given",
        "timeouts",
        "traced",
    )

    def __init__(
        self,
        request: requests.PreparedRequest,
        kwargs: dict[str, Any],
        deadline: Deadline | None,
        budget: RetryBudget | None,
        idempotent: bool,
        replayable: bool,
    ) -> None:
        self.request = request
        self.kwargs = kwargs
        self.deadline = deadline
        self.budget = budget
        self.idempotent = idempotent
        self.replayable = replayable
        self.attempt = 0
        self.prev_sleep = 0.0
        #: An earlier redirect hop of the current attempt got the peer's
        #: answer: the request reached it (see `resilient_client._verdict`).
        self.reached_peer = False
        #: The request carries an idempotency key (given or minted).
        self.keyed = False
        #: The current attempt's last redirect hop went to another endpoint.
        self.left_endpoint = False
        #: The exception a response hook raised in the current attempt (the
        #: caller's own, not a transport failure), and the attempt's hook guard.
        self.hook_error: BaseException | None = None
        self.hook_guard: Any = None
        #: The status of the response whose hook raised (for the attempt's span).
        self.hook_status: int | None = None
        #: The caller passed its own ``timeout=`` (it applies to every hop).
        self.timeout_given = False
        #: What the latest attempt came to, classified once by the session,
        #: and the error it raised (None for a response).
        self.outcome: AttemptOutcome | None = None
        self.error: BaseException | None = None
        #: `decide`'s answer for the first attempt, when the session's
        #: shortcut asked before entering tenacity.
        self.first_verdict: bool | None = None
        #: The call's tracing (`resilient_client._traced`), fixed when it began.
        self.traced: TracedCall | None = None
        #: Seconds asked by the last response's Retry-After; None when absent,
        #: math.inf when refused (unparseable, negative, over the maximum).
        self.retry_after: float | None = None
        self.stop_reason = ""
        # Set by the session: the route (policy and endpoint state), the
        # per-attempt deadline arm, stream=, and the (connect, read) timeouts.
        self.route: Any = None
        self.arm: Any = None
        self.stream = False
        self.timeouts: tuple[float, float] = (0.0, 0.0)


def _call(rs: RetryCallState) -> Call:
    c = rs.args[0]
    assert isinstance(c, Call)
    return c


# -- strategies -------------------------------------------------------------


def decide(
    call: Call, outcome: requests.Response | BaseException, policy: RetryPolicy,
    predicate: RetryPredicate | None,
) -> bool:
    """
    Whether *outcome*, the result of one attempt of *call*, may be retried:
    the requests front's side of `retry_verdict` (it classifies the outcome
    and asks the user's predicate, then lets the verdict decide).
    """
    classified = call.outcome
    if classified is None:
        # Asked about an outcome no attempt classified (a strategy used on
        # its own): classify it here the same way.
        classified = (of_status(outcome.status_code, frozenset()) if isinstance(outcome, requests.Response)
                      else classify_error(outcome, reached_peer=call.reached_peer))
    if classified.refused or not isinstance(outcome, (Exception, requests.Response)):
        # Our own refusals (open breaker, deadline, full bulkhead) and
        # interrupts end the call, whatever a retry_if predicate says.
        return False
    return retry_verdict(
        policy,
        classified,
        idempotent=call.idempotent,
        replayable=call.replayable,
        user=None if predicate is None else predicate(call.request, outcome),
        keyed=call.keyed,
    )


class RetrySafely(tenacity.retry_base):
    """
    tenacity's retry strategy: the verdict of `decide` (a failure before any
    byte reached the peer for any method; after that only for idempotent
    methods, or a request carrying the idempotency key, with a replayable
    body).
    """

    def __init__(self, policy: RetryPolicy, predicate: RetryPredicate | None) -> None:
        self.policy = policy
        self.predicate = predicate

    def __call__(self, rs: RetryCallState) -> bool:
        call = _call(rs)
        if rs.attempt_number == 1 and call.first_verdict is not None:
            # The shortcut already asked `decide` about this very outcome
            # (and the user's predicate with it): ask nobody twice.
            return call.first_verdict
        outcome = rs.outcome
        assert outcome is not None
        exc = outcome.exception()
        return decide(call, exc if exc is not None else outcome.result(), self.policy, self.predicate)

    def __repr__(self) -> str:
        p = self.policy
        return f"RetrySafely(on_status={sorted(p.on_status)}, on={sorted(p.on)})"


class Backoff(tenacity.wait.wait_base):
    """
    Exponential backoff with jitter, or the peer's ``Retry-After`` when it
    sent one and the policy respects it.

    The n-th sleep's base is ``min(max, initial * multiplier ** (n - 1))``:
    ``none`` sleeps the base, ``full`` a uniform draw in [0, base], ``equal``
    base/2 plus a draw in [0, base/2], ``decorrelated``
    ``min(max, uniform(initial, 3 * previous sleep))``.
    """

    def __init__(
        self,
        policy: BackoffPolicy,
        *,
        respect_retry_after: bool = True,
        max_retry_after: float = 30.0,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.respect_retry_after = respect_retry_after
        self.max_retry_after = max_retry_after
        self._rng = rng or random.Random()
        self._wall = wall_clock

    def __call__(self, rs: RetryCallState) -> float:
        call = _call(rs)
        call.retry_after = None
        if self.respect_retry_after and rs.outcome is not None and not rs.outcome.failed:
            header = rs.outcome.result().headers.get("Retry-After")
            if header is not None:
                seconds = parse_retry_after(header, now=self._wall)
                if seconds is None or seconds > self.max_retry_after:
                    call.retry_after = math.inf
                    return 0.0
                call.retry_after = seconds
                return seconds
        sleep = self.sleep_for(rs.attempt_number, call.prev_sleep)
        call.prev_sleep = sleep
        return sleep

    def sleep_for(self, n: int, previous: float = 0.0) -> float:
        """The sleep after the *n*-th attempt (n from 1)."""
        p = self.policy
        # Cap the exponent so huge attempt counts cannot overflow.
        try:
            base = min(p.max, p.initial * p.multiplier ** min(n - 1, 64))
        except OverflowError:  # a huge multiplier: the cap is all that is left
            base = p.max
        jitter = p.jitter
        if jitter is Jitter.NONE:
            return base
        if jitter is Jitter.FULL:
            return self._rng.uniform(0.0, base)
        if jitter is Jitter.EQUAL:
            return base / 2 + self._rng.uniform(0.0, base / 2)
        prev = previous or p.initial
        return min(p.max, self._rng.uniform(p.initial, max(p.initial, prev * 3)))

    def __repr__(self) -> str:
        p = self.policy
        return (
            f"Backoff(initial={p.initial:g}, multiplier={p.multiplier:g}, max={p.max:g}, "
            f"jitter={p.jitter.value!r})"
        )


class StopOnRefusedRetryAfter(tenacity.stop.stop_base):
    """Stop when the peer's Retry-After was unparseable, negative or over the maximum."""

    def __call__(self, rs: RetryCallState) -> bool:
        call = _call(rs)
        if call.retry_after == math.inf:
            call.stop_reason = "retry_after_refused"
            return True
        return False


class StopBeforeDeadline(tenacity.stop.stop_base):
    """Stop now rather than sleep past the call's deadline."""

    def __call__(self, rs: RetryCallState) -> bool:
        call = _call(rs)
        deadline = call.deadline
        # Where the sleep would end, compared as `Deadline.expired` will
        # compare it: ``sleep >= remaining()`` rounds differently and can let
        # a sleep end exactly on the deadline, which then fails the next try.
        if deadline is not None and deadline.clock.monotonic() + rs.upcoming_sleep >= deadline.at:
            call.stop_reason = "deadline"
            return True
        return False


class StopWhenBreakerOpen(tenacity.stop.stop_base):
    """Stop rather than sleep a backoff whose next attempt the open breaker would refuse."""

    def __call__(self, rs: RetryCallState) -> bool:
        call = _call(rs)
        state = getattr(call.route, "state", None)
        breaker = getattr(state, "breaker", None)
        if breaker is not None and breaker.state == "open":
            call.stop_reason = "breaker_open"
            return True
        return False


class StopWhenBudgetSpent(tenacity.stop.stop_base):
    """Stop when the endpoint's retry budget has no retry left (charges one otherwise)."""

    def __call__(self, rs: RetryCallState) -> bool:
        call = _call(rs)
        if call.budget is not None and not call.budget.try_spend():
            call.stop_reason = "budget"
            return True
        return False


class _StopAfterAttempts(tenacity.stop_after_attempt):
    def __call__(self, rs: RetryCallState) -> bool:
        if super().__call__(rs):
            _call(rs).stop_reason = "attempts"
            return True
        return False


def _last_outcome(rs: RetryCallState) -> Any:
    """When retries stop, the caller gets the last attempt's own outcome."""
    assert rs.outcome is not None
    return rs.outcome.result()


def build_retrying(
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None],
    before_sleep: Callable[[RetryCallState], None],
    predicate: RetryPredicate | None = None,
    rng: random.Random | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> tenacity.Retrying:
    """One `tenacity.Retrying` for *policy*, reused by every call under it."""
    return tenacity.Retrying(
        sleep=sleep,
        retry=RetrySafely(policy, predicate),
        wait=Backoff(
            policy.backoff,
            respect_retry_after=policy.respect_retry_after,
            max_retry_after=policy.max_retry_after,
            rng=rng,
            wall_clock=wall_clock,
        ),
        stop=(
            _StopAfterAttempts(policy.attempts)
            | StopOnRefusedRetryAfter()
            | StopBeforeDeadline()
            | StopWhenBreakerOpen()
            | StopWhenBudgetSpent()
        ),
        before_sleep=before_sleep,
        retry_error_callback=_last_outcome,
        reraise=True,
    )


class ReplayFirst:
    """An attempt function whose first call replays an outcome already had."""

    __slots__ = ("_attempt", "_first")

    def __init__(
        self, first: requests.Response | BaseException, attempt: Callable[[Call], requests.Response]
    ) -> None:
        self._first: requests.Response | BaseException | None = first
        self._attempt = attempt

    def __call__(self, call: Call) -> requests.Response:
        first = self._first
        if first is None:
            return self._attempt(call)
        self._first = None
        if isinstance(first, BaseException):
            raise first
        return first
