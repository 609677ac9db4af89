"""
requests' per-call environment lookups, done once per origin while the
environment is unchanged.

On every call, ``requests.Session.merge_environment_settings`` scans the
whole of ``os.environ`` (decoding every variable, twice) for ``*_proxy``
variables, checks ``no_proxy`` against the URL's host, and reads
``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``: about a third of a loopback
GET. The results depend on two things only, so they can be reused while
both are the same:

* **the environment**: `getproxies_environment`, `proxy_bypass_environment`
  and the CA-bundle lookup read ``os.environ`` and nothing else. Every change
  made through ``os.environ`` (``os.environ[k] = v``, ``del``, ``update``,
  ``mock.patch.dict``, pytest's ``monkeypatch.setenv``) updates its
  ``_data`` mapping, so comparing ``_data`` with a snapshot (a C-level dict
  comparison, well under a microsecond) tells whether anything changed. A
  change through C ``setenv`` that bypasses ``os.environ`` is invisible to
  requests too, which also reads ``os.environ``.
* **the URL's origin**: `should_bypass_proxies` uses only the host and port.
  The cache key is the URL up to the first ``/`` after ``://``, a prefix that
  always contains the scheme and the whole network location.

Where the lookups can depend on anything else, nothing is cached and
requests' own code runs: on macOS and Windows (`getproxies` and
`proxy_bypass` also read the system's proxy settings), when any of the
functions involved has been replaced (a test patching requests), when
``os.environ`` is not the interpreter's own mapping, or when the call passes
its own ``no_proxy``.
"""

from __future__ import annotations

import os
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

import requests.sessions
import requests.utils

__all__ = ["EnvironCache", "merge_proxies"]

# requests' own, untyped in its stubs.
_merge_setting = cast(Callable[[Any, Any], Any], requests.sessions.merge_setting)

_GET_ENVIRON_PROXIES = requests.utils.get_environ_proxies
_SHOULD_BYPASS_PROXIES = requests.utils.should_bypass_proxies
_ENVIRON_TYPE = type(os.environ)
#: Origins remembered per environment; a session calling more is cleared (bounded memory).
_MAX_ORIGINS = 256


def _environment_only() -> bool:
    """Whether requests' proxy lookups read ``os.environ`` alone, as shipped."""
    return (
        requests.sessions.get_environ_proxies is _GET_ENVIRON_PROXIES
        and requests.utils.should_bypass_proxies is _SHOULD_BYPASS_PROXIES
        # Not in the type stubs, hence getattr.
        and getattr(requests.utils, "getproxies", None) is urllib.request.getproxies_environment
        and getattr(requests.utils, "proxy_bypass", None)
        is getattr(urllib.request, "proxy_bypass_environment", False)
    )


def _origin(url: str) -> str:
    start = url.find("://")
    end = url.find("/", start + 3) if start >= 0 else -1
    return url if end < 0 else url[:end]


class EnvironCache:
    """
    The environment's proxies per origin, and its CA bundle, for one session.

    Thread-safe without a lock: the state is one tuple replaced whole, and a
    race costs at most a recomputation. The snapshot is taken *before* the
    lookups it guards, so a change during a lookup shows up as a mismatch on
    the next call rather than being hidden.
    """

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state: tuple[dict[bytes, bytes], dict[str, dict[str, str]], str | None] | None = None

    def lookup(self, url: object) -> tuple[dict[str, str], str | None] | None:
        """(environment proxies for *url*, the CA bundle it names), or None: ask requests."""
        if not isinstance(url, str) or not _environment_only():
            return None
        env = os.environ
        if type(env) is not _ENVIRON_TYPE:
            return None
        data: dict[bytes, bytes] = env._data  # type: ignore[attr-defined]
        state = self._state
        if state is None or state[0] != data:
            snapshot = dict(data)
            ca_bundle = env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE")
            state = self._state = (snapshot, {}, ca_bundle)
        by_origin = state[1]
        key = _origin(url)
        proxies = by_origin.get(key)
        if proxies is None:
            proxies = _GET_ENVIRON_PROXIES(url, no_proxy=None)
            if len(by_origin) >= _MAX_ORIGINS:
                by_origin.clear()
            by_origin[key] = proxies
        return proxies, state[2]


def merge_proxies(request_setting: Any, session_setting: Any) -> Any:
    """
    requests' ``merge_setting`` for the proxies. For two plain dicts (always,
    unless the user set ``session.proxies`` to something else) its result is
    built directly: requests' generic path spends ~13 µs per call in
    ``isinstance`` checks against a runtime Protocol to find that out.
    """
    if type(request_setting) is not dict or type(session_setting) is not dict:
        return _merge_setting(request_setting, session_setting)
    merged = OrderedDict(session_setting)
    merged.update(request_setting)
    for key in [k for k, v in merged.items() if v is None]:
        del merged[key]
    return merged
