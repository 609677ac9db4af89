"""
The retry engine's strategies that know no HTTP client: backoff with jitter
or the peer's ``Retry-After``, and the stop conditions (attempts, a refused
Retry-After, the deadline, an open breaker, the budget). tenacity is the
engine; both fronts build their ``Retrying`` / ``AsyncRetrying`` from
`strategies` so that waits and stops are decided by the same code.

Each strategy reads the call's state from ``retry_state.args[0]``: any object
with the attributes of `resilient_client._retry.Call` that the strategy uses
(``prev_sleep``, ``retry_after``, ``deadline``, ``route``, ``budget``,
``stop_reason``). A response's ``headers.get`` is all Backoff asks of it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any

import tenacity
from tenacity import RetryCallState

from ._policy import BackoffPolicy, Jitter, RetryPolicy
from ._retry_after import parse_retry_after

__all__ = [
    "Backoff",
    "StopBeforeDeadline",
    "StopOnRefusedRetryAfter",
    "StopWhenBreakerOpen",
    "StopWhenBudgetSpent",
    "last_outcome",
    "strategies",
]


def _call(rs: RetryCallState) -> Any:
    return rs.args[0]


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


class StopAfterAttempts(tenacity.stop_after_attempt):
    def __call__(self, rs: RetryCallState) -> bool:
        if super().__call__(rs):
            _call(rs).stop_reason = "attempts"
            return True
        return False


def retry_reason(rs: RetryCallState, kind: str | None) -> str:
    """
    Why an attempt is retried, for `RetryScheduled`: ``status 503`` for an
    answer, else the attempt's outcome kind (*kind*; None: ``error``), or
    the exception's type for an error no kind names.
    """
    outcome = rs.outcome
    assert outcome is not None
    if outcome.failed:
        kind = kind or "error"
        return type(outcome.exception()).__name__ if kind == "error" else kind
    return f"status {outcome.result().status_code}"


def gave_up_reason(stop_reason: str | None, outcome: str, retrying: bool) -> str:
    """Why a call's retries ended (`GaveUp.reason`), given why the engine stopped, if it did."""
    # Another call opened the breaker during our backoff: it ended the retries.
    return stop_reason or ("breaker_open" if outcome == "circuit_open"
                           else "not_retryable" if retrying else "no_retry")


def last_outcome(rs: RetryCallState) -> Any:
    """When retries stop, the caller gets the last attempt's own outcome."""
    assert rs.outcome is not None
    return rs.outcome.result()


def strategies(
    policy: RetryPolicy,
    *,
    rng: random.Random | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """The ``wait`` and ``stop`` of a tenacity engine for *policy*, and how it ends."""
    return {
        "wait": Backoff(
            policy.backoff,
            respect_retry_after=policy.respect_retry_after,
            max_retry_after=policy.max_retry_after,
            rng=rng,
            wall_clock=wall_clock,
        ),
        "stop": (
            StopAfterAttempts(policy.attempts)
            | StopOnRefusedRetryAfter()
            | StopBeforeDeadline()
            | StopWhenBreakerOpen()
            | StopWhenBudgetSpent()
        ),
        "retry_error_callback": last_outcome,
        "reraise": True,
    }
