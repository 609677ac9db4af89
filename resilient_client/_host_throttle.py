"""
``state: host``'s throttle: `HostThrottle`, a `Throttle` whose window of
counts (requests, accepts) lives in a small file of its own beside the
endpoint's host file, so every process on the host refuses in proportion
to what the peer accepted from all of them.

Why a file of its own rather than a region of the endpoint's host file:
its layout is not the breaker's or the budget's business, and a damaged or
unusable throttle file must not take those down with it. Like the budget,
counts made in the process reach the file at most every ``_FLUSH_EVERY``
seconds (one locked read-modify-write), and the shared totals read then
serve the calls in between, so a call costs O(1) and no system call on
most calls. Any error with the file degrades to the process-local throttle
(logged once); a request never fails for it. Counts still pending when the
process exits are flushed then (``atexit``, best-effort: not after a kill).

Two windows for one endpoint name (two services on the host configured
apart) keep their counts apart: the window is part of the file's name
(``NAME-HASH.w120.throttle``), since counts in buckets of one length cannot
be added to another's; the first flush that finds another window's file
warns once, because those processes do not throttle together.
"""

from __future__ import annotations

import atexit
import fcntl
import glob
import os
import struct
import time
import weakref
from collections.abc import Callable

from ._clock import Clock
from ._host_dir import path_for, warn_once
from ._policy import ThrottlePolicy
from ._throttle import _BUCKETS, Throttle, reject_probability

__all__ = ["HostThrottle"]

#: Pending counts reach the file (and the shared totals are read) this often.
_FLUSH_EVERY = 0.05
_MAGIC = 0x52435431  # "RCT1"
#: magic, bucket length (s, to notice two policies), epoch, then requests and accepts per bucket.
_LAYOUT = struct.Struct(f"<Idq{2 * _BUCKETS}I")


#: Every live host throttle, for the flush at exit.
_LIVE: weakref.WeakSet[HostThrottle] = weakref.WeakSet()


def _flush_at_exit() -> None:
    """Counts not yet in the file reach it when the process exits (best-effort)."""
    for throttle in list(_LIVE):
        try:
            if throttle._shared and throttle._pending_requests:
                throttle._flush()
        except Exception:  # exiting: nothing to degrade to, and nobody to tell
            pass


atexit.register(_flush_at_exit)


class HostThrottle(Throttle):
    """A `Throttle` whose counts are shared on the host (see the module docstring)."""

    __slots__ = ("__weakref__", "_base", "_checked", "_dir", "_flushed", "_path", "_pending_accepts",
                 "_pending_requests", "_shared", "_shared_accepts", "_shared_requests")

    def __init__(self, policy: ThrottlePolicy, clock: Clock, state_dir: str, name: str,
                 rand: Callable[[], float] | None = None) -> None:
        if rand is None:
            super().__init__(policy, clock)
        else:
            super().__init__(policy, clock, rand)
        self._base = path_for(state_dir, name).removesuffix(".state")
        self._path = f"{self._base}.w{policy.window:g}.throttle"
        self._checked = False
        self._dir = state_dir
        self._pending_requests = self._pending_accepts = 0
        self._shared_requests = self._shared_accepts = 0
        self._flushed = -_FLUSH_EVERY
        self._shared = True
        _LIVE.add(self)

    @property
    def shared(self) -> bool:
        """Whether the counts are still shared on the host (False once the file failed)."""
        return self._shared

    def snapshot(self) -> tuple[int, int]:
        if self._shared:
            self._maybe_flush(force=True)
            if self._shared:
                return self._shared_requests, self._shared_accepts
        return super().snapshot()

    def rate(self) -> float:
        # From the totals last read (at most _FLUSH_EVERY old): a refusal
        # reports its rate without a file operation of its own.
        if not self._shared:
            return super().rate()
        with self._lock:
            return reject_probability(self._shared_requests + self._pending_requests,
                                      self._shared_accepts + self._pending_accepts, self.policy)

    def admit(self) -> bool:
        if not self._shared:
            return super().admit()
        self._maybe_flush()
        with self._lock:
            p = reject_probability(self._shared_requests + self._pending_requests,
                                   self._shared_accepts + self._pending_accepts, self.policy)
            if p <= 0.0 or self._rand() >= p:
                return True
            self._pending_requests += 1
            self.refused += 1
            return False

    def record(self, accepted: bool) -> None:
        if not self._shared:
            super().record(accepted)
            return
        with self._lock:
            self._pending_requests += 1
            if accepted:
                self._pending_accepts += 1
        self._maybe_flush()

    def _maybe_flush(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._flushed < _FLUSH_EVERY:
            return
        self._flushed = now
        try:
            self._flush()
        except (OSError, ValueError, struct.error) as exc:
            warn_once(self._path, "host throttle file for %r unusable (%s); using process-local counts",
                      self._path, exc)
            with self._lock:
                self._shared = False
                pending = self._pending_requests, self._pending_accepts
                self._pending_requests = self._pending_accepts = 0
            for _ in range(pending[1]):
                super().record(True)
            for _ in range(pending[0] - pending[1]):
                super().record(False)

    def _flush(self) -> None:
        """Add the pending counts to the file's window and read its totals (one locked update)."""
        if not self._checked:
            self._checked = True
            others = sorted(set(glob.glob(glob.escape(self._base) + ".w*.throttle")) - {self._path})[:5]
            if others:
                warn_once(self._base, "throttle for %r on the host with window %gs, but other processes "
                          "use another window (%s): each window keeps its own counts, so they do not "
                          "throttle together; give the endpoint one throttle.window on the host",
                          os.path.basename(self._base), self.policy.window,
                          ", ".join(os.path.basename(o) for o in others))
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:
            os.makedirs(self._dir, mode=0o700, exist_ok=True)
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, _LAYOUT.size, 0)
            bucket = int(self._clock.monotonic() / self._bucket_len)
            requests, accepts = [0] * _BUCKETS, [0] * _BUCKETS
            if len(raw) == _LAYOUT.size:
                values = _LAYOUT.unpack(raw)
                magic, length, epoch = values[0], values[1], values[2]
                # Another policy's window, the future or the distant past: start afresh.
                if magic == _MAGIC and length == self._bucket_len and epoch <= bucket < epoch + _BUCKETS:
                    requests = list(values[3:3 + _BUCKETS])
                    accepts = list(values[3 + _BUCKETS:])
                    for b in range(epoch + 1, bucket + 1):
                        requests[b % _BUCKETS] = accepts[b % _BUCKETS] = 0
            with self._lock:
                pending_r, pending_a = self._pending_requests, self._pending_accepts
                self._pending_requests = self._pending_accepts = 0
            top = 0xFFFFFFFF
            requests[bucket % _BUCKETS] = min(top, requests[bucket % _BUCKETS] + pending_r)
            accepts[bucket % _BUCKETS] = min(top, accepts[bucket % _BUCKETS] + pending_a)
            os.pwrite(fd, _LAYOUT.pack(_MAGIC, self._bucket_len, bucket, *requests, *accepts), 0)
            with self._lock:
                self._shared_requests, self._shared_accepts = sum(requests), sum(accepts)
        finally:
            os.close(fd)  # closing drops the lock
