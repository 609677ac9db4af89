"""
Policies: frozen values, validated where they are written.

Each section of the configuration is a frozen dataclass whose
``__post_init__`` validates and normalises its fields, raising `ConfigError`
with the field name as the key path. The config parser (`_config`) builds
them from mappings and prefixes its own key path onto any error, so the
rules live in one place whether a policy comes from YAML or from Python.
"""

from __future__ import annotations

import dataclasses
import enum
import json as _json
import math
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._errors import ConfigError, Problems

if TYPE_CHECKING:
    import requests

__all__ = [
    "ALL_RETRY_ON",
    "MAX_DURATION",
    "BackoffPolicy",
    "BreakerPolicy",
    "BudgetPolicy",
    "BulkheadPolicy",
    "CallableFallback",
    "ConcurrencyPolicy",
    "Fallback",
    "HedgePolicy",
    "Jitter",
    "Policy",
    "PoolPolicy",
    "PropagationPolicy",
    "ProxyErrorsPolicy",
    "RetryPolicy",
    "StaleFallback",
    "StaticFallback",
    "ThrottlePolicy",
    "Timeouts",
]

_HTTP_METHODS = frozenset(
    {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", "POST", "PATCH", "CONNECT"}
)
_HEADER_TOKEN = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)

#: The only 4xx statuses a retry can fix: 408 Request Timeout, 429 Too Many Requests.
_RETRYABLE_4XX = frozenset({408, 429})

#: The failure kinds that ``retry.on`` accepts.
ALL_RETRY_ON = frozenset({"connect_error", "connect_timeout", "read_timeout", "read_error"})

#: The longest duration, in seconds, accepted anywhere (a day). Sockets and
#: the OS refuse timeouts that overflow their C types (about 1e9 s here), and
#: that would only surface as a bare OverflowError on every call; nothing a
#: client waits for sensibly lasts longer than a day anyway.
MAX_DURATION = 86400.0


# -- small validators shared by every section -------------------------------


def _number(path: str, value: object, *, minimum: float = 0.0, allow_zero: bool = False) -> float:
    """Return *value* as a finite float > *minimum* (or >= when allow_zero)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(path, f"must be a number, got {value!r}")
    try:
        value = float(value)
    except OverflowError:
        raise ConfigError(path, f"must be a finite number, got {value!r}") from None
    if math.isnan(value) or math.isinf(value):
        raise ConfigError(path, f"must be a finite number, got {value!r}")
    if value < minimum or (value == minimum and not allow_zero):
        op = ">=" if allow_zero else ">"
        raise ConfigError(path, f"must be a number {op} {minimum:g}, got {value!r}")
    return value


def _shown(value: float) -> str:
    """*value* short (``1e+10``) when that reads back exactly, else in full."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def _duration(path: str, value: object, *, allow_zero: bool = False) -> float:
    """Return *value* as seconds: a finite float > 0 (or >= 0) and at most `MAX_DURATION`."""
    seconds = _number(path, value, allow_zero=allow_zero)
    if seconds > MAX_DURATION:
        shown = str(value) if isinstance(value, int) else _shown(seconds)
        raise ConfigError(path, f"must be a number of seconds <= {MAX_DURATION:g} (a day), got {shown}")
    return seconds


