"""
URLs as the requests front sends them, for routing: urllib3's own parser
(the one requests' ``prepare_url`` uses), so that a rule matches exactly the
URL that will go out. The core router (`resilient_client._routing`) takes
this as its `UrlForm` and knows nothing of urllib3 or requests.
"""

from __future__ import annotations

import fnmatch
import re

from requests.exceptions import InvalidURL
from urllib3.exceptions import LocationValueError
from urllib3.util import parse_url

__all__ = ["URLLIB3_FORM", "glob_variants", "normalise_url"]

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
        u = None
    if u is None:
        # Raised outside the except block: urllib3's error, which quotes the
        # URL (secrets and all), must not even hang on as __context__.
        scheme, colon, _ = url.partition(":")
        if colon and _SCHEME.fullmatch(scheme) and url[:4].lower() != "http":
            # requests leaves a URL of another scheme (ftp://...) unparsed
            # and fails it with InvalidSchema when no adapter takes it: so
            # must we, not refuse it here. No rule can match it.
            return f"{scheme.lower()}:", f"{scheme.lower()}:"
        raise InvalidURL("the URL cannot be parsed (expected scheme://host[:port]/path)")
    scheme = (u.scheme or "http").lower()
    # "host." is the same host as "host" (a fully qualified name): the same rules.
    host = (u.host or "").lower().removesuffix(".") or (u.host or "")
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


class _Urllib3Form:
    """The `resilient_client._routing.UrlForm` of the requests front."""

    def normalise(self, url: str) -> tuple[str, str]:
        return normalise_url(url)

    def glob_variants(self, pattern: str) -> list[str]:
        return glob_variants(pattern)

    def __repr__(self) -> str:
        return "URLLIB3_FORM"


#: URLs normalised as requests and urllib3 send them.
URLLIB3_FORM = _Urllib3Form()
