"""
Checking a client policy against the HAProxy in front of its peers.

`check_haproxy` reads the ``defaults``, ``backend`` and ``listen`` sections
of a haproxy.cfg (``timeout server``/``queue``/``connect``, ``retries``,
``retry-on``, ``option redispatch``, ``option abortonclose``, ``mode`` and
``http-request set-timeout server``) and reports the pairs of client and
proxy settings that cannot both be what their authors meant:

* ``server-timeout-first`` / ``queue-timeout-first``: the client would wait
  longer for an answer than HAProxy does (``timeout server`` answers 504,
  ``timeout queue`` 503), so the client's own limits never fire, and a
  client that retries those statuses runs the slow request again;
* ``stacked-retries``: HAProxy ``retries``/``retry-on`` under the client's
  retries: the multiplier is printed;
* ``orphaned-work`` and ``deadline-header``: HAProxy keeps the server
  working after the client gave up, or sets its server timeout from a
  deadline header this client does not send.

Which policy goes with which backend: an endpoint and a backend (or listen
section) with the same name are paired; every other policy (the defaults
included) is checked against every backend no endpoint claimed.

The client policy alone is checked too (`_policy_checks`: a deadline no
attempt fits in, retries that can never start, likely milliseconds, critical
endpoints without a fallback); an empty HAProxy text runs only those.

The parser reads the subset of the format it needs; it never executes or
validates the file (``haproxy -c -f`` does that).

Why it is long: the reader of the haproxy.cfg subset and the checks
that use it change together (each check reads fields the reader fills and
quotes its line numbers); the findings table in docs/deadlines.md is the
map of the checks.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from .._config import Config
from .._policy import Policy
from ._findings import SEVERITIES, Finding
from ._haproxy_errors import check_proxy_error_header
from ._policy_checks import check_policies

__all__ = ["Finding", "HAProxyBackend", "check_haproxy", "parse_haproxy", "parse_time"]

_SECTIONS = frozenset({
    "global", "defaults", "frontend", "backend", "listen", "peers", "resolvers", "userlist",
    "mailers", "program", "http-errors", "ring", "log-forward", "cache", "fcgi-app",
    "crt-store", "traces",
})
_PROXIES = frozenset({"backend", "listen"})
_TIME = re.compile(r"^(\d+)(us|ms|s|m|h|d)?$")
_UNITS = {"us": 1e-6, "ms": 1e-3, None: 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# Header names read by a sample expression: hdr(...), req.hdr_val(...), req.fhdr(...).
_HDR_FETCH = re.compile(r"(?:req\.)?f?hdr(?:_val)?\(\s*([^,()\s]+)", re.IGNORECASE)
# retry-on keywords after which the request did not reach the server.
_BEFORE_SEND = frozenset({"none", "conn-failure", "0rtt-rejected"})
_ALL_RETRYABLE = ("conn-failure", "empty-response", "junk-response", "response-timeout",
                  "0rtt-rejected", "500", "502", "503", "504")
_TOGGLES = (["redispatch"], ["abortonclose"])
# HAProxy's own defaults (doc/configuration.txt): 3 retries, on failed connections.
_DEFAULT_RETRIES = 3
_DEFAULT_RETRY_ON = ("conn-failure",)
# The pause HAProxy takes before retrying on the same server is min(timeout connect, 1s).
_TURNAROUND = 1.0


@dataclass(frozen=True)
class HAProxyBackend:
    """
    What the checker knows of one ``backend`` or ``listen`` section, its
    ``defaults`` applied. Times are in seconds; None means no timeout.
    """

    name: str
    section: str
    line: int
    mode: str = "tcp"
    timeout_server: float | None = None
    timeout_connect: float | None = None
    #: Falls back to ``timeout connect`` when not set, as HAProxy does.
    timeout_queue: float | None = None
    retries: int = _DEFAULT_RETRIES
    retry_on: tuple[str, ...] = _DEFAULT_RETRY_ON
    redispatch: bool = False
    abortonclose: bool = False
    #: Lower-cased headers that ``http-request set-timeout server`` reads.
    deadline_headers: frozenset[str] = frozenset()


# -- parsing -------------------------------------------------------------------


def parse_time(text: str) -> float | None:
    """
    An HAProxy time (``500``, ``500ms``, ``10s``, ``1m``; milliseconds by
    default) in seconds; 0 means no timeout (None). Raises ValueError.
    """
    m = _TIME.match(text.strip())
    if m is None:
        raise ValueError(f"not an HAProxy time: {text!r}")
    value = int(m.group(1)) * _UNITS[m.group(2)]
    return value or None


def _words(line: str) -> list[str]:
    """Split one line as HAProxy does: quotes, backslash escapes, # comments."""
    words: list[str] = []
    cur: list[str] = []
    in_word = False
    quote = ""
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == quote:
                quote = ""
            elif c == "\\" and quote == '"' and i + 1 < len(line):
                i += 1
                cur.append(line[i])
            else:
                cur.append(c)
        elif c == "\\" and i + 1 < len(line):
            i += 1
            cur.append(line[i])
            in_word = True
        elif c in "\"'":
            quote = c
            in_word = True
        elif c == "#":
            break
        elif c.isspace():
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
        else:
            cur.append(c)
            in_word = True
        i += 1
    if in_word:
        words.append("".join(cur))
    return words


