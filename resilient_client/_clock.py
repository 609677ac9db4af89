"""
Time as a parameter: every duration in the library is measured on a `Clock`.

The default clock is `time.monotonic` and `time.sleep`; tests inject a fake
one (`resilient_client.testing.FakeClock`) whose ``sleep`` advances time
instead of waiting. A `Deadline` is a point on a clock; enforcing it on a
socket is the front's business (`resilient_client._deadline` for requests).
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """
    What the library needs of time: a monotonic reading and a sleep.

    .. versionadded:: 0.1.0
    """

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class _SystemClock:
    """The real clock: `time.monotonic` and `time.sleep`."""

    __slots__ = ()
    monotonic = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)

    def __repr__(self) -> str:
        return "SYSTEM_CLOCK"

    def __reduce__(self) -> str:
        return "SYSTEM_CLOCK"  # unpickles as the module's singleton


#: The clock used when none is given.
SYSTEM_CLOCK: Clock = _SystemClock()


class Deadline:
    """
    A point on the session clock by which a call must be done.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("at", "clock", "inherited", "total")

    def __init__(self, clock: Clock, total: float, *, at: float | None = None,
                 inherited: bool = False) -> None:
        self.clock = clock
        self.total = total
        self.at = clock.monotonic() + total if at is None else at
        #: The caller's deadline (inbound header, ``deadline()``, an enclosing call), not ``total``.
        self.inherited = inherited

    def remaining(self) -> float:
        """Seconds left; negative once passed."""
        return self.at - self.clock.monotonic()

    def expired(self) -> bool:
        return self.clock.monotonic() >= self.at

    def __repr__(self) -> str:
        return f"<Deadline total={self.total:g}s remaining={self.remaining():.3f}s>"
