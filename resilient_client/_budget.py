"""
A retry budget per endpoint, after Finagle's RetryBudget and Envoy's retry
budget: over a sliding window, retries may add at most ``ratio`` of the
first tries plus ``min_per_second`` retries per second. Under a full outage
the calls reaching a peer stay near ``(1 + ratio) x`` the calls made.

tenacity has no notion of a budget shared between calls, so this is the
small piece built on top of it: the retry layer asks `try_spend` from a
tenacity stop strategy.
"""

from __future__ import annotations

import threading

from ._clock import Clock
from ._policy import BudgetPolicy

__all__ = ["RetryBudget"]

_BUCKETS = 10


class RetryBudget:
    """
    Counts first tries and retries in ``_BUCKETS`` time buckets covering the
    window. Thread-safe; the lock is held for a few integer operations only,
    never across I/O.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_bucket_len", "_clock", "_epoch", "_lock", "_requests", "_retries", "policy")

    def __init__(self, policy: BudgetPolicy, clock: Clock) -> None:
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._bucket_len = policy.window / _BUCKETS
        self._requests = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        self._epoch = int(clock.monotonic() / self._bucket_len)

    @property
    def scope(self) -> str:
        """Where the buckets are counted: ``process`` (``host`` for `HostBudget`)."""
        return "process"

    def _roll(self) -> int:
        """Clear the buckets that slid out of the window; return the current index."""
        now = int(self._clock.monotonic() / self._bucket_len)
        gap = now - self._epoch
        if gap > 0:
            for i in range(1, min(gap, _BUCKETS) + 1):
                idx = (self._epoch + i) % _BUCKETS
                self._requests[idx] = 0
                self._retries[idx] = 0
            self._epoch = now
        return now % _BUCKETS

    def record_request(self) -> None:
        """Count a first try."""
        with self._lock:
            self._requests[self._roll()] += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        with self._lock:
            i = self._roll()
            allowed = (
                self.policy.ratio * sum(self._requests)
                + self.policy.min_per_second * self.policy.window
            )
            if sum(self._retries) + 1 > allowed:
                return False
            self._retries[i] += 1
            return True

    def snapshot(self) -> tuple[int, int]:
        """(first tries, retries) in the current window."""
        with self._lock:
            self._roll()
            return sum(self._requests), sum(self._retries)

    def __repr__(self) -> str:
        first, retries = self.snapshot()
        return f"<RetryBudget ratio={self.policy.ratio:g} requests={first} retries={retries}>"