@dataclass
class _Settings:
    """Settings as written in one section (None = not written there)."""

    mode: str | None = None
    timeout_server: float | None = None
    timeout_connect: float | None = None
    timeout_queue: float | None = None
    # Which timeouts were written, since None is also "no timeout".
    written: set[str] = field(default_factory=set)
    retries: int | None = None
    retry_on: tuple[str, ...] | None = None
    redispatch: bool | None = None
    abortonclose: bool | None = None
    deadline_headers: set[str] = field(default_factory=set)

    def inherit(self) -> _Settings:
        """A proxy's starting point: a copy of these defaults (rules are not inherited)."""
        return dataclasses.replace(self, written=set(self.written), deadline_headers=set())


def parse_haproxy(text: str) -> tuple[list[HAProxyBackend], list[Finding]]:
    """The backend and listen sections of *text*, and findings for lines it could not read."""
    problems: list[Finding] = []
    named: dict[str, _Settings] = {}
    last_defaults = _Settings()
    proxies: list[tuple[str, str, int, _Settings]] = []
    current: _Settings | None = None
    kind = ""

    for lineno, raw in enumerate(text.splitlines(), 1):
        words = _words(raw)
        if not words:
            continue
        head = words[0].lower()
        if head in _SECTIONS:
            kind = head
            current = None
            name = words[1] if len(words) > 1 else ""
            if head == "defaults":
                base = named.get(_from(words), last_defaults) if _from(words) else _Settings()
                current = last_defaults = base.inherit()
                if name and name != "from":
                    named[name] = current
            elif head in _PROXIES:
                source = _from(words)
                if source and source not in named:
                    problems.append(
                        _problem(lineno, f"{head} {name!r} uses unknown defaults {source!r}")
                    )
                current = (named.get(source) if source else None) or last_defaults
                current = current.inherit()
                proxies.append((name or f"<unnamed {head}>", head, lineno, current))
            continue
        if current is None or kind not in ("defaults", *_PROXIES):
            continue
        try:
            _apply(current, words)
        except ValueError as e:
            problems.append(_problem(lineno, f"cannot read {' '.join(words)!r}: {e}"))

    backends = [_freeze(name, section, line, s) for name, section, line, s in proxies]
    return backends, problems


def _from(words: list[str]) -> str:
    """The defaults section named by ``... from NAME``, or ""."""
    for i, w in enumerate(words[1:-1], 1):
        if w == "from":
            return words[i + 1]
    return ""


def _problem(line: int, message: str) -> Finding:
    return Finding("warning", "haproxy-parse", None, None, message, line=line)


def _apply(s: _Settings, words: list[str]) -> None:
    """Record one directive of a defaults, backend or listen section."""
    head = words[0].lower()
    args = words[1:]
    if head == "mode" and args:
        s.mode = args[0].lower()
    elif head == "timeout" and len(args) >= 2 and args[0] in ("server", "connect", "queue"):
        setattr(s, f"timeout_{args[0]}", parse_time(args[1]))
        s.written.add(args[0])
    elif head in ("srvtimeout", "contimeout") and args:  # names from before HAProxy 1.5
        which = "server" if head == "srvtimeout" else "connect"
        setattr(s, f"timeout_{which}", parse_time(args[0]))
        s.written.add(which)
    elif head == "retries" and args:
        if not args[0].isdigit():
            raise ValueError("retries must be a whole number")
        s.retries = int(args[0])
    elif head == "retry-on":
        kws: list[str] = []
        for kw in args:
            kws.extend(_ALL_RETRYABLE if kw == "all-retryable-errors" else (kw,))
        s.retry_on = tuple(kws) or ("none",)
    elif head == "option" and args[:1] in _TOGGLES:
        setattr(s, args[0], True)
    elif head == "no" and args[:1] == ["option"] and args[1:2] in _TOGGLES:
        setattr(s, args[1], False)
    elif head == "http-request" and len(args) >= 3 and args[:2] == ["set-timeout", "server"]:
        # Only the expression: a header named in the condition is not the value.
        expr = args[2]
        s.deadline_headers.update(h.lower() for h in _HDR_FETCH.findall(expr))