def _integer(path: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(path, f"must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigError(path, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _ratio(path: str, value: object, *, allow_zero: bool = True) -> float:
    v = _number(path, value, minimum=0.0, allow_zero=allow_zero)
    if v > 1.0:
        raise ConfigError(path, f"must be a number between 0 and 1, got {value!r}")
    return v


def _header_name(path: str, value: object) -> str:
    if not isinstance(value, str) or not value or not set(value) <= _HEADER_TOKEN:
        raise ConfigError(path, f"must be an HTTP header name, got {value!r}")
    return value


def _statuses(path: str, value: object, *, lo: int = 100, hi: int = 599) -> frozenset[int]:
    items = _sequence(path, value)
    out = set()
    p = Problems()
    for i, code in enumerate(items):
        if isinstance(code, bool) or not isinstance(code, int) or not lo <= code <= hi:
            p.add(f"{path}[{i}]", f"must be an HTTP status {lo}-{hi}, got {code!r}")
        else:
            out.add(code)
    p.raise_if_any()
    return frozenset(out)


def _methods(path: str, value: object) -> frozenset[str]:
    items = _sequence(path, value)
    out = set()
    p = Problems()
    for i, m in enumerate(items):
        if not isinstance(m, str) or m.upper() not in _HTTP_METHODS:
            p.add(f"{path}[{i}]", f"must be an HTTP method ({', '.join(sorted(_HTTP_METHODS))}), got {m!r}")
        else:
            out.add(m.upper())
    p.raise_if_any()
    return frozenset(out)


def _sequence(path: str, value: object) -> list[Any]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ConfigError(path, f"must be a list, got {value!r}")
    return list(value)


def _given(value: object) -> object:
    """*value* typed as what it may really be: configs are untyped, whatever a field says."""
    return value


def _set(obj: object, name: str, value: object) -> None:
    # Normalising inside a frozen dataclass's __post_init__.
    object.__setattr__(obj, name, value)


# -- sections ---------------------------------------------------------------


@dataclass(frozen=True)
class Timeouts:
    """
    Timeouts of one endpoint, in seconds.

    ``connect`` and ``read`` are always finite and > 0: the config cannot
    switch them off. ``read`` bounds each socket read, not the whole body;
    ``total`` is the deadline for the whole call (every attempt, every
    backoff sleep and the body download), or ``None`` for no deadline.

    .. versionadded:: 0.1.0
    """

    connect: float = 1.0
    read: float = 5.0
    total: float | None = 10.0

    def __post_init__(self) -> None:
        p = Problems()
        with p.at():
            _set(self, "connect", _duration("connect", self.connect))
        with p.at():
            _set(self, "read", _duration("read", self.read))
        if self.total is not None:
            with p.at():
                _set(self, "total", _duration("total", self.total))
        p.raise_if_any()


class Jitter(str, enum.Enum):
    """
    How backoff sleeps are randomised (Marc Brooker, "Exponential Backoff and
    Jitter"). Compares equal to its string value.

    .. versionadded:: 0.1.0
    """

    NONE = "none"
    FULL = "full"
    EQUAL = "equal"
    DECORRELATED = "decorrelated"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class BackoffPolicy:
    """
    Exponential backoff: the n-th sleep (n from 1) is
    ``min(max, initial * multiplier ** (n - 1))``, then jittered.

    .. versionadded:: 0.1.0
    """

    initial: float = 0.1
    multiplier: float = 2.0
    max: float = 5.0
    jitter: Jitter = Jitter.FULL

    def __post_init__(self) -> None:
        p = Problems()
        with p.at():
            _set(self, "initial", _duration("initial", self.initial, allow_zero=True))
        with p.at():
            _set(self, "multiplier", _number("multiplier", self.multiplier, minimum=1.0, allow_zero=True))
        with p.at():
            _set(self, "max", _duration("max", self.max, allow_zero=True))
        # Compared only when both are valid: a bad `initial` is one problem, not two.
        if not p.failed("initial", "max") and self.max < self.initial:
            p.add("max", f"must be >= initial ({self.initial:g}), got {self.max!r}")
        try:
            _set(self, "jitter", Jitter(self.jitter))
        except ValueError:
            choices = " | ".join(j.value for j in Jitter)
            p.add("jitter", f"must be one of {choices}, got {self.jitter!r}")
        p.raise_if_any()


#: The header `RetryPolicy.mint_idempotency_key` sets when no
#: ``idempotency_header`` is configured (the IETF draft's and Stripe's name).
DEFAULT_IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class RetryPolicy:
    """
    When and how often to retry. See the retries page for what is retried.

    ``attempt_header``, when set, names a request header that carries the
    attempt number (1 for the first try) so a callee can tell a retry apart.

    ``mint_idempotency_key``: a request whose method is not in ``methods``
    and that lacks the idempotency header gets one, a fresh UUID4, once per
    call (the same on every retry), so that writes can be retried safely.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 ``mint_idempotency_key``.
    """

    attempts: int = 3
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    on_status: frozenset[int] = frozenset({429, 502, 503, 504})
    on: frozenset[str] = ALL_RETRY_ON
    methods: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
    idempotency_header: str | None = None
    respect_retry_after: bool = True
    max_retry_after: float = 30.0
    attempt_header: str | None = None
    mint_idempotency_key: bool = False

    @property
    def key_header(self) -> str | None:
        """The header that makes a request retry-safe: the configured one, or, when minting, the default."""
        if self.idempotency_header is not None:
            return self.idempotency_header
        return DEFAULT_IDEMPOTENCY_HEADER if self.mint_idempotency_key else None

    def __post_init__(self) -> None:
        p = Problems()
        with p.at():
            _set(self, "attempts", _integer("attempts", self.attempts, minimum=1))
        if not isinstance(_given(self.backoff), BackoffPolicy):
            p.add("backoff", f"must be a BackoffPolicy, got {self.backoff!r}")
        with p.at():
            given = _sequence("on_status", self.on_status)
            _set(self, "on_status", _statuses("on_status", given))
            for i, code in enumerate(given):
                if 400 <= code < 500 and code not in _RETRYABLE_4XX:
                    p.add(
                        f"on_status[{i}]",
                        "must not be a 4xx status other than 408 or 429 (the request itself is "
                        f"refused, and sending it again gets the same answer), got {code!r}",
                    )
        with p.at():
            on = _sequence("on", self.on)
            for i, kind in enumerate(on):
                if not isinstance(kind, str) or kind not in ALL_RETRY_ON:
                    p.add(f"on[{i}]", f"must be one of {', '.join(sorted(ALL_RETRY_ON))}, got {kind!r}")
            if not p.failed("on"):
                _set(self, "on", frozenset(on))
        with p.at():
            _set(self, "methods", _methods("methods", self.methods))
        if self.idempotency_header is not None:
            with p.at():
                _header_name("idempotency_header", self.idempotency_header)
        if self.attempt_header is not None:
            with p.at():
                _header_name("attempt_header", self.attempt_header)
        if not isinstance(_given(self.respect_retry_after), bool):
            p.add("respect_retry_after", f"must be true or false, got {self.respect_retry_after!r}")
        if not isinstance(_given(self.mint_idempotency_key), bool):
            p.add("mint_idempotency_key", f"must be true or false, got {self.mint_idempotency_key!r}")
        with p.at():
            _set(self, "max_retry_after", _duration("max_retry_after", self.max_retry_after, allow_zero=True))
        p.raise_if_any()


@dataclass(frozen=True)
class BudgetPolicy:
    """
    A retry budget per endpoint: over a sliding ``window`` (seconds), retries
    may add at most ``ratio`` of the first tries, plus ``min_per_second``
    retries per second, so an outage never becomes a retry storm.

    .. versionadded:: 0.1.0
    """

    ratio: float = 0.2
    min_per_second: float = 10.0
    window: float = 10.0

    def __post_init__(self) -> None:
        p = Problems()
        with p.at():
            _set(self, "ratio", _number("ratio", self.ratio, allow_zero=True))
        with p.at():
            _set(self, "min_per_second", _number("min_per_second", self.min_per_second, allow_zero=True))
        with p.at():
            _set(self, "window", _duration("window", self.window))
        p.raise_if_any()


class BreakerMode(str, enum.Enum):
    """
    What opens a breaker: ``consecutive`` failures, or a failure ``rate``
    over a sliding window.

    .. versionadded:: 0.1.0
    """

    CONSECUTIVE = "consecutive"
    RATE = "rate"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class BreakerPolicy:
    """
    A circuit breaker per endpoint.

    In ``consecutive`` mode, ``failure_threshold`` consecutive failures open
    it. In ``rate`` mode, it opens when, over the last ``window`` seconds and
    at least ``min_calls`` calls, the share of failures reaches
    ``failure_rate``. A call slower than ``slow_call_duration`` (if set)
    counts as a failure. ``storage`` is ``memory`` or a ``redis://`` URL.

    .. versionadded:: 0.1.0
    """

    failure_threshold: int = 5
    reset_timeout: float = 30.0
    storage: str = "memory"
    mode: BreakerMode = BreakerMode.CONSECUTIVE
    failure_rate: float = 0.5
    window: float = 30.0
    min_calls: int = 20
    slow_call_duration: float | None = None

    def __post_init__(self) -> None:
        p = Problems()
        with p.at():
            _set(self, "failure_threshold", _integer("failure_threshold", self.failure_threshold, minimum=1))
        with p.at():
            _set(self, "reset_timeout", _duration("reset_timeout", self.reset_timeout))
        if not isinstance(self.storage, str) or not (
            self.storage == "memory"
            or self.storage.startswith(("redis://", "rediss://", "unix://"))
        ):
            p.add("storage", f"must be 'memory' or a redis:// URL, got {self.storage!r}")
        elif self.storage != "memory" and not self.storage.startswith("unix://"):
            try:
                # A port out of range or not a number fails here, not on every call.
                _ = urllib.parse.urlsplit(self.storage).port
            except ValueError as e:
                p.add("storage", f"must be a valid redis:// URL: {e}")
        try:
            _set(self, "mode", BreakerMode(self.mode))
        except ValueError:
            p.add("mode", f"must be consecutive | rate, got {self.mode!r}")
        with p.at():
            _set(self, "failure_rate", _ratio("failure_rate", self.failure_rate, allow_zero=False))
        with p.at():
            _set(self, "window", _duration("window", self.window))
        with p.at():
            _set(self, "min_calls", _integer("min_calls", self.min_calls, minimum=1))
        if self.slow_call_duration is not None:
            with p.at():
                _set(self, "slow_call_duration", _duration("slow_call_duration", self.slow_call_duration))
        p.raise_if_any()


@dataclass(frozen=True)
class BulkheadPolicy:
    """
    At most ``max_concurrent`` calls in flight per endpoint; one more is
    refused at once with `BulkheadFull`.

    .. versionadded:: 0.1.0
    """

    max_concurrent: int = 50

    def __post_init__(self) -> None:
        _set(self, "max_concurrent", _integer("max_concurrent", self.max_concurrent, minimum=1))


@dataclass(frozen=True)
class ThrottlePolicy:
    """
    Client-side adaptive throttling (the SRE book's, "Handling Overload"):
    a call is refused locally with probability
    ``max(0, (requests - k * accepts) / (requests + 1))`` over the last
    ``window`` seconds, capped at ``max_reject``, and never while fewer than
    ``min_requests`` calls were counted. See the overload page.

    .. versionadded:: 0.2.0
    """

    k: float = 2.0
    window: float = 120.0
    min_requests: int = 20
    max_reject: float = 0.9

    def __post_init__(self) -> None:
        p = Problems()
        with p.at():
            _set(self, "k", _number("k", self.k, minimum=1.0, allow_zero=True))
        with p.at():
            window = _duration("window", self.window)
            if window < MIN_THROTTLE_WINDOW:
                # 20 buckets of a few ms forget a failing peer between two calls (and a
                # denormal window overflowed the bucket arithmetic at call time).
                raise ConfigError("window", f"must be at least {MIN_THROTTLE_WINDOW:g} (seconds), "
                                            f"got {self.window!r}")
            _set(self, "window", window)
        with p.at():
            _set(self, "min_requests", _integer("min_requests", self.min_requests, minimum=0))
        with p.at():
            _set(self, "max_reject", _ratio("max_reject", self.max_reject))
        p.raise_if_any()


#: The shortest ``throttle.window`` accepted, in seconds.
MIN_THROTTLE_WINDOW = 1.0


#: The algorithms `ConcurrencyPolicy.algorithm` accepts.
CONCURRENCY_ALGORITHMS = ("aimd", "gradient")


@dataclass(frozen=True)
class ConcurrencyPolicy:
    """
    An adaptive concurrency limit per endpoint, learned from the calls
    (Netflix concurrency-limits): a ceiling under ``bulkhead.max_concurrent``
    that starts at ``initial`` and never goes below ``min``. ``aimd`` adds
    one when a call succeeds while the limit is in use and multiplies by
    ``backoff`` on a failure, a timeout, a 429, or the recent average latency
    staying above ``latency_factor`` (> 1) times the long-term average;
    ``gradient`` scales the limit by the ratio of the long-term average
    latency to the recent one.

    .. versionadded:: 0.2.0
    """

    algorithm: str = "aimd"
    initial: int = 10
    min: int = 1
    backoff: float = 0.9
    latency_factor: float = 2.0

    def __post_init__(self) -> None:
        p = Problems()
        if self.algorithm not in CONCURRENCY_ALGORITHMS:
            p.add("algorithm", f"must be one of {' | '.join(CONCURRENCY_ALGORITHMS)}, got {self.algorithm!r}")
        with p.at():
            _set(self, "initial", _integer("initial", self.initial, minimum=1))
        with p.at():
            _set(self, "min", _integer("min", self.min, minimum=1))
        if not p.failed("initial", "min") and self.initial < self.min:
            p.add("initial", f"must be >= min ({self.min}), got {self.initial!r}")
        with p.at():
            backoff = _ratio("backoff", self.backoff, allow_zero=False)
            if backoff >= 1.0:
                raise ConfigError("backoff", f"must be a number between 0 and 1 (exclusive), "
                                             f"got {self.backoff!r}")
            _set(self, "backoff", backoff)
        with p.at():
            _set(self, "latency_factor", _number("latency_factor", self.latency_factor, minimum=1.0))
        p.raise_if_any()


#: HAProxy's own name for the header it is told to add (see the overload page).
DEFAULT_PROXY_ERROR_HEADER = "X-Proxy-Error"


@dataclass(frozen=True)
class ProxyErrorsPolicy:
    """
    Responses that a proxy in front of the peer made itself carry ``header``.
    A 503 with it never reached the peer (retried as a ``connect_error``); a
    502 or 504 with it was forwarded (retried only as its method allows).
    Every one is a failure for the breaker and a rejection for the throttle.

    .. versionadded:: 0.2.0
    """

    header: str = DEFAULT_PROXY_ERROR_HEADER

    def __post_init__(self) -> None:
        _header_name("header", self.header)


#: requests' own pool size per origin (``HTTPAdapter(pool_maxsize=10)``).
REQUESTS_POOL_SIZE = 10
#: The largest pool accepted: urllib3 fills a pool's queue with one slot per
#: connection up front, so the size is memory spent per origin.
MAX_POOL_SIZE = 10_000


@dataclass(frozen=True)
class PoolPolicy:
    """
    How many connections to each origin (``scheme://host:port``) are kept for
    reuse by this endpoint's calls. ``max_size`` None follows the bulkhead:
    as many as ``bulkhead.max_concurrent`` calls may be in flight, so as many
    connections are kept (requests' 10 when the bulkhead is off). A call
    beyond the pool still gets a connection of its own (pools never block:
    the bulkhead is the limit), closed when it returns.

    .. versionadded:: 0.2.0
    """

    max_size: int | None = None

    def __post_init__(self) -> None:
        if self.max_size is not None:
            size = _integer("max_size", self.max_size, minimum=1)
            if size > MAX_POOL_SIZE:
                raise ConfigError("max_size", f"must be at most {MAX_POOL_SIZE}, got {size!r}")
            _set(self, "max_size", size)


#: The header that carries the caller's remaining time, in milliseconds.
DEFAULT_DEADLINE_HEADER = "X-Request-Timeout-Ms"


@dataclass(frozen=True)
class PropagationPolicy:
    """
    Deadline propagation: each attempt carries the call's remaining time, in
    whole milliseconds (rounded down), in ``deadline_header``, so that the
    callee (with `DeadlineMiddleware`) gives up when the caller does. No
    header is sent for a call without a deadline.

    With ``per_attempt``, the value is also capped by the attempt's read
    timeout, as Envoy's per-try timeout is: a callee that only answers when
    done then stops when this attempt is abandoned, not only when the whole
    call is. Leave it off for callees that stream a long body.

    Off (``None``) unless configured; ``propagation: {}`` turns it on with
    these defaults.

    .. versionadded:: 0.1.0
    """

    deadline_header: str = DEFAULT_DEADLINE_HEADER
    per_attempt: bool = False

    def __post_init__(self) -> None:
        p = Problems()
        with p.at():
            _header_name("deadline_header", self.deadline_header)
        if not isinstance(_given(self.per_attempt), bool):
            p.add("per_attempt", f"must be true or false, got {self.per_attempt!r}")
        p.raise_if_any()


#: What a learned (percentile) hedge delay is clamped to, in seconds: below
#: the floor a hedge would double nearly every call to a fast peer; above the
#: ceiling it would come too late to help anyone.
HEDGE_DELAY_FLOOR = 0.005
HEDGE_DELAY_CEILING = 1.0
#: The most copies a call may add (``max_extra``): each holds a thread, a
#: bulkhead slot and a connection.
MAX_HEDGE_EXTRA = 4


@dataclass(frozen=True)
class HedgePolicy:
    """
    Hedged requests: when a safe call has not answered after ``delay``, send
    another copy (up to ``max_extra`` copies) and take the first acceptable
    answer. ``delay`` is seconds, or a percentile such as ``"p95"`` of the
    endpoint's recent latencies (clamped to `HEDGE_DELAY_FLOOR` ..
    `HEDGE_DELAY_CEILING`; the ceiling until enough latencies were seen).

    Off (``None``) unless configured; ``hedge: {}`` turns it on with these
    defaults.

    .. versionadded:: 0.2.0
    """

    delay: float | str = 0.05
    max_extra: int = 1

    def __post_init__(self) -> None:
        p = Problems()
        delay: object = self.delay
        if isinstance(delay, str):
            if _percentile(delay) is None:
                p.add("delay", f"must be seconds or a percentile p50-p99.9 such as 'p95', got {delay!r}")
        else:
            with p.at():
                _set(self, "delay", _duration("delay", delay))
        with p.at():
            extra = _integer("max_extra", self.max_extra, minimum=1)
            if extra > MAX_HEDGE_EXTRA:
                raise ConfigError("max_extra", f"must be at most {MAX_HEDGE_EXTRA}, got {extra!r}")
            _set(self, "max_extra", extra)
        p.raise_if_any()

    @property
    def percentile(self) -> float | None:
        """The percentile (0-100) of a learned ``delay``; None for a fixed one."""
        return _percentile(self.delay) if isinstance(self.delay, str) else None


def _percentile(text: str) -> float | None:
    """``"p95"`` -> 95.0; None unless a percentile between 50 and 99.9."""
    if not text.startswith("p") or not text[1:].replace(".", "", 1).isdigit():
        return None
    value = float(text[1:])
    return value if 50.0 <= value <= 99.9 else None


@dataclass(frozen=True)
class StaticFallback:
    """
    A fixed response: ``status``, a body (from ``json`` or ``text`` in
    config) and ``headers``.

    .. versionadded:: 0.1.0
    """

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        p = Problems()
        if isinstance(self.status, bool) or not isinstance(self.status, int) or not 100 <= self.status <= 599:
            p.add("status", f"must be an HTTP status 100-599, got {self.status!r}")
        if not isinstance(_given(self.body), bytes):
            p.add("body", f"must be bytes, got {type(self.body).__name__}")
        if not isinstance(_given(self.headers), Mapping):
            p.add("headers", f"must be a mapping, got {self.headers!r}")
            p.raise_if_any()
        for k, v in self.headers.items():
            with p.at():
                _header_name(f"headers.{k}", k)
            if not isinstance(v, str) or "\n" in v or "\r" in v:
                p.add(f"headers.{k}", f"must be a single-line string, got {v!r}")
        p.raise_if_any()
        _set(self, "headers", dict(self.headers))

    @classmethod
    def from_json(cls, status: int, data: object, headers: Mapping[str, str] | None = None) -> StaticFallback:
        """A fallback whose body is *data* as JSON."""
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        try:
            body = _json.dumps(data).encode()
        except (TypeError, ValueError) as e:
            raise ConfigError("json", f"must be JSON-serialisable: {e}") from None
        return cls(status=status, body=body, headers=hdrs)

    @classmethod
    def from_text(cls, status: int, text: str, headers: Mapping[str, str] | None = None) -> StaticFallback:
        """A fallback whose body is *text*, UTF-8."""
        if not isinstance(text, str):
            raise ConfigError("text", f"must be a string, got {text!r}")
        hdrs = {"Content-Type": "text/plain; charset=utf-8"}
        hdrs.update(headers or {})
        return cls(status=status, body=text.encode(), headers=hdrs)


@dataclass(frozen=True)
class StaleFallback:
    """
    Answer with the last successful (2xx) GET or HEAD response seen for the
    same URL, keeping at most ``max_entries`` URLs per endpoint.

    .. versionadded:: 0.1.0
    """

    max_entries: int = 1024

    def __post_init__(self) -> None:
        _set(self, "max_entries", _integer("max_entries", self.max_entries, minimum=1))


#: What a callable fallback receives: the request and the error or failing
#: response; it returns the response to give the caller.
FallbackFunction = Callable[
    ["requests.PreparedRequest", "BaseException | requests.Response"], "requests.Response"
]


@dataclass(frozen=True)
class CallableFallback:
    """
    A fallback computed in Python: ``function(request, error_or_response)``
    returns a `requests.Response`.

    .. versionadded:: 0.1.0
    """

    function: FallbackFunction

    def __post_init__(self) -> None:
        if not callable(self.function):
            raise ConfigError("fallback", f"must be callable, got {self.function!r}")


Fallback = StaticFallback | StaleFallback | CallableFallback


@dataclass(frozen=True)
class Policy:
    """
    Everything that applies to one request: the merged result of ``defaults``
    and the first matching endpoint. ``None`` switches a section off.

    .. versionadded:: 0.1.0
    """

    name: str = "default"
    timeout: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy | None = field(default_factory=RetryPolicy)
    budget: BudgetPolicy | None = field(default_factory=BudgetPolicy)
    failure_status: frozenset[int] = frozenset({500, 502, 503, 504})
    breaker: BreakerPolicy | None = field(default_factory=BreakerPolicy)
    bulkhead: BulkheadPolicy | None = field(default_factory=BulkheadPolicy)
    fallback: Fallback | None = None
    #: Send the remaining time to the callee; None (the default) = do not.
    propagation: PropagationPolicy | None = None
    #: Whether an open breaker to this endpoint makes the health view
    #: unhealthy; None (the default): only when it has no fallback.
    critical: bool | None = None
    #: Connections kept per origin; None = requests' pool of 10.
    pool: PoolPolicy | None = field(default_factory=PoolPolicy)
    #: Where breaker, budget and bulkhead live: ``memory`` (this process),
    #: ``host`` (every process on the host sharing ``state_dir``) or a
    #: ``redis://`` URL (the breaker in Redis, budget and bulkhead on the host).
    state: str = "memory"
    #: Client-side adaptive throttling; None (the default) = off.
    throttle: ThrottlePolicy | None = None
    #: An adaptive concurrency limit under the bulkhead; None (the default) = off.
    concurrency: ConcurrencyPolicy | None = None
    #: The header a proxy adds to the errors it made itself; None (the default) = not read.
    proxy_errors: ProxyErrorsPolicy | None = None
    #: Hedged copies of safe calls; None (the default) = none.
    hedge: HedgePolicy | None = None

    def __post_init__(self) -> None:
        p = Problems()
        if not isinstance(self.name, str) or not self.name:
            p.add("name", f"must be a non-empty string, got {self.name!r}")
        with p.at():
            _set(self, "failure_status", _statuses("failure_status", self.failure_status, lo=500))
        if self.critical is not None and not isinstance(_given(self.critical), bool):
            p.add("critical", f"must be true or false, got {self.critical!r}")
        if not _is_state(self.state):
            p.add("state", "must be memory, host or a redis://, rediss:// or unix:// URL, "
                  f"got {self.state!r}")
        elif (
            self.state != "memory"
            and isinstance(self.breaker, BreakerPolicy)
            and self.breaker.storage not in ("memory", self.state)
        ):
            # breaker.storage is the older spelling of `state` for the
            # breaker alone: both given, they must say the same thing.
            p.add("state", f"{self.state!r} disagrees with breaker.storage "
                           f"{self.breaker.storage!r}; give one of them, or the same value")
        for name, kind in _SECTION_TYPES.items():
            value = getattr(self, name)
            if value is None and name != "timeout":
                continue
            if not isinstance(value, kind):
                p.add(name, f"must be a {_kind_name(kind)}, got {value!r}")
        if (isinstance(self.concurrency, ConcurrencyPolicy) and isinstance(self.bulkhead, BulkheadPolicy)
                and self.concurrency.min > self.bulkhead.max_concurrent):
            # The limit is a ceiling under the bulkhead: it could never stay at min.
            p.add("concurrency.min", f"must be <= bulkhead.max_concurrent ({self.bulkhead.max_concurrent}), "
                                     f"got {self.concurrency.min!r}")
        p.raise_if_any()

    def replace(self, **changes: Any) -> Policy:
        """Return a copy with *changes* applied (and validated)."""
        return dataclasses.replace(self, **changes)

    @property
    def pool_size(self) -> int:
        """
        The connections kept per origin for this endpoint: ``pool.max_size``,
        else ``bulkhead.max_concurrent`` (capped), else requests' 10.

        .. versionadded:: 0.2.0
        """
        if self.pool is None:
            return REQUESTS_POOL_SIZE
        if self.pool.max_size is not None:
            return self.pool.max_size
        if self.bulkhead is None:
            return REQUESTS_POOL_SIZE
        return min(self.bulkhead.max_concurrent, MAX_POOL_SIZE)

    @property
    def breaker_storage(self) -> str:
        """Where the breaker lives: ``memory``, ``host`` or a Redis URL
        (``state``, or the older ``breaker.storage`` when ``state`` is memory)."""
        if self.state != "memory":
            return self.state
        return self.breaker.storage if self.breaker is not None else "memory"

    @property
    def host_shared(self) -> bool:
        """Whether budget and bulkhead are shared on the host (``host`` or Redis)."""
        return self.state != "memory"

    @property
    def overload_control(self) -> bool:
        """Whether a ``Retry-After`` slows the whole endpoint (throttle or concurrency on)."""
        return self.throttle is not None or self.concurrency is not None


def _is_state(value: object) -> bool:
    return isinstance(value, str) and (value in ("memory", "host") or _is_redis_url(value))


def _is_redis_url(value: str) -> bool:
    scheme, sep, rest = value.partition("://")
    return bool(sep and rest) and scheme in ("redis", "rediss", "unix")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__


_SECTION_TYPES: dict[str, type | tuple[type, ...]] = {
    "timeout": Timeouts,
    "retry": RetryPolicy,
    "budget": BudgetPolicy,
    "breaker": BreakerPolicy,
    "bulkhead": BulkheadPolicy,
    "fallback": (StaticFallback, StaleFallback, CallableFallback),
    "propagation": PropagationPolicy,
    "pool": PoolPolicy,
    "throttle": ThrottlePolicy,
    "concurrency": ConcurrencyPolicy,
    "proxy_errors": ProxyErrorsPolicy,
    "hedge": HedgePolicy,
}
