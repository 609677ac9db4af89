"""
A Redis breaker asked from the event loop: each question runs on a small
thread pool of our own, and the loop waits for its answer within a bound.

Why not ``anyio.to_thread.run_sync``: its default limiter (40 threads) is
the one Starlette's ``run_in_threadpool`` fills with sync endpoints, so a
busy service made every call wait there, outside its deadline; and a task
cancelled while it waited either never ran its job (a trial's success
record lost) or, shielded, waited for a thread as long as the pool was busy.

Here a job is handed to the pool at once and always runs, whoever still
waits for it. The waiter stops waiting when its bound passes or it is
cancelled; it never waits shielded. A job nobody waits for any more gives
back what it took in the worker thread: a trial claimed for a call that was
cancelled meanwhile is released there (`_Job`), so no process is refused
for a trial nobody makes.

The bound: the time the call has left, and at most `WAIT` (a few of the
store's own socket timeouts). A breaker that did not answer within it is a
slow Redis, which degrades as a dead one does (docs/breakers.md): the call
is let through (not a trial; nothing is refused for Redis), its outcome
recorded when the pool gets to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker
    from ._clock import Deadline

__all__ = ["WAIT", "WORKERS", "before_call", "record", "release_trial"]

logger = logging.getLogger("resilient_client")

#: Threads asking Redis for every async client of the process. An answer
#: takes ~0.2 ms (and the store caches its snapshot for 20 ms), so a few
#: serve thousands of calls a second; a slow Redis is cut by its own socket
#: timeout (0.1 s).
WORKERS = 4
#: The longest the loop waits for the breaker's answer (seconds).
WAIT = 0.3

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_NO_ANSWER = object()


def _executor() -> ThreadPoolExecutor:
    global _pool
    pool = _pool
    if pool is None:
        with _pool_lock:
            pool = _pool
            if pool is None:
                pool = _pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="resilient_client-breaker")
    return pool


def _after_fork() -> None:
    global _pool
    _pool = None  # the parent's threads do not exist in the child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


class _Job:
    """One breaker call on the pool; what becomes of its result once nobody waits for it."""

    __slots__ = ("done", "error", "fn", "lock", "orphan", "result", "waited")

    def __init__(self, fn: Callable[[], Any], orphan: Callable[[Any], None] | None) -> None:
        self.fn = fn
        self.orphan = orphan
        self.lock = threading.Lock()
        self.waited = True
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            result = self.fn()
        except BaseException as exc:  # handed to the waiter (CircuitOpenError), or dropped
            with self.lock:
                self.error, self.done = exc, True
            return
        with self.lock:
            if self.waited:
                self.result, self.done = result, True
                return
        if self.orphan is not None:
            self.orphan(result)  # nobody takes it: give back what it took, here in the worker

    def abandon(self) -> None:
        """The waiter leaves: a result it did not take goes to the orphan handler."""
        with self.lock:
            self.waited = False
            if not self.done or self.error is not None or self.orphan is None:
                return
            result, self.result = self.result, None
        _executor().submit(self.orphan, result)


def _waker(event: anyio.Event) -> Callable[[Future[None]], None]:
    """A done-callback (run in the worker) that sets *event* in the waiting loop's thread."""
    try:
        soon: Callable[[Callable[[], None]], Any] = asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:  # trio
        import trio  # type: ignore[import-untyped,unused-ignore]

        soon = trio.lowlevel.current_trio_token().run_sync_soon

    def wake(_: Future[None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            soon(event.set)

    return wake


async def _run(fn: Callable[[], Any], bound: float, orphan: Callable[[Any], None] | None = None) -> Any:
    """*fn*'s result, or `_NO_ANSWER` when *bound* seconds passed first (it still runs)."""
    job = _Job(fn, orphan)
    future = _executor().submit(job.run)
    if bound <= 0:
        job.abandon()
        return _NO_ANSWER
    event = anyio.Event()
    future.add_done_callback(_waker(event))
    try:
        with anyio.move_on_after(bound):
            await event.wait()
    except BaseException:  # cancelled: never wait on; the job finishes alone
        job.abandon()
        raise
    with job.lock:
        if not job.done:
            job.waited = False
            return _NO_ANSWER
    if job.error is not None:
        raise job.error
    return job.result


def _bound(deadline: Deadline | None) -> float:
    return WAIT if deadline is None else min(WAIT, deadline.remaining())


async def before_call(breaker: CircuitBreaker, deadline: Deadline | None) -> bool:
    """`CircuitBreaker.before_call` off the loop; True for the trial. No answer in time: let through."""

    def release(is_trial: bool) -> None:
        if is_trial:
            breaker.release_trial()

    answer = await _run(breaker.before_call, _bound(deadline), release)
    if answer is _NO_ANSWER:
        logger.debug("circuit breaker %r: no answer from Redis in time, call let through", breaker.name)
        return False
    return bool(answer)


async def record(breaker: CircuitBreaker, *, success: bool, is_trial: bool, duration: float,
                 deadline: Deadline | None, wait: bool = True) -> None:
    """`CircuitBreaker.record` off the loop; it is recorded even if nobody waits for it."""
    await _run(lambda: breaker.record(success=success, is_trial=is_trial, duration=duration),
               _bound(deadline) if wait else 0.0)


async def release_trial(breaker: CircuitBreaker, deadline: Deadline | None, *, wait: bool = True) -> None:
    """`CircuitBreaker.release_trial` off the loop; released even if nobody waits for it."""
    await _run(breaker.release_trial, _bound(deadline) if wait else 0.0)
