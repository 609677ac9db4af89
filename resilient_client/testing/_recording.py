"""
`Recording`: what happened while a registry was active (the requests that
reached the fake transport, the calls the application made, the sessions'
events) and the questions a test asks of it. `FakePeers` is a `Recording`
that also scripts peers and wires sessions; this half neither scripts nor
wires, it records what it is told and answers.
"""

from __future__ import annotations

import contextvars
import re
import threading
from typing import TYPE_CHECKING, Any

import requests

from .._events import AttemptFinished, BreakerStateChanged, Event
from ._fake_clock import FakeClock
from ._records import HOT, AppCall, EventLog, PeerCall
from ._target import Target
from ._timeline import Redaction, render_timeline

if TYPE_CHECKING:
    pass

__all__ = ["Recording"]

#: The application calls in progress, innermost last: per thread for
#: sessions, and per task for async clients (each asyncio or anyio task runs
#: in a context of its own; a thread starts with an empty one). A tuple, so
#: that a task never changes the one it inherited.
_STACK: contextvars.ContextVar[tuple[AppCall, ...]] = contextvars.ContextVar(
    "resilient_client_testing_calls", default=())


class Recording:
    """
    The record of one registry, and the questions asked of it.

    Attributes:
        clock: the fake clock everything is timed on.
        calls: every `PeerCall`, in order (requests that reached a peer).
        app_calls: every `AppCall` the application made, in order.
        events: every `Event` the sessions emitted, as an `EventLog`.
        unmatched: the `PeerCall` s no peer matched.

    .. versionadded:: 0.1.0
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[PeerCall] = []
        self.app_calls: list[AppCall] = []
        self.events = EventLog()
        self.unmatched: list[PeerCall] = []
        self._timeline: list[tuple[float, object]] = []
        self._lock = threading.RLock()
        self._redaction = Redaction()
        # Sessions that made a call, in the order of their first one: the
        # first place `breaker()` looks.
        self._used: list[Any] = []  # ResilientSession or AsyncResilientClient
        self._started_at = clock.monotonic()

    # -- recording (called by the sessions' watch, their events and the transport) ----

    @staticmethod
    def _stack() -> tuple[AppCall, ...]:
        return _STACK.get()

    def _app_call_started(
        self, session: Any, request: requests.PreparedRequest
    ) -> AppCall | None:
        """*session*: a `ResilientSession` or an `AsyncResilientClient`."""
        stack = self._stack()
        if stack and stack[-1]._session is session:
            return None  # a redirect hop inside one of this session's attempts
        method, url = request.method or "GET", request.url or ""
        secrets = session.config.secrets
        self._redaction.learn_request(request, secrets)
        call = AppCall(
            method,
            url,
            session.resolve(method, url).key,
            self.clock.monotonic(),
            request,
            shown_url=self._redaction.url(url, secrets),
            _session=session,
        )
        with self._lock:
            self.app_calls.append(call)
            self._timeline.append((call.started, call))
            if all(used is not session for used in self._used):
                self._used.append(session)
        _STACK.set((*stack, call))
        return call

    def _app_call_ended(
        self, call: AppCall, resp: requests.Response | None, exc: BaseException | None
    ) -> None:
        stack = self._stack()
        if stack and stack[-1] is call:
            _STACK.set(stack[:-1])
        call.duration = self.clock.monotonic() - call.started
        if resp is not None:
            call.status = resp.status_code
            call.fallback = bool(getattr(resp, "is_fallback", False))
            call.attempts = int(getattr(resp, "attempts", call._ran))
        else:
            call.error = exc
            call.attempts = call._ran
        call.done = True
        call._session = None

    def _on_event(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)
            if not isinstance(event, HOT):
                self._timeline.append((self.clock.monotonic(), event))
        if isinstance(event, AttemptFinished):
            stack = self._stack()
            if stack:
                stack[-1]._ran += 1

    def _calling_session(self) -> Any:
        """The session whose call is running on this thread, if any."""
        stack = self._stack()
        return stack[-1]._session if stack else None

    def _arrived(
        self, request: requests.PreparedRequest, session: Any
    ) -> PeerCall:
        """Record a request reaching the transport, sent by *session* (None: not a session's)."""
        method, url = request.method or "GET", request.url or ""
        if session is not None:
            endpoint: str | None = session.resolve(method, url).key
            secrets = session.config.secrets
            self._redaction.learn_request(request, secrets)
            shown = self._redaction.url(url, secrets)
        else:
            # Not a session's request: redacted with what every session calls secret.
            endpoint, shown = None, self._redaction.url(url)
        call = PeerCall(method, url, endpoint, self.clock.monotonic(), request, shown_url=shown)
        request.rc_call = call  # type: ignore[attr-defined]
        with self._lock:
            self.calls.append(call)
            self._timeline.append((call.at, call))
        stack = self._stack()
        if stack:
            stack[-1].reached += 1
        return call

    def _departed(
        self, call: PeerCall, resp: requests.Response | None, exc: BaseException | None
    ) -> None:
        if call.outcome == "pending":
            if resp is not None:
                call.status = resp.status_code
                call.outcome = str(resp.status_code)
            else:
                call.outcome = f"raised {type(exc).__name__}"
        call.duration = self.clock.monotonic() - call.at

    # -- asking what happened --------------------------------------------------------

    def calls_to(self, target: str | re.Pattern[str]) -> list[PeerCall]:
        """
        The requests that reached a fake peer for *target*: an endpoint name,
        a URL (exact, or with ``*``) or a regex.
        """
        t = Target.parse(target)
        return [c for c in self.calls if t.miss(c.url, c.endpoint) is None]

    def app_calls_to(self, target: str | re.Pattern[str]) -> list[AppCall]:
        """The calls the application made to *target* (as in `calls_to`)."""
        t = Target.parse(target)
        return [c for c in self.app_calls if t.miss(c.url, c.endpoint) is None]

    def attempts(self, target: str | re.Pattern[str] | None = None) -> int:
        """How many requests reached the fake peers (for *target*, when given)."""
        return len(self.calls if target is None else self.calls_to(target))

    def amplification(self, target: str | re.Pattern[str] | None = None) -> float:
        """
        Requests that reached the peer per call the application made: 1.0
        without retries, ``attempts`` under a full outage without a budget.
        """
        app = self.app_calls if target is None else self.app_calls_to(target)
        if not app:
            raise ValueError(
                f"the application made no call{'' if target is None else f' to {target!r}'}"
            )
        return self.attempts(target) / len(app)

    def fallbacks(self, target: str | re.Pattern[str] | None = None) -> list[AppCall]:
        """The application calls that a fallback answered."""
        app = self.app_calls if target is None else self.app_calls_to(target)
        return [c for c in app if c.fallback]

    def transitions(self, endpoint: str | None = None) -> list[tuple[str, str]]:
        """The breaker state changes, as ``(old, new)`` pairs, for *endpoint* or all."""
        return [
            (e.old, e.new)
            for e in self.events.of(BreakerStateChanged)
            if endpoint is None or e.endpoint == endpoint
        ]

    @property
    def elapsed(self) -> float:
        """Fake seconds since the registry was made."""
        return self.clock.monotonic() - self._started_at

    def timeline(self) -> str:
        """
        What happened, in order, on the fake clock: calls the application
        made, requests that reached a peer and how it answered, and events.
        Secrets are redacted, as in the library's logs.
        """
        with self._lock:
            entries = list(self._timeline)
        return render_timeline(entries, self.elapsed, self._redaction)
