"""
A pytest plugin that runs httpx's own client tests with
`AsyncResilientClient` swapped in for `httpx.AsyncClient`.

Loaded by ``run.sh`` with ``-p httpx_swap``. At configure time it replaces
``httpx.AsyncClient`` (what the suite calls) with an `AsyncResilientClient`
subclass built the way ``httpx.AsyncClient(...)`` is, with a
behaviour-keeping config: long finite timeouts, no retry, budget, breaker
or bulkhead, as plain httpx does. It counts the clients made and the
requests sent through `AsyncResilientClient.send`, prints them, and fails a
run where the swap did not take.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import resilient_client

KEEP = {"defaults": {"timeout": {"connect": 60.0, "read": 60.0, "total": 120.0},
                     "retry": None, "budget": None, "breaker": None, "bulkhead": None}}

_counts = {"clients": 0, "sends": 0}


class AsyncClient(resilient_client.AsyncResilientClient):
    """AsyncResilientClient built the way httpx.AsyncClient(...) is: keyword arguments only."""

    def __init__(self, **kwargs: Any) -> None:
        _counts["clients"] += 1
        super().__init__(KEEP, **kwargs)

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        _counts["sends"] += 1
        return await super().send(request, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    httpx.AsyncClient = AsyncClient  # type: ignore[misc]


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    terminalreporter.write_line(
        f"httpx_swap: AsyncResilientClient instances={_counts['clients']} "
        f"requests sent through AsyncResilientClient.send={_counts['sends']}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _counts["sends"] == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print("httpx_swap: no request went through AsyncResilientClient: the swap did not take")
