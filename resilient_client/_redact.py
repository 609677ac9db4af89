"""
Keeping secrets out of logs, events, errors and reprs.

Values of Authorization, Proxy-Authorization, Cookie, Set-Cookie and of any
header or query parameter named in ``secrets`` are replaced by
`REDACTED` wherever the library writes a URL, headers or an error message.

Two places are not ours but carry a request's URL, so they are covered too:

* exceptions raised out of the session (``request()`` and every verb,
  ``send()``): requests and urllib3 put the path and query in their
  messages, and requests quotes a bad header's value. `redact_exception`
  rewrites them, and the errors chained or nested in their args, in place.
  It does not rely only on the values the caller's request carried: a
  redirect hop can carry a secret first seen in a ``Location`` header, so it
  also scrubs secret query parameters *by name* wherever a URL in the text
  has one, URL passwords by shape, and the secrets of every request and
  response attached to the errors;
* urllib3's own DEBUG log lines (``"GET /items?token=... HTTP/1.1" 200``):
  a filter on its loggers rewrites the query of the line while one of our
  attempts runs on that thread. Outside our attempts it does nothing.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from ._config import Secrets

__all__ = [
    "REDACTED",
    "attempt_secrets",
    "call_secret_values",
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
    if not url or ("@" not in url and (not secrets.query or ("?" not in url and "#" not in url))):
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
    query, fragment = parts.query, parts.fragment
    if secrets.query:
        # Pairs may be separated by ";" too (servers accept it), and a
        # fragment may carry them (an OAuth implicit-grant token).
        query, fragment = _redact_pairs(query, secrets), _redact_pairs(fragment, secrets)
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


_PAIR_SEPARATORS = re.compile(r"([&;])")


def _redact_pairs(text: str, secrets: Secrets) -> str:
    """*text* (``a=1&token=x;b=2``) with the values of secret names replaced."""
    if "=" not in text:
        return text
    pieces = _PAIR_SEPARATORS.split(text)
    for i in range(0, len(pieces), 2):  # the separators sit at odd positions
        name, eq, _ = pieces[i].partition("=")
        if eq and unquote(name).lower() in secrets.query:
            pieces[i] = f"{name}={REDACTED}"
    return "".join(pieces)


def redact_headers(headers: Mapping[str, str], secrets: Secrets = _NO_SECRETS) -> dict[str, str]:
    """A copy of *headers* with secret values replaced."""
    return {k: (REDACTED if k.lower() in secrets.headers else v) for k, v in headers.items()}


def _text(value: object) -> str:
    """A header name or value as text: requests accepts bytes for both."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value if isinstance(value, str) else str(value)


def _forms(value: str) -> set[str]:
    """
    The ways *value* may be written in a message: as is, without the
    surrounding whitespace, and escaped as ``repr`` escapes it (requests
    quotes a bad header value with ``!r``: a trailing newline shows as ``\\n``).
    """
    forms = {value, value.strip()}
    escaped = repr(value)[1:-1]
    if escaped != value:
        forms.add(escaped)
    # A value given as bytes is quoted as bytes (b'...\xc3\xa9...'): _text
    # read it as latin-1, so that encoding gets the bytes back.
    try:
        as_bytes = repr(value.encode("latin-1"))[2:-1]
    except UnicodeEncodeError:
        as_bytes = repr(value.encode("utf-8"))[2:-1]
    if as_bytes not in forms:
        forms.add(as_bytes)
    return forms


# The value of each cookie in a Set-Cookie header, several joined by ", "
# (an Expires date's comma is followed by a day number, not a name=).
_SET_COOKIE_VALUE = re.compile(r"(?:^|,)\s*[^=;,\s]+=([^;,]*)")


