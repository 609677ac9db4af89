"""
The fake clock: a `resilient_client.Clock` that moves only when told to.

It imports nothing else of the kit, so a breaker or retry test can use it
without responses or pytest installed.
"""

from __future__ import annotations

import math
import threading

__all__ = ["FakeClock"]


class FakeClock:
    """
    A monotonic clock that moves only when told to: ``sleep()`` and
    ``advance()`` move it at once and nothing really waits. Pass it as
    ``ResilientSession(clock=...)`` or ``CircuitBreaker(clock=...)``; a
    `FakePeers` registry also moves it by the time its peers take.

    Attributes:
        sleeps: every ``sleep()`` asked for, in seconds, in order.
        instant_sleep: when True, ``sleep()`` is recorded but does not move
            the clock (what the ``no_backoff`` fixture sets).

    .. versionadded:: 0.1.0
    """

    def __init__(self, start: float = 0.0) -> None:
        self._start = float(start)
        self._now = float(start)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []
        self.instant_sleep = False

    def __getstate__(self) -> dict[str, object]:
        # A session pickles its clock; the lock is this process's only.
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        """The current fake time, in seconds."""
        return self._now

    def sleep(self, seconds: float) -> None:
        """Move the clock by *seconds* at once (record it only, under ``instant_sleep``)."""
        if seconds < 0:
            raise ValueError(f"sleep length must be non-negative, got {seconds!r}")
        with self._lock:
            self.sleeps.append(seconds)
            if not self.instant_sleep:
                self._now += seconds

    def advance(self, seconds: float) -> None:
        """
        Move the clock forward by *seconds*: breaker timers, deadlines and
        retry budgets see the time pass.
        """
        if seconds < 0 or math.isnan(seconds):
            raise ValueError(f"a monotonic clock cannot go back: advance({seconds!r})")
        with self._lock:
            self._now += seconds

    def advance_to(self, when: float) -> None:
        """Move the clock forward to *when* (a reading of `monotonic`)."""
        with self._lock:
            if when < self._now:
                raise ValueError(
                    f"a monotonic clock cannot go back: it reads {self._now:g}, asked for {when:g}"
                )
            self._now = float(when)

    @property
    def now(self) -> float:
        """The same as `monotonic`."""
        return self._now

    @property
    def elapsed(self) -> float:
        """Fake seconds since the clock was made."""
        return self._now - self._start

    @property
    def slept(self) -> float:
        """The total of every ``sleep()`` asked for."""
        return sum(self.sleeps)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now:g})"
