"""
``proxy-error-header``: does the HAProxy in front of a peer mark the errors it
makes itself with the header the client's ``proxy_errors`` expects?

A client with ``proxy_errors: {header: X-Proxy-Error}`` retries a 503 that
carries the header for every method, because HAProxy makes a 503 only when
it never forwarded the request (queue timeout, no server up, connection to
the server failed). If HAProxy does not add the header, its 503s look like
the peer's own and a POST is never retried; the client has no way to tell.

HAProxy adds a header to the responses it makes with ``http-error status
503 ... hdr X-Proxy-Error <value>`` (2.2+), in ``defaults``, ``backend``,
``listen`` or ``frontend`` (a frontend's applies to the errors of the
backends it sends to: checked with HAProxy 2.6), or to every response with
``http-after-response set-header`` (which also marks the peer's answers, so
it is reported too). An ``errorfile`` or ``errorfiles`` for a status is a
raw response this reader does not open: reported as "cannot tell". A
section inherits from the last ``defaults`` section before it, or from the
named one after ``from`` (``backend app from marked``), as HAProxy does.

Severity: a contradiction between the config and the proxy (no header on
HAProxy's 503, or the header on every response) is an ``error`` (``check``
exits 1): the client's retries are then wrong, silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .._config import Config
from .._policy import Policy
from ._findings import Finding

__all__ = ["check_proxy_error_header"]

_PROXY_STATUSES = (502, 503, 504)


@dataclass
class _Marks:
    #: status -> lower-cased header names http-error adds for it
    headers: dict[int, set[str]] = field(default_factory=dict)
    #: headers added to every response (http-after-response)
    everywhere: set[str] = field(default_factory=set)
    #: statuses answered from an errorfile we do not read
    files: set[int] = field(default_factory=set)
    #: (frontends and listens) the backends it sends to: default_backend, use_backend
    routes: set[str] = field(default_factory=set)

    def copy(self) -> _Marks:
        return _Marks({k: set(v) for k, v in self.headers.items()}, set(self.everywhere), set(self.files))


#: Splits one haproxy.cfg line into words (`_haproxy`'s tokenizer, passed in).
Words = Callable[[str], list[str]]

_SECTIONS = ("defaults", "backend", "listen", "frontend", "global", "http-errors", "peers",
             "resolvers", "userlist", "cache", "program", "ring", "mailers")


def _base(words: list[str], named: dict[str, _Marks], last: _Marks) -> _Marks:
    """What a section inherits: the named defaults after ``from``, else the last ``defaults``."""
    if "from" in words[1:-1]:
        return named.get(words[words.index("from", 1) + 1].lower(), _Marks()).copy()
    return last.copy()


def _read(text: str, _words: Words) -> tuple[dict[str, tuple[int, _Marks]], list[_Marks]]:
    """Per backend/listen (lower-cased name): (line, marks); and the marks of each frontend/listen."""
    out: dict[str, tuple[int, _Marks]] = {}
    frontends: list[_Marks] = []
    named: dict[str, _Marks] = {}
    defaults = _Marks()
    current: _Marks | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        words = _words(raw)
        if not words:
            continue
        head = words[0].lower()
        if head in _SECTIONS:
            name = words[1].lower() if len(words) > 1 and words[1] != "from" else ""
            if head == "defaults":
                current = defaults = _base(words, named, _Marks())  # a defaults starts afresh
                if name:
                    named[name] = current
            elif head in ("backend", "listen", "frontend"):
                current = _base(words, named, defaults)
                if head != "frontend":
                    out[name] = (lineno, current)
                if head != "backend":
                    frontends.append(current)
                    if head == "listen":
                        current.routes.add(name)
            else:
                current = None
            continue
        if current is None:
            continue
        args = words[1:]
        if head == "http-error" and len(args) >= 2 and args[0] == "status" and args[1].isdigit():
            status = int(args[1])
            names = {args[i + 1].lower() for i, w in enumerate(args[:-1]) if w == "hdr"}
            current.headers.setdefault(status, set()).update(names)
            if "errorfile" in args or "errorfiles" in args or "file" in args:
                current.files.add(status)
        elif head == "errorfile" and args and args[0].isdigit():
            current.files.add(int(args[0]))
        elif head == "errorfiles":
            current.files.update(_PROXY_STATUSES)
        elif head == "http-after-response" and len(args) >= 2 and args[0] in ("set-header", "add-header"):
            current.everywhere.add(args[1].lower())
        elif head in ("default_backend", "use_backend") and args:
            current.routes.add(args[0].lower())
    return out, frontends


def _effective(backend: str, marks: _Marks, frontends: list[_Marks]) -> _Marks:
    """
    A backend's marks with those of the frontends in front of it: HAProxy
    applies a frontend's ``http-error`` and ``http-after-response`` to the
    errors its backends make too (checked with HAProxy 2.6). A status counts
    as marked when every frontend routing to the backend marks it (every
    frontend, when none names it: a dynamic ``use_backend``).
    """
    front = [f for f in frontends if backend in f.routes and f is not marks] or \
        [f for f in frontends if f is not marks]
    if not front:
        return marks
    out = marks.copy()
    for status in _PROXY_STATUSES:
        common = set.intersection(*(f.headers.get(status, set()) for f in front))
        if common:
            out.headers.setdefault(status, set()).update(common)
        if all(status in f.files for f in front):
            out.files.add(status)
    out.everywhere.update(set.union(*(f.everywhere for f in front)))  # any path marking everything
    return out


def check_proxy_error_header(config: Config, haproxy_text: str, words: Words) -> list[Finding]:
    """The ``proxy-error-header`` findings of *config* against *haproxy_text* (see the module)."""
    if not haproxy_text.strip():
        return []
    backends, frontends = _read(haproxy_text, words)
    findings: list[Finding] = []
    # Paired as the other checks pair: an endpoint with the backend of its name,
    # the others (defaults included, each once) with every backend no endpoint claimed.
    named = {e.policy.name.lower() for e in config.endpoints if e.policy.name.lower() in backends}
    policies: dict[str, Policy] = {}
    for policy in [config.defaults, *(e.policy for e in config.endpoints)]:
        if policy.proxy_errors is not None:
            policies.setdefault(policy.name, policy)
    unclaimed = {b: v for b, v in backends.items() if b not in named}
    for name, policy in policies.items():
        header = policy.proxy_errors.header if policy.proxy_errors is not None else ""
        paired = {name.lower(): backends[name.lower()]} if name.lower() in backends else unclaimed
        for backend, (line, marks) in paired.items():
            findings.extend(_check(name, header, backend, line, _effective(backend, marks, frontends)))
    return findings


def _check(endpoint: str, header: str, backend: str, line: int, marks: _Marks) -> list[Finding]:
    low = header.lower()
    if low in marks.everywhere:
        return [Finding("error", "proxy-error-header", endpoint, backend,
                        f"HAProxy adds {header} to every response (http-after-response), the peer's "
                        "own errors included: the client would retry a POST the peer answered 503. "
                        f"Add it only to HAProxy's own errors: {_RECIPE_503} hdr {header} 503",
                        line=line)]
    marked = {s for s in _PROXY_STATUSES if low in marks.headers.get(s, set())}
    unknown = {s for s in _PROXY_STATUSES if s in marks.files and s not in marked}
    if 503 not in marked:
        if 503 in unknown:
            return [Finding("info", "proxy-error-header", endpoint, backend,
                            f"HAProxy answers 503 from an errorfile this check does not read: make sure "
                            f"it carries {header} (proxy_errors.header)", line=line)]
        return [Finding("error", "proxy-error-header", endpoint, backend,
                        f"proxy_errors expects HAProxy to mark its own errors with {header}, but this "
                        "backend (nor a frontend in front of it) does not add it to its 503 (queue "
                        "timeout, no server up): those look like the peer's own 503 and are not "
                        f"retried for POST. Add: {_RECIPE_503} hdr {header} 503",
                        line=line)]
    missing = sorted(set(_PROXY_STATUSES) - marked - unknown)
    if missing:
        return [Finding("info", "proxy-error-header", endpoint, backend,
                        f"HAProxy marks its 503 with {header} but not its "
                        f"{', '.join(map(str, missing))}: those count as the peer's own answers "
                        "(add http-error status ... hdr for them too)", line=line)]
    return []


#: The recipe's line for 503 (docs/overload.md), up to its header.
_RECIPE_503 = 'http-error status 503 content-type text/plain string "no server available"'
