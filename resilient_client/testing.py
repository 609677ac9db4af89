"""
Test support for users of resilient_client: make any peer fail in any way,
run retries, deadlines and breaker timers on a fake clock, and assert what
the resilience layers did.

Installing the package registers a pytest plugin (entry point ``pytest11``)
with these fixtures:

``fake_clock``
    a `FakeClock`: ``sleep()`` and ``advance()`` move it, nothing waits.
``fake_peers`` (alias ``fake_http``)
    a started `FakePeers` registry on that clock, strict by default.
``no_backoff``
    backoff sleeps no longer move the fake clock either.

Without pytest (unittest), use the registry as a context manager::

    from resilient_client.testing import fake_peers

    with fake_peers() as peers:
        peers.url("https://inventory.internal/items/42").statuses([503, 200])
        resp = peers.session().get("https://inventory.internal/items/42")

The registry is built on `responses` (``peers.mock`` is its
`responses.RequestsMock`), so plain responses and matchers keep working
beside the scripted peers.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import contextlib
import json as _json
import math
import random
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import requests

from . import _deadline
from ._breaker import CircuitBreaker
from ._events import AttemptFinished, BreakerStateChanged, CallFinished, Event
from ._redact import redact_url
from ._routing import glob_variants, normalise_url
from ._session import _NEW_SESSION_HOOKS, ResilientSession

if TYPE_CHECKING:
    from requests.adapters import HTTPAdapter
    from urllib3.response import HTTPResponse

    from . import _fake_transport
    from ._clock import Clock
    from ._config import ConfigSource

__all__ = [
    "AppCall",
    "EventLog",
    "FakeClock",
    "FakePeer",
    "FakePeers",
    "PeerCall",
    "UnmatchedRequest",
    "fake_peers",
]

_E = TypeVar("_E", bound=Event)


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


_UNSET: Any = _Unset()


# -- the clock ----------------------------------------------------------------


class FakeClock:
    """
    A monotonic clock that moves only when told to: ``sleep()`` and
    ``advance()`` move it at once and nothing really waits. Pass it as
    ``ResilientSession(clock=...)`` or ``CircuitBreaker(clock=...)``; a
    `FakePeers` registry also moves it by the time its peers take.

    Attributes:
        sleeps: every ``sleep()`` asked for, in seconds, in order.
        instant_sleep: when True, ``sleep()`` is recorded but does not move
            the clock (what the ``no_backoff`` fixture sets).

    .. versionadded:: 0.1.0
    """

    def __init__(self, start: float = 0.0) -> None:
        self._start = float(start)
        self._now = float(start)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []
        self.instant_sleep = False

    def monotonic(self) -> float:
        """The current fake time, in seconds."""
        return self._now

    def sleep(self, seconds: float) -> None:
        """Move the clock by *seconds* at once (record it only, under ``instant_sleep``)."""
        if seconds < 0:
            raise ValueError(f"sleep length must be non-negative, got {seconds!r}")
        with self._lock:
            self.sleeps.append(seconds)
            if not self.instant_sleep:
                self._now += seconds

    def advance(self, seconds: float) -> None:
        """
        Move the clock forward by *seconds*: breaker timers, deadlines and
        retry budgets see the time pass.
        """
        if seconds < 0 or math.isnan(seconds):
            raise ValueError(f"a monotonic clock cannot go back: advance({seconds!r})")
        with self._lock:
            self._now += seconds

    def advance_to(self, when: float) -> None:
        """Move the clock forward to *when* (a reading of `monotonic`)."""
        with self._lock:
            if when < self._now:
                raise ValueError(
                    f"a monotonic clock cannot go back: it reads {self._now:g}, asked for {when:g}"
                )
            self._now = float(when)

    @property
    def now(self) -> float:
        """The same as `monotonic`."""
        return self._now

    @property
    def elapsed(self) -> float:
        """Fake seconds since the clock was made."""
        return self._now - self._start

    @property
    def slept(self) -> float:
        """The total of every ``sleep()`` asked for."""
        return sum(self.sleeps)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now:g})"


# -- what happened --------------------------------------------------------------


@dataclass(eq=False)
class PeerCall:
    """
    A request that reached the fake transport: one attempt as the peer saw
    it (like an entry of ``responses.calls``).

    Attributes:
        method, url: as sent.
        endpoint: the endpoint name the sending session routed it to
            (``scheme://host:port`` for unmatched URLs), None when it was not
            sent by a session the registry knows.
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
    shown_url: str = field(default="", repr=False)
    explanation: str = field(default="", repr=False)

    def __repr__(self) -> str:
        url = self.shown_url or self.url
        return f"<PeerCall {self.method} {url} -> {self.outcome} at t={self.at:.3f}>"


@dataclass(eq=False)
class AppCall:
    """
    A call the application made through a `ResilientSession` the registry
    knows: what the caller got, after retries, breaker and fallback.

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
    _session: Any = field(default=None, repr=False)

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
        return [e.kind for e in self if detailed or not isinstance(e, _HOT)]

    def for_endpoint(self, name: str) -> EventLog:
        """The events about endpoint *name*."""
        return EventLog(e for e in self if e.endpoint == name)


_HOT = (AttemptFinished, CallFinished)


class UnmatchedRequest(AssertionError):
    """
    A request that no fake peer (and no plain response) matched, in strict
    mode. Raised at once from the session's ``send``, so no retry or
    fallback hides it; the message lists the near misses and why each one
    missed.

    .. versionadded:: 0.1.0
    """


# -- what a peer does ----------------------------------------------------------


class _Outcome:
    """One answer of a fake peer; ``label`` is how it reads in a repr."""

    label = ""

    def serve(self, ctx: _fake_transport.ServeContext, n: int) -> HTTPResponse:
        raise NotImplementedError


class _Answer(_Outcome):
    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"status must be an HTTP status 100-599, got {status!r}")
        self.status = status
        self.body = body
        self.headers = headers
        self.label = str(status)

    def serve(self, ctx: _fake_transport.ServeContext, n: int) -> HTTPResponse:
        ctx.call.status = self.status
        ctx.call.outcome = str(self.status)
        return ctx.respond(self.status, dict(self.headers), self.body)


class _Refuse(_Outcome):
    label = "refused"

    def serve(self, ctx: _fake_transport.ServeContext, n: int) -> HTTPResponse:
        ctx.call.outcome = "refused"
        raise ctx.refused()


class _ConnectTimeout(_Outcome):
    label = "connect timeout"

    def serve(self, ctx: _fake_transport.ServeContext, n: int) -> HTTPResponse:
        ctx.call.outcome = "connect timeout"
        err = ctx.connect_timed_out()
        ctx.wait(math.inf, ctx.connect_timeout)
        raise err


class _ReadTimeout(_Outcome):
    label = "read timeout"

    def serve(self, ctx: _fake_transport.ServeContext, n: int) -> HTTPResponse:
        ctx.call.outcome = "read timeout"
        err = ctx.read_timed_out()
        ctx.wait(math.inf, ctx.read_timeout)
        raise err


class _Slow(_Outcome):
    def __init__(self, seconds: float, answer: _Answer) -> None:
        self.seconds = _seconds("seconds", seconds)
        self.answer = answer
        self.label = f"{answer.status} after {self.seconds:g}s"

    def serve(self, ctx: _fake_transport.ServeContext, n: int) -> HTTPResponse:
        if not ctx.wait(self.seconds, ctx.read_timeout):
            ctx.call.outcome = f"read timeout (answer due after {self.seconds:g}s)"
            raise ctx.read_timed_out()
        resp = self.answer.serve(ctx, n)
        ctx.call.outcome = self.label
        return resp


class _Drip(_Outcome):
    def __init__(self, answer: _Answer, chunk: int, every: float) -> None:
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
        self.answer = answer
        self.chunk = chunk
        self.every = _seconds("every", every)
        self.label = f"{answer.status} dripping {chunk} B every {self.every:g}s"

    def serve(self, ctx: _fake_transport.ServeContext, n: int) -> HTTPResponse:
        ctx.call.status = self.answer.status
        ctx.call.outcome = self.label
        body = ctx.drip_body(self.answer.body, self.chunk, self.every)
        return ctx.respond(self.answer.status, dict(self.answer.headers), body)


class _Gate:
    """Where held requests wait, in real time, until the test releases them."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.cv = threading.Condition()
        self.held = 0


class _Hold(_Outcome):
    def __init__(self, gate: _Gate, answer: _Answer, timeout: float) -> None:
        self.gate = gate
        self.answer = answer
        self.timeout = _seconds("timeout", timeout)
        self.label = f"{answer.status} once released"

    def serve(self, ctx: _fake_transport.ServeContext, n: int) -> HTTPResponse:
        ctx.call.outcome = "held"
        with self.gate.cv:
            self.gate.held += 1
            self.gate.cv.notify_all()
        # Bounded, so a test that forgets release() fails instead of hanging.
        if not self.gate.open.wait(self.timeout):
            raise AssertionError(
                f"fake peer {ctx.call.peer!r}: a held request was not released "
                f"within {self.timeout:g}s (call release())"
            )
        return self.answer.serve(ctx, n)


class _Flap(_Outcome):
    def __init__(self, every: int, failure: _Outcome, healthy: _Outcome) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.every = every
        self.failure = failure
        self.healthy = healthy

    def serve(self, ctx: _fake_transport.ServeContext, n: int) -> HTTPResponse:
        return (self.failure if n % self.every == 0 else self.healthy).serve(ctx, n)


_FAILURES: dict[str, Callable[[], _Outcome]] = {
    "refuse": _Refuse,
    "connect_timeout": _ConnectTimeout,
    "read_timeout": _ReadTimeout,
}


def _seconds(name: str, value: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or math.isnan(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _retry_after_value(value: float | str) -> str:
    if isinstance(value, str):
        return value  # verbatim: an HTTP-date, or a deliberately bad value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _answer(
    status: int,
    *,
    json: Any = _UNSET,
    body: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    retry_after: float | str | None = None,
) -> _Answer:
    hdrs = dict(headers or {})
    if json is not _UNSET:
        if body is not None:
            raise ValueError("give json= or body=, not both")
        data = _json.dumps(json).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        data = body.encode()
        hdrs.setdefault("Content-Type", "text/plain; charset=utf-8")
    else:
        data = body or b""
    if retry_after is not None:
        hdrs["Retry-After"] = _retry_after_value(retry_after)
    return _Answer(status, data, hdrs)


def _failure(failure: int | str) -> _Outcome:
    if isinstance(failure, str):
        try:
            return _FAILURES[failure]()
        except KeyError:
            raise ValueError(
                f"failure must be a status or one of {', '.join(sorted(_FAILURES))}, "
                f"got {failure!r}"
            ) from None
    return _Answer(failure, b"", {})


def _args(*args: object, **kwargs: object) -> str:
    """Call arguments as written, for reprs that read like the code."""
    parts = [repr(a) for a in args]
    parts += [f"{k}={v!r}" for k, v in kwargs.items() if v is not None and v is not _UNSET]
    return ", ".join(parts)


class _Step:
    __slots__ = ("outcome", "times", "used", "written")

    def __init__(self, outcome: _Outcome, times: int | None, written: str) -> None:
        self.outcome = outcome
        self.times = times
        self.used = 0
        self.written = written


# -- which requests a peer answers ----------------------------------------------


class _Target:
    """An endpoint name, an exact URL, a URL with ``*`` wildcards, or a regex."""

    def __init__(self, kind: str, target: str | re.Pattern[str]) -> None:
        self.kind = kind
        self.target = target
        self._regex: re.Pattern[str] | None = None
        self._norm = ""
        self._query: list[tuple[str, str]] | None = None
        if isinstance(target, re.Pattern):
            self._regex = target
        elif kind == "url":
            if "://" not in target:
                raise ValueError(
                    f"url() takes an absolute URL (or use endpoint() for a name), got {target!r}"
                )
            if "*" in target:
                # Normalised as URLs are (a spelled-out default port matches
                # URLs without it), with "?" literal: URLs carry queries.
                self._regex = re.compile(
                    "|".join(
                        ".*".join(re.escape(p) for p in variant.split("*"))
                        for variant in glob_variants(target, encode=False)
                    ),
                    re.DOTALL,
                )
            else:
                self._norm = normalise_url(target)[0]
                q = urlsplit(target).query
                self._query = sorted(parse_qsl(q, keep_blank_values=True)) if q else None
        elif not target:
            raise ValueError("endpoint() needs a name")

    @classmethod
    def parse(cls, target: str | re.Pattern[str]) -> _Target:
        """A query target: a URL (exact or with ``*``), a regex, or an endpoint name."""
        if isinstance(target, re.Pattern) or "://" in target:
            return cls("url", target)
        return cls("endpoint", target)

    def miss(self, url: str, endpoint: str | None) -> str | None:
        """None when *url* / *endpoint* is a match, else why not."""
        if self.kind == "endpoint":
            if endpoint == self.target:
                return None
            if endpoint is None:
                return (
                    "it was not sent by a ResilientSession the registry knows, so it has no "
                    "endpoint name (build the session inside the test, or use peers.session() "
                    "or peers.attach())"
                )
            return f"it went to endpoint {endpoint!r}, not {self.target!r}"
        if self._regex is not None:
            if isinstance(self.target, re.Pattern):
                if self._regex.match(url):
                    return None
                return f"URL {url} does not match {self.target.pattern!r}"
            if self._regex.fullmatch(url) or self._regex.fullmatch(normalise_url(url)[0]):
                return None
            return f"URL {url} does not match {self.target}"
        norm = normalise_url(url)[0]
        if norm == self._norm:
            if self._query is None:
                return None
            got = sorted(parse_qsl(urlsplit(url).query, keep_blank_values=True))
            if got == self._query:
                return None
            return f"query {urlsplit(url).query!r} is not {urlsplit(str(self.target)).query!r}"
        why = f"URL {url} is not {self.target}"
        if norm.startswith(self._norm.rstrip("/") + "/"):
            why += " (url() matches one URL exactly; end it with * to match everything under it)"
        elif norm.rstrip("/") == self._norm.rstrip("/"):
            why += " (the trailing slash differs)"
        return why

    def same_host(self, url: str) -> bool:
        if self.kind != "url" or isinstance(self.target, re.Pattern):
            return False
        return (
            urlsplit(url).netloc.lower() == urlsplit(self.target.replace("*", "x")).netloc.lower()
        )

    def __repr__(self) -> str:
        return f"{self.kind}({self.target!r})"


# -- a scripted peer -------------------------------------------------------------


class FakePeer:
    """
    What one URL (or endpoint) does, request after request. Made by
    `FakePeers.url` or `FakePeers.endpoint`; every method returns the peer,
    so a script reads as one line::

        peers.url("https://inventory.internal/items/42").statuses([503, 503, 200])
        peers.endpoint("inventory").refuse(times=2).respond(200, json={"stock": 3})

    Each step answers ``times`` requests (``None``, the default, means every
    later request, so it must be the last step); when the steps run out, the
    last one keeps answering, as in `responses`. In strict mode every step
    must be reached before the test ends.

    Attributes:
        calls: the `PeerCall` s this peer answered.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        peers: FakePeers,
        target: _Target,
        method: str | None,
        match: Sequence[Callable[[requests.PreparedRequest], tuple[bool, str]]],
    ) -> None:
        self._peers = peers
        self._target = target
        self.method = method.upper() if method else None
        self.match = tuple(match)
        self._steps: list[_Step] = []
        self._recovery: tuple[float, _Answer] | None = None
        self._optional = False
        self._written: list[str] = []
        self._lock = threading.Lock()
        self._gate = _Gate()
        self.calls: list[PeerCall] = []

    # -- scripting ---------------------------------------------------------------

    def respond(
        self,
        status: int = 200,
        *,
        json: Any = _UNSET,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        retry_after: float | str | None = None,
        times: int | None = None,
    ) -> FakePeer:
        """
        Answer *status* with a body (``json=`` or ``body=``), ``headers`` and,
        with ``retry_after``, a ``Retry-After`` header (seconds, or a string
        sent verbatim such as an HTTP-date).
        """
        answer = _answer(status, json=json, body=body, headers=headers, retry_after=retry_after)
        return self._add(
            answer,
            times,
            f"respond({_args(status, json=json, retry_after=retry_after, times=times)})",
        )

    def statuses(
        self,
        codes: Iterable[int],
        *,
        json: Any = _UNSET,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        retry_after: float | str | None = None,
    ) -> FakePeer:
        """
        Answer these statuses, one per request, in order; the last one
        keeps answering. ``retry_after`` is sent with every status >= 400.
        """
        codes = list(codes)
        if not codes:
            raise ValueError("statuses() needs at least one status")
        steps = []
        for code in codes:
            ra = retry_after if isinstance(code, int) and code >= 400 else None
            steps.append(_answer(code, json=json, body=body, headers=headers, retry_after=ra))
        written = f"statuses({_args(codes, retry_after=retry_after)})"
        self._check_open()
        for i, answer in enumerate(steps):
            self._steps.append(_Step(answer, 1, written if i == 0 else ""))
        self._written.append(written)
        return self

    def refuse(self, *, times: int | None = None) -> FakePeer:
        """Refuse the connection (nothing reached the peer: safe to retry for any method)."""
        return self._add(_Refuse(), times, f"refuse({_args(times=times)})")

    def connect_timeout(self, *, times: int | None = None) -> FakePeer:
        """Never accept the connection: the attempt's connect timeout passes on the fake clock."""
        return self._add(_ConnectTimeout(), times, f"connect_timeout({_args(times=times)})")

    def read_timeout(self, *, times: int | None = None) -> FakePeer:
        """Take the request and never answer: the read timeout passes on the fake clock."""
        return self._add(_ReadTimeout(), times, f"read_timeout({_args(times=times)})")

    def slow(
        self,
        seconds: float,
        status: int = 200,
        *,
        json: Any = _UNSET,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        times: int | None = None,
    ) -> FakePeer:
        """
        Answer after *seconds* of fake time. When that is longer than the
        attempt's read timeout (which the session caps by the deadline), the
        attempt times out instead, as it would live.
        """
        answer = _answer(status, json=json, body=body, headers=headers)
        return self._add(
            _Slow(seconds, answer), times, f"slow({_args(seconds, status, times=times)})"
        )

    def drip(
        self,
        body: bytes | str,
        *,
        chunk: int = 1,
        every: float = 0.1,
        status: int = 200,
        headers: dict[str, str] | None = None,
        times: int | None = None,
    ) -> FakePeer:
        """
        Send the headers at once, then *body* *chunk* bytes every *every*
        seconds of fake time: no single read times out, so only the
        session's ``total`` deadline can cut it off.
        """
        answer = _answer(status, body=body, headers=headers)
        shown = body if len(body) <= 20 else f"<{len(body)} bytes>"
        written = f"drip({_args(shown, chunk=chunk, every=every, times=times)})"
        return self._add(_Drip(answer, chunk, every), times, written)

    def hold(
        self,
        status: int = 200,
        *,
        json: Any = _UNSET,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        times: int | None = None,
        timeout: float = 5.0,
    ) -> FakePeer:
        """
        Keep each request in flight (the calling thread really waits, up to
        *timeout* seconds) until `release`, then answer *status*: how a test
        fills a bulkhead. `wait_held` waits until requests are held.
        """
        answer = _answer(status, json=json, body=body, headers=headers)
        return self._add(_Hold(self._gate, answer, timeout), times, f"hold({_args(times=times)})")

    def release(self) -> FakePeer:
        """Let every held request (and every later one) through."""
        self._gate.open.set()
        return self

    def wait_held(self, count: int = 1, timeout: float = 5.0) -> FakePeer:
        """Wait (in real time, at most *timeout* seconds) until *count* requests are held."""
        with self._gate.cv:
            if not self._gate.cv.wait_for(lambda: self._gate.held >= count, timeout):
                raise AssertionError(
                    f"{self!r}: {self._gate.held} request(s) held after {timeout:g}s, "
                    f"expected {count}"
                )
        return self

    def flap(
        self,
        every: int,
        *,
        failure: int | str = 503,
        status: int = 200,
        json: Any = _UNSET,
        body: bytes | str | None = None,
    ) -> FakePeer:
        """
        Fail every *every*-th request this step answers (the *every*-th,
        2×*every*-th...) and answer *status* to the others. ``failure`` is a
        status or ``"refuse"``, ``"connect_timeout"``, ``"read_timeout"``.
        """
        healthy = _answer(status, json=json, body=body)
        flap = _Flap(every, _failure(failure), healthy)
        written = f"flap(every={every!r}{'' if failure == 503 else f', failure={failure!r}'})"
        return self._add(flap, None, written)

    def recover_at(
        self,
        when: float,
        status: int = 200,
        *,
        json: Any = _UNSET,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> FakePeer:
        """
        From fake time *when* on (a reading of the clock), answer *status*
        whatever the steps say: the peer came back.
        """
        answer = _answer(status, json=json, body=body, headers=headers)
        self._recovery = (_seconds("when", when), answer)
        self._written.append(f"recover_at({_args(when) if status == 200 else _args(when, status)})")
        return self

    def optional(self) -> FakePeer:
        """Strict mode does not require this peer's steps to be reached."""
        self._optional = True
        self._written.append("optional()")
        return self

    def clear(self) -> FakePeer:
        """Forget the steps (not the calls), to script what the peer does next."""
        with self._lock:
            self._steps.clear()
            self._recovery = None
            self._written.clear()
        return self

    def _check_open(self) -> None:
        if self._steps and self._steps[-1].times is None:
            raise ValueError(
                f"{self!r} already answers every later request; give that step times=N "
                f"to script what follows, or clear() it"
            )

    def _add(self, outcome: _Outcome, times: int | None, written: str) -> FakePeer:
        if times is not None and (
            isinstance(times, bool) or not isinstance(times, int) or times < 1
        ):
            raise ValueError(
                f"times must be an integer >= 1 or None (every later request), got {times!r}"
            )
        self._check_open()
        self._steps.append(_Step(outcome, times, written))
        self._written.append(written)
        return self

    # -- matching and answering ------------------------------------------------------

    @property
    def call_count(self) -> int:
        """How many requests this peer answered."""
        return len(self.calls)

    def _matches(self, request: requests.PreparedRequest) -> tuple[bool, str]:
        if not self._steps:
            return False, "nothing is scripted for it yet"
        if self.method is not None and request.method != self.method:
            return False, f"method {request.method} is not {self.method}"
        call: PeerCall | None = getattr(request, "rc_call", None)
        url = request.url or ""
        why = self._target.miss(url, call.endpoint if call is not None else None)
        if why is not None:
            # Say it with the URL as shown elsewhere: secret query values redacted.
            return False, why.replace(url, call.shown_url) if call is not None else why
        for matcher in self.match:
            ok, reason = matcher(request)
            if not ok:
                return False, f"matcher: {reason}"
        return True, ""

    def _closeness(self, request: requests.PreparedRequest) -> int:
        call: PeerCall | None = getattr(request, "rc_call", None)
        if (
            self._target.miss(request.url or "", call.endpoint if call is not None else None)
            is None
        ):
            return 2
        return 1 if self._target.same_host(request.url or "") else 0

    def _serve(self, request: requests.PreparedRequest) -> HTTPResponse:
        call: PeerCall = request.rc_call  # type: ignore[attr-defined]
        call.peer = self
        clock = self._peers.clock
        with self._lock:
            outcome: _Outcome
            if self._recovery is not None and clock.monotonic() >= self._recovery[0]:
                outcome, n = self._recovery[1], 0
            else:
                step = next(
                    (s for s in self._steps if s.times is None or s.used < s.times), self._steps[-1]
                )
                step.used += 1
                outcome, n = step.outcome, step.used
            self.calls.append(call)
        ctx = self._peers._transport.ServeContext(request, clock, call)
        return outcome.serve(ctx, n)

    def _shortfall(self) -> str | None:
        """Why this peer was not used up, or None."""
        if self._optional or not self._steps:
            return None
        expected = sum(s.times or 1 for s in self._steps)
        wanted = f"expected at least {expected} request{'s' if expected != 1 else ''}"
        if not self.calls:
            return f"{self!r} was never used: {wanted}, got none"
        for i, step in enumerate(self._steps):
            needed = step.times or 1
            if step.used < needed:
                answered = ", ".join(c.outcome for c in self.calls)
                label = f"step {i + 1} ({step.outcome.label})"
                reached = (
                    "was never reached"
                    if step.used == 0
                    else f"was reached {step.used} of {needed} times"
                )
                got = f"got {len(self.calls)} ({answered})"
                return f"{self!r} was not used up: {wanted}, {got}; {label} {reached}"
        return None

    def __repr__(self) -> str:
        method = f", method={self.method!r}" if self.method else ""
        match = f", match=<{len(self.match)} matchers>" if self.match else ""
        head = f"{self._target.kind}({self._target.target!r}{method}{match})"
        return ".".join([head, *self._written])


# -- the registry -------------------------------------------------------------------


class _Wiring:
    __slots__ = ("attached", "owned", "session", "unsubscribe")

    def __init__(self, session: ResilientSession, unsubscribe: Callable[[], None]) -> None:
        self.session = session
        self.unsubscribe = unsubscribe
        self.owned = False
        self.attached: tuple[Clock, random.Random | None] | None = None


_active_lock = threading.Lock()
_active: FakePeers | None = None


class FakePeers:
    """
    A registry of fake peers over a `responses.RequestsMock`, with a fake
    clock and a recording of everything that happened.

    While it is active (``with`` block, or the ``fake_peers`` fixture):

    * every request sent through requests goes to the fake transport;
    * every `ResilientSession` built without an explicit ``clock=`` runs on
      `clock` (so backoff sleeps, deadlines and breaker timers cost no real
      time), has deterministic jitter (``seed``), and is recorded;
    * in strict mode (the default) a request no peer matches raises
      `UnmatchedRequest`, and leaving the block with a step never reached
      or an unmatched request fails with what was expected and what
      happened.

    Args:
        clock: the fake clock; a new `FakeClock` when omitted.
        strict: see above; when False an unmatched request is refused like
            a closed port, and nothing is checked on exit.
        seed: the jitter seed for the sessions it wires (None = random).

    Attributes:
        mock: the `responses.RequestsMock` underneath; ``peers.mock.add(...)``
            registers plain responses, with responses' matchers.
        calls: every `PeerCall`, in order (requests that reached a peer).
        app_calls: every `AppCall` the application made, in order.
        events: every `Event` the sessions emitted, as an `EventLog`.
        unmatched: the `PeerCall` s no peer matched.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self, *, clock: FakeClock | None = None, strict: bool = True, seed: int | None = 0
    ) -> None:
        try:
            from . import _fake_transport
        except ModuleNotFoundError as e:  # pragma: no cover - depends on the environment
            if e.name != "responses":
                raise
            raise ImportError(
                "resilient_client.testing needs the 'responses' package: "
                "pip install 'resilient_client[testing]'"
            ) from e
        self._transport = _fake_transport
        self.clock = clock if clock is not None else FakeClock()
        self.strict = strict
        self.seed = seed
        self.mock = _fake_transport.Mock(self)
        self.calls: list[PeerCall] = []
        self.app_calls: list[AppCall] = []
        self.events = EventLog()
        self.unmatched: list[PeerCall] = []
        self._peers: list[FakePeer] = []
        self._by_target: dict[tuple[str, str, str | None], FakePeer] = {}
        self._timeline: list[tuple[float, object]] = []
        self._lock = threading.RLock()
        self._local = threading.local()
        self._wired: dict[int, _Wiring] = {}
        # Every session ever wired, so that breakers can be asked about after the block.
        self._sessions: list[ResilientSession] = []
        self._adapters: dict[int, ResilientSession] = {}
        self._started_at = self.clock.monotonic()
        self._running = False

    # -- scripting ----------------------------------------------------------------

    def url(
        self,
        url: str | re.Pattern[str],
        *,
        method: str | None = None,
        match: Sequence[Callable[[requests.PreparedRequest], tuple[bool, str]]] = (),
    ) -> FakePeer:
        """
        The peer at *url*: an exact URL (scheme, host, port and path; the
        query only if *url* has one, as in responses), a URL with ``*``
        wildcards (``"https://inventory.internal/*"``), or a compiled regex.
        *method* limits it to one method; *match* takes responses' matchers.
        Asking twice for the same URL and method gives the same peer.
        """
        return self._peer(_Target("url", url), method, match)

    def endpoint(
        self,
        name: str,
        *,
        method: str | None = None,
        match: Sequence[Callable[[requests.PreparedRequest], tuple[bool, str]]] = (),
    ) -> FakePeer:
        """
        The peer behind endpoint *name* of the session's config: every
        request the session routes to that endpoint.
        """
        return self._peer(_Target("endpoint", name), method, match)

    def _peer(
        self,
        target: _Target,
        method: str | None,
        match: Sequence[Callable[[requests.PreparedRequest], tuple[bool, str]]],
    ) -> FakePeer:
        key_target = (
            target.target.pattern if isinstance(target.target, re.Pattern) else target.target
        )
        key = (target.kind, key_target, method.upper() if method else None)
        with self._lock:
            if not match and key in self._by_target:
                return self._by_target[key]
            peer = FakePeer(self, target, method, match)
            self._peers.append(peer)
            if not match:
                self._by_target[key] = peer
            self.mock.add(self._transport.Script(peer))
        return peer

    # -- sessions -------------------------------------------------------------------

    def session(self, config: ConfigSource = None, **kwargs: Any) -> ResilientSession:
        """
        A `ResilientSession` for *config* on this registry's clock, with
        deterministic jitter and recorded; closed when the registry stops.
        Other keyword arguments go to `ResilientSession`.
        """
        kwargs.setdefault("clock", self.clock)
        if self.seed is not None:
            kwargs.setdefault("rng", random.Random(self.seed))
        session = ResilientSession(config, **kwargs)
        self._wire(session, adopt_clock=False, adopt_rng=False).owned = True
        return session

    def attach(self, session: ResilientSession) -> ResilientSession:
        """
        Bring a session built before the registry (a module-level one) under
        it: its breakers, budgets, bulkheads and stale caches are reset and
        it runs on the fake clock, until the registry stops, when it is
        reset again and gets its own clock back.
        """
        wiring = self._wired.get(id(session))
        if wiring is not None and wiring.attached is not None:
            return session
        old = (session.clock, session._rng)
        _reset_endpoint_state(session)
        wiring = self._wire(session, adopt_clock=True, adopt_rng=True)
        wiring.attached = old
        return session

    def _hook(
        self, session: ResilientSession, clock: Clock | None, rng: random.Random | None
    ) -> None:
        self._wire(session, adopt_clock=clock is None, adopt_rng=rng is None)

    def _wire(self, session: ResilientSession, *, adopt_clock: bool, adopt_rng: bool) -> _Wiring:
        with self._lock:
            wiring = self._wired.get(id(session))
            if wiring is not None:
                return wiring
            if adopt_clock:
                session.clock = self.clock
            if adopt_rng and self.seed is not None:
                # The retry layer is built on first use, so a fresh source of
                # jitter set now is the one it will use.
                session._rng = random.Random(self.seed)
            unsubscribe = session.subscribe(self._on_event)
            # Count the calls the application makes: wrap this session's send
            # (an instance attribute, removed when the registry stops).
            session.send = self._transport.wrap_send(  # type: ignore[method-assign]
                session.send,
                lambda request: self._app_call_started(session, request),
                self._app_call_ended,
            )
            wiring = self._wired[id(session)] = _Wiring(session, unsubscribe)
            if all(seen is not session for seen in self._sessions):
                self._sessions.append(session)
            for adapter in session.adapters.values():
                self._adapters[id(adapter)] = session
            return wiring

    def _unwire_all(self) -> None:
        with self._lock:
            wirings = list(self._wired.values())
            self._wired.clear()
            self._adapters.clear()
        for w in wirings:
            w.unsubscribe()
            w.session.__dict__.pop("send", None)
            if w.attached is not None:
                _reset_endpoint_state(w.session)
                w.session.clock, w.session._rng = w.attached
            if w.owned:
                w.session.close()

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> FakePeers:
        """Intercept requests and wire new sessions (what ``with`` does)."""
        global _active
        with _active_lock:
            if _active is not None and _active is not self:
                raise RuntimeError("another FakePeers registry is already active; use one per test")
            if self._running:
                return self
            _active = self
            self._running = True
        self.mock.start()
        _NEW_SESSION_HOOKS.append(self._hook)
        return self

    def stop(self, *, verify: bool = True) -> None:
        """
        Stop intercepting, unwire the sessions, then (when *verify* and
        strict) raise `AssertionError` if a step was never reached or a
        request matched nothing. The recording stays readable.
        """
        global _active
        with _active_lock:
            if not self._running:
                return
            self._running = False
            _active = None
        self.mock.stop(allow_assert=False)
        with contextlib.suppress(ValueError):  # already removed
            _NEW_SESSION_HOOKS.remove(self._hook)
        # A deadline on our fake clock must not outlive the registry on this
        # thread: later calls would read against a clock nobody moves.
        arm = getattr(_deadline._local, "arm", None)
        if arm is not None and arm.deadline is not None and arm.deadline.clock is self.clock:
            _deadline.disarm(arm)
        self._unwire_all()
        if verify:
            self.verify()

    def __enter__(self) -> FakePeers:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # When the block failed, that failure is the story: no second report.
        self.stop(verify=exc_type is None)

    def problems(self) -> list[str]:
        """
        What strict mode objects to: steps never reached, plain responses
        never used, requests no peer matched.
        """
        found = [why for p in self._peers if (why := p._shortfall()) is not None]
        script = self._transport.Script
        for r in self.mock.registered():
            if not isinstance(r, script) and r.call_count == 0:
                found.append(f"the plain response {r.method} {r.url} was never used")
        for call in self.unmatched:
            found.append(call.explanation)
        return found

    def verify(self) -> None:
        """When strict, raise `AssertionError` listing the `problems` (if any) and the timeline."""
        if not self.strict:
            return
        problems = self.problems()
        if problems:
            raise AssertionError(self.report(problems))

    def report(self, problems: Sequence[str] | None = None) -> str:
        """The problems (default: `problems`), numbered, then the timeline."""
        problems = self.problems() if problems is None else problems
        lines = [
            f"fake peers: {len(problems)} problem{'s' if len(problems) != 1 else ''} (strict mode)"
        ]
        lines += [f"{i}. {p}" for i, p in enumerate(problems, 1)]
        lines += ["", self.timeline()]
        return "\n".join(lines)

    # -- recording (called by the transport and the sessions) --------------------------

    def _stack(self) -> list[AppCall]:
        stack: list[AppCall] | None = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def _app_call_started(
        self, session: ResilientSession, request: requests.PreparedRequest
    ) -> AppCall | None:
        stack = self._stack()
        if stack and stack[-1]._session is session:
            return None  # a redirect hop inside one of this session's attempts
        method, url = request.method or "GET", request.url or ""
        call = AppCall(
            method,
            url,
            session.resolve(method, url).key,
            self.clock.monotonic(),
            request,
            shown_url=redact_url(url, session.config.secrets),
            _session=session,
        )
        with self._lock:
            self.app_calls.append(call)
            self._timeline.append((call.started, call))
        stack.append(call)
        return call

    def _app_call_ended(
        self, call: AppCall, resp: requests.Response | None, exc: BaseException | None
    ) -> None:
        stack = self._stack()
        if stack and stack[-1] is call:
            stack.pop()
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
            if not isinstance(event, _HOT):
                self._timeline.append((self.clock.monotonic(), event))
        if isinstance(event, AttemptFinished):
            stack = self._stack()
            if stack:
                stack[-1]._ran += 1

    def _arrive(self, adapter: HTTPAdapter, request: requests.PreparedRequest) -> PeerCall:
        method, url = request.method or "GET", request.url or ""
        session = self._adapters.get(id(adapter))
        if session is None and self._wired:
            session = next(iter(self._wired.values())).session
        endpoint = session.resolve(method, url).key if session is not None else None
        shown = redact_url(url, session.config.secrets) if session is not None else url
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

    def _unmatched(self, call: PeerCall) -> BaseException:
        call.outcome = "unmatched"
        request = call.request
        rows: list[tuple[int, str, str]] = []
        script = self._transport.Script
        for r in self.mock.registered():
            if isinstance(r, script):
                _, why = r.peer._matches(request)
                rows.append((r.peer._closeness(request), repr(r.peer), why))
            else:
                _, why = r.matches(request)
                close = (
                    2
                    if r._url_matches(r.url, call.url)
                    else int(urlsplit(call.url).netloc == urlsplit(str(r.url)).netloc)
                )
                rows.append((close, f"the plain response {r.method} {r.url}", why))
        rows.sort(key=lambda row: -row[0])
        where = f" [endpoint {call.endpoint}]" if call.endpoint else ""
        lines = [f"{call.method} {call.shown_url}{where} at t={call.at:.3f} matched no fake peer."]
        if rows:
            lines.append("Near misses, closest first:")
            lines += [f"  - {label}: {why}" for _, label, why in rows[:8]]
            if len(rows) > 8:
                lines.append(f"  ... and {len(rows) - 8} more")
        else:
            lines.append("Nothing is scripted.")
        lines.append(
            f"Script it, e.g. peers.url({_url_and_path(call.url)!r}).respond(200), "
            "or set peers.strict = False to have unmatched requests refused."
        )
        call.explanation = "\n   ".join(lines)
        with self._lock:
            self.unmatched.append(call)
        if self.strict:
            return UnmatchedRequest("\n".join(lines))
        return self._transport.refused(request, "no fake peer matched")

    # -- asking what happened --------------------------------------------------------

    def calls_to(self, target: str | re.Pattern[str]) -> list[PeerCall]:
        """
        The requests that reached a fake peer for *target*: an endpoint name,
        a URL (exact, or with ``*``) or a regex.
        """
        t = _Target.parse(target)
        return [c for c in self.calls if t.miss(c.url, c.endpoint) is None]

    def app_calls_to(self, target: str | re.Pattern[str]) -> list[AppCall]:
        """The calls the application made to *target* (as in `calls_to`)."""
        t = _Target.parse(target)
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

    def breaker(self, name_or_url: str) -> CircuitBreaker:
        """The breaker of an endpoint name or URL, in the first wired session that has it."""
        errors = []
        for session in list(self._sessions):
            try:
                return session.circuit(name_or_url)
            except KeyError as e:
                errors.append(str(e))
        raise KeyError(
            f"no session under this registry has a breaker for {name_or_url!r}: "
            f"{errors or 'no sessions'}"
        )

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
        """
        with self._lock:
            entries = list(self._timeline)
        lines = [f"What happened (fake clock, {self.elapsed:.3f}s elapsed):"]
        if not entries:
            lines.append("  nothing")
        for at, entry in entries:
            if isinstance(entry, AppCall):
                detail = f"{entry.outcome}"
                if entry.done:
                    detail += f" after {entry.attempts} attempt{'s' if entry.attempts != 1 else ''}"
                    detail += f", {entry.reached} reached the peer, {entry.duration:.3f}s"
                lines.append(
                    f"  {at:8.3f}  call  {entry.method} {entry.shown_url} [{entry.endpoint}]"
                    f" -> {detail}"
                )
            elif isinstance(entry, PeerCall):
                by = f"  by {entry.peer!r}" if entry.peer is not None else ""
                lines.append(
                    f"  {at:8.3f}    peer  {entry.method} {entry.shown_url} -> {entry.outcome}{by}"
                )
            elif isinstance(entry, Event):
                fields = entry.as_dict()
                text = " ".join(
                    f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in fields.items()
                    if k not in ("event", "endpoint", "method", "url")
                )
                lines.append(f"  {at:8.3f}    {entry.kind} [{entry.endpoint}] {text}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        state = "active" if self._running else "stopped"
        return (
            f"<FakePeers {state} strict={self.strict} peers={len(self._peers)} "
            f"calls={len(self.calls)} app_calls={len(self.app_calls)} t={self.clock.monotonic():g}>"
        )


def _url_and_path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path or '/'}"


def _reset_endpoint_state(session: ResilientSession) -> None:
    """Forget a session's routes and endpoint state (breakers, budgets, bulkheads, stale caches)."""
    session._forget_state()


def fake_peers(
    *, clock: FakeClock | None = None, strict: bool = True, seed: int | None = 0
) -> FakePeers:
    """
    A `FakePeers` registry to use as a context manager, for tests without
    pytest (unittest)::

        with fake_peers() as peers:
            peers.endpoint("inventory").refuse()
            ...

    .. versionadded:: 0.1.0
    """
    return FakePeers(clock=clock, strict=strict, seed=seed)


# The pytest plugin: fixtures and hooks, only when pytest is importable so
# that unittest users can import this module without it.
try:
    import pytest as _pytest  # noqa: F401
except ModuleNotFoundError:  # pragma: no cover - depends on the environment
    pass
else:
    # pytest finds the fixtures and the hook among this module's attributes.
    from ._pytest_plugin import fake_clock_fixture as _fake_clock_fixture  # noqa: F401
    from ._pytest_plugin import fake_http_fixture as _fake_http_fixture  # noqa: F401
    from ._pytest_plugin import fake_peers_fixture as _fake_peers_fixture  # noqa: F401
    from ._pytest_plugin import no_backoff_fixture as _no_backoff_fixture  # noqa: F401
    from ._pytest_plugin import pytest_runtest_makereport  # noqa: F401
