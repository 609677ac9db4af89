"""
Hedged requests, the requests front's side: the threads the copies run on,
and the race between the copies of one attempt.

Why threads, and why these: a sync caller blocked in one socket read cannot
also send a second copy, so each copy of a hedged attempt runs on a worker
thread while the caller waits for the first acceptable answer. The workers
form one pool per process (`HEDGE_THREADS` at most), started at the first
hedged call: a process that hedges nothing starts no thread, and the threads
are reused from call to call, never one per copy. The pool is bounded and
never queues: when no worker is free, a call runs unhedged on the caller's
own thread and a hedge is simply not sent (`HedgePool.try_submit`). A worker
never outlives the call's deadline on that call's behalf: each copy reads
against the deadline (`resilient_client._deadline`), and a copy that lost is
abandoned (its socket read woken and its connection closed), so the worker
is free again at once.

A copy that lost is stopped by `Abandon`, which the deadline reader
(`resilient_client._deadline`) consults before and during each socket read
of the copy's response.

Why the pool is shared by sessions rather than per session: threads are a
process resource, like file descriptors; one bound for the process is the
bound that matters, and sessions made per request would otherwise each
start threads. It holds no session state: each task carries its call.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["HEDGE_THREADS", "Abandon", "Copy", "HedgePool", "Race", "hedge_pool", "warn_unhedged"]

logger = logging.getLogger("resilient_client")


def warn_unhedged(config: Any, front: str) -> None:
    """
    Say once, when *front* is built, that it does not hedge: a ``hedge``
    section it cannot apply must not be silently ignored.
    """
    where = (["defaults"] if config.defaults.hedge is not None else []) + [
        f"endpoint {e.name!r}" for e in config.endpoints if e.policy.hedge is not None]
    if where:
        logger.warning("%s does not hedge requests yet: the hedge section of %s is not applied",
                       front, ", ".join(where))


#: Worker threads at most, for the whole process.
HEDGE_THREADS = 32


class Abandon:
    """
    How a hedged copy that lost is stopped from another thread: no read of
    its response starts once `abandon` was called, and a read under way is
    woken by shutting its socket down, so the copy's thread ends at once and
    urllib3 closes that connection instead of pooling it half-read.

    Why a shutdown is safe here when a timer closing sockets is not (see
    `resilient_client._deadline`): the socket is remembered only while a read on the
    copy's own response is running, under the lock that `abandon` takes, so
    the connection is certainly still checked out by the copy's thread.
    """

    __slots__ = ("_lock", "_sock", "abandoned", "sent")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.abandoned = False
        #: The copy went out (`start` said yes): final once `abandon` returned.
        self.sent = False

    def start(self) -> bool:
        """
        Whether the copy may go out now: False once the race was decided, so
        a copy not yet sent then is never sent. Under the lock `abandon`
        takes, so after `abandon` returns, `sent` counts exactly the copies
        that reached the wire (or are about to).
        """
        with self._lock:
            if self.abandoned:
                return False
            self.sent = True
            return True

    def read(self, sock: socket.socket, raw: io.RawIOBase, b: Any) -> int | None:
        with self._lock:
            if self.abandoned:
                # Shut down, not only closed: urllib3's close of this connection
                # would wait for every reference to the socket's reader (a
                # traceback holding the response) before the peer saw a FIN.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                raise ConnectionAbortedError("hedged copy abandoned: another copy answered first")
            self._sock = sock
        try:
            return raw.readinto(b)
        finally:
            with self._lock:
                self._sock = None

    def abandon(self) -> None:
        """Stop the copy's reads: the next one refused, the running one woken."""
        with self._lock:
            self.abandoned = True
            if self._sock is not None:
                with contextlib.suppress(OSError):  # closed meanwhile: nothing left to wake
                    self._sock.shutdown(socket.SHUT_RDWR)


class HedgePool:
    """A bounded, lazily started pool that refuses work rather than queueing it."""

    def __init__(self, max_threads: int) -> None:
        self.max_threads = max_threads
        self._lock = threading.Lock()
        self._free = threading.Semaphore(max_threads)
        self._executor: ThreadPoolExecutor | None = None

    def try_submit(self, fn: Callable[..., Any], *args: Any) -> bool:
        """
        Run ``fn(*args)`` on a worker, in a copy of the caller's context
        variables, if a worker is free now; False (nothing run) if not.
        """
        if not self._free.acquire(blocking=False):
            return False
        executor = self._executor
        if executor is None:
            with self._lock:
                executor = self._executor
                if executor is None:
                    executor = self._executor = ThreadPoolExecutor(
                        self.max_threads, thread_name_prefix="resilient_client-hedge")

        # The caller's context variables (a trace's current span, a logger's
        # bound fields) go with the work: each copy runs in a copy of them.
        context = contextvars.copy_context()

        def run() -> None:
            try:
                context.run(fn, *args)
            finally:
                self._free.release()

        try:
            executor.submit(run)
        except BaseException:
            self._free.release()
            raise
        return True

    def threads(self) -> int:
        """Worker threads started so far (they are kept for reuse)."""
        executor = self._executor
        return 0 if executor is None else len(executor._threads)

    def _after_fork(self) -> None:
        # A forked child has none of the parent's threads, but the executor
        # would still count them and start no new one: start afresh.
        self._lock = threading.Lock()
        self._free = threading.Semaphore(self.max_threads)
        self._executor = None


_POOL = HedgePool(HEDGE_THREADS)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL._after_fork)


def hedge_pool() -> HedgePool:
    """The process's pool of hedging threads."""
    return _POOL


class Copy:
    """One copy of a hedged attempt: its own call state, and how it ended."""

    __slots__ = ("call", "done", "ended", "index", "result", "started")

    def __init__(self, index: int, call: Any, started: float) -> None:
        self.index = index
        self.call = call
        self.started = started
        self.ended = started
        self.done = False
        self.result: Any = None


class Race:
    """
    The copies of one attempt, finishing in any order on worker threads;
    the caller waits for the next to finish with `next_finished`. Once the
    caller `close`s the race, copies finishing later are the caller's no
    longer: `finish` tells such a copy to clean up after itself.
    """

    __slots__ = ("_cond", "_finished", "closed")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._finished: list[Copy] = []
        self.closed = False

    def finish(self, copy: Copy, result: Any) -> bool:
        """Record *copy*'s *result*; False when the race was closed (the result is nobody's)."""
        with self._cond:
            copy.result = result
            copy.done = True
            if self.closed:
                return False
            self._finished.append(copy)
            self._cond.notify_all()
            return True

    def next_finished(self, timeout: float | None) -> Copy | None:
        """The next copy to finish, waiting at most *timeout* seconds (None: no limit)."""
        with self._cond:
            if not self._finished:
                self._cond.wait(timeout)
            return self._finished.pop(0) if self._finished else None

    def close(self) -> list[Copy]:
        """
        From now on, copies finishing are abandoned (`finish` returns False);
        returns the copies that finished but were not taken yet.
        """
        with self._cond:
            self.closed = True
            left, self._finished = self._finished, []
            return left