def _freeze(name: str, section: str, line: int, s: _Settings) -> HAProxyBackend:
    queue = s.timeout_queue if "queue" in s.written else s.timeout_connect
    mode = s.mode or "tcp"
    retry_on = s.retry_on if s.retry_on is not None else _DEFAULT_RETRY_ON
    if mode != "http":
        retry_on = _DEFAULT_RETRY_ON  # retry-on is ignored outside HTTP mode
    return HAProxyBackend(
        name=name,
        section=section,
        line=line,
        mode=mode,
        timeout_server=s.timeout_server,
        timeout_connect=s.timeout_connect,
        timeout_queue=queue,
        retries=_DEFAULT_RETRIES if s.retries is None else s.retries,
        retry_on=retry_on,
        redispatch=bool(s.redispatch),
        abortonclose=bool(s.abortonclose),
        deadline_headers=frozenset(s.deadline_headers),
    )


# -- checking ------------------------------------------------------------------


def check_haproxy(config: Config, haproxy_text: str) -> list[Finding]:
    """
    Report the incoherent pairs between the client *config* and the HAProxy
    configuration *haproxy_text*, most serious first. An empty text checks
    the client policies alone.

    Example, for a CLI::

        findings = check_haproxy(Config.load("client.yaml"), Path("haproxy.cfg").read_text())
        for f in findings:
            print(f)
        exit_code = 1 if any(f.severity == "error" for f in findings) else 0

    .. versionadded:: 0.1.0
    """
    backends, findings = parse_haproxy(haproxy_text)
    findings.extend(check_policies(config))
    for policy, backend in _pairs(config, backends):
        findings.extend(_check_pair(policy, backend))
    findings.extend(check_proxy_error_header(config, haproxy_text, _words))
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: rank.get(f.severity, len(rank)))


def _unique(policies: list[Policy]) -> Iterator[Policy]:
    seen: set[str] = set()
    for p in policies:
        if p.name not in seen:
            seen.add(p.name)
            yield p


def _pairs(
    config: Config, backends: list[HAProxyBackend]
) -> Iterator[tuple[Policy, HAProxyBackend]]:
    by_name = {b.name.lower(): b for b in backends}
    claimed: set[str] = set()
    unpaired: list[Policy] = [config.defaults]
    for policy in _unique([e.policy for e in config.endpoints]):
        b = by_name.get(policy.name.lower())
        if b is None:
            unpaired.append(policy)
        else:
            claimed.add(b.name.lower())
            yield policy, b
    rest = [b for b in backends if b.name.lower() not in claimed]
    for policy in unpaired:
        for b in rest:
            yield policy, b


def _s(seconds: float) -> str:
    return f"{seconds:.3g} s"


def _attempts(policy: Policy) -> int:
    return policy.retry.attempts if policy.retry is not None else 1


def _wait(policy: Policy) -> float:
    """How long the client waits for one attempt's answer: its read timeout, within total."""
    t = policy.timeout
    return t.read if t.total is None else min(t.read, t.total)


def _retries_status(policy: Policy, status: int) -> bool:
    retry = policy.retry
    return retry is not None and retry.attempts > 1 and status in retry.on_status


def _check_pair(policy: Policy, b: HAProxyBackend) -> Iterator[Finding]:
    yield from _check_timeouts(policy, b)
    yield from _check_retries(policy, b)
    yield from _check_deadline_header(policy, b)


def _finding(severity: str, code: str, policy: Policy, b: HAProxyBackend, message: str,
             multiplier: int | None = None) -> Finding:
    return Finding(severity, code, policy.name, b.name, message, multiplier, b.line)


