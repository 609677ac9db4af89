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

The wait and stop strategies know no HTTP client and live in the core
(`resilient_client._retry_core`), shared with the httpx front; this module
keeps what reads requests' objects: the per-call state and the verdict.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import requests
import tenacity
from tenacity import RetryCallState

from ._outcome import RetryPredicate, classify_error
from ._policy import RetryPolicy
from ._retry_after import parse_retry_after
from ._retry_core import Backoff, strategies
from ._verdict import AttemptOutcome, of_status, retry_verdict

if TYPE_CHECKING:
    from ._budget import RetryBudget
    from ._deadline import Deadline
    from ._traced import TracedCall

__all__ = ["Backoff", "Call", "ReplayFirst", "build_retrying", "clone_call", "decide", "parse_retry_after"]


class Call:
    """Per-call state shared by the attempt function and the strategies."""

    __slots__ = (
        "abandon",
        "arm",
        "attempt",
        "budget",
        "deadline",
        "error",
        "first_verdict",
        "hedged",
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
        #: A hedge was sent for this call (`resp.hedged`).
        self.hedged = False
        #: Set on the copy of a hedged attempt only: how the race stops it.
        self.abandon: Any = None


def clone_call(call: Call) -> Call:
    """A copy of *call*'s state for one copy of a hedged attempt (its own kwargs)."""
    new = Call.__new__(Call)
    for name in Call.__slots__:
        setattr(new, name, getattr(call, name))
    new.kwargs = dict(call.kwargs)
    if call.traced is not None:
        new.traced = call.traced.fork()  # its own request span, beside the others
    return new


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
        before_sleep=before_sleep,
        **strategies(policy, rng=rng, wall_clock=wall_clock),
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
