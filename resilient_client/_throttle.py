"""
Client-side adaptive throttling, as in the SRE book ("Handling Overload"):
each client counts, over a sliding window, the calls it made (``requests``)
and those the peer accepted (``accepts``), and refuses a new call locally
with probability ``max(0, (requests - k * accepts) / (requests + 1))``,
capped at ``max_reject``. A healthy peer accepts everything, so nothing is
refused; a peer that accepts only a fraction of its calls sees the callers
shed the rest before it, and the load it receives settles near ``k`` times
what it can accept. Envoy's admission control filter generalises the same
formula.

Counted per call when it completes (calls in flight do not distort it):
the front calls `record` with whether the call was accepted; a refusal
counts as a request (the book's formula, which makes the rate rise while
everything is refused and fall back once the window forgets). Breaker and
bulkhead refusals are not counted at all.

The window is ``_BUCKETS`` buckets on the injected clock with running sums,
so a call costs O(1) (a few integer operations under a lock, never I/O).
Transport-free: no HTTP client is imported here.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

from ._clock import Clock
from ._policy import ThrottlePolicy

__all__ = ["Throttle", "reject_probability"]

_BUCKETS = 20


def reject_probability(requests: float, accepts: float, policy: ThrottlePolicy) -> float:
    """The SRE book's formula, with ``min_requests`` and the ``max_reject`` cap."""
    if requests < policy.min_requests or requests <= 0:
        return 0.0
    p = (requests - policy.k * accepts) / (requests + 1.0)
    if p <= 0.0:
        return 0.0
    return min(p, policy.max_reject)


class Throttle:
    """
    One endpoint's throttle (per process; `_host_throttle` shares it on the host).

    Args:
        policy: k, window, min_requests, max_reject.
        clock: the session's clock (a fake one in tests).
        rand: a uniform [0, 1) source, injectable for tests.

    .. versionadded:: 0.2.0
    """

    __slots__ = ("_accepts", "_bucket_len", "_clock", "_epoch", "_lock", "_rand", "_requests",
                 "_total_accepts", "_total_requests", "policy", "refused")

    def __init__(self, policy: ThrottlePolicy, clock: Clock,
                 rand: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self._clock = clock
        self._rand = rand
        self._lock = threading.Lock()
        self._bucket_len = policy.window / _BUCKETS
        self._requests = [0] * _BUCKETS
        self._accepts = [0] * _BUCKETS
        self._total_requests = 0
        self._total_accepts = 0
        self._epoch = int(clock.monotonic() / self._bucket_len)
        #: Calls refused by this throttle since it was made (for metrics and status).
        self.refused = 0

    def _roll(self) -> int:
        """Forget the buckets that slid out of the window; the current bucket's index."""
        now = int(self._clock.monotonic() / self._bucket_len)
        gap = now - self._epoch
        if gap > 0:
            if gap >= _BUCKETS:
                self._requests = [0] * _BUCKETS
                self._accepts = [0] * _BUCKETS
                self._total_requests = self._total_accepts = 0
            else:
                for b in range(self._epoch + 1, now + 1):
                    i = b % _BUCKETS
                    self._total_requests -= self._requests[i]
                    self._total_accepts -= self._accepts[i]
                    self._requests[i] = self._accepts[i] = 0
            self._epoch = now
        return now % _BUCKETS

    def admit(self) -> bool:
        """
        Whether a new call may go: False refuses it (and counts it as a request).
        """
        with self._lock:
            i = self._roll()
            p = reject_probability(self._total_requests, self._total_accepts, self.policy)
            if p <= 0.0 or self._rand() >= p:
                return True
            self._requests[i] += 1
            self._total_requests += 1
            self.refused += 1
            return False

    def record(self, accepted: bool) -> None:
        """Count a completed call, accepted by the peer or not."""
        with self._lock:
            i = self._roll()
            self._requests[i] += 1
            self._total_requests += 1
            if accepted:
                self._accepts[i] += 1
                self._total_accepts += 1

    def snapshot(self) -> tuple[int, int]:
        """(requests, accepts) in the current window."""
        with self._lock:
            self._roll()
            return self._total_requests, self._total_accepts

    def rate(self) -> float:
        """The probability that a new call is refused now."""
        requests, accepts = self.snapshot()
        return reject_probability(requests, accepts, self.policy)

    def __repr__(self) -> str:
        requests, accepts = self.snapshot()
        return (f"<Throttle requests={requests} accepts={accepts} "
                f"reject={reject_probability(requests, accepts, self.policy):.2f}>")
