"""
Adaptive concurrency limits, after Netflix's concurrency-limits: the limit
of calls in flight to an endpoint is learned from the calls themselves, so
that a peer gets as many concurrent calls as it answers promptly, and no
queue builds in front of it (behind HAProxy, in its ``maxconn`` queue).

``aimd`` (AIMDLimit, paced as TCP's congestion window): +1 per window of
calls that succeed while the limit is in use (at least half of it in
flight: +1/limit per call), times ``backoff`` on a drop: a failure, a
timeout, a 429, or a sustained rise in latency: the recent average latency
(a fast moving average, about the last ``_SHORT_CALLS`` calls) above
``latency_factor`` times the long-term one (a slow average, about the last
``_LONG_CALLS`` calls) for ``_SHORT_CALLS`` calls in a row, as concurrency-limits' gradient compares its short
and long RTT averages (a queue makes every call slower before calls fail).
One call is never compared with the fastest ever seen: an endpoint whose
calls take different times (a 1 ms lookup beside a 30 ms report) is healthy,
and a per-call test against the minimum shed most of its calls (found in
review: limit 1, 345 of 480 calls refused). As TCP does,
it backs off at most once per window of calls: the calls in flight when it
backed off all saw the same queue, and their drops are one signal, not one
each (without this, a burst of slow answers cut the limit below what the
peer could serve: measured in benchmarks/bench_overload.py).

``gradient`` (a simplified Gradient2Limit): the limit follows
``limit * clamp(long_rtt / short_rtt, 0.5, 1) + sqrt(limit)``, smoothed,
where ``long_rtt`` is the same slow average (the latency without load) and
``short_rtt`` the fast one; a drop also multiplies by ``backoff``.

Both averages start as plain means of the calls so far (a first fast call
is not a baseline), and no latency is judged before ``_WARMUP`` samples.

The limit is a ceiling under ``bulkhead.max_concurrent`` (the bulkhead still
bounds threads); the limiter holds no lock across I/O, and a call beyond the
limit is refused, never queued. Transport-free.
"""

from __future__ import annotations

import math
import threading

from ._policy import ConcurrencyPolicy

__all__ = ["AdaptiveLimit"]

#: About how many recent calls the short (recent) latency average covers.
_SHORT_CALLS = 10
#: About how many calls the long-term latency average (the baseline) covers.
_LONG_CALLS = 200
#: Latency samples before latency can signal a drop.
_WARMUP = 20
#: Without a bulkhead, the limit never grows past this.
_NO_BULKHEAD_MAX = 1000


class AdaptiveLimit:
    """
    One endpoint's learned concurrency limit.

    Args:
        policy: algorithm, initial, min, backoff, latency_factor.
        ceiling: the most it may grow to (``bulkhead.max_concurrent``).

    .. versionadded:: 0.2.0
    """

    __slots__ = ("_cooldown", "_count", "_high", "_in_flight", "_limit", "_lock", "_long",
                 "_short", "ceiling", "policy", "rejected")

    def __init__(self, policy: ConcurrencyPolicy, ceiling: int | None) -> None:
        self.policy = policy
        self.ceiling = ceiling if ceiling is not None else _NO_BULKHEAD_MAX
        self._lock = threading.Lock()
        self._limit = float(min(max(policy.initial, policy.min), self.ceiling))
        self._in_flight = 0
        self._count = 0
        #: Consecutive samples with the short average above the threshold.
        self._high = 0
        self._short = 0.0
        self._long = 0.0
        #: Calls to complete before the next back-off (once per window).
        self._cooldown = 0
        #: Calls refused because the limit was reached.
        self.rejected = 0

    @property
    def limit(self) -> int:
        """The current limit: calls beyond it are refused."""
        return int(self._limit)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_acquire(self) -> bool:
        """Take a place under the limit; never blocks."""
        with self._lock:
            if self._in_flight >= int(self._limit):
                self.rejected += 1
                return False
            self._in_flight += 1
            return True

    def enter(self) -> None:
        """A call in flight that was not asked first (a redirect hop into this endpoint)."""
        with self._lock:
            self._in_flight += 1

    def release(self, *, dropped: bool, rtt: float | None) -> None:
        """
        Give the place back and learn from the call: *dropped* (a failure, a
        timeout, a 429) or its latency *rtt* (None: not a sample, e.g. a
        refusal or a caller's own error).
        """
        with self._lock:
            in_flight = self._in_flight
            self._in_flight = max(0, in_flight - 1)
            if rtt is None and not dropped:
                return
            if rtt is not None and not dropped:
                dropped = self._sample(rtt)
            p = self.policy
            limit = self._limit
            if self._cooldown > 0:
                self._cooldown -= 1
            if dropped:
                if self._cooldown > 0:
                    return  # the same congestion as the last back-off
                limit = limit * p.backoff
                self._cooldown = in_flight
            elif p.algorithm == "gradient":
                if self._short > 0.0 and in_flight * 2 >= limit:
                    gradient = max(0.5, min(1.0, self._long / self._short))
                    target = limit * gradient + math.sqrt(limit)
                    limit = limit * 0.8 + target * 0.2
            elif in_flight * 2 >= limit:
                limit += 1.0 / limit  # +1 per window of calls, as it backs off once per window
            self._limit = min(float(self.ceiling), max(float(p.min), limit))

    def _sample(self, rtt: float) -> bool:
        """Track the latency averages; True when they say the peer is queueing (lock held)."""
        count = self._count = self._count + 1
        # A mean of the calls so far until the window is full, then a moving average.
        threshold = self._long * self.policy.latency_factor
        # One call counts in the short average for at most twice the threshold: a rare
        # 1 s call among 1 ms ones lifts it for a moment, a queue (every call slow) for good.
        short = rtt if count <= _WARMUP else min(rtt, 2.0 * threshold)
        self._short += (short - self._short) / min(count, _SHORT_CALLS)
        self._long += (rtt - self._long) / min(count, _LONG_CALLS)
        if self._short <= self._long * self.policy.latency_factor:
            self._high = 0
            return False
        # Sustained: a rare outlier lifts the short average for a few calls only.
        self._high += 1
        return self.policy.algorithm == "aimd" and count >= _WARMUP and self._high >= _SHORT_CALLS

    def __repr__(self) -> str:
        return f"<AdaptiveLimit {self.policy.algorithm} limit={self.limit} in_flight={self._in_flight}>"
