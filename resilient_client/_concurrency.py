"""
Adaptive concurrency limits, after Netflix's concurrency-limits: the limit
of calls in flight to an endpoint is learned from the calls themselves, so
that a peer gets as many concurrent calls as it answers promptly, and no
queue builds in front of it (behind HAProxy, in its ``maxconn`` queue).

``aimd`` (AIMDLimit, paced as TCP's congestion window): +1 per window of
calls that succeed while the limit is in use (at least half of it in
flight: +1/limit per call), times ``backoff`` on a drop: a failure, a
timeout, a 429, or a call slower than ``latency_factor`` times the fastest
latency seen recently (a queued call is slow before it fails). As TCP does,
it backs off at most once per window of calls: the calls in flight when it
backed off all saw the same queue, and their drops are one signal, not one
each (without this, a burst of slow answers cut the limit below what the
peer could serve: measured in benchmarks/bench_overload.py).

``gradient`` (a simplified Gradient2Limit): the limit follows
``limit * clamp(long_rtt / short_rtt, 0.5, 1) + sqrt(limit)``, smoothed,
where ``long_rtt`` is a slow average (the latency without load) and
``short_rtt`` a fast one; a drop also multiplies by ``backoff``.

The limit is a ceiling under ``bulkhead.max_concurrent`` (the bulkhead still
bounds threads); the limiter holds no lock across I/O, and a call beyond the
limit is refused, never queued. Transport-free.
"""

from __future__ import annotations

import math
import threading

from ._policy import ConcurrencyPolicy

__all__ = ["AdaptiveLimit"]

#: Samples per period of the windowed minimum latency (AIMD's baseline).
_MIN_RTT_PERIOD = 250
#: Without a bulkhead, the limit never grows past this.
_NO_BULKHEAD_MAX = 1000


class AdaptiveLimit:
    """
    One endpoint's learned concurrency limit.

    Args:
        policy: algorithm, initial, min, backoff, latency_factor.
        ceiling: the most it may grow to (``bulkhead.max_concurrent``).

    .. versionadded:: 0.4.0
    """

    __slots__ = ("_cooldown", "_count", "_in_flight", "_limit", "_lock", "_long", "_min_prev",
                 "_min_rtt", "_short", "ceiling", "policy", "rejected")

    def __init__(self, policy: ConcurrencyPolicy, ceiling: int | None) -> None:
        self.policy = policy
        self.ceiling = ceiling if ceiling is not None else _NO_BULKHEAD_MAX
        self._lock = threading.Lock()
        self._limit = float(min(max(policy.initial, policy.min), self.ceiling))
        self._in_flight = 0
        self._min_rtt = math.inf
        self._min_prev = math.inf
        self._count = 0
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
        """Track latency baselines; True when *rtt* says the peer is queueing (lock held)."""
        self._count += 1
        if self._count >= _MIN_RTT_PERIOD:
            # A windowed minimum: the baseline may rise when the peer slows for good.
            self._min_prev, self._min_rtt, self._count = self._min_rtt, rtt, 0
        elif rtt < self._min_rtt:
            self._min_rtt = rtt
        self._short = rtt if self._short == 0.0 else self._short * 0.9 + rtt * 0.1
        self._long = rtt if self._long == 0.0 else self._long * 0.99 + rtt * 0.01
        baseline = min(self._min_rtt, self._min_prev)
        return self.policy.algorithm == "aimd" and rtt > baseline * self.policy.latency_factor

    def __repr__(self) -> str:
        return f"<AdaptiveLimit {self.policy.algorithm} limit={self.limit} in_flight={self._in_flight}>"
