"""
Fallbacks: what the caller gets when the call failed, the breaker is open
or the bulkhead is full, if the endpoint has one.
"""

from __future__ import annotations

import datetime
import enum
import http
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import requests
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers

from ._clock import Clock
from ._errors import ConfigError
from ._policy import StaleFallback, StaticFallback

__all__ = ["StaleCache", "fallback_response", "make_response"]


class _Unset(enum.Enum):
    UNSET = enum.auto()


#: Tells "no json=" from ``json=None`` (a JSON null body).
_UNSET = _Unset.UNSET


def fallback_response(
    request: requests.PreparedRequest,
    status: int = 200,
    *,
    json: Any = _UNSET,
    text: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> requests.Response:
    """
    A `requests.Response` for a callable fallback to return, made as the
    configured fixed fallbacks are: with *json*, the value as a JSON body
    and ``Content-Type: application/json``; with *text*, the text as UTF-8
    and ``Content-Type: text/plain; charset=utf-8``; with neither, an empty
    body. *headers* add to (or override) the content type.

    The session marks what a fallback returns (``resp.is_fallback``,
    ``resp.attempts``); this builds the rest, with no private attribute of
    requests to set.

    Raises:
        ValueError: for a status outside 100-599, both *json* and *text*, a
            value that is not JSON-serialisable or a header that is not one.

    .. versionadded:: 0.1.0
    """
    if json is not _UNSET and text is not None:
        raise ValueError("fallback_response: give json or text, not both")
    try:
        if json is not _UNSET:
            made = StaticFallback.from_json(status, json, headers)
        elif text is not None:
            made = StaticFallback.from_text(status, text, headers)
        else:
            made = StaticFallback(status=status, headers=dict(headers or {}))
    except ConfigError as e:
        # Said as the argument it is: this is a call, not a configuration.
        raise ValueError(f"fallback_response: {e}") from None
    return make_response(request, made.status, made.body, made.headers)


def make_response(
    request: requests.PreparedRequest,
    status: int,
    body: bytes,
    headers: Mapping[str, str],
) -> requests.Response:
    """A complete `requests.Response` that never touched the network."""
    resp = requests.Response()
    resp.status_code = status
    resp._content = body
    resp._content_consumed = True  # type: ignore[attr-defined]
    resp.headers = CaseInsensitiveDict(headers)
    resp.encoding = get_encoding_from_headers(resp.headers)
    try:
        resp.reason = http.HTTPStatus(status).phrase
    except ValueError:
        resp.reason = ""
    resp.url = request.url or ""
    resp.request = request
    resp.elapsed = datetime.timedelta(0)
    return resp


class _Entry:
    __slots__ = ("body", "headers", "status", "stored_at")

    def __init__(self, status: int, headers: dict[str, str], body: bytes, stored_at: float) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.stored_at = stored_at


class StaleCache:
    """
    The last successful GET/HEAD response per URL, for the ``stale``
    fallback: at most ``max_entries`` URLs, least recently stored dropped.

    .. versionadded:: 0.1.0
    """

    def __init__(self, policy: StaleFallback, clock: Clock) -> None:
        self._max = policy.max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def store(self, method: str, url: str, resp: requests.Response) -> None:
        self.store_parts(method, url, resp.status_code, dict(resp.headers), resp.content or b"")

    def store_parts(self, method: str, url: str, status: int, headers: dict[str, str], body: bytes) -> None:
        """Keep a response given as its parts (any HTTP client's)."""
        entry = _Entry(status, headers, body, self._clock.monotonic())
        key = (method, url)
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def response_for(self, request: requests.PreparedRequest) -> requests.Response | None:
        """The stale response for *request*, with its age in ``Age`` and ``.stale_age``."""
        found = self.parts_for(request.method or "GET", request.url or "")
        if found is None:
            return None
        status, headers, body, age = found
        resp = make_response(request, status, body, headers)
        resp.stale_age = age  # type: ignore[attr-defined]
        return resp

    def parts_for(self, method: str, url: str) -> tuple[int, dict[str, str], bytes, float] | None:
        """(status, headers with ``Age``, body, age in seconds) kept for *method* *url*, or None."""
        with self._lock:
            entry = self._entries.get((method, url))
        if entry is None:
            return None
        age = max(0.0, self._clock.monotonic() - entry.stored_at)
        headers = dict(entry.headers)
        headers["Age"] = str(int(age))
        return entry.status, headers, entry.body, age
