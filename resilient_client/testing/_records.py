"""
What happened, as records a test asserts on: `PeerCall` (a request that
reached the fake transport), `AppCall` (a call the application made),
`EventLog` (the sessions' events), and `UnmatchedRequest` (strict mode's
error). Plain data: the registry fills them in, `_timeline` renders them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import requests

from .._events import AttemptFinished, CallFinished, Event

if TYPE_CHECKING:
    from .._session import ResilientSession
    from ._peer import FakePeer

__all__ = ["HOT", "AppCall", "EventLog", "PeerCall", "UnmatchedRequest"]

_E = TypeVar("_E", bound=Event)

#: The per-attempt and per-call events: recorded, but left out of the
#: timeline and of `EventLog.kinds`, where the calls themselves say it.
HOT = (AttemptFinished, CallFinished)


@dataclass(eq=False)
class PeerCall:
    """
    A request that reached the fake transport: one attempt as the peer saw
    it (like an entry of ``responses.calls``).

    Attributes:
        method, url: as sent.
        endpoint: the endpoint name the sending session routed it to
            (``scheme://host:port`` for unmatched URLs), None when it was not
            sent by a `ResilientSession`.
        at: fake time it arrived.
        request: the `requests.PreparedRequest`.
        peer: the `FakePeer` that answered, None for a plain response or
            an unmatched request.
        status: the status answered, None for a failure.
        outcome: what the peer did: ``"503"``, ``"refused"``,
            ``"connect timeout"``, ``"read timeout"``, ``"200 after 2.5s"``,
            ``"200 body cut after 3 of 10 bytes"``, ``"unmatched"``...
        duration: fake seconds it took, body included.

    .. versionadded:: 0.1.0
    """

    method: str
    url: str
    endpoint: str | None
    at: float
    request: requests.PreparedRequest = field(repr=False)
    peer: FakePeer | None = None
    status: int | None = None
    outcome: str = "pending"
    duration: float = 0.0
    #: The URL with its secrets redacted: what every message shows.
    shown_url: str = field(default="", repr=False)
    explanation: str = field(default="", repr=False)

    def __repr__(self) -> str:
        url = self.shown_url or self.url
        return f"<PeerCall {self.method} {url} -> {self.outcome} at t={self.at:.3f}>"


@dataclass(eq=False)
class AppCall:
    """
    A call the application made through a `ResilientSession`: what the
    caller got, after retries, breaker and fallback.

    Attributes:
        attempts: ``resp.attempts`` when the call returned a response, else
            the attempts that ran before it raised.
        reached: how many of its attempts reached a fake peer (an attempt
            refused by an open breaker does not).
        status: the status the caller got, None when the call raised.
        error: the exception the caller got, or None.
        fallback: whether a fallback answered (``resp.is_fallback``).
        started, duration: on the fake clock.

    .. versionadded:: 0.1.0
    """

    method: str
    url: str
    endpoint: str
    started: float
    request: requests.PreparedRequest = field(repr=False)
    duration: float = 0.0
    attempts: int = 0
    reached: int = 0
    status: int | None = None
    error: BaseException | None = None
    fallback: bool = False
    done: bool = False
    shown_url: str = field(default="", repr=False)
    # Attempts that ran (AttemptFinished events), and the session, while in progress.
    _ran: int = field(default=0, repr=False)
    _session: ResilientSession | None = field(default=None, repr=False)

    @property
    def outcome(self) -> str:
        """``"200"``, ``"200 (fallback)"``, ``"raised CircuitOpenError"`` or ``"in progress"``."""
        if not self.done:
            return "in progress"
        if self.error is not None:
            return f"raised {type(self.error).__name__}"
        return f"{self.status}{' (fallback)' if self.fallback else ''}"

    def __repr__(self) -> str:
        return (
            f"<AppCall {self.method} {self.shown_url or self.url} -> {self.outcome}, "
            f"attempts={self.attempts} reached={self.reached}>"
        )


class EventLog(list[Event]):
    """
    The events the sessions emitted, in order (a list), with filters.

    .. versionadded:: 0.1.0
    """

    def of(self, kind: type[_E]) -> list[_E]:
        """The events of one type, e.g. ``peers.events.of(GaveUp)``."""
        return [e for e in self if isinstance(e, kind)]

    def kinds(self, *, detailed: bool = False) -> list[str]:
        """
        The events' kinds (``"retry_scheduled"``, ...) in order; the
        per-attempt ``attempt_finished`` and ``call_finished`` only when
        *detailed*.
        """
        return [e.kind for e in self if detailed or not isinstance(e, HOT)]

    def for_endpoint(self, name: str) -> EventLog:
        """The events about endpoint *name*."""
        return EventLog(e for e in self if e.endpoint == name)


class UnmatchedRequest(AssertionError):
    """
    A request that no fake peer (and no plain response) matched, in strict
    mode. Raised at once from the session's ``send``, so no retry or
    fallback hides it; the message lists the near misses and why each one
    missed.

    .. versionadded:: 0.1.0
    """
