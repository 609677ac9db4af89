"""
Shared breaker state in Redis: `RedisStore`, on pybreaker's `CircuitRedisStorage`.

A module of its own so that pybreaker (and redis-py, which it imports when
installed) is imported only by a breaker whose ``storage`` is a Redis URL.
It is the only module that talks Lua.

Decision record: compare-and-set, one script, no breaker logic in Lua
----------------------------------------------------------------------
The record lives in five keys under ``resilient_client:{<name>}:breaker:``:
pybreaker's ``state`` and ``fail_counter``, plus ``opened_at_ms``, ``forced``
and ``trial`` (the lease holder, written with ``SET NX PX`` so Redis expires
the lease of a holder that vanished). `RedisStore.apply` runs the machine's
step in Python on a snapshot, then `_LUA_CAS` writes the keys that changed
only if all five still hold what the snapshot read; otherwise it returns
what they hold now, and the step runs again on that (at most
`_CAS_ATTEMPTS` times). Either way the script answers with the keys as they
are after it ran and Redis's ``TIME``, which become the cached snapshot, so
an outcome costs one round trip, as the seven per-operation scripts did,
without a second copy of every decision in Lua.

Time across hosts: monotonic clocks have a per-host epoch, so they cannot be
shared; wall clocks can, but drift between hosts. The store's ``now`` is
therefore Redis's own ``TIME`` (epoch seconds, sub-millisecond) as of the
last snapshot, plus the local monotonic time elapsed since it was read.

On a host (``state: redis://...``) the snapshot is also cached in the
endpoint's host file (`_host_redis`): the host's workers read Redis at most
once per `_SHARED_CACHE_TTL` between them, not once each.

Redis must never become the thing that fails: every operation has a short
socket timeout and no retries; when Redis is unreachable the store carries
on with a `MemoryStore` seeded with the last record it saw, logs that once,
tries Redis again at most every `_REDIS_RETRY_INTERVAL` seconds, and when it
answers writes what `BreakerMachine.reconcile` makes of the outage.

Why it is long: it is the Redis backend whole (its two Lua scripts, the
pybreaker storage that runs them, the record's encoding in keys, and what an
unreachable Redis means), kept in one module so that the scripts live
nowhere else and nothing else imports pybreaker or redis-py.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pybreaker

from ._breaker_machine import CLOSED, CLOSED_RECORD, BreakerState, Record
from ._breaker_store import Changes, MemoryStore, Step
from .exceptions import ConfigError

if TYPE_CHECKING:
    from ._host_redis import RedisHostCache

__all__ = ["RedisStore"]

R = TypeVar("R")
logger = logging.getLogger("resilient_client")

#: How long a snapshot of the shared state read from Redis is trusted. Within
#: it, calls cost no Redis round trip; another process's trip is seen at most
#: this late. This and the intervals below are real time (`time.monotonic`),
#: not the injected clock: they pace talk with a real server, and a fake clock
#: that never moves must not freeze the cache.
_SHARED_CACHE_TTL = 0.02
#: Socket timeouts for Redis (connect, and each operation). A breaker's job is
#: to fail fast: a slow Redis must not add more than this to a call.
_REDIS_CONNECT_TIMEOUT = 0.05
_REDIS_TIMEOUT = 0.1
#: After Redis failed, how long to run on in-process state before trying again.
_REDIS_RETRY_INTERVAL = 1.0
#: Shared keys expire after a day without writes: breakers per origin would
#: otherwise leave keys behind for every host ever called.
_KEY_TTL_MS = 86_400_000
#: Compare-and-set rounds before giving up on sharing one decision (each
#: conflict means another process wrote meanwhile, so someone progressed).
_CAS_ATTEMPTS = 32

_KEY_NAMES = ("state", "opened_at_ms", "forced", "fail_counter", "trial")

# KEYS: state, opened_at_ms, forced, fail_counter, trial. Returns the five
# values, the trial's PTTL and TIME; with a leading 1 (written) or 0 (not).
_LUA_READ = """
local function read(ok)
  local t = redis.call('TIME')
  return {ok, redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]), redis.call('GET', KEYS[3]),
          redis.call('GET', KEYS[4]), redis.call('GET', KEYS[5]), redis.call('PTTL', KEYS[5]),
          t[1], t[2]}
end
"""

_LUA_SNAPSHOT = _LUA_READ + "return read(0)"

# ARGV 1-5: the values read ('' = absent); 6-10: the values to write ('' =
# delete); 11: the trial lease in ms; 12: the key ttl in ms. Nothing here
# knows what a breaker is: it writes a record if nobody changed it meanwhile.
_LUA_CAS = _LUA_READ + """
if redis.replicate_commands then redis.replicate_commands() end
for i = 1, 5 do
  if (redis.call('GET', KEYS[i]) or '') ~= ARGV[i] then return read(0) end
