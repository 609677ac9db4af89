"""
Circuit breakers, one per endpoint name: the facade the session uses.

A breaker watches the outcome of every attempt to an endpoint and stops
calling it once it looks down: *closed* lets calls through, *open* refuses
them at once with `CircuitOpenError`, and after ``reset_timeout`` one trial
call goes through (*half-open*); its success closes the breaker, its failure
opens it again. The session drives it around each attempt::

    is_trial = breaker.before_call()          # raises CircuitOpenError
    ...                                       # the attempt itself, no lock held
    breaker.record(success=ok, is_trial=is_trial, duration=seconds)
    # or, if the attempt ended without an outcome (BaseException):
    breaker.release_trial()

The breaker modules (none imports the facade: no cycle)::

    _breaker_machine  the sans-IO state machine: Record, transitions, Window
    _breaker_store    the BreakerStore seam (a Protocol) and MemoryStore
    _breaker_redis    RedisStore: Lua compare-and-set, pybreaker's storage
    _breaker_report   BreakerStats, and pybreaker listeners' plumbing
    _breaker          this facade: counts, listeners, the closed fast path

`CircuitBreaker` builds each transition from `BreakerMachine`, has its store
apply it atomically, and reports the state changes the store saw. It keeps
what is this process's own: counts for `stats`, the rate-mode window, and
the listeners.

What we take from pybreaker, and why
------------------------------------
pybreaker is a dependency; we use its vocabulary, its listener protocol and
its storage seam, not its machinery:

* **State names.** `BreakerState`'s values *are* ``pybreaker.STATE_CLOSED``,
  ``STATE_OPEN`` and ``STATE_HALF_OPEN``, so a state string in Redis, in a log
  line or in a listener means what it means in pybreaker.
* **Storage.** Shared state lives in `_breaker_redis._RedisStorage`, a
  subclass of ``pybreaker.CircuitRedisStorage`` (hence a
  ``CircuitBreakerStorage``). It keeps pybreaker's key names (``state``,
  ``fail_counter``, under ``resilient_client:{<name>}:breaker:``) and its
  accessors, so ``pybreaker.CircuitBreaker(state_storage=...)`` can read and
  drive the very same breaker. It overrides ``opened_at`` to keep sub-second
  precision (pybreaker stores whole seconds) and does no I/O in its
  constructor; our writes go through one compare-and-set script.
* **Listeners.** ``pybreaker.CircuitBreakerListener`` instances can be
  registered; they get ``state_change``, ``before_call``, ``success`` and
  ``failure`` as they would from pybreaker.

Not used: ``pybreaker.CircuitBreaker`` and its state classes; the state
machine is ours (`_breaker_machine`). Its ``call()`` holds one lock for the
whole wrapped call (calls through a breaker would run one at a time), it
reads the wall clock (``datetime.now``), so it cannot run on an injected
clock, and its Redis storage logs a traceback for every Redis error on every
call. Nor ``CircuitMemoryStorage``: the closed path must be a single
attribute read, and it keeps ``opened_at`` as a wall-clock datetime.

Decision record: the closed fast path
-------------------------------------
With a process-local store (`BreakerStore.exclusive`) and no listeners,
``before_call`` on a closed breaker is one attribute read, ``_closed_fast``,
and no lock. The flag is set by the memory store's commit hook, under the
store's lock, so it can never say "closed" after a concurrent transition
opened the breaker. A success on such a breaker skips the machine only when
the record shows no failures to reset (``_healthy``, set by the same hook)
and the duration cannot be slow, which is exactly when
`BreakerMachine.record` would return the record unchanged.

Why it is long: the two decision records above are kept with the code they
explain; the facade itself is about 330 lines.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
import os
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ._breaker_machine import (
    CLOSED,
    REJECT,
    TRIAL,
    BreakerMachine,
    BreakerState,
    Record,
    Window,
)
from ._breaker_report import BreakerStats, notify_outcome, notify_state_change, safely
from ._breaker_store import BreakerStore, Changes, MemoryStore
from ._clock import SYSTEM_CLOCK, Clock
from ._policy import BreakerMode, BreakerPolicy
from .exceptions import CircuitOpenError

if TYPE_CHECKING:
    import pybreaker

__all__ = ["BreakerState", "BreakerStats", "CircuitBreaker", "StateChangeCallback"]


#: ``on_state_change(breaker, old_state, new_state)``.
StateChangeCallback = Callable[["CircuitBreaker", BreakerState, BreakerState], None]


class CircuitBreaker:
    """
    The circuit breaker of one endpoint.

    Args:
        name: the endpoint name; breakers with the same name and a
            ``redis://`` storage share their state.
        policy: thresholds, timeouts and storage.
        clock: time for the in-process state machine (a fake one in tests).
        on_state_change: called as ``on_state_change(breaker, old, new)``
            after each change of state; it must not block.
        listeners: ``pybreaker.CircuitBreakerListener`` instances.
        store: the record's store, instead of ``policy.storage``'s (``state: host``).

    Thread-safe: calls through one breaker run concurrently; locks are held
    for bookkeeping only, never across a call or a Redis round trip.

    .. versionadded:: 0.1.0
    """

    __slots__ = (
        "__weakref__", "_admit", "_clock", "_closed_fast", "_consecutive", "_failures",
        "_fast_limit", "_healthy", "_host_admits", "_host_closed", "_host_healthy", "_listeners",
        "_local_time", "_lock", "_machine", "_mem",
        "_on_state_change", "_rejected", "_scope", "_slow_calls", "_store", "_successes", "_window",
        "name", "policy",
    )

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_state_change: StateChangeCallback | None = None,
        listeners: Iterable[pybreaker.CircuitBreakerListener] = (),
        store: BreakerStore | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self._clock = clock
        self._on_state_change = on_state_change
        self._listeners: tuple[pybreaker.CircuitBreakerListener, ...] = tuple(listeners)
        self._lock = threading.Lock()  # this process's counts, window, listeners
        self._consecutive = self._failures = self._successes = self._rejected = self._slow_calls = 0
        rate = policy.mode is BreakerMode.RATE
        self._window = Window(policy.window) if rate else None
        # Our name on a trial lease: unique across processes and breakers.
        machine = self._machine = BreakerMachine(policy, f"{os.getpid()}:{uuid.uuid4().hex[:16]}")
        self._admit = machine.admit
        # The success fast path in record() is taken only for a duration
        # that classify() cannot call slow; never in rate mode (a negative
        # limit), where every outcome goes into the window.
        slow = policy.slow_call_duration
        self._fast_limit = -1.0 if rate else (math.inf if slow is None else slow)
        self._closed_fast = self._healthy = False
        self._mem: MemoryStore | None = None
        if store is None and policy.storage == "memory":
            store = self._mem = MemoryStore(clock)
            store.watch = self._watch
            self._watch(store.record)
        elif store is None:
            from ._breaker_redis import RedisStore  # only shared storage imports redis-py

            store = RedisStore(policy.storage, name, machine.reconcile)
        self._store = store
        self._scope: str = getattr(store, "scope", "process")  # read on every refusal's event
        self._local_time = store.local_time
        # state: host's fast paths (HostStore): one pread and a bytes compare.
        self._host_admits: Callable[[], bool] | None = getattr(store, "admits_closed", None)
        self._host_healthy: Callable[[], bool] | None = getattr(store, "healthy_seen", None)
        self._host_closed: Callable[[], bool] | None = getattr(store, "closed_seen", None)

    # -- the hot path ------------------------------------------------------------

    def before_call(self) -> bool:
        """
        Ask to make one call: return ``True`` if it is the half-open trial
        call, ``False`` for an ordinary call.

        Raises:
            CircuitOpenError: the breaker is open (or its trial call is in
                flight); nothing was sent.

        .. versionadded:: 0.1.0
        """
        # Closed, in memory, no listeners: one attribute read, no lock.
        if self._closed_fast:
            return False
        host = self._host_admits
        if host is not None and not self._listeners and host():
            return False  # the shared record is closed, as last seen: admitting changes nothing
        rec, verdict, now, changes = self._store.apply(self._admit)
        if changes:
            self._notify(changes)
        if verdict is REJECT:
            with self._lock:
                self._rejected += 1
            at = self._machine.retry_at(rec)
            # Past retry_at yet refused: another call's trial is in flight. If
            # it fails now, the next trial is a reset_timeout away: say that,
            # never 0 (a caller waiting retry_in before retrying would spin).
            in_flight = at is not None and at <= now
            retry_in = None if at is None else (self.policy.reset_timeout if in_flight else at - now)
            if at is not None and not self._local_time:  # _local(), inlined: a hot path
                at = self._clock.monotonic() + (at - now)
            raise CircuitOpenError(self.name, at, retry_in=retry_in, trial_in_flight=in_flight)
        for listener in self._listeners:
            safely(self.name, listener.before_call, self, None)
        return verdict is TRIAL

    def record(self, *, success: bool, is_trial: bool, duration: float = 0.0) -> None:
        """
        Record the outcome of one attempt let through by `before_call`.

        Args:
            success: ``False`` for a connection error, a timeout or a status
                in ``failure_status``.
            is_trial: what `before_call` returned for this attempt.
            duration: how long the attempt took, in seconds; longer than
                ``slow_call_duration`` (if set) counts as a failure.

        .. versionadded:: 0.1.0
        """
        if success and duration <= self._fast_limit and not is_trial and (
                self._healthy or (self._host_healthy is not None and not self._listeners
                                  and self._host_healthy())):
            # Nothing for the machine to change: only count it.
            with self._lock:
                self._successes += 1
                self._consecutive = 0
            return
        self._record(success, is_trial, duration)

    def _record(self, success: bool, is_trial: bool, duration: float) -> None:
        # Apart from record(), whose fast path must not pay for closure cells.
        machine = self._machine
        failed, slow = machine.classify(success, duration)
        with self._lock:
            if failed:
                self._failures += 1
                self._consecutive += 1
            else:
                self._successes += 1
                self._consecutive = 0
            if slow:
                self._slow_calls += 1
            window = self._window
            tally = None if window is None else window.add(self._clock.monotonic(), failed)

        def step(rec: Record, now: float) -> tuple[Record, None]:
            return machine.record(rec, now, failed, is_trial, tally), None

        # A "no change" need not be re-read fresh: an outcome is best effort.
        changes = self._store.apply(step, fresh=False)[3]
        if changes:
            self._notify(changes)
        if self._listeners:
            notify_outcome(self, self._listeners, failed, slow, duration)

    def release_trial(self) -> None:
        """
        Give up the trial slot of a trial call that ended without an outcome
        (e.g. interrupted by ``KeyboardInterrupt``): the next call may try.

        .. versionadded:: 0.1.0
        """
        machine = self._machine

        def step(rec: Record, now: float) -> tuple[Record, None]:
            return machine.release(rec), None

        self._notify(self._store.apply(step, fresh=False)[3])

    @property
    def scope(self) -> str:
        """
        Where the record that decides lives now: ``process``, ``host``
        (``state: host``) or ``redis``; ``process`` while a shared store is
        unusable and this process carries on with its own.

        .. versionadded:: 0.2.0
        """
        shared = self._scope
        return shared if shared == "process" or self._store.reachable() else "process"

    def looks_open(self) -> bool:
        """
        Whether `state` is open, as far as this process last saw: for the
        session's early refusal, whose "no" the call's `before_call` checks
        anyway. With ``state: host`` a breaker last seen closed reads no file.
        """
        if self._closed_fast:
            return False
        seen = self._host_closed
        if seen is not None and seen():
            return False
        return self.state is BreakerState.OPEN

    # -- operators and tests -----------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """
        ``closed``, ``open`` or ``half-open``. An open breaker whose
        ``reset_timeout`` has passed reads ``half-open``: the next call is
        the trial.

        .. versionadded:: 0.1.0
        """
        if self._closed_fast:  # closed, in memory, no listeners: as before_call's fast path
            return BreakerState.CLOSED
        return self._machine.view(*self._read())

    @property
    def retry_at(self) -> float | None:
        """
        When a trial call becomes possible, on the session's clock; ``None``
        when closed or forced open.

        .. versionadded:: 0.1.0
        """
        rec, now = self._read()
        return self._local(self._machine.retry_at(rec), now)

    def open(self) -> None:
        """
        Force the breaker open: every call fails fast, with no trial calls,
        until `close`. With Redis storage, for every process.

        .. versionadded:: 0.1.0
        """
        self._force(True)

    def close(self) -> None:
        """
        Close the breaker (also ending a forced open) and forget past
        failures. With Redis storage, for every process.

        .. versionadded:: 0.1.0
        """
        self._force(False)

    def stats(self) -> BreakerStats:
        """
        The breaker's state and this process's counts.

        .. versionadded:: 0.1.0
        """
        rec, now = self._read()
        with self._lock:
            window = self._window
            if window is not None:
                window.advance(self._clock.monotonic())
            return BreakerStats(
                name=self.name,
                state=self._machine.view(rec, now),
                consecutive_failures=self._consecutive,
                failures=self._failures,
                successes=self._successes,
                rejected=self._rejected,
                retry_at=self._local(self._machine.retry_at(rec), now),
                slow_calls=self._slow_calls,
                window_calls=window.calls if window is not None else 0,
                window_failures=window.failures if window is not None else 0,
                shared=self._store.reachable(),
            )

    @property
    def listeners(self) -> tuple[pybreaker.CircuitBreakerListener, ...]:
        """
        The registered pybreaker listeners.

        .. versionadded:: 0.1.0
        """
        return self._listeners

    def add_listener(self, listener: pybreaker.CircuitBreakerListener) -> None:
        """
        Register a ``pybreaker.CircuitBreakerListener``.

        .. versionadded:: 0.1.0
        """
        with self._lock:
            self._listeners = (*self._listeners, listener)
        self._refresh_fast_path()

    def remove_listener(self, listener: pybreaker.CircuitBreakerListener) -> None:
        """
        Unregister a listener added with `add_listener`.

        .. versionadded:: 0.1.0
        """
        with self._lock:
            rest = list(self._listeners)
            rest.remove(listener)
            self._listeners = tuple(rest)
        self._refresh_fast_path()

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self.state.value}>"

    # -- helpers -----------------------------------------------------------------

    def _read(self) -> tuple[Record, float]:
        rec, now, changes = self._store.read()
        if changes:
            self._notify(changes)
        return rec, now

    def _watch(self, rec: Record) -> None:
        # The memory store's commit hook, run under its lock: the fast-path
        # flag changes in the same critical section as the record.
        fast = self._closed_fast = rec.state is CLOSED and not self._listeners
        self._healthy = fast and rec.failures == 0

    def _refresh_fast_path(self) -> None:
        if self._mem is not None:
            self._mem.rewatch()  # under the store's lock: see _watch

    def _force(self, open_: bool) -> None:
        force = self._machine.force
        self._notify(self._store.apply(lambda rec, now: (force(rec, now, open_=open_), None))[3])

    def _local(self, at: float | None, now: float) -> float | None:
        """A time in the store's time base, on this breaker's clock."""
        if at is None or self._local_time:
            return at
        return self._clock.monotonic() + (at - now)

    def _notify(self, changes: Changes) -> None:
        # Called without a lock, so a callback may use the breaker.
        for old, new in changes:
            if new is CLOSED and self._window is not None:
                with self._lock:
                    self._window.clear()  # a closed breaker starts a fresh window
            if self._on_state_change is not None:
                safely(self.name, self._on_state_change, self, old, new)
            notify_state_change(self, self._listeners, old, new)
