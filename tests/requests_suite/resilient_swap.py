"""
A pytest plugin that runs the requests project's own test suite with
`ResilientSession` swapped in for `requests.Session`.

Loaded by ``run.sh`` with ``-p resilient_swap``. At configure time it
replaces ``requests.Session``, ``requests.sessions.Session``,
``requests.session`` and ``requests.sessions.session`` (which
``requests.get`` and friends use) with a `ResilientSession` subclass, so
every session the suite makes, directly or through the ``requests.*``
functions, is ours. It counts the sessions made and the requests sent
through ``ResilientSession.send`` and prints them at the end, so a run where
the swap did not take cannot pass unnoticed (it then fails).

Config (``RESILIENT_SUITE_CONFIG``):

* ``keep`` (default): behaviour-preserving: long finite timeouts and a
  long ``total`` (so the deadline-enforcing reader is on every read), no
  retry, budget, breaker or bulkhead, as plain requests does.
* ``defaults``: the built-in defaults (connect 1 s, read 5 s, total 10 s,
  3 attempts, breaker, bulkhead): what a user gets with no config at all.
* ``none``: no swap at all, plain requests: the reference to compare with.

The suite's connect-timeout tests aim at an unroutable address
(``TARPIT``); the plugin points them at a loopback port whose connects time
out instead, so the run stays on this machine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
import requests.sessions

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # our tests/ dir, for peers.Blackhole

from peers import Blackhole  # noqa: E402

import resilient_client  # noqa: E402

CONFIGS: dict[str, Any] = {
    "keep": {
        "defaults": {
            "timeout": {"connect": 60.0, "read": 60.0, "total": 120.0},
            "retry": None,
            "budget": None,
            "breaker": None,
            "bulkhead": None,
        }
    },
    "defaults": None,
    "none": None,  # no swap: plain requests, for reference (only TARPIT is redirected)
}

_counts = {"sessions": 0, "sends": 0}
_blackhole: Blackhole | None = None


def _swapped_class(config: Any) -> type[resilient_client.ResilientSession]:
    class SwappedSession(resilient_client.ResilientSession):
        """ResilientSession built the way requests.Session() is: with no arguments."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            _counts["sessions"] += 1
            super().__init__(config if not args else args[0], **kwargs)

        def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
            _counts["sends"] += 1
            return super().send(request, **kwargs)

    SwappedSession.__name__ = SwappedSession.__qualname__ = "Session"
    SwappedSession.__module__ = "requests.sessions"  # pickle finds it where requests.Session lives
    return SwappedSession


def pytest_configure(config: pytest.Config) -> None:
    global _blackhole
    name = os.environ.get("RESILIENT_SUITE_CONFIG", "keep")
    if name not in CONFIGS:
        raise pytest.UsageError(f"RESILIENT_SUITE_CONFIG must be one of {sorted(CONFIGS)}, got {name!r}")
    _blackhole = Blackhole()
    config._resilient_swap = name  # type: ignore[attr-defined]
    if name == "none":
        return
    cls = _swapped_class(CONFIGS[name])

    def session() -> requests.Session:
        return cls()

    requests.Session = requests.sessions.Session = cls  # type: ignore[misc]
    requests.session = requests.sessions.session = session  # type: ignore[assignment]


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    assert _blackhole is not None
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and hasattr(module, "TARPIT"):
            module.TARPIT = _blackhole.url().rstrip("/")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    name = getattr(config, "_resilient_swap", "?")
    terminalreporter.write_line(
        f"resilient_swap: config={name} ResilientSession instances={_counts['sessions']} "
        f"requests sent through ResilientSession.send={_counts['sends']}"
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _blackhole is not None:
        _blackhole.close()
    swapped = getattr(session.config, "_resilient_swap", "none") != "none"
    if swapped and _counts["sends"] == 0 and session.testscollected:
        # The swap did not take: passing tests would prove nothing.
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