end
if ARGV[10] ~= ARGV[5] then
  redis.call('DEL', KEYS[5])
  if ARGV[10] ~= '' then redis.call('SET', KEYS[5], ARGV[10], 'NX', 'PX', ARGV[11]) end
end
for i = 1, 4 do
  local new = ARGV[5 + i]
  if new == '' then
    redis.call('DEL', KEYS[i])
  elseif i == 3 then
    redis.call('SET', KEYS[i], new)  -- forced open lasts until closed
  elseif new ~= ARGV[i] then
    redis.call('SET', KEYS[i], new, 'PX', ARGV[12])
  else
    redis.call('PEXPIRE', KEYS[i], ARGV[12])
  end
end
return read(1)
"""

_STATE_BY_BYTES = {s.value.encode(): s for s in BreakerState}


class _Snap(NamedTuple):
    """The shared record as read in one round trip."""

    record: Record
    raw: tuple[str, ...]  # the five values as read, to compare-and-set against
    now: float  # Redis TIME when read, epoch seconds
    read_at: float  # time.monotonic() here when read
    pttl: float = 0.0  # the trial lease's PTTL in ms when read (for the host cache)

    def clock(self) -> float:
        """Redis's time now, as far as this snapshot tells."""
        return self.now + (time.monotonic() - self.read_at)


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else "" if raw is None else str(raw)


def _number(raw: str) -> float:
    """A number stored in Redis; a missing or mangled value reads as 0, never
    as an exception out of before_call()."""
    try:
        value = float(raw) if raw else 0.0
    except ValueError:
        return 0.0
    return value if math.isfinite(value) else 0.0


def _decode(reply: Sequence[Any]) -> tuple[bool, _Snap]:
    ok, *values = reply
    raw = tuple(_text(v) for v in values[:5])
    pttl, secs, usecs = (_number(_text(v)) for v in values[5:8])
    return bool(ok), _snap(raw, pttl, secs + usecs / 1e6, time.monotonic())


def _snap(raw: tuple[str, ...], pttl: float, now: float, read_at: float) -> _Snap:
    """The snapshot of five key values, the trial's PTTL (ms) and Redis TIME, read at *read_at*."""
    holder = raw[4] if pttl > 0 else ""
    record = Record(
        state=_STATE_BY_BYTES.get(raw[0].encode(), CLOSED),
        forced=bool(raw[2]),
        opened_at=_number(raw[1]) / 1000.0,
        failures=int(_number(raw[3])),
        trial=holder,
        trial_until=now + pttl / 1000.0 if holder else 0.0,
    )
    return _Snap(record, raw, now, read_at, pttl)


def _encode(old: _Snap, new: Record) -> list[str]:
    """The values to write for *new*; a field left as it was keeps its bytes."""
    rec = old.record
    return [
        "" if new.state is CLOSED else new.state.value,
        old.raw[1] if new.opened_at == rec.opened_at else
        (f"{new.opened_at * 1000.0:.3f}" if new.opened_at else ""),
        "1" if new.forced else "",
        old.raw[3] if new.failures == rec.failures else (str(new.failures) if new.failures else ""),
        new.trial,
    ]


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
    from redis.exceptions import RedisError

    return RedisError


