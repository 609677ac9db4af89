"""
The health view: what a load balancer (HAProxy's ``option httpchk``) or an
operator needs to know about this process's peers.

Per endpoint: breaker state, bulkhead usage, retry-budget use and the error
rate of recent attempts; overall: ``healthy`` is false when the breaker of
a critical endpoint is open. An open breaker to an endpoint that is not
critical only makes the status ``degraded``, still 200.

Which endpoints are critical (`is_critical`): those marked ``critical:
true``, and by default those without a fallback. An endpoint with a
fallback keeps answering while its breaker is open, so taking the process
out of rotation for it would be wrong twice: its callers are being served,
and since every instance calls the same peer, a load balancer would take
every instance out at once, the cascade this library exists to stop.

Half-open counts as healthy on purpose: a health check that keeps a
process out of rotation until its breakers close would never let the trial
call that closes them happen (no traffic, no trial, out of rotation for
ever). With half-open healthy, the process comes back after
``reset_timeout``, the first call is the trial, and a peer still down sends
it out again: a slow, self-limiting flap instead of a dead end.

The error rate comes from a listener (`HealthTracker`) that the session
adds on the first call to ``health()`` or `health_app`: a process that
never asks for its health pays nothing for it.

Why it is long: the view is one page of facts gathered from every piece
(breaker, budget, bulkhead, tracker), each of which has its in-process,
host-shared and Redis variants to read the right figure from, plus the
WSGI app that serves it; split, the pieces would only call each other.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._clock import Clock
from ._events import AttemptFinished, Event
from ._redact import redact_url

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker
    from ._bulkhead import Bulkhead
    from ._endpoints import EndpointState
    from ._policy import Policy
    from ._session import ResilientSession

__all__ = ["EndpointHealth", "Health", "HealthTracker", "collect", "health_app", "is_critical"]

#: Seconds of attempts that the error rate covers.
WINDOW = 60.0
_BUCKETS = 6


def is_critical(policy: Policy) -> bool:
    """
    Whether an open breaker under *policy* makes the service unhealthy: its
    ``critical`` when given, else whether it has no fallback.

    .. versionadded:: 0.2.0
    """
    if policy.critical is not None:
        return policy.critical
    return policy.fallback is None


class _Counts:
    """Attempts and failures of one endpoint in time buckets (a ring)."""

    __slots__ = ("attempts", "epoch", "failures")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.attempts = [0] * _BUCKETS
        self.failures = [0] * _BUCKETS

    def roll(self, now: int) -> int:
        """Clear the buckets that slid out of the window; the current index."""
        gap = now - self.epoch
        if gap > 0:
            for i in range(1, min(gap, _BUCKETS) + 1):
                idx = (self.epoch + i) % _BUCKETS
                self.attempts[idx] = 0
                self.failures[idx] = 0
            self.epoch = now
        return now % _BUCKETS


class HealthTracker:
    """
    A listener counting each endpoint's attempts and failed attempts (any
    outcome but ``ok``) over the last `WINDOW` seconds.

    .. versionadded:: 0.1.0
    """

    def __init__(self, clock: Clock, window: float = WINDOW) -> None:
        self.window = window
        self._clock = clock
        self._bucket = window / _BUCKETS
        self._lock = threading.Lock()
        self._counts: dict[str, _Counts] = {}

    def __call__(self, event: Event) -> None:
        if type(event) is not AttemptFinished:
            return
        now = int(self._clock.monotonic() / self._bucket)
        with self._lock:
            counts = self._counts.get(event.endpoint)
            if counts is None:
                counts = self._counts[event.endpoint] = _Counts(now)
            i = counts.roll(now)
            counts.attempts[i] += 1
            if event.outcome != "ok":
                counts.failures[i] += 1

    def recent(self, endpoint: str) -> tuple[int, int]:
        """(attempts, failures) of *endpoint* over the window."""
        now = int(self._clock.monotonic() / self._bucket)
        with self._lock:
            counts = self._counts.get(endpoint)
            if counts is None:
                return 0, 0
            counts.roll(now)
            return sum(counts.attempts), sum(counts.failures)


@dataclass(frozen=True)
class EndpointHealth:
    """
    One endpoint in the health view.

    Attributes:
        name: the endpoint name (or origin ``scheme://host:port``).
        critical: whether its breaker being open makes the service unhealthy
            (`is_critical`: ``critical`` when set, else "has no fallback").
        healthy: False only when its breaker is open.
        breaker: ``closed``, ``open``, ``half-open``, or None (no breaker).
        consecutive_failures: as the breaker counts them; for a breaker
            shared on the host or stored in Redis, the count every process
            shares (None: no breaker).
        retry_in: seconds until an open breaker lets a trial call through
            (None when not open, or forced open).
        storage: ``memory``, ``host`` or the Redis URL (password redacted);
            ``host (degraded: process-local)`` once the endpoint's host file
            could not be used and this process keeps its state alone.
        in_flight: calls holding a bulkhead slot now, on the whole host for
            ``state: host`` (None: no bulkhead).
        max_concurrent: the bulkhead's size (None: no bulkhead).
        attempts: attempts over the last ``window`` seconds.
        failures: failed attempts among them.
        error_rate: ``failures / attempts``, None without attempts.
        budget_requests: first tries in the retry budget's window (None: no budget).
        budget_retries: retries spent in that window (None: no budget).
        concurrency_limit: the adaptive concurrency limit (None: ``concurrency`` off).
        throttle_reject_rate: the throttle's refusal probability now (None: ``throttle`` off).

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 ``concurrency_limit``, ``throttle_reject_rate``.
    """

    name: str
    critical: bool
    healthy: bool
    breaker: str | None
    consecutive_failures: int | None
    retry_in: float | None
    storage: str | None
    in_flight: int | None
    max_concurrent: int | None
    attempts: int
    failures: int
    error_rate: float | None
    budget_requests: int | None = None
    budget_retries: int | None = None
    concurrency_limit: int | None = None
    throttle_reject_rate: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        return {
            "name": self.name,
            "critical": self.critical,
            "healthy": self.healthy,
            "breaker": None if self.breaker is None else {
                "state": self.breaker,
                "consecutive_failures": self.consecutive_failures,
                "retry_in": self.retry_in,
                "storage": self.storage,
            },
            "bulkhead": None if self.max_concurrent is None else {
                "in_flight": self.in_flight,
                "max_concurrent": self.max_concurrent,
            },
            "budget": None if self.budget_requests is None else {
                "requests": self.budget_requests,
                "retries": self.budget_retries,
            },
            "overload": None if self.concurrency_limit is None and self.throttle_reject_rate is None else
            {"concurrency_limit": self.concurrency_limit, "throttle_reject_rate": self.throttle_reject_rate},
            "recent": {
                "attempts": self.attempts,
                "failures": self.failures,
                "error_rate": self.error_rate,
            },
        }


@dataclass(frozen=True)
class Health:
    """
    The health of one session's peers.

    Attributes:
        healthy: False when a critical endpoint's breaker is open.
        status: ``ok``, ``degraded`` (a breaker is not closed, none critical
            and open) or ``unhealthy``.
        endpoints: every configured endpoint, then every origin called.
        window: the seconds that ``attempts`` and ``error_rate`` cover.

    .. versionadded:: 0.1.0
    """

    healthy: bool
    status: str
    endpoints: tuple[EndpointHealth, ...]
    window: float = WINDOW

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping, as `health_app` serves it."""
        return {
            "healthy": self.healthy,
            "status": self.status,
            "window": self.window,
            "endpoints": [e.as_dict() for e in self.endpoints],
        }

    def __getitem__(self, name: str) -> EndpointHealth:
        """The endpoint called *name*."""
        for e in self.endpoints:
            if e.name == name:
                return e
        raise KeyError(name)


def tracker_of(session: ResilientSession) -> HealthTracker:
    """The session's tracker, subscribed on first use."""
    with session._lock:
        tracker = session._health
        if tracker is None:
            tracker = session._health = HealthTracker(session.clock)
            session.subscribe(tracker)
    return tracker


def _endpoint_states(session: ResilientSession) -> Iterable[tuple[EndpointState, Policy]]:
    seen: set[str] = set()
    for ep in session.config.endpoints:
        if ep.name not in seen:
            seen.add(ep.name)
            yield session._state_named(ep.name), ep.policy
    for state in session._all_states():
        if state.name in seen:
            continue
        yield state, state.policy


def _shared_failures(breaker: CircuitBreaker, local: int | None) -> int | None:
    """
    The consecutive failures of a breaker stored in Redis, as every process
    counts them together; *local* when the breaker cannot tell.

    `CircuitBreaker.stats` counts this process's failures only: a process
    that never called the peer (``resilient-client status``, a worker just
    started) would show an open breaker with 0 failures. The shared record
    is the one that opened it, so that is the number to show.
    """
    # The breaker has no public reader for the shared count; `_read` gives
    # the record the breaker itself decides from (the Redis store caches it
    # for a few ms, and falls back to the local record while Redis is away).
    # Reached by name so that a breaker without it degrades to the local
    # count; test_cli's Redis status test then fails, the cue to follow it.
    read = getattr(breaker, "_read", None)
    if read is None:
        return local
    try:
        record, _ = read()
    except Exception:  # the health view must answer whatever the store does
        return local
    failures = getattr(record, "failures", None)
    return failures if isinstance(failures, int) else local


#: `EndpointHealth.storage` of a ``state: host`` endpoint whose host file
#: could not be used: its state is this process's alone from then on.
DEGRADED = "host (degraded: process-local)"


def _degraded(state: EndpointState, breaker_shared: bool | None) -> bool:
    """Whether a ``state: host`` endpoint's breaker, budget or bulkhead fell back to process-local state."""
    # HostBudget and HostBulkhead say so in `_shared` (reached by name: the
    # memory pieces have none, and a host piece without it reads as shared).
    return breaker_shared is False or not all(
        getattr(piece, "_shared", True) for piece in (state.budget, state.bulkhead))


def _in_flight(bulkhead: Bulkhead) -> int:
    """Calls holding a slot: on the host for a host-wide bulkhead (its file's leases), else here."""
    host_in_flight = getattr(bulkhead, "host_in_flight", None)
    if host_in_flight is not None and getattr(bulkhead, "_shared", False):
        shared = host_in_flight()
        if isinstance(shared, int):
            return shared
    return bulkhead.in_flight


def collect(session: ResilientSession) -> Health:
    """Implementation of `ResilientSession.health`."""
    tracker = tracker_of(session)
    now = session.clock.monotonic()
    endpoints = []
    for state, policy in _endpoint_states(session):
        breaker = state.breaker
        bulkhead = state.bulkhead
        attempts, failures = tracker.recent(state.name)
        if breaker is not None:
            stats = breaker.stats()
            bstate: str | None = str(stats.state)
            consecutive: int | None = stats.consecutive_failures
            if state.policy.breaker_storage != "memory":  # host or Redis: the shared record's count
                consecutive = _shared_failures(breaker, consecutive)
            retry_in = (
                max(0.0, stats.retry_at - now)
                if stats.retry_at is not None and bstate == "open"
                else None
            )
            # Where the record lives: `state` (host, Redis) or breaker.storage.
            storage: str | None = redact_url(state.policy.breaker_storage)
            if state.policy.state == "host" and _degraded(state, stats.shared):
                storage = DEGRADED
        else:
            bstate = consecutive = retry_in = storage = None
        budget = state.budget.snapshot() if state.budget is not None else None
        overload = state.overload.status() if state.overload is not None else None
        endpoints.append(
            EndpointHealth(
                name=state.name,
                critical=is_critical(policy),
                healthy=bstate != "open",
                breaker=bstate,
                consecutive_failures=consecutive,
                retry_in=retry_in,
                storage=storage,
                in_flight=_in_flight(bulkhead) if bulkhead is not None else None,
                max_concurrent=bulkhead.max_concurrent if bulkhead is not None else None,
                attempts=attempts,
                failures=failures,
                error_rate=failures / attempts if attempts else None,
                budget_requests=budget[0] if budget is not None else None,
                budget_retries=budget[1] if budget is not None else None,
                concurrency_limit=overload.limit if overload is not None else None,
                throttle_reject_rate=overload.reject_rate if overload is not None else None,
            )
        )
    healthy = all(e.healthy or not e.critical for e in endpoints)
    if not healthy:
        status = "unhealthy"
    elif any(e.breaker not in (None, "closed") for e in endpoints):
        status = "degraded"
    else:
        status = "ok"
    return Health(healthy, status, tuple(endpoints), tracker.window)


_METHODS = ("GET", "HEAD", "OPTIONS")
_ALLOW = ", ".join(_METHODS)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def health_app(
    session: ResilientSession, app: WSGIApp | None = None, *, path: str = "/health"
) -> WSGIApp:
    """
    A WSGI app serving ``session.health()`` as JSON: 200 when healthy, 503
    when a critical endpoint's breaker is open (`is_critical`; for HAProxy's
    ``option httpchk``). GET, HEAD, and OPTIONS (HAProxy's default check:
    the status alone).

    Alone (``app`` None) it answers on every path. Given ``app``, it is a
    middleware: requests for *path* get the health view, all others go to
    ``app`` (wrap a Flask or Django WSGI application this way).

    .. versionadded:: 0.1.0
    """
    tracker_of(session)  # count attempts from now on

    def health(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in _METHODS:
            start_response("405 Method Not Allowed", [("Allow", _ALLOW), ("Content-Length", "0")])
            return [b""]
        h = session.health()
        status = "200 OK" if h.healthy else "503 Service Unavailable"
        if method == "OPTIONS":
            # HAProxy's bare `option httpchk` sends OPTIONS / HTTP/1.0: the status is the answer.
            start_response(status, [("Allow", _ALLOW), ("Content-Length", "0")])
            return [b""]
        body = json.dumps(h.as_dict(), indent=2).encode() + b"\n"
        start_response(
            status,
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [b""] if method == "HEAD" else [body]

    if app is None:
        return health
    inner = app

    def dispatch(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") == path:
            return health(environ, start_response)
        return inner(environ, start_response)

    return dispatch
