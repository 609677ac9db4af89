"""
`FakePeers`: the registry a test scripts peers on. It records (`Recording`),
scripts peers (`FakePeer`) over the fake transport, wires the application's
sessions (`Wiring`), and runs strict mode's checks.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests

from .. import _deadline
from .._breaker import CircuitBreaker
from .._session import ResilientSession
from ._fake_clock import FakeClock
from ._peer import FakePeer
from ._recording import Recording
from ._records import PeerCall, UnmatchedRequest
from ._target import Target
from ._timeline import render_report, render_unmatched
from ._wiring import Wiring

if TYPE_CHECKING:
    from requests.adapters import HTTPAdapter

    from .._config import ConfigSource
    from ._transport import ServeContext

__all__ = ["FakePeers", "fake_peers"]

_Matcher = Callable[[requests.PreparedRequest], tuple[bool, str]]


# One registry at a time per process: requests has one transport to patch.
_active_lock = threading.Lock()
_active: FakePeers | None = None


class FakePeers(Recording):
    """
    A registry of fake peers over a `responses.RequestsMock`, with a fake
    clock and a recording of everything that happened.

    While it is active (``with`` block, or the ``fake_peers`` fixture):

    * every request sent through requests goes to the fake transport;
    * every live `ResilientSession` is found and recorded, whenever it was
      built (a module-level one built at import time included): it starts
      with fresh breakers, budgets, bulkheads and caches, and, unless it was
      built with its own ``clock=``, runs on `clock` (so backoff sleeps,
      deadlines and breaker timers cost no real time) with deterministic
      jitter (``seed``), until the registry stops and gives it back its own
      clock, with fresh state again;
    * in strict mode (the default) a request no peer matches raises
      `UnmatchedRequest`, and leaving the block with a step never reached
      or an unmatched request fails with what was expected and what
      happened.

    Everything it renders (timeline, report, near misses) redacts what the
    sessions' ``secrets`` name, as the library's own logs do.

    Args:
        clock: the fake clock; a new `FakeClock` when omitted.
        strict: see above; when False an unmatched request is refused like
            a closed port, and nothing is checked on exit.
        seed: the jitter seed for the sessions it moves (None = random).

    Attributes:
        mock: the `responses.RequestsMock` underneath; ``peers.mock.add(...)``
            registers plain responses, with responses' matchers.
        clock: the fake clock.
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
            from ._transport import Mock, Script, ServeContext, refused
        except ModuleNotFoundError as e:  # pragma: no cover - depends on the environment
            if e.name != "responses":
                raise
            raise ImportError(
                "resilient_client.testing needs the 'responses' package: "
                "pip install 'resilient_client[testing]'"
            ) from e
        super().__init__(clock if clock is not None else FakeClock())
        self._script_type = Script
        self._serve_context = ServeContext
        self._refuse = refused
        self.strict = strict
        self.seed = seed
        self.mock = Mock(self)
        self._peers: list[FakePeer] = []
        self._by_target: dict[tuple[str, str, str | None], FakePeer] = {}
        self._wiring = Wiring(self, seed, self._async_transport)
        self._running = False

    # -- scripting ----------------------------------------------------------------

    def url(
        self, url: str | re.Pattern[str], *, method: str | None = None, match: Sequence[_Matcher] = ()
    ) -> FakePeer:
        """
        The peer at *url*: an exact URL (scheme, host, port and path; the
        query only if *url* has one, as in responses), a URL with ``*``
        wildcards (``"https://inventory.internal/*"``), or a compiled regex.
        *method* limits it to one method; *match* takes responses' matchers.
        Asking twice for the same URL and method gives the same peer.
        """
        return self._peer(Target("url", url), method, match)

    def endpoint(
        self, name: str, *, method: str | None = None, match: Sequence[_Matcher] = ()
    ) -> FakePeer:
        """
        The peer behind endpoint *name* of the session's config: every
        request the session routes to that endpoint.
        """
        return self._peer(Target("endpoint", name), method, match)

    def _peer(self, target: Target, method: str | None, match: Sequence[_Matcher]) -> FakePeer:
        key_target = (
            target.target.pattern if isinstance(target.target, re.Pattern) else target.target
        )
        key = (target.kind, key_target, method.upper() if method else None)
        with self._lock:
            if not match and key in self._by_target:
                return self._by_target[key]
            peer = FakePeer(self.clock, self._context, target, method, match)
            self._peers.append(peer)
            if not match:
                self._by_target[key] = peer
            self.mock.add(self._script_type(peer))
        return peer

    def _async_transport(self) -> Any:
        """The fake httpx transport an `AsyncResilientClient` gets while this registry is active."""
        from ._httpx_transport import FakeAsyncTransport

        return FakeAsyncTransport(self)

    def _context(self, request: requests.PreparedRequest, call: PeerCall) -> ServeContext:
        return self._serve_context(request, self.clock, call)

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
        self._wiring.own(session)
        return session

    def attach(self, session: ResilientSession) -> ResilientSession:
        """
        Put *session* on this registry's clock even though it was built with
        a ``clock=`` of its own, with fresh state, until the registry stops.
        Sessions on the system clock need no call: the registry finds them.
        """
        self._wiring.adopt(session, existing=True, move=True)
        return session

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> FakePeers:
        """Intercept requests and wire every session, live or to come (what ``with`` does)."""
        global _active
        with _active_lock:
            if _active is not None and _active is not self:
                raise RuntimeError("another FakePeers registry is already active; use one per test")
            if self._running:
                return self
            _active = self
            self._running = True
        self.mock.start()
        self._wiring.start()
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
        # A deadline on our fake clock must not outlive the registry on this
        # thread: later calls would read against a clock nobody moves.
        arm = getattr(_deadline._local, "arm", None)
        if arm is not None and arm.deadline is not None and arm.deadline.clock is self.clock:
            _deadline.disarm(arm)
        self._wiring.stop()
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

    # -- strict mode --------------------------------------------------------------------

    def problems(self) -> list[str]:
        """
        What strict mode objects to: steps never reached, plain responses
        never used, requests no peer matched.
        """
        found = [why for p in self._peers if (why := p._shortfall()) is not None]
        for r in self.mock.registered():
            if not isinstance(r, self._script_type) and r.call_count == 0:
                found.append(f"the plain response {r.method} {r.url} was never used")
        found += [call.explanation for call in self.unmatched]
        return [self._redaction.text(p) for p in found]

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
        return render_report(problems, self.timeline(), self._redaction)

    # -- the transport's side -------------------------------------------------------

    def _arrive(self, adapter: HTTPAdapter, request: requests.PreparedRequest) -> PeerCall:
        # The session whose call runs on this thread sent it (a hook's own
        # call runs as a call of its own); else the one that owns the adapter.
        session = self._calling_session()
        if session is None:
            session = self._wiring.owner_of(adapter)
        return self._arrived(request, session)

    def _unmatched(self, call: PeerCall) -> BaseException:
        call.outcome = "unmatched"
        request = call.request
        rows: list[tuple[int, str, str]] = []
        for r in self.mock.registered():
            if isinstance(r, self._script_type):
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
        lines = render_unmatched(call, rows, self._redaction)
        call.explanation = "\n   ".join(lines)
        with self._lock:
            self.unmatched.append(call)
        if self.strict:
            return UnmatchedRequest("\n".join(lines))
        return self._refuse(request, "no fake peer matched")

    # -- asking about sessions ---------------------------------------------------------

    def breaker(self, name_or_url: str) -> CircuitBreaker:
        """
        The breaker of an endpoint name or URL, in the first session that has
        it: one that made a call, else one built during the test, else the
        oldest one from before (a module-level session).
        """
        errors: list[str] = []

        def first_with_it(sessions: list[Any]) -> CircuitBreaker | None:
            for session in sessions:
                try:
                    breaker: CircuitBreaker = session.circuit(name_or_url)
                    return breaker
                except KeyError as e:
                    errors.append(str(e))
            return None

        found = first_with_it(self._wiring.first())
        if found is None:
            # Which one is the application's, when several? Not the leftovers
            # of earlier tests: they are garbage, the cyclic collector's to free.
            found = first_with_it(self._wiring.older(collect=self._wiring.older_count() > 1))
        if found is not None:
            return found
        raise KeyError(
            f"no session under this registry has a breaker for {name_or_url!r}: "
            f"{errors or 'no session is alive (build one, or import the module that does)'}"
        )

    def __repr__(self) -> str:
        state = "active" if self._running else "stopped"
        return (
            f"<FakePeers {state} strict={self.strict} peers={len(self._peers)} "
            f"calls={len(self.calls)} app_calls={len(self.app_calls)} t={self.clock.monotonic():g}>"
        )


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
