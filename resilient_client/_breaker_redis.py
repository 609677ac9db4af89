"""
Shared breaker state in Redis, on pybreaker's `CircuitRedisStorage`.

A module of its own so that pybreaker (and redis-py, which it imports when
installed) is imported only by a breaker whose ``storage`` is a Redis URL.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pybreaker

from ._breaker import (
    _CLOSED,
    _KEY_TTL_MS,
    _LUA_CLAIM,
    _LUA_END_TRIAL,
    _LUA_FAIL,
    _LUA_FORCE,
    _LUA_RELEASE,
    _LUA_SNAPSHOT,
    _LUA_TRIP,
    _REDIS_CONNECT_TIMEOUT,
    _REDIS_TIMEOUT,
    _STATE_BY_BYTES,
    _number,
    _redact,
    _redis_error,
    _Shared,
)
from .exceptions import ConfigError

__all__ = ["_RedisStorage"]


class _RedisStorage(pybreaker.CircuitRedisStorage):
    """
    Shared breaker state in Redis: pybreaker's storage with sub-second
    ``opened_at``, no network I/O in the constructor, and atomic scripts for
    what the breaker does. Our methods raise `redis.RedisError`; the breaker
    decides what an unreachable Redis means.
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
        self._keys = [
            self._namespace(k) for k in ("state", "opened_at_ms", "forced", "fail_counter", "trial")
        ]
        register = client.register_script
        self._snapshot: Callable[..., Any] = register(_LUA_SNAPSHOT)
        self._fail: Callable[..., Any] = register(_LUA_FAIL)
        self._trip: Callable[..., Any] = register(_LUA_TRIP)
        self._claim: Callable[..., Any] = register(_LUA_CLAIM)
        self._end_trial: Callable[..., Any] = register(_LUA_END_TRIAL)
        self._release: Callable[..., Any] = register(_LUA_RELEASE)
        self._force: Callable[..., Any] = register(_LUA_FORCE)

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

    # -- what the breaker uses; each is one round trip ------------------------

    def snapshot(self) -> _Shared:
        state, opened, forced, fails, ttl, secs, usecs = self._snapshot(keys=self._keys)
        return _Shared(
            state=_STATE_BY_BYTES.get(state or b"", _CLOSED),
            forced=bool(forced),
            opened_at_ms=_number(opened),
            now_ms=_number(secs) * 1000.0 + _number(usecs) / 1000.0,
            failures=int(_number(fails)),
            trial_ttl_ms=int(ttl),
            read_at=time.monotonic(),
        )

    def record_failure(self, threshold: int) -> bool:
        """Count a failure; return whether this one opened the breaker."""
        return bool(self._fail(keys=self._keys, args=[threshold, _KEY_TTL_MS]))

    def reset_failures(self) -> None:
        self._client.delete(self._keys[3])

    def trip(self) -> bool:
        return bool(self._trip(keys=self._keys, args=[_KEY_TTL_MS]))

    def claim(self, reset_timeout: float, lease: float, token: str) -> tuple[str, float]:
        """Try to claim the trial: ``(outcome, seconds until possible)``."""
        status, left = self._claim(
            keys=self._keys,
            args=[f"{reset_timeout * 1000.0:.3f}", math.ceil(lease * 1000.0), token, _KEY_TTL_MS],
        )
        return status.decode(), float(left) / 1000.0

    def end_trial(self, token: str, success: bool) -> str:
        out: bytes = self._end_trial(
            keys=self._keys, args=[token, "1" if success else "0", _KEY_TTL_MS]
        )
        return out.decode()

    def release(self, token: str) -> None:
        self._release(keys=self._keys, args=[token])

    def force(self, open_: bool) -> None:
        self._force(keys=self._keys, args=["1" if open_ else "0", _KEY_TTL_MS])

    def drop_idle_connections(self) -> None:
        """After a failure: idle pooled connections are likely dead too."""
        # Best effort: cleanup must never mask the outage itself.
        with contextlib.suppress(Exception):
            self._client.connection_pool.disconnect(inuse_connections=False)
