"""
``state: host``'s retry budget: `HostBudget`, a `RetryBudget` whose ten
buckets (first tries and retries) are in the endpoint's host file, so the
budget's reserve (``min_per_second``) and ratio hold for the host, not per
worker. How first tries reach the file cheaply: see `_host_state`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from . import _host_file
from ._budget import RetryBudget
from ._clock import Clock
from ._host_dir import warn_once
from ._host_file import BUCKETS, BUDGET, BUDGET_AT, HostFile, HostFileBusy, HostFileError
from ._policy import BudgetPolicy

__all__ = ["HostBudget"]

R = TypeVar("R")
#: First tries counted in the process reach the file at least this often.
_FLUSH_EVERY = 0.05


class HostBudget(RetryBudget):
    """A `RetryBudget` whose buckets are shared on the host (see the module docstring)."""

    __slots__ = ("_file", "_flushed", "_pending", "_retry_at", "_shared")

    def __init__(self, policy: BudgetPolicy, clock: Clock, file: HostFile) -> None:
        super().__init__(policy, clock)
        self._file = file
        self._pending = 0  # first tries not yet in the file
        self._flushed = time.monotonic()
        self._shared = True
        self._retry_at = 0.0

    @property
    def scope(self) -> str:
        """``host``, or ``process`` once the file is unusable."""
        return "host" if self._shared else "process"

    def record_request(self) -> None:
        if not self._shared and not self._revived():
            super().record_request()
            return
        with self._lock:
            self._pending += 1
        if time.monotonic() - self._flushed >= _FLUSH_EVERY:
            self._locked(lambda fd: None)

    def try_spend(self) -> bool:
        if self._shared or self._revived():
            spent = self._locked(self._spend)
            if spent is not None:
                return spent
        return super().try_spend()

    def snapshot(self) -> tuple[int, int]:
        if self._shared:
            counts = self._locked(lambda fd: self._read(fd, self._clock.monotonic())[1:])
            if counts is not None:
                return sum(counts[0]), sum(counts[1])
        return super().snapshot()

    def flush(self, fd: int) -> None:
        """Add the first tries counted here to the file (its lock held by the caller)."""
        with self._lock:
            pending, self._pending = self._pending, 0
        if pending:
            bucket, requests, retries = self._read(fd, self._clock.monotonic())
            requests[bucket % BUCKETS] += pending
            self._write(fd, bucket, requests, retries)
        self._flushed = time.monotonic()

    def _spend(self, fd: int) -> bool:
        bucket, requests, retries = self._read(fd, self._clock.monotonic())
        allowed = self.policy.ratio * sum(requests) + self.policy.min_per_second * self.policy.window
        if sum(retries) + 1 > allowed:
            return False
        retries[bucket % BUCKETS] += 1
        self._write(fd, bucket, requests, retries)
        return True

    def _read(self, fd: int, now: float) -> tuple[int, list[int], list[int]]:
        """The buckets, slid to *now* (zeroing those that left the window)."""
        values = BUDGET.unpack(self._file.read(fd, BUDGET_AT, BUDGET.size))
        epoch, requests, retries = values[0], list(values[1:1 + BUCKETS]), list(values[1 + BUCKETS:])
        bucket = int(now / self._bucket_len)
        if bucket - epoch >= BUCKETS or epoch > bucket + BUCKETS:
            requests, retries = [0] * BUCKETS, [0] * BUCKETS  # all stale (or nonsense)
        else:
            for b in range(epoch + 1, bucket + 1):
                requests[b % BUCKETS] = retries[b % BUCKETS] = 0
        return max(bucket, epoch), requests, retries

    def _write(self, fd: int, bucket: int, requests: list[int], retries: list[int]) -> None:
        top = 0xFFFFFFFF
        self._file.write(fd, BUDGET_AT, BUDGET.pack(bucket, *(min(v, top) for v in requests),
                                                    *(min(v, top) for v in retries)))

    def _locked(self, op: Callable[[int], R]) -> R | None:
        """*op* under the file lock, pending first tries flushed; None when degraded or busy."""
        try:
            with self._file.locked() as fd:
                self.flush(fd)
                return op(fd)
        except HostFileBusy:
            return None  # this call decides in the process (fail open)
        except HostFileError as exc:
            warn_once(self._file.path, "host state for endpoint %r unusable (%s); using process-local state",
                      self._file.name, exc)
            self._shared = False
            self._retry_at = time.monotonic() + _host_file.CHECK_EVERY
            return None

    def _revived(self) -> bool:
        """Unusable: whether the file is usable again (tried at most every ``CHECK_EVERY``)."""
        if time.monotonic() < self._retry_at:
            return False
        self._retry_at = time.monotonic() + _host_file.CHECK_EVERY
        self._shared = self._file.revive()
        return self._shared
