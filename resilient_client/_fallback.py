"""
Fallbacks: what the caller gets when the call failed, the breaker is open
or the bulkhead is full, if the endpoint has one.
"""

from __future__ import annotations

import datetime
import http
import threading
from collections import OrderedDict
from collections.abc import Mapping

import requests
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers

from ._clock import Clock
from ._policy import StaleFallback

__all__ = ["StaleCache", "make_response"]


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
        entry = _Entry(resp.status_code, dict(resp.headers), resp.content or b"", self._clock.monotonic())
        key = (method, url)
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def response_for(self, request: requests.PreparedRequest) -> requests.Response | None:
        """The stale response for *request*, with its age in ``Age`` and ``.stale_age``."""
        key = (request.method or "GET", request.url or "")
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return None
        age = max(0.0, self._clock.monotonic() - entry.stored_at)
        headers = dict(entry.headers)
        headers["Age"] = str(int(age))
        resp = make_response(request, entry.status, entry.body, headers)
        resp.stale_age = age  # type: ignore[attr-defined]
        return resp