def secret_values(url: str, headers: Mapping[Any, Any], secrets: Secrets) -> set[str]:
    """
    The secret strings a request carries: secret header values (and the
    token after ``Bearer``/``Basic``, and each cookie's value), secret query
    values (raw and percent-encoded) and the URL's password, each also as a
    message may show it (stripped, ``repr``-escaped).
    """
    values: set[str] = set()
    for k, v in headers.items():
        name = _text(k).lower()
        if not v or name not in secrets.headers:
            continue
        v = _text(v)
        values.add(v)
        # "Bearer abc" may appear as just "abc" in a message.
        _, _, token = v.partition(" ")
        if token:
            values.add(token)
        if name == "set-cookie":
            # "s=abc; Path=/api, t=def; Max-Age=60": each cookie's value, not
            # its attributes (scrubbing "/api" or "60" would shred messages).
            values.update(_SET_COOKIE_VALUE.findall(v))
        elif "=" in v:
            # "a=1; session=abc": each cookie on its own.
            for pair in v.split(";"):
                _, eq, cookie = pair.strip().partition("=")
                if eq and cookie:
                    values.add(cookie)
    try:
        parts = urlsplit(_text(url))
        password = parts.password
    except ValueError:
        return _worth_scrubbing(values)
    if password:
        # As written in the URL (maybe percent-encoded), and as the peer gets it.
        values.add(password)
        values.add(unquote(password))
    for name, value in parse_qsl(parts.query, keep_blank_values=False):
        if name.lower() in secrets.query and value:
            values |= _encoded(value)
    return _worth_scrubbing(values)


def _encoded(value: str) -> set[str]:
    """A query value as given and as it goes out percent-encoded (``%20`` or ``+``)."""
    quoted = quote(value, safe="")
    return {value, quoted, quoted.replace("%20", "+")}


def _worth_scrubbing(values: Iterable[str]) -> set[str]:
    # Shorter strings are no secret worth the name, and scrubbing them would
    # shred every message.
    return {f for v in values for f in _forms(v) if len(f) >= 3}


#: requests.Session.request's parameters after (method, url), in order.
_REQUEST_PARAMS = ("params", "data", "headers", "cookies", "files", "auth", "timeout",
                   "allow_redirects", "proxies", "hooks", "stream", "verify", "cert", "json")


def call_secret_values(
    secrets: Secrets, session: Any, url: object, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> set[str]:
    """
    The secret strings of a ``session.request(method, url, *args, **kwargs)``
    call before requests has prepared it: what the URL, the ``params``,
    ``headers``, ``cookies``, ``auth`` and ``proxies`` arguments and the
    session's own defaults for them carry. Called only when the call failed.
    """
    given = dict(zip(_REQUEST_PARAMS, args, strict=False))
    given.update(kwargs)
    headers: dict[str, Any] = {}
    for source in (getattr(session, "headers", None), given.get("headers")):
        if isinstance(source, Mapping):
            headers.update({_text(k).lower(): v for k, v in source.items()})
    values = secret_values(_text(url) if url is not None else "", headers, secrets)
    # Every cookie value goes out in the (always secret) Cookie header.
    for jar in (getattr(session, "cookies", None), given.get("cookies")):
        # A dict, a RequestsCookieJar (both mappings) or a plain CookieJar.
        with contextlib.suppress(Exception):  # of some other shape: requests refuses it
            cookies = jar.values() if isinstance(jar, Mapping) else [c.value for c in jar or ()]
            values |= _worth_scrubbing(_text(v) for v in cookies if v)
    for auth in (getattr(session, "auth", None), given.get("auth")):
        if isinstance(auth, tuple) and len(auth) == 2 and auth[1]:
            values |= _worth_scrubbing([_text(auth[1])])
    for params in (getattr(session, "params", None), given.get("params")):
        values |= _param_values(params, secrets)
    for proxies in (getattr(session, "proxies", None), given.get("proxies")):
        if isinstance(proxies, Mapping):
            for proxy in proxies.values():
                if proxy:
                    values |= secret_values(_text(proxy), {}, secrets)
    return values


def _param_values(params: object, secrets: Secrets) -> set[str]:
    """The values of secret query names in a ``params=`` argument, in any of its forms."""
    if not params or not secrets.query:
        return set()
    if isinstance(params, (str, bytes)):
        return secret_values("?" + _text(params), {}, secrets)
    pairs = params.items() if isinstance(params, Mapping) else params
    found: list[str] = []
    with contextlib.suppress(Exception):  # not pairs: requests refuses it, nothing to find
        for name, value in pairs:  # type: ignore[attr-defined]
            if _text(name).lower() in secrets.query:
                many = value if isinstance(value, (list, tuple)) else [value]
                found += [_text(v) for v in many if v is not None]
    return _worth_scrubbing(f for v in found for f in _encoded(v))


@functools.lru_cache(maxsize=64)
def _url_patterns(query_names: frozenset[str]) -> tuple[re.Pattern[str], ...]:
    """
    Regexes whose group 1 is kept and the rest replaced: a URL's password,
    and the value of each secret query name in any URL of a text.
    """
    # scheme://user:PASSWORD@ (the password ends at the last "@" of the authority).
    patterns = [re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@'\"<>:]*:)[^\s/?#'\"<>]*(?=@)")]
    if query_names:
        names = sorted({re.escape(n) for q in query_names for n in (q, quote(q, safe=""))},
                       key=len, reverse=True)
        # ?token=VALUE or &token=VALUE: the value runs to the next parameter,
        # fragment, quote, bracket or whitespace (a message's own words).
        patterns.append(re.compile(
            rf"((?<=[?&;])(?:{'|'.join(names)})=)[^&#\s'\"<>]*", re.IGNORECASE))
    return tuple(patterns)