class _RedisStorage(pybreaker.CircuitRedisStorage):
    """
    pybreaker's Redis storage with sub-second ``opened_at``, no network I/O
    in the constructor, and our two scripts. Our methods raise
    `redis.RedisError`; `RedisStore` decides what an unreachable Redis means.
    """

    #: Keys are ``resilient_client:{<name>}:breaker:<key>``; the braces make
    #: every key of a breaker hash to one Redis Cluster slot, as scripts need.
    BASE_NAMESPACE = "breaker"

    def __init__(self, url: str, name: str) -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:  # pragma: no cover - depends on the environment
            raise ConfigError(
                "breaker.storage",
                "a redis:// storage needs the redis package: "
                "pip install 'resilient_client[redis]'",
            ) from None
        client = redis.Redis.from_url(
            url,
            socket_timeout=_REDIS_TIMEOUT,
            socket_connect_timeout=_REDIS_CONNECT_TIMEOUT,
            # redis-py retries failed commands by default (with backoff):
            # that would multiply the timeouts above. We fail over instead.
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self.url = _redact(url)
        super().__init__(pybreaker.STATE_CLOSED, client, namespace=f"resilient_client:{{{name}}}")
        self._client: redis.Redis = client
        self._keys = [self._namespace(k) for k in _KEY_NAMES]
        self._snapshot: Callable[..., Any] = client.register_script(_LUA_SNAPSHOT)
        self._cas: Callable[..., Any] = client.register_script(_LUA_CAS)

    def _initialize_redis_state(self, state: str) -> None:
        # pybreaker SETNXes its keys here, from the constructor. Missing keys
        # already read as closed / 0, and building a breaker must not block
        # on (or fail with) Redis, so there is nothing to do.
        return None

    # pybreaker's accessor, with sub-second precision: for a pybreaker
    # CircuitBreaker sharing this storage. Our own code uses the scripts.
    @property
    def opened_at(self) -> datetime | None:
        """When the breaker last opened (UTC, sub-second), or ``None``."""
        try:
            raw = self._client.get(self._keys[1])
        except _redis_error():
            self.logger.exception("RedisError")
            return None
        if not raw:
            return None
        return datetime.fromtimestamp(float(raw) / 1000.0, tz=timezone.utc)

    @opened_at.setter
    def opened_at(self, now: datetime) -> None:
        try:
            self._client.set(self._keys[1], f"{now.timestamp() * 1000.0:.3f}", px=_KEY_TTL_MS)
        except _redis_error():
            self.logger.exception("RedisError")

    def snapshot(self) -> _Snap:
        return _decode(self._snapshot(keys=self._keys))[1]

    def compare_and_set(self, old: _Snap, new: Record, lease: float) -> tuple[bool, _Snap]:
        """Write *new* if the keys still hold *old*: ``(written, keys now)``."""
        ms = max(1, math.ceil(lease * 1000.0))
        args = [*old.raw, *_encode(old, new), ms, _KEY_TTL_MS]
        return _decode(self._cas(keys=self._keys, args=args))

    def drop_idle_connections(self) -> None:
        """After a failure: idle pooled connections are likely dead too."""
        # Best effort: cleanup must never mask the outage itself.
        with contextlib.suppress(Exception):
            self._client.connection_pool.disconnect(inuse_connections=False)


class RedisStore:
    """
    A `BreakerStore` in Redis, shared by every breaker with the same name
    and URL; ``now`` is Redis's clock. Thread-safe.
    """

    exclusive = False
    local_time = False
    scope = "redis"

    def __init__(
        self, url: str, name: str, reconcile: Callable[[Record, Record, Record, float], Record]
    ) -> None:
        self.storage = _RedisStorage(url, name)
        self.url = self.storage.url
        self._name = name
        self._reconcile = reconcile
        self._lock = threading.Lock()  # the fields below but the snapshot
        self._refresh_lock = threading.Lock()  # one reader at a time
        self._snap: _Snap | None = None  # the newest snapshot, None while down
        self._last: _Snap | None = None  # the newest ever: the time base when down
        self._reported: BreakerState = CLOSED  # the state our owner was last told
        self._down = False
        self._down_until = 0.0  # time.monotonic(): Redis is not tried before then
        self._base = CLOSED_RECORD  # the shared record when Redis went away
        self._local: MemoryStore | None = None  # the truth while Redis is away
        #: The host's copy of the snapshot (`_host_redis`), when the endpoint
        #: has a host file: one Redis read per interval per host, not per process.
        self.host: RedisHostCache | None = None

    # -- the BreakerStore protocol ------------------------------------------------

    def read(self) -> tuple[Record, float, Changes]:
        snap = self._current(_SHARED_CACHE_TTL)
        if snap is None:
            rec, now, _ = self._local_store().read()
        else:
            rec, now = snap.record, snap.clock()
        return rec, now, self._observe(rec.state)

    def apply(self, step: Step[R], *, fresh: bool = True) -> tuple[Record, R, float, Changes]:
        snap = self._current(_SHARED_CACHE_TTL if fresh else math.inf)
        if snap is not None:
            try:
                return self._apply_shared(step, snap)
            except _redis_error() as exc:
                self._failed(exc)
        rec, result, now, _ = self._local_store().apply(step)
        return rec, result, now, self._observe(rec.state)

    def _apply_shared(self, step: Step[R], snap: _Snap) -> tuple[Record, R, float, Changes]:
        for _ in range(_CAS_ATTEMPTS):
            now = snap.clock()
            new, result = step(snap.record, now)
            if new is snap.record:
                return new, result, now, self._observe(new.state)
            written, snap = self.storage.compare_and_set(snap, new, self._lease(new, now))
            self._cache(snap)
            self._publish(snap)
            if written:
                return snap.record, result, now, self._observe(snap.record.state)
        # Every write lost to another process's: decide for this call alone,
        # on the latest record, without sharing it (at worst a lost count, or
        # a trial call that the shared record does not know and ignores).
        logger.debug("circuit breaker %r: Redis busy, decided locally", self._name)
        new, result, now, _ = MemoryStore(_RedisTime(self), snap.record).apply(step)
        return new, result, now, ()

    def reachable(self) -> bool | None:
        return not self._down

    # -- snapshots -----------------------------------------------------------------

    @staticmethod
    def _lease(new: Record, now: float) -> float:
        return new.trial_until - now if new.trial else 0.0

    def _cache(self, snap: _Snap) -> None:
        # Newest by Redis's clock wins: a read that ran before our write must
        # not bring back the state it replaced.
        with self._lock:
            if self._snap is None or snap.now >= self._snap.now:
                self._snap = snap
            if self._last is None or snap.now >= self._last.now:
                self._last = snap

    def _current(self, max_age: float) -> _Snap | None:
        """
        The shared state no older than *max_age*, or as near as another
        thread's read in progress allows; ``None`` while Redis is away (then
        the local store applies).
        """
        snap = self._snap
        now = time.monotonic()
        if snap is not None and now - snap.read_at < max_age:
            return snap
        if self._down and now < self._down_until:
            return None
        host = self.host
        if host is not None and host.usable and not self._down:
            shared = host.fresh(max_age)
            if shared is not None:
                self._cache(_snap(*shared))
                return self._snap
            if not host.claim(max_age) and snap is not None:
                return snap  # another process of this host is reading Redis
        if snap is not None or self._down:
            # One thread reads (or probes a Redis that was away); the others
            # make do with a snapshot a few ms older, or the local state,
            # rather than all queueing on Redis at once.
            if not self._refresh_lock.acquire(blocking=False):
                return snap
        else:
            # No snapshot at all (the first call): wait for the read in
            # progress, bounded by Redis's socket timeouts.
            self._refresh_lock.acquire()
            snap = self._snap
            if snap is not None:
                self._refresh_lock.release()
                return snap
        try:
            return self._read()
        finally:
            self._refresh_lock.release()

    def _read(self) -> _Snap | None:
        if self._down and time.monotonic() < self._down_until:
            return None  # another thread found Redis away meanwhile
        try:
            snap = self.storage.snapshot()
            if self._down:
                snap = self._resync(snap)
        except _redis_error() as exc:
            self._failed(exc)
            return None
        self._cache(snap)
        self._publish(snap)
        return snap

    def _publish(self, snap: _Snap) -> None:
        host = self.host
        if host is not None and host.usable:
            host.publish(snap.raw, snap.pttl, snap.now, snap.read_at)

    # -- outages ---------------------------------------------------------------------

    def _local_store(self) -> MemoryStore:
        local = self._local
        if local is None:  # Redis failed before this thread noticed
            with self._lock:
                local = self._local = self._local or MemoryStore(_RedisTime(self), self._base)
        return local

    def _failed(self, exc: Exception) -> None:
        self.storage.drop_idle_connections()
        with self._lock:
            first, self._down = not self._down, True
            self._down_until = time.monotonic() + _REDIS_RETRY_INTERVAL
            if first:
                # Carry on from the last shared record seen, on Redis's time
                # as last seen plus time elapsed here.
                self._base = self._last.record if self._last is not None else CLOSED_RECORD
                self._local = MemoryStore(_RedisTime(self), self._base)
            self._snap = None
        if first:
            logger.warning(
                "circuit breaker %r: Redis at %s is unreachable (%s: %s); "
                "using in-process state until it answers again",
                self._name,
                self.url,
                type(exc).__name__,
                exc,
                extra={"endpoint": self._name, "redis": self.url},
            )

    def _resync(self, snap: _Snap) -> _Snap:
        """Redis answers again: write what happened here meanwhile."""
        local = self._local_store().record
        target = self._reconcile(self._base, local, snap.record, snap.clock())
        if target is not snap.record:
            # Not written: someone wrote in between, and theirs is newer news.
            snap = self.storage.compare_and_set(snap, target, self._lease(target, snap.now))[1]
        with self._lock:
            self._down = False
            self._local = None
        logger.info(
            "circuit breaker %r: Redis at %s answers again; shared state resynced",
            self._name,
            self.url,
            extra={"endpoint": self._name, "redis": self.url},
        )
        return snap

    def _observe(self, state: BreakerState) -> Changes:
        # Each process reports a change when it notices it, as pybreaker
        # does for a state changed by another process.
        if state is self._reported:
            return ()
        with self._lock:
            old, self._reported = self._reported, state
        return ((old, state),) if old is not state else ()


class _RedisTime:
    """The clock of the local store while Redis is away: Redis's ``TIME`` as
    last seen, plus the time elapsed here (the wall clock if never seen)."""

    __slots__ = ("_store",)

    def __init__(self, store: RedisStore) -> None:
        self._store = store

    def monotonic(self) -> float:
        last = self._store._last
        return time.time() if last is None else last.clock()

    def sleep(self, seconds: float) -> None:  # pragma: no cover - never called
        time.sleep(seconds)
