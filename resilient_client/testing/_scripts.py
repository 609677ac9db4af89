"""
What a fake peer can do, one step of its script at a time: answer, refuse,
time out, answer slowly, drip a body, hold a request until released, flap.
Each step is an `Outcome` that serves one request through the transport's
`ServeContext`, shaped as a live peer's failure would reach the session.
"""

from __future__ import annotations

import json as _json
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from urllib3.response import HTTPResponse

    from ._transport import ServeContext

__all__ = [
    "FAILURES",
    "UNSET",
    "Answer",
    "ConnectTimedOut",
    "Drip",
    "Flap",
    "Gate",
    "Hold",
    "Outcome",
    "ReadTimedOut",
    "Refused",
    "Slow",
    "Step",
    "check_seconds",
    "make_answer",
    "make_failure",
    "written_args",
]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: "Not given", where None is a value (``json=None`` sends ``null``).
UNSET: Any = _Unset()


class Outcome:
    """One answer of a fake peer; ``label`` is how it reads in a repr."""

    label = ""

    def serve(self, ctx: ServeContext, n: int) -> HTTPResponse:
        raise NotImplementedError


class Answer(Outcome):
    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"status must be an HTTP status 100-599, got {status!r}")
        self.status = status
        self.body = body
        self.headers = headers
        self.label = str(status)

    def serve(self, ctx: ServeContext, n: int) -> HTTPResponse:
        ctx.call.status = self.status
        ctx.call.outcome = str(self.status)
        return ctx.respond(self.status, dict(self.headers), self.body)


class Refused(Outcome):
    label = "refused"

    def serve(self, ctx: ServeContext, n: int) -> HTTPResponse:
        ctx.call.outcome = "refused"
        raise ctx.refused()


class ConnectTimedOut(Outcome):
    label = "connect timeout"

    def serve(self, ctx: ServeContext, n: int) -> HTTPResponse:
        ctx.call.outcome = "connect timeout"
        err = ctx.connect_timed_out()
        ctx.wait(math.inf, ctx.connect_timeout)
        raise err


class ReadTimedOut(Outcome):
    label = "read timeout"

    def serve(self, ctx: ServeContext, n: int) -> HTTPResponse:
        ctx.call.outcome = "read timeout"
        err = ctx.read_timed_out()
        ctx.wait(math.inf, ctx.read_timeout)
        raise err


class Slow(Outcome):
    def __init__(self, seconds: float, answer: Answer) -> None:
        self.seconds = check_seconds("seconds", seconds)
        self.answer = answer
        self.label = f"{answer.status} after {self.seconds:g}s"

    def serve(self, ctx: ServeContext, n: int) -> HTTPResponse:
        if not ctx.wait(self.seconds, ctx.read_timeout):
            ctx.call.outcome = f"read timeout (answer due after {self.seconds:g}s)"
            raise ctx.read_timed_out()
        resp = self.answer.serve(ctx, n)
        ctx.call.outcome = self.label
        return resp


class Drip(Outcome):
    def __init__(self, answer: Answer, chunk: int, every: float) -> None:
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
        self.answer = answer
        self.chunk = chunk
        self.every = check_seconds("every", every)
        self.label = f"{answer.status} dripping {chunk} B every {self.every:g}s"

    def serve(self, ctx: ServeContext, n: int) -> HTTPResponse:
        ctx.call.status = self.answer.status
        ctx.call.outcome = self.label
        body = ctx.drip_body(self.answer.body, self.chunk, self.every)
        return ctx.respond(self.answer.status, dict(self.answer.headers), body)


class Gate:
    """Where held requests wait, in real time, until the test releases them."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.cv = threading.Condition()
        self.held = 0


class Hold(Outcome):
    def __init__(self, gate: Gate, answer: Answer, timeout: float) -> None:
        self.gate = gate
        self.answer = answer
        self.timeout = check_seconds("timeout", timeout)
        self.label = f"{answer.status} once released"

    def serve(self, ctx: ServeContext, n: int) -> HTTPResponse:
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


class Flap(Outcome):
    def __init__(self, every: int, failure: Outcome, healthy: Outcome) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.every = every
        self.failure = failure
        self.healthy = healthy

    def serve(self, ctx: ServeContext, n: int) -> HTTPResponse:
        return (self.failure if n % self.every == 0 else self.healthy).serve(ctx, n)


FAILURES: dict[str, Callable[[], Outcome]] = {
    "refuse": Refused,
    "connect_timeout": ConnectTimedOut,
    "read_timeout": ReadTimedOut,
}


def check_seconds(name: str, value: float) -> float:
    """*value* as float seconds, or a ValueError naming *name* (no bool, NaN or negative)."""
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


def make_answer(
    status: int,
    *,
    json: Any = UNSET,
    body: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    retry_after: float | str | None = None,
) -> Answer:
    """One answer: *status* with a JSON or raw body, headers, and a Retry-After if given."""
    hdrs = dict(headers or {})
    if json is not UNSET:
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
    return Answer(status, data, hdrs)


def make_failure(failure: int | str) -> Outcome:
    """A status, or a named failure (``"refuse"``, ``"connect_timeout"``, ``"read_timeout"``)."""
    if isinstance(failure, str):
        try:
            return FAILURES[failure]()
        except KeyError:
            raise ValueError(
                f"failure must be a status or one of {', '.join(sorted(FAILURES))}, "
                f"got {failure!r}"
            ) from None
    return Answer(failure, b"", {})


def written_args(*args: object, **kwargs: object) -> str:
    """Call arguments as written, for reprs that read like the code."""
    parts = [repr(a) for a in args]
    parts += [f"{k}={v!r}" for k, v in kwargs.items() if v is not None and v is not UNSET]
    return ", ".join(parts)


class Step:
    """One step of a script: *outcome*, for *times* requests (None: every later one)."""

    __slots__ = ("outcome", "times", "used", "written")

    def __init__(self, outcome: Outcome, times: int | None, written: str) -> None:
        self.outcome = outcome
        self.times = times
        self.used = 0
        self.written = written
