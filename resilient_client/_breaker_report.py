"""
What a breaker reports: `BreakerStats`, and pybreaker's listener protocol.

pybreaker's ``CircuitBreakerListener`` hooks (``before_call``, ``success``,
``failure``, ``state_change``) receive what pybreaker would pass them: a
state object whose ``.name`` is the state string, and an exception for a
failure (ours records outcomes, not exceptions, hence `_FailedAttempt`).
Nothing here imports pybreaker: a listener is duck-typed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ._breaker_machine import BreakerState

__all__ = ["BreakerStats", "notify_outcome", "notify_state_change", "safely"]

logger = logging.getLogger("resilient_client")


@dataclass(frozen=True)
class BreakerStats:
    """
    A snapshot of a breaker, for dashboards, health views and tests.

    Counts are this process's, since the breaker was created. ``retry_at`` is
    when a trial call becomes possible (on the session's clock), ``None``
    when closed or forced open. ``window_calls``/``window_failures`` cover the
    rate-mode window (0 in consecutive mode). ``shared`` is ``None`` in memory
    mode, else whether Redis is currently reachable.

    .. versionadded:: 0.1.0
    """

    name: str
    state: BreakerState
    consecutive_failures: int
    failures: int
    successes: int
    rejected: int
    retry_at: float | None
    slow_calls: int = 0
    window_calls: int = 0
    window_failures: int = 0
    shared: bool | None = None


class _ListenerState:
    """What a pybreaker listener gets as a state: pybreaker passes its state
    objects, whose ``.name`` is the state string."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<state {self.name}>"


_LISTENER_STATES = {s: _ListenerState(s.value) for s in BreakerState}


class _FailedAttempt(Exception):
    """Given to pybreaker listeners' ``failure()``: record() gets no exception."""


def safely(name: str, fn: Callable[..., Any], *args: Any) -> None:
    """Call an observer; log what it raises."""
    # The state has already changed: a failing observer must not break the
    # call that happened to trigger it.
    try:
        fn(*args)
    except Exception:
        logger.exception("circuit breaker %r: a state listener failed", name)


def notify_outcome(
    breaker: Any, listeners: Iterable[Any], failed: bool, slow: bool, duration: float
) -> None:
    """Tell pybreaker listeners of one attempt's outcome."""
    for listener in listeners:
        if not failed:
            safely(breaker.name, listener.success, breaker)
        else:
            why = f"slow call ({duration:.3f}s)" if slow else "attempt failed"
            safely(breaker.name, listener.failure, breaker, _FailedAttempt(why))


def notify_state_change(
    breaker: Any, listeners: Iterable[Any], old: BreakerState, new: BreakerState
) -> None:
    """Tell pybreaker listeners of a change of state, in pybreaker's terms."""
    for listener in listeners:
        safely(
            breaker.name, listener.state_change, breaker, _LISTENER_STATES[old], _LISTENER_STATES[new]
        )
