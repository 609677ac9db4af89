"""
``proxy-error-header``: does the HAProxy in front of a peer mark the errors it
makes itself with the header the client's ``proxy_errors`` expects?

A client with ``proxy_errors: {header: X-Proxy-Error}`` retries a 503 that
carries the header for every method, because HAProxy makes a 503 only when
it never forwarded the request (queue timeout, no server up, connection to
the server failed). If HAProxy does not add the header, its 503s look like
the peer's own and a POST is never retried; the client has no way to tell.

HAProxy adds a header to the responses it makes with ``http-error status
503 ... hdr X-Proxy-Error <value>`` (2.2+), in ``defaults``, ``backend`` or
``listen``, or to every response with ``http-after-response set-header``
(which also marks the peer's answers, so it is reported too). An
``errorfile`` or ``errorfiles`` for a status is a raw response this reader
does not open: reported as "cannot tell". A backend inherits from the last
``defaults`` section before it, as HAProxy does.
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

    def copy(self) -> _Marks:
        return _Marks({k: set(v) for k, v in self.headers.items()}, set(self.everywhere), set(self.files))


#: Splits one haproxy.cfg line into words (`_haproxy`'s tokenizer, passed in).
Words = Callable[[str], list[str]]


def _read(text: str, _words: Words) -> tuple[dict[str, tuple[int, _Marks]], _Marks]:
    """Per backend/listen (lower-cased name): (line, marks); and the marks of frontends."""
    out: dict[str, tuple[int, _Marks]] = {}
    frontends = _Marks()
    defaults = _Marks()
    current: _Marks | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        words = _words(raw)
        if not words:
            continue
        head = words[0].lower()
        if head in ("defaults", "backend", "listen", "frontend", "global", "http-errors", "peers",
                    "resolvers", "userlist", "cache", "program", "ring", "mailers"):
            if head == "defaults":
                current = defaults = _Marks()
            elif head in ("backend", "listen"):
                current = defaults.copy()
                out[(words[1] if len(words) > 1 else "").lower()] = (lineno, current)
            elif head == "frontend":
                current = frontends
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
    return out, frontends


def check_proxy_error_header(config: Config, haproxy_text: str, words: Words) -> list[Finding]:
    """The ``proxy-error-header`` findings of *config* against *haproxy_text* (see the module)."""
    if not haproxy_text.strip():
        return []
    backends, frontends = _read(haproxy_text, words)
    findings: list[Finding] = []
    policies: dict[str, Policy] = {}
    for policy in [config.defaults, *(e.policy for e in config.endpoints)]:
        if policy.proxy_errors is not None:
            policies.setdefault(policy.name, policy)
    for name, policy in policies.items():
        header = policy.proxy_errors.header if policy.proxy_errors is not None else ""
        paired = {name.lower(): backends[name.lower()]} if name.lower() in backends else backends
        for backend, (line, marks) in paired.items():
            findings.extend(_check(name, header, backend, line, marks, frontends))
    return findings


def _check(endpoint: str, header: str, backend: str, line: int, marks: _Marks,
           frontends: _Marks) -> list[Finding]:
    low = header.lower()
    if low in marks.everywhere or low in frontends.everywhere:
        return [Finding("warning", "proxy-error-header", endpoint, backend,
                        f"HAProxy adds {header} to every response (http-after-response), the peer's "
                        "own errors included: the client would retry a POST the peer answered 503. "
                        f"Add it only to HAProxy's own errors: http-error status 503 ... hdr {header} 1",
                        line=line)]
    marked = {s for s in _PROXY_STATUSES if low in marks.headers.get(s, set())}
    unknown = {s for s in _PROXY_STATUSES if s in marks.files and s not in marked}
    if 503 not in marked:
        if 503 in unknown:
            return [Finding("info", "proxy-error-header", endpoint, backend,
                            f"HAProxy answers 503 from an errorfile this check does not read: make sure "
                            f"it carries {header} (proxy_errors.header)", line=line)]
        return [Finding("warning", "proxy-error-header", endpoint, backend,
                        f"proxy_errors expects HAProxy to mark its own errors with {header}, but this "
                        "backend does not add it to its 503 (queue timeout, no server up): those look "
                        "like the peer's own 503 and are not retried for POST. Add: http-error status "
                        f'503 content-type text/plain string "no server available" hdr {header} 1',
                        line=line)]
    missing = sorted(set(_PROXY_STATUSES) - marked - unknown)
    if missing:
        return [Finding("info", "proxy-error-header", endpoint, backend,
                        f"HAProxy marks its 503 with {header} but not its "
                        f"{', '.join(map(str, missing))}: those count as the peer's own answers "
                        "(add http-error status ... hdr for them too)", line=line)]
    return []
