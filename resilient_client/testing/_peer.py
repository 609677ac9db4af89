"""
`FakePeer`: what one URL (or endpoint) does, request after request. The
script is a list of steps (`_scripts`); the peer matches requests against
its target (`_target`) and serves each through the transport's context.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import requests

from ._fake_clock import FakeClock
from ._records import PeerCall
from ._scripts import (
    UNSET,
    Answer,
    ConnectTimedOut,
    Drip,
    Flap,
    Gate,
    Hold,
    Outcome,
    ReadTimedOut,
    Refused,
    Slow,
    Step,
    check_seconds,
    make_answer,
    make_failure,
    written_args,
)
from ._target import Target

if TYPE_CHECKING:
    from urllib3.response import HTTPResponse

    from ._transport import ServeContext

__all__ = ["FakePeer"]


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
        clock: FakeClock,
        context: Callable[[requests.PreparedRequest, PeerCall], ServeContext],
        target: Target,
        method: str | None,
        match: Sequence[Callable[[requests.PreparedRequest], tuple[bool, str]]],
    ) -> None:
        # The registry's clock, and how its transport serves one request.
        self._clock = clock
        self._context = context
        self._target = target
        self.method = method.upper() if method else None
        self.match = tuple(match)
        self._steps: list[Step] = []
        self._recovery: tuple[float, Answer] | None = None
        self._optional = False
        self._written: list[str] = []
        self._lock = threading.Lock()
        self._gate = Gate()
        self.calls: list[PeerCall] = []

    # -- scripting ---------------------------------------------------------------

    def respond(
        self,
        status: int = 200,
        *,
        json: Any = UNSET,
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
        answer = make_answer(status, json=json, body=body, headers=headers, retry_after=retry_after)
        return self._add(
            answer,
            times,
            f"respond({written_args(status, json=json, retry_after=retry_after, times=times)})",
        )

    def statuses(
        self,
        codes: Iterable[int],
        *,
        json: Any = UNSET,
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
            steps.append(make_answer(code, json=json, body=body, headers=headers, retry_after=ra))
        written = f"statuses({written_args(codes, retry_after=retry_after)})"
        self._check_open()
        for i, answer in enumerate(steps):
            self._steps.append(Step(answer, 1, written if i == 0 else ""))
        self._written.append(written)
        return self

    def refuse(self, *, times: int | None = None) -> FakePeer:
        """Refuse the connection (nothing reached the peer: safe to retry for any method)."""
        return self._add(Refused(), times, f"refuse({written_args(times=times)})")

    def connect_timeout(self, *, times: int | None = None) -> FakePeer:
        """Never accept the connection: the attempt's connect timeout passes on the fake clock."""
        return self._add(ConnectTimedOut(), times, f"connect_timeout({written_args(times=times)})")

    def read_timeout(self, *, times: int | None = None) -> FakePeer:
        """Take the request and never answer: the read timeout passes on the fake clock."""
        return self._add(ReadTimedOut(), times, f"read_timeout({written_args(times=times)})")

    def slow(
        self,
        seconds: float,
        status: int = 200,
        *,
        json: Any = UNSET,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        times: int | None = None,
    ) -> FakePeer:
        """
        Answer after *seconds* of fake time. When that is longer than the
        attempt's read timeout (which the session caps by the deadline), the
        attempt times out instead, as it would live.
        """
        answer = make_answer(status, json=json, body=body, headers=headers)
        return self._add(
            Slow(seconds, answer), times, f"slow({written_args(seconds, status, times=times)})"
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
        answer = make_answer(status, body=body, headers=headers)
        shown = body if len(body) <= 20 else f"<{len(body)} bytes>"
        written = f"drip({written_args(shown, chunk=chunk, every=every, times=times)})"
        return self._add(Drip(answer, chunk, every), times, written)

    def hold(
        self,
        status: int = 200,
        *,
        json: Any = UNSET,
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
        answer = make_answer(status, json=json, body=body, headers=headers)
        return self._add(Hold(self._gate, answer, timeout), times, f"hold({written_args(times=times)})")

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
        json: Any = UNSET,
        body: bytes | str | None = None,
    ) -> FakePeer:
        """
        Fail every *every*-th request this step answers (the *every*-th,
        2×*every*-th...) and answer *status* to the others. ``failure`` is a
        status or ``"refuse"``, ``"connect_timeout"``, ``"read_timeout"``.
        """
        healthy = make_answer(status, json=json, body=body)
        flap = Flap(every, make_failure(failure), healthy)
        written = f"flap(every={every!r}{'' if failure == 503 else f', failure={failure!r}'})"
        return self._add(flap, None, written)

    def recover_at(
        self,
        when: float,
        status: int = 200,
        *,
        json: Any = UNSET,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> FakePeer:
        """
        From fake time *when* on (a reading of the clock), answer *status*
        whatever the steps say: the peer came back.
        """
        answer = make_answer(status, json=json, body=body, headers=headers)
        self._recovery = (check_seconds("when", when), answer)
        shown = written_args(when) if status == 200 else written_args(when, status)
        self._written.append(f"recover_at({shown})")
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

    def _add(self, outcome: Outcome, times: int | None, written: str) -> FakePeer:
        if times is not None and (
            isinstance(times, bool) or not isinstance(times, int) or times < 1
        ):
            raise ValueError(
                f"times must be an integer >= 1 or None (every later request), got {times!r}"
            )
        self._check_open()
        self._steps.append(Step(outcome, times, written))
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
        outcome, n = self._pick(call)
        return outcome.serve(self._context(request, call), n)

    def _pick(self, call: PeerCall) -> tuple[Outcome, int]:
        """The step that answers *call*, and how many requests it has answered, this one included."""
        call.peer = self
        clock = self._clock
        with self._lock:
            outcome: Outcome
            if self._recovery is not None and clock.monotonic() >= self._recovery[0]:
                outcome, n = self._recovery[1], 0
            else:
                step = next(
                    (s for s in self._steps if s.times is None or s.used < s.times), self._steps[-1]
                )
                step.used += 1
                outcome, n = step.outcome, step.used
            self.calls.append(call)
        return outcome, n

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
