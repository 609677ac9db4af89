"""
What a fake peer (or a question such as ``peers.calls_to(...)``) is about:
an endpoint name, an exact URL, a URL with ``*`` wildcards, or a regex, and
why a request is not it, said so that a near miss explains itself.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

from .._urls import glob_variants, normalise_url

__all__ = ["Target"]


class Target:
    """An endpoint name, an exact URL, a URL with ``*`` wildcards, or a regex."""

    def __init__(self, kind: str, target: str | re.Pattern[str]) -> None:
        self.kind = kind
        self.target = target
        self._regex: re.Pattern[str] | None = None
        self._norm = ""
        self._query: list[tuple[str, str]] | None = None
        if isinstance(target, re.Pattern):
            self._regex = target
        elif kind == "url":
            if "://" not in target:
                raise ValueError(
                    f"url() takes an absolute URL (or use endpoint() for a name), got {target!r}"
                )
            if "*" in target:
                # Normalised as URLs are (a spelled-out default port matches
                # URLs without it), with "?" literal: URLs carry queries.
                self._regex = re.compile(
                    "|".join(
                        ".*".join(re.escape(p) for p in variant.split("*"))
                        for variant in glob_variants(target, encode=False)
                    ),
                    re.DOTALL,
                )
            else:
                self._norm = normalise_url(target)[0]
                q = urlsplit(target).query
                self._query = sorted(parse_qsl(q, keep_blank_values=True)) if q else None
        elif not target:
            raise ValueError("endpoint() needs a name")

    @classmethod
    def parse(cls, target: str | re.Pattern[str]) -> Target:
        """A query target: a URL (exact or with ``*``), a regex, or an endpoint name."""
        if isinstance(target, re.Pattern) or "://" in target:
            return cls("url", target)
        return cls("endpoint", target)

    def miss(self, url: str, endpoint: str | None) -> str | None:
        """None when *url* / *endpoint* is a match, else why not."""
        if self.kind == "endpoint":
            if endpoint == self.target:
                return None
            if endpoint is None:
                # Every live ResilientSession is known to the registry, so
                # this request came from plain requests (or another client).
                return (
                    "it was not sent by a ResilientSession, so it has no endpoint name "
                    "(script its URL with url() instead)"
                )
            return f"it went to endpoint {endpoint!r}, not {self.target!r}"
        if self._regex is not None:
            if isinstance(self.target, re.Pattern):
                if self._regex.match(url):
                    return None
                return f"URL {url} does not match {self.target.pattern!r}"
            if self._regex.fullmatch(url) or self._regex.fullmatch(normalise_url(url)[0]):
                return None
            return f"URL {url} does not match {self.target}"
        norm = normalise_url(url)[0]
        if norm == self._norm:
            if self._query is None:
                return None
            got = sorted(parse_qsl(urlsplit(url).query, keep_blank_values=True))
            if got == self._query:
                return None
            return f"query {urlsplit(url).query!r} is not {urlsplit(str(self.target)).query!r}"
        why = f"URL {url} is not {self.target}"
        if norm.startswith(self._norm.rstrip("/") + "/"):
            why += " (url() matches one URL exactly; end it with * to match everything under it)"
        elif norm.rstrip("/") == self._norm.rstrip("/"):
            why += " (the trailing slash differs)"
        return why

    def same_host(self, url: str) -> bool:
        """Whether *url* has this URL target's host: a near miss ranks higher."""
        if self.kind != "url" or isinstance(self.target, re.Pattern):
            return False
        return (
            urlsplit(url).netloc.lower() == urlsplit(self.target.replace("*", "x")).netloc.lower()
        )

    def __repr__(self) -> str:
        return f"{self.kind}({self.target!r})"
