"""
What both fronts (`ResilientSession`, `AsyncResilientClient`) do around an
endpoint's overload control (`_overload.Overload`), so that they apply the
same semantics to the same per-endpoint state: the event of a refusal
(`refusal_event`), the outcome of an answer a proxy may have made
(`answer_outcome`), the endpoint-wide hold a ``Retry-After`` puts on it
(`hold_on`), and what a completed call tells it (`finished`). The
algorithms stay in `_overload`, `_throttle` and `_concurrency`; this module
only calls their public methods. Transport-free: the fronts hand over a
status code, whether the proxy's header is there, and the header's value.
"""

from __future__ import annotations

from ._events import CallThrottled, ConcurrencyLimitChanged, Event, ThrottleRateChanged
from ._overload import HOLD, Overload
from ._policy import Policy
from ._retry_after import parse_retry_after
from ._verdict import AttemptOutcome, of_proxy_status, of_status

__all__ = ["REDIRECTED", "answer_outcome", "finished", "hold_on", "refusal_event"]

#: What the source endpoint of a redirect into another one answered.
REDIRECTED = AttemptOutcome("ok", 307, True, False)


def refusal_event(name: str, method: str, url: str, overload: Overload, why: str) -> CallThrottled:
    """The event of a call overload control refused (*why*: `_overload`'s reasons)."""
    if why == HOLD:
        return CallThrottled(name, method, url, why, 0.0, overload.hold_for())
    throttle = overload.throttle
    if why != "throttle" or throttle is None:  # the adaptive limit
        return CallThrottled(name, method, url, why, 0.0)
    shared = getattr(throttle, "shared", False)
    return CallThrottled(name, method, url, why, throttle.rate(), None, "host" if shared else "process")


def held_redirect(name: str, overload: Overload) -> str | None:
    """
    Why a redirect into endpoint *name* is not followed (it is under a
    Retry-After hold), or None. Each front raises its own ConnectionError
    with it: as for an open breaker, the first hop reached a peer, so not
    Throttled.
    """
    left = overload.hold_for()
    if left <= 0:
        return None
    return (f"not following the redirect into endpoint {name!r}: it asked for "
            f"{left:.1f} s of quiet (Retry-After)")


def answer_outcome(status: int, policy: Policy, proxy_header: bool) -> AttemptOutcome:
    """
    The outcome of an answer with *status*: a 502/503/504 carrying
    ``proxy_errors.header`` (*proxy_header*) is the proxy's own (a 503 then
    is a connect error, retried for every method by the one verdict).
    """
    if proxy_header and status in (502, 503, 504) and policy.proxy_errors is not None:
        return of_proxy_status(status)
    return of_status(status, policy.failure_status)


def hold_on(overload: Overload, policy: Policy, retry_after: str | None) -> None:
    """A 429 or a peer's 503 with *retry_after* holds the whole endpoint, not only this call's retry."""
    retry = policy.retry
    if retry_after is None or (retry is not None and not retry.respect_retry_after):
        return  # respect_retry_after: false ignores the header here too
    seconds = parse_retry_after(retry_after)
    if seconds:
        overload.hold(min(seconds, retry.max_retry_after if retry is not None else 30.0))


def finished(name: str, overload: Overload, outcome: AttemptOutcome | None, duration: float | None,
             *, left_endpoint: bool, hot: bool) -> list[Event]:
    """
    Tell *overload* how a call it admitted went (*outcome*: its last
    attempt's, None when it made none); the events to emit (*hot*: someone
    listens to per-call events).
    """
    limit = overload.limit
    before = limit.limit if limit is not None else 0
    if outcome is not None and left_endpoint:
        # Redirected into another endpoint, which was charged with its answer:
        # this one answered (with the redirect), in no time that is its own.
        overload.finish(REDIRECTED, None)
    else:
        overload.finish(outcome, duration)
    if not hot:
        return []
    events: list[Event] = []
    if limit is not None and limit.limit != before:
        events.append(ConcurrencyLimitChanged(name, before, limit.limit))
    moved = overload.rate_moved()  # the gauge falls back to 0 as the peer recovers
    if moved is not None:
        events.append(ThrottleRateChanged(name, *moved))
    return events
