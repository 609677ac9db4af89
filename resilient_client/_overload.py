"""
Overload control of one endpoint: its throttle (`_throttle`), its adaptive
concurrency limit (`_concurrency`) and the hold a ``Retry-After`` puts on it,
behind the two calls the front makes around each call: `Overload.admit`
before it (None, or why it is refused) and `Overload.finish` when it
completes. An endpoint without ``throttle`` or ``concurrency`` has no
`Overload` at all, so its calls pay one attribute read.

Which completed calls are accepts (the throttle) and drops (the limit) is
decided here from the call's last `AttemptOutcome`: an accept is an answer
the peer produced that is not a failure, not a 429 and not a proxy error; a
drop is a failure, a timeout or a 429. A call that made an attempt and then
ran out of its deadline is a request without an accept: the throttle asks
whether the peer accepts work in time (the SRE book's accepts), and a call
cut while it waited in the peer's (or its proxy's) queue was not accepted in
time. The breaker, which judges the peer's health, does not count such a
cut (a caller in a hurry is not a failing peer). Transport-free.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ._clock import Clock
from ._concurrency import AdaptiveLimit
from ._policy import Policy
from ._throttle import Throttle, reject_probability
from ._verdict import AttemptOutcome

__all__ = ["HOLD", "LIMIT", "THROTTLE", "Overload", "OverloadStatus"]

#: Why `Overload.admit` refused a call.
THROTTLE = "throttle"
LIMIT = "concurrency"
HOLD = "retry_after"

#: Outcomes that say the peer is overloaded (a drop for the adaptive limit).
_DROP_KINDS = frozenset({"status", "connect_error", "connect_timeout", "read_timeout", "read_error"})


@dataclass(frozen=True)
class OverloadStatus:
    """
    An endpoint's overload control now (``session.overload(name_or_url)``).

    Attributes:
        limit: the adaptive concurrency limit (None: ``concurrency`` off).
        in_flight: calls under that limit now (None: ``concurrency`` off).
        reject_rate: the probability that the throttle refuses a new call
            (None: ``throttle`` off).
        requests: completed calls plus refusals in the throttle's window.
        accepts: the calls among them the peer accepted.
        refused: calls this process's throttle refused since it was made.
        retry_in: seconds left of a Retry-After hold (0.0: none).

    .. versionadded:: 0.2.0
    """

    limit: int | None
    in_flight: int | None
    reject_rate: float | None
    requests: int | None
    accepts: int | None
    refused: int | None
    retry_in: float


class Overload:
    """Throttle, adaptive limit and Retry-After hold of one endpoint (see the module docstring)."""

    __slots__ = ("_clock", "_hold_lock", "_shown", "_shown_at", "hold_until", "limit", "throttle")

    def __init__(self, policy: Policy, clock: Clock, throttle: Throttle | None = None,
                 rand: Callable[[], float] | None = None) -> None:
        self._clock = clock
        if throttle is None and policy.throttle is not None:
            throttle = (Throttle(policy.throttle, clock) if rand is None
                        else Throttle(policy.throttle, clock, rand))
        self.throttle = throttle
        self.limit = (AdaptiveLimit(policy.concurrency,
                                    policy.bulkhead.max_concurrent if policy.bulkhead else None)
                      if policy.concurrency is not None else None)
        #: Until when (on the clock) a Retry-After asked us to send nothing new.
        self.hold_until = 0.0
        self._hold_lock = threading.Lock()
        #: The throttle's rate last reported (`rate_moved`), and when.
        self._shown = 0.0
        self._shown_at = 0.0

    def admit(self) -> str | None:
        """Before a call: None when it may go (holding a place under the limit), else why not."""
        if self.hold_until and self._clock.monotonic() < self.hold_until:
            return HOLD
        throttle = self.throttle
        if throttle is not None and not throttle.admit():
            return THROTTLE
        limit = self.limit
        if limit is not None and not limit.try_acquire():
            return LIMIT
        return None

    def enter(self) -> None:
        """A redirect hop into this endpoint: in flight without being admitted (ended by `finish`)."""
        if self.limit is not None:
            self.limit.enter()

    def hold_for(self) -> float:
        """Seconds left of the Retry-After hold (0 when none)."""
        return max(0.0, self.hold_until - self._clock.monotonic())

    def hold(self, seconds: float) -> None:
        """A peer asked for *seconds* of quiet (Retry-After): new calls are refused until then."""
        until = self._clock.monotonic() + seconds
        with self._hold_lock:
            if until > self.hold_until:
                self.hold_until = until

    def finish(self, outcome: AttemptOutcome | None, duration: float | None) -> None:
        """
        A call admitted by `admit` completed; *outcome* is its last attempt's
        (None: no attempt was made, or the caller's own error), *duration*
        its time in flight (None: not a latency sample).
        """
        throttle, limit = self.throttle, self.limit
        # An "error" is the caller's own (a response hook that raised) or one
        # no retry could fix (TLS, a bad URL): no answer of the peer's, so
        # neither a rejection nor an accept.
        counted = outcome is not None and not outcome.refused and outcome.kind != "error"
        if throttle is not None and outcome is not None and (counted or outcome.kind == "deadline"):
            # A call the deadline ended after it was sent is a request the peer
            # did not accept in time: not an accept (see the module docstring).
            throttle.record(outcome.reached_peer and outcome.status is not None and not outcome.failure
                            and outcome.status != 429 and not outcome.proxy)
        if limit is not None:
            if not counted:
                limit.release(dropped=False, rtt=None)
                return
            assert outcome is not None
            dropped = (outcome.proxy or outcome.status == 429
                       or (outcome.failure and outcome.kind in _DROP_KINDS))
            limit.release(dropped=dropped, rtt=duration)

    def rate_moved(self) -> tuple[float, float] | None:
        """
        After a call completed: (old, new) when the throttle's rate moved by
        more than 0.01 since last reported, or at all and a second has
        passed; else None. Racy on purpose: a report more or less is harmless.
        """
        throttle = self.throttle
        if throttle is None:
            return None
        rate, old = throttle.rate(), self._shown
        if rate == old:
            return None
        now = self._clock.monotonic()
        if abs(rate - old) <= 0.01 and now - self._shown_at < 1.0:
            return None
        self._shown, self._shown_at = rate, now
        return old, rate

    def status(self) -> OverloadStatus:
        """What it is now (see `OverloadStatus`)."""
        limit, throttle = self.limit, self.throttle
        counts = throttle.snapshot() if throttle is not None else None
        return OverloadStatus(
            limit=limit.limit if limit is not None else None,
            in_flight=limit.in_flight if limit is not None else None,
            reject_rate=(reject_probability(counts[0], counts[1], throttle.policy)
                         if throttle is not None and counts is not None else None),
            requests=counts[0] if counts is not None else None,
            accepts=counts[1] if counts is not None else None,
            refused=throttle.refused if throttle is not None else None,
            retry_in=self.hold_for(),
        )

    def __repr__(self) -> str:
        return f"<Overload throttle={self.throttle!r} limit={self.limit!r}>"