def _scrub(text: str, values: Iterable[str], patterns: Iterable[re.Pattern[str]] = ()) -> str:
    for pattern in patterns:
        text = pattern.sub(rf"\g<1>{REDACTED}", text)
    for v in sorted(values, key=len, reverse=True):
        text = text.replace(v, REDACTED)
    return text


def _attached_values(e: BaseException, secrets: Secrets) -> set[str]:
    """The secrets of the request and response an error carries (a redirect hop's, maybe)."""
    values: set[str] = set()
    response = getattr(e, "response", None)
    for request in (getattr(e, "request", None), getattr(response, "request", None)):
        url, headers = getattr(request, "url", None), getattr(request, "headers", None)
        if isinstance(url, (str, bytes)) or isinstance(headers, Mapping):
            values |= secret_values(url or "", headers if isinstance(headers, Mapping) else {},
                                    secrets)
    headers = getattr(response, "headers", None)
    if isinstance(headers, Mapping):  # Set-Cookie, say
        values |= secret_values(getattr(response, "url", None) or "", headers, secrets)
    return values


def redact_exception(
    exc: BaseException, values: Iterable[str] = (), secrets: Secrets = _NO_SECRETS
) -> None:
    """
    Scrub secrets from the messages of *exc* and of every exception chained
    to it or held in its args (urllib3 nests its errors in args), in place:
    *values*, the secrets of the requests and responses attached to those
    errors, URL passwords, and the values of the query names in
    ``secrets.query`` in any URL of the text, wherever it came from.
    """
    found = set(values)
    patterns = _url_patterns(secrets.query)
    errors: list[BaseException] = []
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    # Bounded: a chain is short, but a cycle or a pathological nest must not hang us.
    while stack and len(seen) < 64:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        errors.append(e)
        found |= _attached_values(e, secrets)
        stack += [a for a in e.args if isinstance(a, BaseException)]
        for attr in ("reason", "__cause__", "__context__"):
            nxt = getattr(e, attr, None)
            if isinstance(nxt, BaseException):
                stack.append(nxt)
    # Scrubbing by value too: a value first found by name may also appear bare.
    found = {v for v in found if len(v) >= 3}
    for e in errors:
        texts = [a for a in e.args if isinstance(a, str)]
        url = getattr(e, "url", None)
        if isinstance(url, str):
            texts.append(url)
        for text in texts:
            for pattern in patterns:
                for m in pattern.finditer(text):
                    value = text[m.end(1):m.end()]
                    found |= _worth_scrubbing([value, unquote(value)])
    for e in errors:
        new_args = []
        changed = False
        for a in e.args:
            if isinstance(a, str):
                scrubbed = _scrub(a, found, patterns)
                changed = changed or scrubbed != a
                a = scrubbed
            new_args.append(a)
        if changed:
            e.args = tuple(new_args)
        # urllib3 keeps the URL (path and query) as an attribute.
        val = getattr(e, "url", None)
        if isinstance(val, str):
            scrubbed = _scrub(val, found, patterns)
            if scrubbed != val:
                with contextlib.suppress(AttributeError):  # a read-only url: nothing we can do
                    e.url = scrubbed  # type: ignore[attr-defined]


# -- urllib3's own debug lines -------------------------------------------------

_current = threading.local()


def attempt_secrets(secrets: Secrets | None) -> Secrets | None:
    """
    Tell the log filter which query names are secret on this thread (None:
    none); returns what it replaced, for the caller to put back. A call made
    from inside an attempt (a hook, a listener) must hand the outer
    attempt's secrets back, or the outer call's later hops log unfiltered.
    """
    previous: Secrets | None = getattr(_current, "secrets", None)
    _current.secrets = secrets
    return previous


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
