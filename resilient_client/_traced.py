"""
The session's side of tracing: which listeners hold spans, and the hooks of
one call, fixed when the call starts and guarded so that a tracing failure
never fails the request.

A tracing listener is an instance of `TracingListener` (the library's
`otel_trace_listener` is one); a callable that merely has the same method
names (a ``Mock()``) is an ordinary listener. Several may be subscribed:
each gets every hook, and one subscribed twice counts once.

Why the hooks of a call are fixed at its start (`TracedCall`): a listener
subscribed while a call runs would otherwise open attempt spans with no
call span above them, and one unsubscribed would leave the call's span
without its outcome. The call keeps the listeners it started with, and the
events of the call reach their spans through it (per session, per thread:
`EventBus`), never through the listener's own state, so one listener shared
by two sessions keeps their spans apart.

Why every hook is guarded here rather than trusted: a span processor's
``on_start``/``on_end`` and a propagator's ``inject`` are the application's
code, run inside our attempt; one that raises would fail a request that
went well, and, raising between the breaker's trial lease and its record,
would keep a half-open breaker's trial leased. As `EventBus.emit` does for
listeners, a hook that raises is logged once per listener and skipped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._events import Event

__all__ = ["TracedCall", "TracingListener", "tracers_of"]

logger = logging.getLogger("resilient_client")


class TracingListener:
    """
    The base class of listeners that hold spans open around a call and its
    requests on the wire (`otel_trace_listener`). The session calls the hooks
    only for instances of this class. Tokens are whatever the listener
    returns; a hook that raised hands ``None`` on, and the later hooks of
    that span are skipped.
    """

    #: Whether `enter_attempt` wants the request's headers (to inject a trace context).
    injects: bool = False

    def __call__(self, event: Event) -> None:
        """Not called: a tracing listener hears a call's events through `on_event`."""

    def enter_call(self, endpoint: str, method: str, url: str) -> object:
        raise NotImplementedError

    def exit_call(self, call: object) -> None:
        raise NotImplementedError

    def on_event(self, call: object, event: Event) -> None:
        raise NotImplementedError

    def enter_attempt(
        self, call: object, endpoint: str, method: str, url: str, attempt: int, resend: int,
        headers: MutableMapping[str, str] | None,
    ) -> object:
        raise NotImplementedError

    def exit_attempt(
        self, attempt: object, status: int | None, outcome: str, error: str | None
    ) -> None:
        raise NotImplementedError

    def enter_hooks(self, attempt: object) -> object:
        """Response hooks run: the application's code, under the attempt's span."""
        return None

    def exit_hooks(self, token: object) -> None:
        return None


def tracers_of(listeners: tuple[Any, ...]) -> tuple[TracingListener, ...]:
    """The tracing listeners among *listeners*, each once, in order."""
    out: list[TracingListener] = []
    for listener in listeners:
        if isinstance(listener, TracingListener) and all(x is not listener for x in out):
            out.append(listener)
    return tuple(out)


class _Failures:
    """Who has failed already: each listener's first failure is logged, then none."""

    def __init__(self) -> None:
        self._seen: dict[int, object] = {}  # id -> listener: keeps the id from being reused
        self._lock = threading.Lock()

    def report(self, listener: object, what: str) -> None:
        with self._lock:
            first = id(listener) not in self._seen
            self._seen[id(listener)] = listener
        if first:
            logger.exception(
                "tracing listener %r raised in %s; the request goes on without that span, "
                "further errors from it are not logged", listener, what)


FAILURES = _Failures()


class TracedCall:
    """
    The tracing of one call: the listeners it started with and their tokens
    (the call's spans), the current request on the wire's, and the number of
    requests put on the wire so far (``http.request.resend_count``).
    """

    __slots__ = ("_sent", "attempts", "calls", "redirected", "tracers")

    def __init__(self, tracers: tuple[TracingListener, ...], endpoint: str, method: str,
                 url: str) -> None:
        self.tracers = tracers
        self.calls = [_guard(t, "enter_call", t.enter_call, endpoint, method, url) for t in tracers]
        self.attempts: list[object] = []
        self._sent = [0]  # shared with the forks: one count per call
        #: The status of the response the next redirect hop follows.
        self.redirected: int | None = None

    def fork(self) -> TracedCall:
        """
        The same call's spans for a request sent beside this one (a hedge
        copy, on another thread): its own request span, the count shared.
        """
        new = TracedCall.__new__(TracedCall)
        new.tracers, new.calls, new._sent = self.tracers, self.calls, self._sent
        new.attempts, new.redirected = [], None
        return new

    def event(self, event: Event) -> None:
        for t, c in zip(self.tracers, self.calls, strict=True):
            if c is not None:
                _guard(t, "an event", t.on_event, c, event)

    def enter_attempt(self, endpoint: str, method: str, url: str, attempt: int,
                      headers: MutableMapping[str, str] | None) -> None:
        """A request goes on the wire (an attempt, or a redirect hop of one)."""
        sent = self._sent
        resend = sent[0]
        sent[0] = resend + 1  # racy between hedge copies: a count for the conventions, not a lock's worth
        self.attempts = [
            _guard(t, "enter_attempt", t.enter_attempt, c, endpoint, method, url, attempt, resend,
                   headers if t.injects else None) if c is not None else None
            for t, c in zip(self.tracers, self.calls, strict=True)]

    def exit_attempt(self, status: int | None, outcome: str, error: str | None) -> None:
        attempts, self.attempts = self.attempts, []
        for t, a in zip(self.tracers, attempts, strict=True):
            if a is not None:
                _guard(t, "exit_attempt", t.exit_attempt, a, status, outcome, error)

    def enter_hooks(self) -> list[object]:
        return [_guard(t, "enter_hooks", t.enter_hooks, a) if a is not None else None
                for t, a in zip(self.tracers, self.attempts, strict=True)]

    def exit_hooks(self, tokens: list[object]) -> None:
        for t, tok in zip(self.tracers, tokens, strict=True):
            if tok is not None:
                _guard(t, "exit_hooks", t.exit_hooks, tok)

    def exit(self) -> None:
        for t, c in zip(self.tracers, self.calls, strict=True):
            if c is not None:
                _guard(t, "exit_call", t.exit_call, c)

    @property
    def injects(self) -> bool:
        return any(t.injects for t in self.tracers)


def _guard(listener: object, what: str, hook: Callable[..., Any], *args: Any) -> Any:
    try:
        return hook(*args)
    except Exception:
        FAILURES.report(listener, what)
        return None
