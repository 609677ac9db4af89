"""
Keeping secrets out of logs, events, errors and reprs.

Values of Authorization, Proxy-Authorization, Cookie, Set-Cookie and of any
header or query parameter named in ``secrets`` are replaced by
`REDACTED` wherever the library writes a URL, headers or an error message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from ._config import Secrets

__all__ = ["REDACTED", "redact_exception", "redact_headers", "redact_url", "secret_values"]

#: What stands in for a secret value.
REDACTED = "REDACTED"


def redact_url(url: str, secrets: Secrets) -> str:
    """*url* with the password and secret query values replaced."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    query = parts.query
    if query and secrets.query:
        pieces = []
        for piece in query.split("&"):
            name, eq, _ = piece.partition("=")
            if eq and unquote(name).lower() in secrets.query:
                piece = f"{name}={REDACTED}"
            pieces.append(piece)
        query = "&".join(pieces)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_headers(headers: Mapping[str, str], secrets: Secrets) -> dict[str, str]:
    """A copy of *headers* with secret values replaced."""
    return {k: (REDACTED if k.lower() in secrets.headers else v) for k, v in headers.items()}


def secret_values(url: str, headers: Mapping[str, str], secrets: Secrets) -> set[str]:
    """The secret strings a request carries: secret header values, secret query values, the password."""
    values = {v for k, v in headers.items() if k.lower() in secrets.headers and v}
    for v in list(values):
        # "Bearer abc" may appear as just "abc" in a message.
        _, _, token = v.partition(" ")
        if token:
            values.add(token)
    try:
        parts = urlsplit(url)
    except ValueError:
        return values
    if parts.password:
        values.add(parts.password)
    for name, value in parse_qsl(parts.query, keep_blank_values=False):
        if name.lower() in secrets.query and value:
            values.add(value)
            values.add(quote(value, safe=""))
    return {v for v in values if len(v) >= 3}


def _scrub(text: str, values: Iterable[str]) -> str:
    for v in sorted(values, key=len, reverse=True):
        text = text.replace(v, REDACTED)
    return text


def redact_exception(exc: BaseException, values: set[str]) -> None:
    """
    Replace *values* in the messages of *exc* and of every exception chained
    to it or held in its args (urllib3 nests its errors in args), in place.
    """
    if not values:
        return
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack and len(seen) < 64:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        new_args = []
        changed = False
        for a in e.args:
            if isinstance(a, str) and any(v in a for v in values):
                a = _scrub(a, values)
                changed = True
            elif isinstance(a, BaseException):
                stack.append(a)
            new_args.append(a)
        if changed:
            e.args = tuple(new_args)
        for attr in ("url",):
            val = getattr(e, attr, None)
            if isinstance(val, str) and any(v in val for v in values):
                with contextlib.suppress(AttributeError):  # a read-only attribute stays as is
                    setattr(e, attr, _scrub(val, values))
        for attr in ("reason", "__cause__", "__context__"):
            nxt = getattr(e, attr, None)
            if isinstance(nxt, BaseException):
                stack.append(nxt)
