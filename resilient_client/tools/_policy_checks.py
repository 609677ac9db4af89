"""
Checks of a client config alone, for ``resilient-client check``: settings
that are likely not what their author meant, with no HAProxy involved.

* ``attempt-exceeds-total``: connect + read is more than ``total``, so not
  even one attempt fits: against a peer that hangs, the deadline ends the
  call before the read timeout can fire;
* ``retry-never-starts``: the shortest first backoff is not shorter than
  ``total`` (no retry can ever start), or the first attempt's worst case
  (a timeout listed in ``retry.on``) plus that backoff already passes it;
* ``likely-milliseconds``: a duration so long that it is most likely
  milliseconds typed as seconds (``read: 5000``);
* ``critical-without-fallback``: an endpoint whose open breaker turns the
  health view to 503 with nothing to serve instead;
* ``hedge-without-retry``: ``hedge`` set where ``retry`` is null: only the
  methods of ``retry.methods`` are hedged, so nothing is.

What is *not* reported: ``attempts x (connect + read)`` beyond ``total``.
The built-in defaults do that on purpose (3 x (1 + 5) s > 10 s): retries are
there for fast failures (a refused connection, a 503), which they fix in
milliseconds; against a peer that hangs, ``total`` cutting the last attempt
short is the deadline doing its job, not a mistake.

An endpoint that inherits a setting from ``defaults`` is not reported again
for it: a finding shows up once, where the setting was written.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from .._config import Config
from .._health import is_critical
from .._policy import BackoffPolicy, Policy
from .._retry import Backoff
from ._findings import Finding

__all__ = ["LIKELY_MILLISECONDS", "check_policies", "max_backoff", "min_backoff"]

#: Durations (seconds) from which a value is reported as likely milliseconds:
#: 1000 s is over 16 minutes, far beyond any REST call's timeout or backoff,
#: and the smallest round number that a time in milliseconds habitually takes.
#: A connect timeout has a lower bar: a TCP handshake that has not completed
#: in a minute will not, and ``connect: 500`` is a typical slip.
LIKELY_MILLISECONDS = 1000.0
LIKELY_MILLISECONDS_CONNECT = 60.0

#: Every duration of a policy, as ``section.key`` and how to read it.
_DURATIONS: tuple[tuple[str, Callable[[Policy], float | None]], ...] = (
    ("timeout.connect", lambda p: p.timeout.connect),
    ("timeout.read", lambda p: p.timeout.read),
    ("timeout.total", lambda p: p.timeout.total),
    ("retry.backoff.initial", lambda p: p.retry.backoff.initial if p.retry else None),
    ("retry.backoff.max", lambda p: p.retry.backoff.max if p.retry else None),
    ("retry.max_retry_after", lambda p: p.retry.max_retry_after if p.retry else None),
    ("budget.window", lambda p: p.budget.window if p.budget else None),
    ("breaker.reset_timeout", lambda p: p.breaker.reset_timeout if p.breaker else None),
    ("breaker.window", lambda p: p.breaker.window if p.breaker else None),
    ("breaker.slow_call_duration", lambda p: p.breaker.slow_call_duration if p.breaker else None),
)


def check_policies(config: Config) -> list[Finding]:
    """
    The client-only findings of *config*: the defaults first, then each
    endpoint (once per name), leaving out what an endpoint only inherits.
    """
    found = list(_check_policy(config.defaults))
    inherited = {(f.code, f.message) for f in found}
    seen: set[str] = set()
    for ep in config.endpoints:
        if ep.name in seen:
            continue
        seen.add(ep.name)
        found.extend(f for f in _check_policy(ep.policy) if (f.code, f.message) not in inherited)
        # Not for the defaults: with no endpoint configured, unmatched origins
        # are critical by design, and the built-in defaults must pass `check`.
        found.extend(_check_critical(ep.policy))
    return found


def _s(seconds: float) -> str:
    # Three significant digits, but never an exponent (read: 5000 is "5000 s").
    return f"{seconds:.3g} s" if seconds < 1000 else f"{seconds:.0f} s"


class _Edge(random.Random):
    """
    A random source whose every draw is one end of its range, so `Backoff`
    picks the longest (``top``) or shortest sleep its jitter allows.

    ``random.Random.uniform(a, b)`` is ``a + (b - a) * self.random()``:
    returning 1.0 (outside ``random()``'s usual [0, 1), on purpose) makes
    every ``uniform`` draw ``b``, and 0.0 makes it ``a``.
    """

    def __init__(self, top: bool) -> None:
        super().__init__()
        self._value = 1.0 if top else 0.0

    def random(self) -> float:
        return self._value


def max_backoff(backoff: BackoffPolicy, sleeps: int) -> float:
    """
    The longest the first *sleeps* backoff sleeps can add up to (Retry-After aside).

    Each sleep comes from the retry layer's own `Backoff.sleep_for`, not
    from a copy of its formula, so this check cannot drift from what a
    session really sleeps.
    """
    # Same chaining as Backoff.__call__: decorrelated jitter grows from the previous sleep.
    worst = Backoff(backoff, rng=_Edge(top=True))
    total, prev = 0.0, 0.0
    for n in range(1, sleeps + 1):
        prev = worst.sleep_for(n, prev)
        total += prev
    return total


def min_backoff(backoff: BackoffPolicy) -> float:
    """The shortest first backoff sleep (0 with full jitter), from `Backoff.sleep_for`."""
    return Backoff(backoff, rng=_Edge(top=False)).sleep_for(1, 0.0)


def _check_policy(policy: Policy) -> Iterator[Finding]:
    yield from _likely_milliseconds(policy)
    yield from _check_deadline(policy)
    if policy.hedge is not None and policy.retry is None:
        yield _finding(
            "hedge-without-retry", policy,
            "hedge is set but retry is null: only calls whose method is in retry.methods are "
            "hedged, so nothing is; give it a retry section (retry: {attempts: 1} hedges "
            "without retrying), or remove hedge",
        )


def _finding(code: str, policy: Policy, message: str, severity: str = "warning") -> Finding:
    return Finding(severity, code, policy.name, None, message)


def _check_deadline(policy: Policy) -> Iterator[Finding]:
    """Does one attempt fit in ``total``, and can a retry ever start?"""
    t, retry = policy.timeout, policy.retry
    if t.total is None:
        return
    retries = retry is not None and retry.attempts > 1
    one = t.connect + t.read
    if one > t.total:
        yield _finding(
            "attempt-exceeds-total", policy,
            f"not even one attempt fits in total {_s(t.total)}: connect {_s(t.connect)} + read "
            f"{_s(t.read)} = {_s(one)}; against a peer that hangs, the deadline "
            "(DeadlineExceeded) ends the call before the read timeout can fire"
            + (", and no retry can follow it" if retries else "")
            + "; lower read (or connect), or raise total",
        )
    if retry is None or retry.attempts <= 1:
        return
    shortest = min_backoff(retry.backoff)
    if shortest >= t.total:
        yield _finding(
            "retry-never-starts", policy,
            f"the shortest first backoff is {_s(shortest)}, not less than total {_s(t.total)}: "
            f"none of the {retry.attempts - 1} retries can ever start, not even after a fast "
            "failure (a refused connection, a 503); lower retry.backoff.initial, or raise total",
        )
        return
    if one > t.total:
        return  # reported above: the first attempt alone already passes total
    # The longest first attempt that `retry.on` still asks to retry.
    if "read_timeout" in retry.on:
        kind, waited = "read timeout", one
    elif "connect_timeout" in retry.on:
        kind, waited = "connect timeout", t.connect
    else:
        return
    if waited + shortest > t.total:
        yield _finding(
            "retry-never-starts", policy,
            f"after a {kind} (the first attempt's worst case, {_s(waited)}), even the shortest "
            f"backoff ({_s(shortest)}) passes total {_s(t.total)}: retry.on lists "
            f"{kind.replace(' ', '_')}, but no retry can start after one, so only the first of "
            f"the {retry.attempts} attempts runs against a peer that hangs; lower read, or "
            "raise total",
        )


def _likely_milliseconds(policy: Policy) -> Iterator[Finding]:
    for key, read in _DURATIONS:
        value = read(policy)
        if value is None:
            continue
        limit = LIKELY_MILLISECONDS_CONNECT if key == "timeout.connect" else LIKELY_MILLISECONDS
        if value < limit:
            continue
        yield _finding(
            "likely-milliseconds", policy,
            f"{key} is {value:g} s ({_long(value)}): that looks like milliseconds typed as "
            f"seconds; times in the config are seconds, so for {value:g} ms write "
            f"{key.rsplit('.', 1)[1]}: {value / 1000:g}",
        )


def _long(seconds: float) -> str:
    if seconds >= 7200:
        return f"{seconds / 3600:.3g} hours"
    return f"{seconds / 60:.3g} minutes"


def _check_critical(policy: Policy) -> Iterator[Finding]:
    """An open breaker here would take the instance out of rotation, with nothing served instead."""
    if policy.fallback is not None or policy.breaker is None or not is_critical(policy):
        return
    consequence = (
        "when its breaker opens, the health view turns unhealthy (503 from health_app), and a "
        "load balancer checking it takes this instance out of rotation, with every other "
        "instance calling the same peer"
    )
    if policy.critical is None:
        yield _finding(
            "critical-without-fallback", policy,
            f"critical (the default for an endpoint without a fallback): {consequence}; give it "
            "a fallback, or set critical: false if the service can do without this peer",
        )
    else:
        # Written by hand: the author chose this, so it is a reminder, not a warning.
        yield _finding(
            "critical-without-fallback", policy,
            f"critical: true with no fallback: {consequence}", severity="info",
        )
