"""
Which endpoint rule applies to a request: rules in order, first match wins.

Rules are compiled once. A URL is matched as ``scheme://host[:port]/path``
(leading whitespace stripped as requests does, scheme and host lower-cased,
default ports dropped, no query or fragment): a prefix rule matches when
that string starts with the (normalised) prefix, a glob rule (``*`` any run
of characters, ``?`` one) when it matches the whole string. Both kinds of
rule are normalised as URLs are, so a rule that spells out a default port
(``https://api.internal:443/*``) matches the URLs that omit it. The session
caches the result per (method, URL without query), so the hot path matches
patterns once per URL shape.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from requests.exceptions import InvalidURL
from urllib3.exceptions import LocationValueError
from urllib3.util import parse_url

from ._config import Endpoint
from ._policy import Policy

__all__ = ["Resolution", "Router", "glob_variants", "normalise_url"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")  # RFC 3986, section 3.1


def normalise_url(url: str) -> tuple[str, str]:
    """
    Return (``scheme://host[:port]/path`` for matching, ``scheme://host:port`` origin).

    Raises:
        requests.exceptions.InvalidURL: *url* cannot be parsed, as requests
            itself raises for such a URL (not urllib3's LocationParseError).
    """
    # Route the URL requests will send: PreparedRequest.prepare_url strips
    # leading whitespace, then parses with the same parse_url.
    url = url.lstrip()
    try:
        u = parse_url(url)
    except LocationValueError:
        scheme, colon, _ = url.partition(":")
        if colon and _SCHEME.fullmatch(scheme) and url[:4].lower() != "http":
            # requests leaves a URL of another scheme (ftp://...) unparsed
            # and fails it with InvalidSchema when no adapter takes it: so
            # must we, not refuse it here. No rule can match it.
            return f"{scheme.lower()}:", f"{scheme.lower()}:"
        # Not chained, and without the URL: it may carry secrets in its query.
        raise InvalidURL("the URL cannot be parsed (expected scheme://host[:port]/path)") from None
    scheme = (u.scheme or "http").lower()
    host = (u.host or "").lower()
    port = u.port or _DEFAULT_PORTS.get(scheme)
    shown = "" if port == _DEFAULT_PORTS.get(scheme) or port is None else f":{port}"
    return f"{scheme}://{host}{shown}{u.path or '/'}", f"{scheme}://{host}:{port}"


# Stand-ins for the glob characters while urllib3 normalises a glob's host
# and path: lower-case letters, which it leaves as they are in both.
_GLOB_STAND_INS = (("*", "zqglobstarqz"), ("?", "zqglobmarkqz"))


def _normalise_glob_host_path(host: str, path: str) -> tuple[str, str]:
    """
    *host* and *path* of a glob as `normalise_url` has parse_url normalise
    a URL's (IDNA host, percent-encoded path), the glob characters kept.
    """
    given_host, given_path = host, path
    for char, stand_in in _GLOB_STAND_INS:
        host, path = host.replace(char, stand_in), path.replace(char, stand_in)
    try:
        u = parse_url(f"http://{host}{path}")
    except LocationValueError:
        return given_host, given_path
    host, path = u.host or "", u.path or ""
    for char, stand_in in _GLOB_STAND_INS:
        host, path = host.replace(stand_in, char), path.replace(stand_in, char)
    if any(label.startswith("xn--") and ("*" in label or "?" in label) for label in host.split(".")):
        # A glob inside a non-ASCII label: punycode has no wildcard form.
        host = given_host
    if sum(map((host + path).count, "*?")) != sum(map((given_host + given_path).count, "*?")):
        return given_host, given_path  # a stand-in did not come back: keep the glob as written
    return host, path


def glob_variants(pattern: str, *, encode: bool = True) -> list[str]:
    """
    *pattern* (``scheme://host[:port]/path`` with ``*`` and ``?``) normalised
    as `normalise_url` normalises URLs: the strings a normalised URL may be
    matched against, any of which will do.

    Scheme and host are lower-cased; with *encode*, the host is IDNA-encoded
    and the path percent-encoded as parse_url does for URLs. A port that is,
    or may be (``:*``), the default port of a scheme the pattern may have
    gets a variant without it, for that scheme, since a normalised URL never
    shows its default port.
    """
    scheme, _, rest = pattern.partition("://")
    hostport, slash, path = rest.partition("/")
    scheme, hostport = scheme.lower(), hostport.lower()
    host, port = hostport, None
    # "[::1]:80" or "host:80"; a colon inside brackets is not a port.
    head, colon, tail = hostport.rpartition(":")
    if colon and "]" not in tail:
        host, port = head, tail
        if port.isdigit():
            port = str(int(port))  # ":080" is port 80, as parse_url reads it
    path = slash + path
    if encode:
        host, path = _normalise_glob_host_path(host, path)
    variants = [f"{scheme}://{host}{':' + port if port is not None else ''}{path}"]
    if port is not None:
        for default_scheme, default_port in _DEFAULT_PORTS.items():
            if fnmatch.fnmatchcase(default_scheme, scheme) and fnmatch.fnmatchcase(
                str(default_port), port
            ):
                variants.append(f"{default_scheme}://{host}{path}")
    return variants


def _compile(rule: Endpoint) -> Callable[[str], bool]:
    pattern = rule.match
    if rule.is_glob:
        regex = "|".join(fnmatch.translate(v) for v in glob_variants(pattern))
        return re.compile(regex, re.DOTALL).match  # type: ignore[return-value]
    prefix, _ = normalise_url(pattern)
    if not pattern.rstrip("/").partition("://")[2].count("/"):
        # "https://host" or "https://host/": match the whole origin, not "https://hostile".
        prefix = prefix.rstrip("/") + "/"
    return lambda s: s.startswith(prefix)


@dataclass(frozen=True)
class Resolution:
    """
    Which policy applies to a request, and why.

    Attributes:
        policy: the merged policy.
        endpoint: the matching rule, or None when the defaults apply.
        index: the rule's position in ``endpoints``, or None.
        key: the name that breaker, budget and bulkhead are kept under: the
            endpoint name, or ``scheme://host:port`` for unmatched URLs.

    .. versionadded:: 0.1.0
    """

    policy: Policy
    endpoint: Endpoint | None
    index: int | None
    key: str

    def __str__(self) -> str:
        if self.endpoint is None:
            return f"no endpoint matched: defaults apply, state kept per origin {self.key}"
        methods = f" for {', '.join(sorted(self.endpoint.methods))}" if self.endpoint.methods else ""
        return f"endpoints[{self.index}] {self.key!r} (match {self.endpoint.match!r}{methods})"


class Router:
    """Compiled endpoint rules."""

    def __init__(self, endpoints: Sequence[Endpoint], defaults: Policy) -> None:
        self._rules = [(i, ep, _compile(ep)) for i, ep in enumerate(endpoints)]
        self._defaults = defaults

    def resolve(self, method: str, url: str) -> Resolution:
        """The first rule matching *method* and *url*, or the defaults."""
        method = method.upper()
        target, origin = normalise_url(url)
        for i, ep, matches in self._rules:
            if (ep.methods is None or method in ep.methods) and matches(target):
                return Resolution(ep.policy, ep, i, ep.name)
        return Resolution(self._defaults, None, None, origin)
