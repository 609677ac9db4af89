"""
Circuit breakers, one per endpoint name.

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

What we take from pybreaker, and why
------------------------------------
pybreaker is a dependency; we use its vocabulary and its storage seam, not its
machinery:

* **State names.** `BreakerState`'s values *are* ``pybreaker.STATE_CLOSED``,
  ``STATE_OPEN`` and ``STATE_HALF_OPEN``, so a state string in Redis, in a log
  line or in a listener means what it means in pybreaker.
* **Storage.** Shared state lives in `_RedisStorage`, a subclass of
  ``pybreaker.CircuitRedisStorage`` (hence a ``CircuitBreakerStorage``). It
  keeps pybreaker's key names (``state``, ``fail_counter``, under
  ``resilient_client:{<name>}:breaker:``) and its accessors, so
  ``pybreaker.CircuitBreaker(state_storage=...)`` can read and drive the very
  same breaker. It overrides ``opened_at`` to keep sub-second precision
  (pybreaker stores whole seconds), does no I/O in its constructor, and adds
  Lua scripts for the steps that must be atomic across processes.
* **Listeners.** ``pybreaker.CircuitBreakerListener`` instances can be
  registered; they get ``state_change``, ``before_call``, ``success`` and
  ``failure`` as they would from pybreaker.

Not used: ``pybreaker.CircuitBreaker`` and its state classes. Its ``call()``
holds one lock for the whole wrapped call (so calls through a breaker would
run one at a time), it reads the wall clock (``datetime.now``) so it cannot
run on an injected clock, and its Redis storage logs a traceback for every
Redis error on every call. We do not wrap the call at all, the lock is held
only for bookkeeping, and time in memory mode is the injected clock's. Memory
mode does not use ``CircuitMemoryStorage`` either: the closed path must be a
single attribute read, and that storage keeps ``opened_at`` as a wall-clock
datetime.

Shared state (``storage: redis://...``)
---------------------------------------
The state (open or not, when it opened, forced, the trial claim) and the
consecutive-failure count are shared per endpoint name; the rate-mode window
is counted per process, since sharing it would cost a Redis write per call.
Redis must never become the thing that fails: every operation has a short
socket timeout and no retries; when Redis is unreachable the breaker carries
on with its in-process state, logs that once, tries Redis again at most every
``_REDIS_RETRY_INTERVAL`` seconds and resyncs when it answers.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import enum
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn
from urllib.parse import urlsplit, urlunsplit

from ._clock import SYSTEM_CLOCK, Clock
from ._policy import BreakerMode, BreakerPolicy
from .exceptions import CircuitOpenError

if TYPE_CHECKING:
    import pybreaker

    from ._breaker_redis import _RedisStorage

__all__ = ["BreakerState", "BreakerStats", "CircuitBreaker", "StateChangeCallback"]

logger = logging.getLogger("resilient_client")

#: How long a snapshot of the shared state read from Redis is trusted. Within
#: it, calls cost no Redis round trip; another process's trip is seen at most
#: this late. This and the Redis intervals below are real time
#: (`time.monotonic`), not the injected clock: they pace talk with a real
#: server, and a fake clock that never moves must not freeze the cache.
_SHARED_CACHE_TTL = 0.02
#: Socket timeouts for Redis (connect, and each operation). A breaker's job is
#: to fail fast: a slow Redis must not add more than this to a call.
_REDIS_CONNECT_TIMEOUT = 0.05
_REDIS_TIMEOUT = 0.1
#: After Redis failed, how long to run on in-process state before trying again.
_REDIS_RETRY_INTERVAL = 1.0
#: A trial claim expires after max(reset_timeout, this) seconds, so a trial
#: whose caller vanished (a crashed process, a lost record()) cannot keep the
#: breaker half-open for ever. It must outlast any real call, hence generous.
_TRIAL_LEASE_MIN = 30.0
#: Shared keys expire after a day without writes: breakers per origin would
#: otherwise leave keys behind for every host ever called.
_KEY_TTL_MS = 86_400_000
#: Rate mode: the window is cut into this many buckets (about 1 s each,
#: clamped), so memory is bounded whatever the window.
_MIN_BUCKETS = 10
_MAX_BUCKETS = 60


class BreakerState(str, enum.Enum):
    """
    The state of a breaker; compares equal to ``"closed"``, ``"open"`` and
    ``"half-open"`` (pybreaker's state names).

    .. versionadded:: 0.1.0
    """

    # pybreaker.STATE_CLOSED, STATE_OPEN and STATE_HALF_OPEN (a test pins
    # them): spelt out so that importing us does not import pybreaker, which
    # imports redis-py (and through it asyncio) whenever it is installed.
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"

    def __str__(self) -> str:
        return self.value


_CLOSED = BreakerState.CLOSED
_OPEN = BreakerState.OPEN
_HALF_OPEN = BreakerState.HALF_OPEN


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


#: ``on_state_change(breaker, old_state, new_state)``.
StateChangeCallback = Callable[["CircuitBreaker", BreakerState, BreakerState], None]

_Changes = list[tuple[BreakerState, BreakerState]]


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


class _Window:
    """
    Calls and failures over the last *span* seconds, in fixed time buckets.

    The newest bucket is ``_head``; moving to a later bucket clears the ones
    skipped over, keeping running totals, so every operation is O(1) amortised
    and memory is ``2 * buckets`` ints whatever the traffic.
    """

    __slots__ = ("_calls", "_edge", "_fails", "_head", "_n", "_slot", "_width", "calls", "failures")

    def __init__(self, span: float) -> None:
        self._n = min(_MAX_BUCKETS, max(_MIN_BUCKETS, math.ceil(span)))
        self._width = span / self._n
        self.clear()

    def clear(self) -> None:
        self._calls = [0] * self._n
        self._fails = [0] * self._n
        self._head: int | None = None  # absolute number of the newest bucket
        self._slot = 0  # its index in the lists
        self._edge = -math.inf  # when it ends: before then, no sliding to do
        self.calls = self.failures = 0

    def advance(self, now: float) -> int:
        """Slide the window to *now*; return the slot of the current bucket."""
        if now < self._edge:
            return self._slot
        idx = math.floor(now / self._width)
        head = self._head
        if head is None or idx - head >= self._n:
            self.clear()
        elif idx > head:
            for i in range(head + 1, idx + 1):
                slot = i % self._n
                self.calls -= self._calls[slot]
                self.failures -= self._fails[slot]
                self._calls[slot] = self._fails[slot] = 0
        else:
            idx = head  # a monotonic clock never goes back; stay put if it does
        self._head = idx
        self._slot = idx % self._n
        self._edge = (idx + 1) * self._width
        return self._slot

    def add(self, now: float, failed: bool) -> None:
        slot = self.advance(now)
        self._calls[slot] += 1
        self.calls += 1
        if failed:
            self._fails[slot] += 1
            self.failures += 1


# -- shared state in Redis ------------------------------------------------------
#
# Time across hosts: monotonic clocks have a per-host epoch, so they cannot be
# shared; wall clocks can, but drift between hosts. Every shared timestamp is
# therefore Redis's own TIME, written and compared inside the same script or
# read together with TIME in one snapshot: one clock for all processes, with
# sub-millisecond precision (epoch milliseconds as a float string).

# KEYS: 1 state, 2 opened_at_ms, 3 forced, 4 fail_counter, 5 trial.
_LUA_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local function open_now()
  redis.call('SET', KEYS[1], 'open', 'PX', ARGV[#ARGV])
  redis.call('SET', KEYS[2], string.format('%.3f', now_ms()), 'PX', ARGV[#ARGV])
end
"""

# One round trip for everything before_call() needs, including Redis's clock.
_LUA_SNAPSHOT = """
local t = redis.call('TIME')
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]), redis.call('GET', KEYS[3]),
        redis.call('GET', KEYS[4]), redis.call('PTTL', KEYS[5]), t[1], t[2]}
"""

# A failure while closed, consecutive mode. ARGV: threshold, key ttl.
_LUA_FAIL = _LUA_PRELUDE + """
local n = redis.call('INCR', KEYS[4])
redis.call('PEXPIRE', KEYS[4], ARGV[#ARGV])
if n < tonumber(ARGV[1]) or redis.call('GET', KEYS[3]) then return 0 end
local s = redis.call('GET', KEYS[1])
if s and s ~= 'closed' then return 0 end
open_now()
return 1
"""

# Open a closed breaker (rate mode, resync). Already open: leave opened_at be.
_LUA_TRIP = _LUA_PRELUDE + """
if redis.call('GET', KEYS[3]) then return 0 end
local s = redis.call('GET', KEYS[1])
if s and s ~= 'closed' then return 0 end
open_now()
return 1
"""

# Claim the one trial call. The claim itself is SET NX PX, so exactly one
# caller across all processes wins it, and it expires if its holder vanishes.
# ARGV: reset_timeout ms, lease ms, token, key ttl.
_LUA_CLAIM = _LUA_PRELUDE + """
if redis.call('GET', KEYS[3]) then return {'forced', '0'} end
local s = redis.call('GET', KEYS[1])
if not s or s == 'closed' then return {'closed', '0'} end
if s == 'open' then
  local left = (tonumber(redis.call('GET', KEYS[2])) or 0) + tonumber(ARGV[1]) - now_ms()
  if left > 0 then return {'open', string.format('%.3f', left)} end
end
if not redis.call('SET', KEYS[5], ARGV[3], 'NX', 'PX', ARGV[2]) then return {'busy', '0'} end
redis.call('SET', KEYS[1], 'half-open', 'PX', ARGV[#ARGV])
return {'claimed', '0'}
"""

# The trial's outcome. Only the holder of the claim decides; a claim that
# expired and went to someone else makes this outcome stale. ARGV: token,
# '1' success | '0' failure, key ttl.
_LUA_END_TRIAL = _LUA_PRELUDE + """
local holder = redis.call('GET', KEYS[5])
if holder and holder ~= ARGV[1] then return 'stale' end
if holder then redis.call('DEL', KEYS[5]) end
if redis.call('GET', KEYS[3]) then return 'forced' end
if redis.call('GET', KEYS[1]) ~= 'half-open' then return 'ignored' end
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
  return 'closed'
end
open_now()
return 'open'
"""

_LUA_RELEASE = """
if redis.call('GET', KEYS[5]) == ARGV[1] then redis.call('DEL', KEYS[5]) return 1 end
return 0
"""

# Forced open ('1') or close ('0'). A closed breaker is the absence of keys.
_LUA_FORCE = _LUA_PRELUDE + """
if ARGV[1] == '1' then
  redis.call('SET', KEYS[3], '1')
  redis.call('DEL', KEYS[5])
  open_now()
else
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
end
return 1
"""

_STATE_BY_BYTES = {s.value.encode(): s for s in BreakerState}


class _Shared(NamedTuple):
    """The shared state as read in one round trip."""

    state: BreakerState
    forced: bool
    opened_at_ms: float  # Redis TIME, epoch milliseconds
    now_ms: float  # Redis TIME when read
    failures: int  # shared consecutive failures
    trial_ttl_ms: int  # > 0 while someone holds the trial claim
    read_at: float  # time.monotonic() here when read

    def open_left(self, reset_ms: float) -> float:
        """Seconds until a trial is allowed, as of now (<= 0: allowed)."""
        age_ms = (time.monotonic() - self.read_at) * 1000.0
        return (self.opened_at_ms + reset_ms - self.now_ms - age_ms) / 1000.0


def _number(raw: bytes | None) -> float:
    """A number stored in Redis; a missing or mangled value reads as 0, never
    as an exception out of before_call()."""
    try:
        return float(raw) if raw else 0.0
    except ValueError:
        return 0.0


def _redact(url: str) -> str:
    """*url* without credentials or query (where unix:// puts a password)."""
    parts = urlsplit(url)
    if not parts.netloc:
        return f"{parts.scheme}://{parts.path}"  # unix:///path/to.sock
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _redis_error() -> type[Exception]:
    """`redis.RedisError`, imported only once shared storage is in use."""
    from redis.exceptions import RedisError

    return RedisError


# -- the breaker -----------------------------------------------------------------


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

    Thread-safe: calls through one breaker run concurrently; its lock is held
    for bookkeeping only, never across a call or a Redis round trip.

    .. versionadded:: 0.1.0
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_closed_fast",
        "_consecutive",
        "_down",
        "_down_until",
        "_epoch",
        "_failures",
        "_forced",
        "_incremented",
        "_lease",
        "_listeners",
        "_lock",
        "_on_state_change",
        "_opened_at",
        "_orphan_tokens",
        "_pending",
        "_refresh_lock",
        "_rejected",
        "_reset_snap",
        "_shared",
        "_slow_calls",
        "_slow_limit",
        "_snap",
        "_state",
        "_successes",
        "_trial",
        "_trial_deadline",
        "_trial_token",
        "_window",
        "name",
        "policy",
    )

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_state_change: StateChangeCallback | None = None,
        listeners: Iterable[pybreaker.CircuitBreakerListener] = (),
    ) -> None:
        self.name = name
        self.policy = policy
        self._clock = clock
        self._on_state_change = on_state_change
        self._listeners: tuple[pybreaker.CircuitBreakerListener, ...] = tuple(listeners)
        self._lock = threading.Lock()
        self._slow_limit = policy.slow_call_duration
        self._lease = max(policy.reset_timeout, _TRIAL_LEASE_MIN)
        self._window = _Window(policy.window) if policy.mode is BreakerMode.RATE else None

        # The in-process state machine. In memory mode it is the truth; with
        # Redis it mirrors the shared state, and is the truth while Redis is
        # unreachable.
        self._state = _CLOSED
        self._forced = False
        self._opened_at = 0.0  # on self._clock
        self._trial = False  # a trial call is in flight
        self._trial_deadline = 0.0
        self._consecutive = 0
        self._failures = self._successes = self._rejected = self._slow_calls = 0

        self._shared: _RedisStorage | None = None
        if policy.storage != "memory":
            from ._breaker_redis import _RedisStorage  # only shared storage needs pybreaker's

            self._shared = _RedisStorage(policy.storage, name)
        self._snap: _Shared | None = None
        self._refresh_lock = threading.Lock()
        self._epoch = 0  # bumped by each local write to Redis: older reads are stale
        self._down = False
        self._down_until = 0.0  # time.monotonic(): Redis is not tried before then
        self._pending: str | None = None  # what to push to Redis when it returns
        self._orphan_tokens: list[str] = []  # trial claims to release when it returns
        self._trial_token: str | None = None
        self._incremented = False  # we counted a shared failure since the last reset
        self._reset_snap: _Shared | None = None

        # The one flag before_call() reads on the closed path: True only when
        # nothing else has to happen for a call to go through.
        self._closed_fast = self._fast_path_ok()

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
        is_trial = (
            self._admit_shared() if self._shared is not None else self._admit_local()
        )
        if self._listeners:
            for listener in self._listeners:
                self._safely(listener.before_call, self, None)
        return is_trial

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
        slow = self._slow_limit is not None and duration > self._slow_limit
        failed = slow or not success
        if not failed and self._closed_fast and self._window is None and not is_trial:
            # A success on a closed breaker in memory: nothing can change
            # state, so only count it. (If it opened meanwhile, resetting the
            # count is harmless: only the trial decides an open breaker.)
            with self._lock:
                self._successes += 1
                self._consecutive = 0
            return
        if self._shared is not None:
            self._record_shared(failed, slow, is_trial)
        else:
            with self._lock:
                changes, _ = self._record_locked(failed, slow, is_trial, authoritative=True)
            if changes:
                self._notify(changes)
        if self._listeners:
            self._notify_outcome(failed, slow, duration)

    def release_trial(self) -> None:
        """
        Give up the trial slot of a trial call that ended without an outcome
        (e.g. interrupted by ``KeyboardInterrupt``): the next call may try.

        .. versionadded:: 0.1.0
        """
        with self._lock:
            self._trial = False
            token, self._trial_token = self._trial_token, None
        if token is not None and self._shared is not None:
            if self._redis_usable():
                try:
                    self._shared.release(token)
                    self._invalidate()
                    return
                except _redis_error() as exc:
                    self._redis_failed(exc)
            with self._lock:
                self._orphan_tokens.append(token)

    # -- operators and tests -----------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """
        ``closed``, ``open`` or ``half-open``. An open breaker whose
        ``reset_timeout`` has passed reads ``half-open``: the next call is
        the trial.

        .. versionadded:: 0.1.0
        """
        snap = self._current_snapshot() if self._shared is not None else None
        if snap is not None:
            if snap.forced:
                return _OPEN
            if snap.state is _OPEN and snap.open_left(self.policy.reset_timeout * 1000.0) <= 0:
                return _HALF_OPEN
            return snap.state
        state = self._state
        if (
            state is _OPEN
            and not self._forced
            and self._clock.monotonic() >= self._opened_at + self.policy.reset_timeout
        ):
            return _HALF_OPEN
        return state

    @property
    def retry_at(self) -> float | None:
        """
        When a trial call becomes possible, on the session's clock; ``None``
        when closed or forced open.

        .. versionadded:: 0.1.0
        """
        snap = self._current_snapshot() if self._shared is not None else None
        if snap is not None:
            if snap.forced or snap.state is _CLOSED:
                return None
            left = snap.open_left(self.policy.reset_timeout * 1000.0)
            return self._clock.monotonic() + max(left, 0.0)
        with self._lock:
            return self._retry_at_locked()

    def open(self) -> None:
        """
        Force the breaker open: every call fails fast, with no trial calls,
        until `close`. With Redis storage, for every process.

        .. versionadded:: 0.1.0
        """
        with self._lock:
            self._forced = True
            self._trial = False
            self._opened_at = self._clock.monotonic()
            changes = self._set_state_locked(_OPEN)
        self._push_force(True)
        self._notify(changes)

    def close(self) -> None:
        """
        Close the breaker (also ending a forced open) and forget past
        failures. With Redis storage, for every process.

        .. versionadded:: 0.1.0
        """
        with self._lock:
            self._forced = False
            changes = self._close_locked()
        self._push_force(False)
        self._notify(changes)

    def stats(self) -> BreakerStats:
        """
        The breaker's state and this process's counts.

        .. versionadded:: 0.1.0
        """
        state = self.state
        retry_at = self.retry_at
        with self._lock:
            window = self._window
            if window is not None:
                window.advance(self._clock.monotonic())
            return BreakerStats(
                name=self.name,
                state=state,
                consecutive_failures=self._consecutive,
                failures=self._failures,
                successes=self._successes,
                rejected=self._rejected,
                retry_at=retry_at,
                slow_calls=self._slow_calls,
                window_calls=window.calls if window is not None else 0,
                window_failures=window.failures if window is not None else 0,
                shared=None if self._shared is None else not self._down,
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
            self._closed_fast = self._fast_path_ok()

    def remove_listener(self, listener: pybreaker.CircuitBreakerListener) -> None:
        """
        Unregister a listener added with `add_listener`.

        .. versionadded:: 0.1.0
        """
        with self._lock:
            rest = list(self._listeners)
            rest.remove(listener)
            self._listeners = tuple(rest)
            self._closed_fast = self._fast_path_ok()

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self.state.value}>"

    # -- the in-process state machine (call with self._lock held) ---------------

    def _fast_path_ok(self) -> bool:
        return self._shared is None and self._state is _CLOSED and not self._listeners

    def _set_state_locked(self, new: BreakerState) -> _Changes:
        old = self._state
        self._state = new
        self._closed_fast = self._fast_path_ok()
        return [(old, new)] if old is not new else []

    def _open_locked(self, now: float) -> _Changes:
        self._opened_at = now
        self._trial = False
        return self._set_state_locked(_OPEN)

    def _close_locked(self) -> _Changes:
        self._consecutive = 0
        self._trial = False
        self._trial_token = None
        if self._window is not None:
            self._window.clear()
        return self._set_state_locked(_CLOSED)

    def _retry_at_locked(self) -> float | None:
        if self._state is _CLOSED or self._forced:
            return None
        return self._opened_at + self.policy.reset_timeout

    def _count_locked(self, failed: bool, slow: bool) -> None:
        if failed:
            self._failures += 1
            self._consecutive += 1
        else:
            self._successes += 1
            self._consecutive = 0
        if slow:
            self._slow_calls += 1

    def _record_locked(
        self, failed: bool, slow: bool, is_trial: bool, *, authoritative: bool
    ) -> tuple[_Changes, bool]:
        """
        Count one outcome. Return the state changes made (only when
        *authoritative*: memory mode, or Redis away) and whether this outcome
        meets the local criterion for opening the breaker.
        """
        self._count_locked(failed, slow)
        if is_trial:
            was_trial, self._trial = self._trial, False
            # Forced open, or closed meanwhile: the trial no longer decides.
            if not authoritative or not was_trial or self._forced or self._state is not _HALF_OPEN:
                return [], False
            now = self._clock.monotonic()
            return (self._open_locked(now) if failed else self._close_locked()), False
        if self._state is not _CLOSED:
            # A call let through before the breaker opened, ending late: only
            # the trial decides what happens to an open breaker.
            return [], False
        window = self._window
        if window is not None:
            now = self._clock.monotonic()
            window.add(now, failed)
            trip = (
                failed
                and window.calls >= self.policy.min_calls
                and window.failures / window.calls >= self.policy.failure_rate
            )
        else:
            trip = failed and self._consecutive >= self.policy.failure_threshold
            now = self._clock.monotonic() if trip else 0.0
        if trip and authoritative:
            if self._shared is not None:
                self._pending = "trip"  # opened while Redis was away: tell it
            return self._open_locked(now), True
        return [], trip

    def _admit_local(self) -> bool:
        """before_call() on the in-process state: memory mode, or Redis away."""
        changes: _Changes = []
        with self._lock:
            state = self._state
            if state is _CLOSED:
                return False
            admitted = False
            if not self._forced:
                now = self._clock.monotonic()
                if state is _OPEN:
                    admitted = now >= self._opened_at + self.policy.reset_timeout
                else:  # half-open: the trial slot is free, or its holder vanished
                    admitted = not self._trial or now >= self._trial_deadline
                if admitted:
                    self._trial = True
                    self._trial_deadline = now + self._lease
                    changes = self._set_state_locked(_HALF_OPEN)
            if not admitted:
                self._rejected += 1
                retry_at = self._retry_at_locked()
        if not admitted:
            raise CircuitOpenError(self.name, retry_at)
        self._notify(changes)
        return True

    # -- shared state ------------------------------------------------------------

    def _redis_usable(self) -> bool:
        return not self._down and time.monotonic() >= self._down_until

    def _invalidate(self) -> None:
        """After we wrote to Redis: the cached snapshot, and reads already in
        flight, are stale."""
        self._snap = None
        self._epoch += 1

    def _current_snapshot(self) -> _Shared | None:
        """
        The shared state, cached for _SHARED_CACHE_TTL; ``None`` only when
        Redis is unreachable (then the in-process state applies).
        """
        snap = self._snap
        now = time.monotonic()
        if snap is not None and now - snap.read_at < _SHARED_CACHE_TTL:
            return snap
        if self._down and now < self._down_until:
            return None
        if snap is not None or self._down:
            # One thread reads (or probes a Redis that was away); the others
            # make do with a snapshot a few ms older, or the in-process state,
            # rather than all queueing on Redis at once.
            if not self._refresh_lock.acquire(blocking=False):
                return snap
        else:
            # No snapshot at all (first call, or we just wrote): wait for the
            # read in progress, bounded by Redis's socket timeouts.
            self._refresh_lock.acquire()
            snap = self._snap
            if snap is not None and time.monotonic() - snap.read_at < _SHARED_CACHE_TTL:
                self._refresh_lock.release()
                return snap
        try:
            snap, adopt = self._read_shared()
        finally:
            self._refresh_lock.release()
        if adopt and snap is not None:
            self._adopt(snap)  # outside the refresh lock: it runs callbacks
        return snap

    def _read_shared(self) -> tuple[_Shared | None, bool]:
        """Read Redis (and resync after an outage): ``(snapshot, adopt it)``."""
        storage = self._shared
        assert storage is not None
        if self._down and time.monotonic() < self._down_until:
            return None, False  # another thread found Redis away meanwhile
        epoch = self._epoch
        try:
            snap = storage.snapshot()
            if self._down:
                snap = self._resync(storage, snap)
                epoch = self._epoch
        except _redis_error() as exc:
            self._redis_failed(exc)
            return None, False
        if epoch != self._epoch:
            # We wrote while reading: usable for this decision (the scripts
            # re-check), not worth caching or mirroring.
            return snap, False
        self._snap = snap
        return snap, True

    def _adopt(self, snap: _Shared) -> None:
        """Make the in-process state mirror the shared one."""
        new = _OPEN if snap.forced else snap.state
        with self._lock:
            self._forced = snap.forced
            if new is not _CLOSED:
                age = (snap.now_ms - snap.opened_at_ms) / 1000.0
                self._opened_at = self._clock.monotonic() - age
            if new is _CLOSED and self._state is not _CLOSED:
                changes = self._close_locked()
            else:
                changes = self._set_state_locked(new)
        # Each process reports a change when it notices it, as pybreaker
        # does for state changed by another process.
        self._notify(changes)

    def _admit_shared(self) -> bool:
        storage = self._shared
        assert storage is not None
        snap = self._current_snapshot()
        if snap is None:
            return self._admit_local()
        if snap.forced:
            self._reject(None)
        if snap.state is _CLOSED:
            return False
        reset = self.policy.reset_timeout
        if snap.state is _OPEN:
            left = snap.open_left(reset * 1000.0)
            if left > 0:
                self._reject(self._clock.monotonic() + left)
        elif snap.trial_ttl_ms > 0:
            self._reject(self._clock.monotonic())  # another caller holds the trial
        token = f"{os.getpid()}:{uuid.uuid4().hex}"
        try:
            status, left = storage.claim(reset, self._lease, token)
        except _redis_error() as exc:
            self._redis_failed(exc)
            return self._admit_local()
        self._invalidate()
        if status == "claimed":
            with self._lock:
                self._trial = True
                self._trial_token = token
                self._trial_deadline = self._clock.monotonic() + self._lease
                changes = self._set_state_locked(_HALF_OPEN)
            self._notify(changes)
            return True
        if status == "closed":
            return False
        self._reject(None if status == "forced" else self._clock.monotonic() + max(left, 0.0))

    def _reject(self, retry_at: float | None) -> NoReturn:
        with self._lock:
            self._rejected += 1
        raise CircuitOpenError(self.name, retry_at)

    def _record_shared(self, failed: bool, slow: bool, is_trial: bool) -> None:
        storage = self._shared
        assert storage is not None
        usable = self._redis_usable()
        with self._lock:
            token = self._trial_token if is_trial else None
            if is_trial:
                self._trial_token = None
            # With Redis up, Redis decides; we only count (and learn whether
            # the rate-mode window, which is ours, says "open").
            changes, trip = self._record_locked(failed, slow, is_trial, authoritative=not usable)
            closed = self._state is _CLOSED
        if usable:
            try:
                changes = self._write_outcome(storage, failed, is_trial, token, closed, trip)
                token = None
            except _redis_error() as exc:
                self._redis_failed(exc)
                # Redis went away mid-call: decide here, as if it had been
                # away all along (the outcome is counted already).
                with self._lock:
                    changes = self._decide_locked(failed, is_trial, token is not None, trip)
        if token is not None:
            with self._lock:
                self._orphan_tokens.append(token)  # release the claim when Redis is back
        self._notify(changes)

    def _write_outcome(
        self,
        storage: _RedisStorage,
        failed: bool,
        is_trial: bool,
        token: str | None,
        closed: bool,
        trip: bool,
    ) -> _Changes:
        """Tell Redis about one outcome; mirror what it decided."""
        if is_trial:
            if token is None:
                return []  # closed or forced meanwhile: the trial no longer decides
            outcome = storage.end_trial(token, success=not failed)
            self._invalidate()
            with self._lock:
                if outcome == "closed":
                    return self._close_locked()
                if outcome == "open":
                    return self._open_locked(self._clock.monotonic())
            return []
        if not closed:
            return []
        if not failed:
            snap = self._snap
            if self._incremented or (
                snap is not None and snap.failures > 0 and self._reset_snap is not snap
            ):
                # Only when there is something to reset: a success on a
                # healthy endpoint costs no Redis write.
                self._incremented = False
                self._reset_snap = snap
                storage.reset_failures()
            return []
        if self._window is not None:
            tripped = trip and storage.trip()
        else:
            # Consecutive mode counts in Redis: failures in any process add up.
            self._incremented = True
            tripped = storage.record_failure(self.policy.failure_threshold)
        if not tripped:
            return []
        self._invalidate()
        with self._lock:
            return self._open_locked(self._clock.monotonic())

    def _decide_locked(self, failed: bool, is_trial: bool, had_token: bool, trip: bool) -> _Changes:
        """The state change an in-process breaker would make for an outcome
        that is counted already."""
        if is_trial:
            if not had_token or self._forced or self._state is not _HALF_OPEN:
                return []
            return self._open_locked(self._clock.monotonic()) if failed else self._close_locked()
        if not trip or self._state is not _CLOSED:
            return []
        self._pending = "trip"
        return self._open_locked(self._clock.monotonic())

    def _push_force(self, open_: bool) -> None:
        storage = self._shared
        if storage is None:
            return
        if self._redis_usable():
            try:
                storage.force(open_)
                self._invalidate()
                return
            except _redis_error() as exc:
                self._redis_failed(exc)
        with self._lock:
            self._pending = "force_open" if open_ else "force_close"

    def _redis_failed(self, exc: Exception) -> None:
        storage = self._shared
        assert storage is not None
        self._snap = None
        self._down_until = time.monotonic() + _REDIS_RETRY_INTERVAL
        storage.drop_idle_connections()
        with self._lock:
            first, self._down = not self._down, True
        if first:
            logger.warning(
                "circuit breaker %r: Redis at %s is unreachable (%s: %s); "
                "using in-process state until it answers again",
                self.name,
                storage.url,
                type(exc).__name__,
                exc,
                extra={"endpoint": self.name, "redis": storage.url},
            )

    def _resync(self, storage: _RedisStorage, snap: _Shared) -> _Shared:
        """Redis answers again: push what happened here meanwhile, then
        return the state to adopt. An open breaker wins over a closed one."""
        with self._lock:
            pending, self._pending = self._pending, None
            orphans, self._orphan_tokens = self._orphan_tokens, []
            still_open = self._state is not _CLOSED
        wrote = False
        for token in orphans:
            storage.release(token)
            wrote = True
        if pending == "force_open" and not snap.forced:
            storage.force(True)
            wrote = True
        elif pending == "force_close" and (snap.forced or snap.state is not _CLOSED):
            storage.force(False)
            wrote = True
        elif pending == "trip" and still_open and snap.state is _CLOSED:
            storage.trip()
            wrote = True
        if wrote:
            self._invalidate()
            snap = storage.snapshot()
        self._down = False
        logger.info(
            "circuit breaker %r: Redis at %s answers again; shared state resynced",
            self.name,
            storage.url,
            extra={"endpoint": self.name, "redis": storage.url},
        )
        return snap

    # -- notifications -----------------------------------------------------------

    def _notify(self, changes: _Changes) -> None:
        # Called without the lock, so a callback may use the breaker.
        for old, new in changes:
            if self._on_state_change is not None:
                self._safely(self._on_state_change, self, old, new)
            for listener in self._listeners:
                self._safely(
                    listener.state_change, self, _LISTENER_STATES[old], _LISTENER_STATES[new]
                )

    def _notify_outcome(self, failed: bool, slow: bool, duration: float) -> None:
        for listener in self._listeners:
            if not failed:
                self._safely(listener.success, self)
            else:
                why = f"slow call ({duration:.3f}s)" if slow else "attempt failed"
                self._safely(listener.failure, self, _FailedAttempt(why))

    def _safely(self, fn: Callable[..., Any], *args: Any) -> None:
        # The state has already changed: a failing observer must not break
        # the call that happened to trigger it.
        try:
            fn(*args)
        except Exception:
            logger.exception("circuit breaker %r: a state listener failed", self.name)
