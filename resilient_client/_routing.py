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
from typing import Protocol

from ._config import Endpoint
from ._errors import ConfigError
from ._policy import Policy

__all__ = ["Resolution", "Router", "UrlForm"]


class UrlForm(Protocol):
    """
    How a front normalises URLs for matching (the requests front:
    `resilient_client._urls.URLLIB3_FORM`): the core knows no URL parser, so
    every front routes exactly the URL it will send.
    """

    def normalise(self, url: str) -> tuple[str, str]:
        """
        (``scheme://host[:port]/path`` for matching, ``scheme://host:port``
        origin); raises a `ValueError` for a URL that cannot be parsed.
        """
        ...

    def glob_variants(self, pattern: str) -> list[str]:
        """The normalised forms a glob rule may match, any of which will do."""
        ...

def _compile(rule: Endpoint, index: int, urls: UrlForm) -> Callable[[str], bool]:
    pattern = rule.match
    if rule.is_glob:
        regex = "|".join(fnmatch.translate(v) for v in urls.glob_variants(pattern))
        return re.compile(regex, re.DOTALL).match  # type: ignore[return-value]
    try:
        prefix, _ = urls.normalise(pattern)
    except ValueError:
        # A port out of range, a bad host: caught when the session is built.
        problem = f"must be a valid URL prefix, got {pattern!r}"
        raise ConfigError(f"endpoints[{index}].match", problem) from None
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

    def __init__(self, endpoints: Sequence[Endpoint], defaults: Policy, urls: UrlForm) -> None:
        self._urls = urls
        self._rules = [(i, ep, _compile(ep, i, urls)) for i, ep in enumerate(endpoints)]
        self._defaults = defaults

    def resolve(self, method: str, url: str) -> Resolution:
        """The first rule matching *method* and *url*, or the defaults."""
        method = method.upper()
        target, origin = self._urls.normalise(url)
        for i, ep, matches in self._rules:
            if (ep.methods is None or method in ep.methods) and matches(target):
                return Resolution(ep.policy, ep, i, ep.name)
        return Resolution(self._defaults, None, None, origin)
