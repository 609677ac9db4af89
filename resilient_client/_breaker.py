"""
Circuit breakers per endpoint. (Interface stub: a helper is filling it in.)

The session uses exactly this surface:

    breaker = CircuitBreaker(name, policy, clock=clock, on_state_change=cb)
    is_trial = breaker.before_call()          # raises CircuitOpenError
    breaker.record(success=True/False, is_trial=is_trial, duration=seconds)
    breaker.release_trial()                   # trial call ended without an outcome
    breaker.state -> BreakerState ; .open() ; .close() ; .retry_at ; .stats()
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ._clock import Clock
from ._policy import BreakerPolicy
from .exceptions import CircuitOpenError

__all__ = ["BreakerState", "BreakerStats", "CircuitBreaker"]


class BreakerState(str, enum.Enum):
    """The state of a breaker; compares equal to ``"closed"``, ``"open"``, ``"half-open"``."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class BreakerStats:
    """A snapshot of a breaker for dashboards and the health view."""

    name: str
    state: BreakerState
    consecutive_failures: int
    failures: int
    successes: int
    rejected: int
    retry_at: float | None


StateChangeCallback = Callable[["CircuitBreaker", BreakerState, BreakerState], None]


class CircuitBreaker:
    """Minimal consecutive-failure breaker (placeholder until the full one lands)."""

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        *,
        clock: Clock,
        on_state_change: StateChangeCallback | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self._clock = clock
        self._on_state_change = on_state_change
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._trial = False
        self._forced = False
        self._failures = self._successes = self._rejected = 0

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and not self._forced:
            if self._clock.monotonic() >= self._opened_at + self.policy.reset_timeout:
                return BreakerState.HALF_OPEN
        return self._state

    @property
    def retry_at(self) -> float | None:
        if self._state is BreakerState.CLOSED or self._forced:
            return None
        return self._opened_at + self.policy.reset_timeout

    def before_call(self) -> bool:
        if self._state is BreakerState.CLOSED:
            return False
        with self._lock:
            if self.state is BreakerState.HALF_OPEN and not self._trial:
                self._trial = True
                return True
            self._rejected += 1
        raise CircuitOpenError(self.name, self.retry_at)

    def record(self, *, success: bool, is_trial: bool, duration: float = 0.0) -> None:
        with self._lock:
            if is_trial:
                self._trial = False
            if success:
                self._successes += 1
                self._consecutive = 0
                if self._state is not BreakerState.CLOSED and not self._forced:
                    self._transition(BreakerState.CLOSED)
            else:
                self._failures += 1
                self._consecutive += 1
                if is_trial or self._consecutive >= self.policy.failure_threshold:
                    if self._state is not BreakerState.OPEN or is_trial:
                        self._opened_at = self._clock.monotonic()
                        self._transition(BreakerState.OPEN)

    def release_trial(self) -> None:
        with self._lock:
            self._trial = False

    def open(self) -> None:
        with self._lock:
            self._forced = True
            self._transition(BreakerState.OPEN)

    def close(self) -> None:
        with self._lock:
            self._forced = False
            self._consecutive = 0
            self._transition(BreakerState.CLOSED)

    def stats(self) -> BreakerStats:
        return BreakerStats(self.name, self.state, self._consecutive, self._failures,
                            self._successes, self._rejected, self.retry_at)

    def _transition(self, new: BreakerState) -> None:
        old = self._state
        self._state = new
        if old is not new and self._on_state_change is not None:
            self._on_state_change(self, old, new)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self.state.value}>"
