"""
``state: redis://...`` on a host: the Redis breaker's snapshot cached in the
endpoint's host file, so a host makes at most one Redis read per refresh
interval (`_breaker_redis._SHARED_CACHE_TTL`) whatever its worker count.

Decision record: one refresher per host and interval
------------------------------------------------------
Each `RedisStore` trusts a snapshot of the shared record for 20 ms; with 16
workers that is 16 reads per 20 ms per host. With the cache, a process
whose snapshot is stale first reads the host file's (one ``pread``, checked
by its crc32): fresh enough, it is used as if read from Redis (its read
time is ``time.monotonic()``, one clock for every process on the host).
Stale, the process claims the refresh under the file lock (a claim lasts
`CLAIM_FOR`, so a claimer that dies blocks nobody for long); the one that
wins reads Redis and publishes the snapshot, the others carry on with the
snapshot they have. A write (the compare-and-set of a change) still goes
to Redis from the process that decides it, and its result is published
too, so the host sees it at once.

Layout: the last 512 bytes of the file, from `CACHE_AT` (after the lease
rows, which end at 4432 in the layout's version 2)::

    0   claim until f64 (written under the lock)
    8   crc32 of the rest u32, payload length u16, 2 bytes padding
    16  read at f64 (time.monotonic()), Redis TIME f64, trial PTTL ms f64
    40  payload: the five key values, utf-8, joined by 0x1f (at most 472 bytes)

A torn or damaged entry fails its crc and reads as "no cache": the process
reads Redis itself, as without a host file.
"""

from __future__ import annotations

import os
import struct
import time
import zlib

from ._host_file import SIZE, HostFile, HostFileError

__all__ = ["CACHE_AT", "CLAIM_FOR", "RedisHostCache"]

CACHE_AT = SIZE - 512
_CACHE_SIZE = SIZE - CACHE_AT
_CLAIM = struct.Struct("<d")
_HEAD = struct.Struct("<IH2xddd")
_BODY_AT = CACHE_AT + 8
_PAYLOAD_MAX = _CACHE_SIZE - 8 - _HEAD.size
#: How long a claimed refresh keeps others from refreshing: longer than a
#: Redis read may take (its socket timeouts), short enough that a claimer
#: killed mid-read costs one interval or so.
CLAIM_FOR = 0.25

#: What the cache holds: the five values, the trial's PTTL (ms), Redis TIME, read at.
Entry = tuple[tuple[str, ...], float, float, float]


class RedisHostCache:
    """The Redis snapshot shared by the processes of one host, in *file*."""

    def __init__(self, file: HostFile) -> None:
        self.file = file
        self.usable = True

    def fresh(self, max_age: float) -> Entry | None:
        """The cached entry if it was read less than *max_age* ago (one ``pread``)."""
        try:
            raw = os.pread(self.file.fd(), _CACHE_SIZE, CACHE_AT)
        except (OSError, HostFileError):
            self.usable = False
            return None
        if len(raw) != _CACHE_SIZE:
            return None
        crc, n, read_at, now, pttl = _HEAD.unpack_from(raw, 8)
        if n > _PAYLOAD_MAX or read_at == 0.0 or time.monotonic() - read_at >= max_age:
            return None
        body = raw[8 + 4:8 + _HEAD.size + n]
        if zlib.crc32(body) != crc:
            return None  # torn by a concurrent publish, or damaged
        payload = raw[8 + _HEAD.size:8 + _HEAD.size + n].decode("utf-8", "replace").split("\x1f")
        if len(payload) != 5:
            return None
        return tuple(payload), pttl, now, read_at

    def claim(self, max_age: float) -> bool:
        """
        Whether this process should refresh: the cache is stale and nobody
        else claimed the refresh within `CLAIM_FOR` (claimed now, if so).
        """
        try:
            with self.file.locked() as fd:
                raw = self.file.read(fd, CACHE_AT, 8 + _HEAD.size)
                (until,) = _CLAIM.unpack_from(raw)
                read_at = _HEAD.unpack_from(raw, 8)[2]
                now = time.monotonic()
                if now - read_at < max_age or now < until:
                    return False
                self.file.write(fd, CACHE_AT, _CLAIM.pack(now + CLAIM_FOR))
                return True
        except HostFileError:
            self.usable = False
            return True  # read Redis ourselves, as without a host file

    def publish(self, values: tuple[str, ...], pttl: float, now: float, read_at: float) -> None:
        """Share a snapshot read (or written) at *read_at*, unless a newer one is there."""
        payload = "\x1f".join(values).encode()
        if len(payload) > _PAYLOAD_MAX:
            return  # a holder name this long is not ours: the others read Redis themselves
        try:
            with self.file.locked() as fd:
                raw = self.file.read(fd, _BODY_AT, _HEAD.size)
                if _HEAD.unpack_from(raw)[3] > now:
                    return  # newer news by Redis's clock is already there
                body = _HEAD.pack(0, len(payload), read_at, now, pttl)[4:] + payload
                # The claim is done with: whoever wants the next refresh may take it.
                self.file.write(fd, CACHE_AT, _CLAIM.pack(0.0) + struct.pack("<I", zlib.crc32(body)) + body)
        except HostFileError:
            self.usable = False
