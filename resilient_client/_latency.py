"""
An endpoint's recent latencies, and the hedge delay learned from them.

A ring of the last `WINDOW` latencies (bounded memory, O(1) to record). The
percentile is recomputed from a sorted copy every `REFRESH` records, not on
every read: a hedging call reads the delay once, and sorting 256 floats
costs about 10 µs, so the cost per call stays well under a microsecond while
the delay follows the peer within a few dozen calls.

Why a ring and not a decaying histogram (HdrHistogram, t-digest): the
percentile that matters here is around p90-p99 of a few hundred calls; an
exact answer over the last 256 is cheap, needs no tuning, and forgets an
old slow spell as soon as 256 newer calls were seen.

The learned delay is clamped to ``HEDGE_DELAY_FLOOR .. HEDGE_DELAY_CEILING``
(`resilient_client._policy`) and is the ceiling until `MIN_SAMPLES` were
seen: a cold endpoint hedges rarely rather than blindly.

What is recorded (by the session): the latency of every copy that
answered, and for a copy abandoned unanswered (another copy won), the
ceiling: its true latency is unknown, only "at least the delay". Recording
the time it had waited instead would pull the percentile down onto the
delay itself, and the delay would chase its own tail; recorded as "slow",
the percentile is exact as long as it lies below the delay, and when it
does not, the delay rises until it does.

Transport-free: no clock is read here, the session passes durations in.
"""

from __future__ import annotations

import math
import threading

from ._policy import HEDGE_DELAY_CEILING, HEDGE_DELAY_FLOOR

__all__ = ["MIN_SAMPLES", "REFRESH", "WINDOW", "LatencyWindow"]

#: Latencies kept per endpoint.
WINDOW = 256
#: Records between two recomputations of the percentile.
REFRESH = 16
#: Latencies seen before a learned delay is trusted (the ceiling until then).
MIN_SAMPLES = 20


class LatencyWindow:
    """
    The last `WINDOW` latencies of one endpoint and a percentile of them,
    clamped to [*floor*, *ceiling*]. Thread-safe; the lock is held for a
    few operations, and for one sort of `WINDOW` floats every `REFRESH`
    records.

    .. versionadded:: 0.2.0
    """

    __slots__ = ("_ceiling", "_count", "_floor", "_lock", "_next", "_percentile", "_ring", "_value")

    def __init__(
        self, percentile: float, *, floor: float = HEDGE_DELAY_FLOOR, ceiling: float = HEDGE_DELAY_CEILING
    ) -> None:
        if not 0.0 < percentile < 100.0:
            raise ValueError(f"percentile must be in (0, 100), got {percentile!r}")
        self._percentile = percentile
        self._floor = floor
        self._ceiling = ceiling
        self._ring = [0.0] * WINDOW
        self._next = 0
        self._count = 0
        self._value = ceiling
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        """Add one latency (seconds); O(1) but for one sort every `REFRESH` calls."""
        with self._lock:
            self._ring[self._next] = seconds
            self._next = (self._next + 1) % WINDOW
            self._count += 1
            if self._count >= MIN_SAMPLES and self._count % REFRESH == 0:
                self._value = self._compute()

    def _compute(self) -> float:
        n = min(self._count, WINDOW)
        ordered = sorted(self._ring[:n] if n < WINDOW else self._ring)
        # Nearest rank: the smallest value with at least p % of them at or below it.
        rank = max(1, math.ceil(self._percentile / 100.0 * n))
        return min(self._ceiling, max(self._floor, ordered[rank - 1]))

    @property
    def value(self) -> float:
        """The current delay: the clamped percentile, or the ceiling while cold."""
        return self._value

    @property
    def count(self) -> int:
        """Latencies recorded so far (not only those still kept)."""
        return self._count

    def __repr__(self) -> str:
        return f"<LatencyWindow p{self._percentile:g}={self._value:.4f}s n={self._count}>"
