"""
Which endpoint rule applies to a request: rules in order, first match wins.

Rules are compiled once. A URL is matched as ``scheme://host[:port]/path``
(scheme and host lower-cased, default ports dropped, no query or fragment):
a prefix rule matches when that string starts with the (normalised) prefix,
a glob rule (``*`` any run of characters, ``?`` one) when it matches the
whole string. The session caches the result per (method, URL without query),
so the hot path matches patterns once per URL shape.
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

__all__ = ["Resolution", "Router", "normalise_url"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_url(url: str) -> tuple[str, str]:
    """
    Return (``scheme://host[:port]/path`` for matching, ``scheme://host:port`` origin).

    Raises:
        requests.exceptions.InvalidURL: *url* cannot be parsed, as requests
            itself raises for such a URL (not urllib3's LocationParseError).
    """
    try:
        u = parse_url(url)
    except LocationValueError:
        # Not chained, and without the URL: it may carry secrets in its query.
        raise InvalidURL("the URL cannot be parsed (expected scheme://host[:port]/path)") from None
    scheme = (u.scheme or "http").lower()
    host = (u.host or "").lower()
    port = u.port or _DEFAULT_PORTS.get(scheme)
    shown = "" if port == _DEFAULT_PORTS.get(scheme) or port is None else f":{port}"
    return f"{scheme}://{host}{shown}{u.path or '/'}", f"{scheme}://{host}:{port}"


def _compile(rule: Endpoint) -> Callable[[str], bool]:
    pattern = rule.match
    if rule.is_glob:
        scheme, _, rest = pattern.partition("://")
        hostport, slash, path = rest.partition("/")
        pattern = f"{scheme.lower()}://{hostport.lower()}{slash}{path}"
        return re.compile(fnmatch.translate(pattern), re.DOTALL).match  # type: ignore[return-value]
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
