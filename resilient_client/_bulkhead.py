"""
Bulkheads: at most ``max_concurrent`` calls in flight per endpoint.

A call beyond the limit is refused at once rather than queued: a queue in
front of a slow peer is exactly the thread pile-up bulkheads exist to stop.
"""

from __future__ import annotations

import threading

from ._policy import BulkheadPolicy

__all__ = ["Bulkhead"]


class Bulkhead:
    """
    A non-blocking counting semaphore that also reports its usage.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_in_flight", "_lock", "max_concurrent", "name", "rejected")

    def __init__(self, name: str, policy: BulkheadPolicy) -> None:
        self.name = name
        self.max_concurrent = policy.max_concurrent
        self._lock = threading.Lock()
        self._in_flight = 0
        self.rejected = 0

    @property
    def scope(self) -> str:
        """Where the slots are counted: ``process`` (``host`` for `HostBulkhead`)."""
        return "process"

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return self._in_flight

    def try_acquire(self) -> bool:
        """Take a slot if one is free; never blocks."""
        with self._lock:
            if self._in_flight >= self.max_concurrent:
                self.rejected += 1
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            if self._in_flight <= 0:
                raise RuntimeError(f"bulkhead {self.name!r} released more often than acquired")
            self._in_flight -= 1

    def __repr__(self) -> str:
        return f"<Bulkhead {self.name!r} {self._in_flight}/{self.max_concurrent}>"
