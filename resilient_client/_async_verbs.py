"""
How the async client builds requests: httpx's ``build_request`` leaving the
timeout to the policy unless the caller gave one, and ``policy=`` per call, as `ResilientSession` takes it:
httpx's verbs, ``request`` and ``stream`` accept it and hand it to ``send``
(which also takes it) through a context variable, since httpx passes no
extra argument from ``request`` to ``send``. ``send`` takes it off the
variable before any code of the caller's (auth, event hooks) runs, so a
call that code makes is not this one. `AsyncResilientClient` mixes it in.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import TYPE_CHECKING, Any

import httpx

__all__ = ["CALL_POLICY", "PerCallPolicy", "take_call_policy"]

#: The ``policy=`` of the verb or ``request`` running in this task, until its ``send`` takes it.
CALL_POLICY: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "resilient_client_call_policy", default=None)


def take_call_policy() -> Mapping[str, Any] | None:
    """The waiting ``policy=``, taken (a call made from here on is another call)."""
    changes = CALL_POLICY.get()
    if changes is not None:
        CALL_POLICY.set(None)
    return changes


async def _with(policy: Mapping[str, Any], call: Awaitable[httpx.Response]) -> httpx.Response:
    token = CALL_POLICY.set(policy)
    try:
        return await call
    finally:
        CALL_POLICY.reset(token)


if TYPE_CHECKING:
    _Base = httpx.AsyncClient
else:
    _Base = object


class PerCallPolicy(_Base):
    """httpx's verbs, plus ``policy=``: changes to the endpoint's policy for this call only."""

    if TYPE_CHECKING:
        _timeout_given: bool

        def _refuse_early(self, method: str, url: str) -> None: ...  # `Reporting`'s

    def build_request(self, method: str, url: httpx.URL | str, **kwargs: Any) -> httpx.Request:
        """httpx's own; a request left to the client's default timeout gets the policy's."""
        request = super().build_request(method, url, **kwargs)
        given = kwargs.get("timeout", httpx.USE_CLIENT_DEFAULT)
        if given is httpx.USE_CLIENT_DEFAULT and not self._timeout_given:
            extensions = dict(request.extensions)
            del extensions["timeout"]  # httpx's default of 5 s: the policy's instead
            request.extensions = extensions
        return request

    async def request(self, method: str, url: httpx.URL | str, *,
                      policy: Mapping[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        """
        httpx's own, plus ``policy=`` (the config file's form: ``{"retry": None}``,
        ``{"timeout": {"total": 2}}``; breaker, budget and bulkhead are the
        endpoint's). An open breaker's call (no fallback) is refused before
        httpx builds it.
        """
        if policy is None and CALL_POLICY.get() is None:
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                self._refuse_early(method, url)
            return await super().request(method, url, **kwargs)
        # A call with its own policy may have a fallback its endpoint lacks: no early refusal.
        if policy is None:  # a verb's, waiting for send already
            return await super().request(method, url, **kwargs)
        return await _with(policy, super().request(method, url, **kwargs))

    async def get(self, url: httpx.URL | str, *, policy: Mapping[str, Any] | None = None,
                  **kwargs: Any) -> httpx.Response:
        if policy is None:
            return await super().get(url, **kwargs)
        return await _with(policy, super().get(url, **kwargs))

    async def head(self, url: httpx.URL | str, *, policy: Mapping[str, Any] | None = None,
                   **kwargs: Any) -> httpx.Response:
        if policy is None:
            return await super().head(url, **kwargs)
        return await _with(policy, super().head(url, **kwargs))

    async def options(self, url: httpx.URL | str, *,
                      policy: Mapping[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        if policy is None:
            return await super().options(url, **kwargs)
        return await _with(policy, super().options(url, **kwargs))

    async def delete(self, url: httpx.URL | str, *,
                     policy: Mapping[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        if policy is None:
            return await super().delete(url, **kwargs)
        return await _with(policy, super().delete(url, **kwargs))

    async def post(self, url: httpx.URL | str, *, policy: Mapping[str, Any] | None = None,
                   **kwargs: Any) -> httpx.Response:
        if policy is None:
            return await super().post(url, **kwargs)
        return await _with(policy, super().post(url, **kwargs))

    async def put(self, url: httpx.URL | str, *, policy: Mapping[str, Any] | None = None,
                  **kwargs: Any) -> httpx.Response:
        if policy is None:
            return await super().put(url, **kwargs)
        return await _with(policy, super().put(url, **kwargs))

    async def patch(self, url: httpx.URL | str, *, policy: Mapping[str, Any] | None = None,
                    **kwargs: Any) -> httpx.Response:
        if policy is None:
            return await super().patch(url, **kwargs)
        return await _with(policy, super().patch(url, **kwargs))

    @contextlib.asynccontextmanager
    async def stream(self, method: str, url: httpx.URL | str, *,
                     policy: Mapping[str, Any] | None = None, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        """httpx's own, plus ``policy=``."""
        token = CALL_POLICY.set(policy) if policy is not None else None
        try:
            async with super().stream(method, url, **kwargs) as resp:
                if token is not None:
                    CALL_POLICY.reset(token)  # taken by send already; the body is the caller's
                    token = None
                yield resp
        finally:
            if token is not None:
                CALL_POLICY.reset(token)