def _check_timeouts(policy: Policy, b: HAProxyBackend) -> Iterator[Finding]:
    wait = _wait(policy)
    attempts = _attempts(policy)
    t = policy.timeout
    waits = f"the client waits up to {_s(wait)} for an answer (read {_s(t.read)}" + (
        f", total {_s(t.total)})" if t.total is not None else ")"
    )
    ts = b.timeout_server
    if ts is None:
        yield _finding(
            "warning", "no-server-timeout", policy, b,
            "HAProxy has no `timeout server`: it never gives up on a slow server, so the "
            "server keeps working after the client gave up",
        )
    elif wait > ts:
        if b.mode == "http":
            retried, answer = _retries_status(policy, 504), "answers 504"
        else:  # in TCP mode HAProxy just closes: the client sees a broken connection
            retry = policy.retry
            retried = retry is not None and retry.attempts > 1 and "read_error" in retry.on
            answer = "closes the connection"
        yield _finding(
            "error" if retried else "warning", "server-timeout-first", policy, b,
            f"{waits}, but HAProxy `timeout server` {answer} after {_s(ts)}: the client's "
            "limits never fire"
            + (f"; the client retries that, so a slow request runs up to {attempts} times"
               if retried else ""),
        )
    elif ts > wait and not b.deadline_headers:
        yield _finding(
            "info", "orphaned-work", policy, b,
            f"after the client abandons an attempt ({_s(wait)}), HAProxy lets the server work "
            f"up to `timeout server` {_s(ts)}; send the deadline (propagation) and add "
            "`http-request set-timeout server` from its header so HAProxy gives up with the client"
            + ("" if b.abortonclose else
               "; without `option abortonclose`, requests abandoned in the queue are still served"),
        )
    q = b.timeout_queue
    if q is not None and wait > q:
        retried = _retries_status(policy, 503)
        yield _finding(
            "warning" if retried else "info", "queue-timeout-first", policy, b,
            f"{waits}, but HAProxy drops a request queued for a server slot after "
            f"`timeout queue` {_s(q)} with 503"
            + (f"; the client retries 503 and queues it again, up to {attempts} times"
               if retried else ""),
        )


def _check_retries(policy: Policy, b: HAProxyBackend) -> Iterator[Finding]:
    attempts = _attempts(policy)
    kinds = [k for k in b.retry_on if k != "none"]
    if attempts <= 1 or b.retries <= 0 or not kinds:
        return
    mult = attempts * (b.retries + 1)
    after_send = [k for k in kinds if k not in _BEFORE_SEND]
    wait = _wait(policy)
    where = "" if b.redispatch else "; without `option redispatch` they all go to the same server"
    retry_on = " ".join(b.retry_on)
    if after_send:
        per_try = b.timeout_server if "response-timeout" in after_send else None
        chain = (b.retries + 1) * per_try if per_try is not None else None
        slow = (f"; HAProxy's retries alone can take {_s(chain)}, longer than the client waits "
                f"({_s(wait)})" if chain is not None and chain > wait else "")
        yield _finding(
            "error", "stacked-retries", policy, b,
            f"HAProxy `retries {b.retries}` with `retry-on {retry_on}` replays requests that "
            f"reached the server, under the client's {attempts} attempts: up to {attempts} x "
            f"{b.retries + 1} = {mult} requests per call (multiplier {mult}){slow}{where}",
            multiplier=mult,
        )
        return
    tc = b.timeout_connect
    chain = None if tc is None else (b.retries + 1) * tc + b.retries * min(tc, _TURNAROUND)
    slow = (f"; HAProxy's retries alone can take {_s(chain)}, longer than the client waits "
            f"({_s(wait)})" if chain is not None and chain > wait else "")
    yield _finding(
        "warning", "stacked-retries", policy, b,
        f"HAProxy `retries {b.retries}` (retry-on {retry_on}) retries failed connections under "
        f"the client's {attempts} attempts: up to {attempts} x {b.retries + 1} = {mult} connection "
        f"attempts per call (multiplier {mult}){slow}{where}",
        multiplier=mult,
    )


def _check_deadline_header(policy: Policy, b: HAProxyBackend) -> Iterator[Finding]:
    if not b.deadline_headers:
        return
    prop = policy.propagation
    wanted = ", ".join(sorted(b.deadline_headers))
    if prop is None:
        yield _finding(
            "warning", "deadline-header", policy, b,
            f"HAProxy sets its server timeout from {wanted}, but this client does not send it "
            "(propagation is off): the static `timeout server` applies",
        )
    elif prop.deadline_header.lower() not in b.deadline_headers:
        yield _finding(
            "warning", "deadline-header", policy, b,
            f"HAProxy sets its server timeout from {wanted}, but this client sends "
            f"{prop.deadline_header}",
        )
