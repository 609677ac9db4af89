"""
Time as a parameter: every duration in the library is measured on a `Clock`.

The default clock is `time.monotonic` and `time.sleep`; tests inject a fake
one (`resilient_client.testing.FakeClock`) whose ``sleep`` advances time
instead of waiting.
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
