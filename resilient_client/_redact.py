"""
Keeping secrets out of logs, events, errors and reprs.

Values of Authorization, Proxy-Authorization, Cookie, Set-Cookie and of any
header or query parameter named in ``secrets`` are replaced by
`REDACTED` wherever the library writes a URL, headers or an error message.

Two places are not ours but carry a request's URL, so they are covered too:

* exceptions raised out of ``send`` (requests and urllib3 put the path and
  query in their messages): `redact_exception` rewrites them, and the
  errors chained or nested in their args, in place;
* urllib3's own DEBUG log lines (``"GET /items?token=... HTTP/1.1" 200``):
  a filter on its loggers rewrites the query of the line while one of our
  attempts runs on that thread. Outside our attempts it does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from ._config import Secrets

__all__ = [
    "REDACTED",
    "attempt_secrets",
    "install_log_filter",
    "redact_exception",
    "redact_headers",
    "redact_url",
    "secret_values",
]

#: What stands in for a secret value.
REDACTED = "REDACTED"

_NO_SECRETS = Secrets()


def redact_url(url: str, secrets: Secrets = _NO_SECRETS) -> str:
    """*url* with the password and secret query values replaced."""
    # Fast path, taken by nearly every URL: nothing that could be secret.
    if not url or ("@" not in url and (not secrets.query or "?" not in url)):
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


def redact_headers(headers: Mapping[str, str], secrets: Secrets = _NO_SECRETS) -> dict[str, str]:
    """A copy of *headers* with secret values replaced."""
    return {k: (REDACTED if k.lower() in secrets.headers else v) for k, v in headers.items()}


def secret_values(url: str, headers: Mapping[str, str], secrets: Secrets) -> set[str]:
    """
    The secret strings a request carries: secret header values (and the
    token after ``Bearer``/``Basic``, and each cookie's value), secret query
    values (raw and percent-encoded) and the URL's password.
    """
    values = {v for k, v in headers.items() if k.lower() in secrets.headers and v}
    for v in list(values):
        # "Bearer abc" may appear as just "abc" in a message.
        _, _, token = v.partition(" ")
        if token:
            values.add(token)
        # "a=1; session=abc": each cookie on its own.
        if "=" in v:
            for pair in v.split(";"):
                _, eq, cookie = pair.strip().partition("=")
                if eq and cookie:
                    values.add(cookie)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return values
    if password:
        # As written in the URL (maybe percent-encoded), and as the peer gets it.
        values.add(password)
        values.add(unquote(password))
    for name, value in parse_qsl(parts.query, keep_blank_values=False):
        if name.lower() in secrets.query and value:
            values.add(value)
            values.add(quote(value, safe=""))
            values.add(quote(value, safe="").replace("%20", "+"))
    # Shorter strings are no secret worth the name, and scrubbing them would
    # shred every message.
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
        # urllib3 keeps the URL (path and query) as an attribute.
        val = getattr(e, "url", None)
        if isinstance(val, str) and any(v in val for v in values):
            with contextlib.suppress(AttributeError):  # a read-only url: nothing we can do
                e.url = _scrub(val, values)  # type: ignore[attr-defined]
        for attr in ("reason", "__cause__", "__context__"):
            nxt = getattr(e, attr, None)
            if isinstance(nxt, BaseException):
                stack.append(nxt)


# -- urllib3's own debug lines -------------------------------------------------

_current = threading.local()


def attempt_secrets(secrets: Secrets | None) -> None:
    """Tell the log filter which query names are secret on this thread (None: none)."""
    _current.secrets = secrets


class _QueryFilter(logging.Filter):
    """Redact secret query values in urllib3's records made during our attempts."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets: Secrets | None = getattr(_current, "secrets", None)
        if secrets is not None and isinstance(record.args, tuple):
            record.args = tuple(
                redact_url(a, secrets) if isinstance(a, str) and "?" in a else a
                for a in record.args
            )
        return True


# The urllib3 loggers whose lines carry a request's path and query.
_URLLIB3_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "urllib3.poolmanager")
_install_lock = threading.Lock()
_installed = False


def install_log_filter() -> None:
    """Add the query filter to urllib3's loggers, once per process."""
    global _installed
    with _install_lock:
        if _installed:
            return
        f = _QueryFilter()
        for name in _URLLIB3_LOGGERS:
            logging.getLogger(name).addFilter(f)
        _installed = True
