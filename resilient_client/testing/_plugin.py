"""
The pytest side of `resilient_client.testing`: the fixtures, the reset every
test gets, and one reporting hook.

pytest registers the module the ``pytest11`` entry point names,
``resilient_client.testing``; that package re-exports what is here when
pytest is importable, so pytest finds the fixtures among its attributes.
This module imports the kit's modules, never the package, so there is no
import cycle.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

import pytest

from .._host_dir import STATE_DIR_ENV, TEST_STATE_DIR_ENV
from .._live import LIVE_ASYNC_CLIENTS
from .._session import ResilientSession
from ._fake_clock import FakeClock
from ._registry import FakePeers

__all__ = [
    "fake_clock_fixture",
    "fake_http_fixture",
    "fake_peers_fixture",
    "fresh_sessions_fixture",
    "no_backoff_fixture",
    "pytest_configure",
    "pytest_runtest_makereport",
    "state_dir_fixture",
]

_CALL_FAILED = pytest.StashKey[bool]()
_REGISTRY = pytest.StashKey[FakePeers]()


@pytest.fixture(name="_resilient_client_fresh_sessions", autouse=True)
def fresh_sessions_fixture() -> None:
    """
    Every live `ResilientSession` and `AsyncResilientClient` (a module-level one included) starts each
    test with fresh breakers, budgets, bulkheads and caches, so that a
    breaker one test opened does not fail the next. Function-scoped
    fixtures run after it, so what they set up stays.

    .. versionadded:: 0.1.0
    """
    for session in ResilientSession._live_sessions():
        session._forget_state()
    for client in LIVE_ASYNC_CLIENTS.snapshot():  # AsyncResilientClient's seam, without importing httpx
        client._forget_state()


#: The marker of a test that uses the ``state_dir`` its config names.
CONFIG_STATE_DIR = "config_state_dir"


def pytest_configure(config: pytest.Config) -> None:
    """Register the kit's marker."""
    config.addinivalue_line(
        "markers",
        f"{CONFIG_STATE_DIR}: this test uses the state_dir its config names (state: host), "
        "shared with whatever else uses that directory, instead of one of its own",
    )


@pytest.fixture(name="_resilient_client_state_dir", autouse=True)
def state_dir_fixture(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    Each test gets its own ``state_dir`` (``state: host``), so tests, and
    parallel test workers, never share host state by accident, nor with
    the services running on the machine: it replaces the config's
    ``state_dir`` too (``$RESILIENT_CLIENT_TEST_STATE_DIR``, which child
    processes inherit). A test marked ``@pytest.mark.config_state_dir``
    keeps the directory its config names. The directory is only named
    here; it is created when a session first uses it.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 also replaces a ``state_dir`` the config names.
    """
    global _tests
    _tests += 1
    # Named under pytest's own base temp dir: per run and per xdist worker.
    path = str(tmp_path_factory.getbasetemp() / "rc-state" / str(_tests))
    monkeypatch.setenv(STATE_DIR_ENV, path)
    if request.node.get_closest_marker(CONFIG_STATE_DIR) is None:
        monkeypatch.setenv(TEST_STATE_DIR_ENV, path)
    else:
        monkeypatch.delenv(TEST_STATE_DIR_ENV, raising=False)


_tests = 0


@pytest.fixture(name="fake_clock")
def fake_clock_fixture() -> FakeClock:
    """
    A `FakeClock` at 0.0: ``sleep()`` and ``advance()`` move it, nothing
    waits. Every session runs on it when ``fake_peers`` is also used.

    .. versionadded:: 0.1.0
    """
    return FakeClock()


@pytest.fixture(name="fake_peers")
def fake_peers_fixture(
    request: pytest.FixtureRequest, fake_clock: FakeClock
) -> Iterator[FakePeers]:
    """
    A started, strict `FakePeers` registry on ``fake_clock``, wired to every
    session of the application, whenever it was built. At teardown, a step
    never reached or a request no peer matched fails the test (unless the
    test already failed); set ``fake_peers.strict = False`` to allow them.
    A failing test's report gets the registry's timeline.

    .. versionadded:: 0.1.0
    """
    peers = FakePeers(clock=fake_clock)
    stash = request.node.stash
    stash[_REGISTRY] = peers
    peers.start()
    try:
        yield peers
    finally:
        peers.stop(verify=False)
        # The report hook has read it by now; the item must not keep the
        # registry (and the sessions it recorded) alive for the whole run.
        del stash[_REGISTRY]
    if not stash.get(_CALL_FAILED, False) and peers.strict:
        problems = peers.problems()
        if problems:
            pytest.fail(peers.report(problems), pytrace=False)


@pytest.fixture(name="fake_http")
def fake_http_fixture(fake_peers: FakePeers) -> FakePeers:
    """
    The same registry as ``fake_peers``, under the name the style guide uses.

    .. versionadded:: 0.1.0
    """
    return fake_peers


@pytest.fixture(name="no_backoff")
def no_backoff_fixture(fake_clock: FakeClock) -> Iterator[FakeClock]:
    """
    Backoff and Retry-After sleeps no longer move ``fake_clock``: they are
    still computed, decided on and recorded (``fake_clock.sleeps``,
    ``RetryScheduled.delay``), but simulated time only passes in the peers
    and through ``advance()``. Gives back the clock.

    .. versionadded:: 0.1.0
    """
    previous = fake_clock.instant_sleep
    fake_clock.instant_sleep = True
    try:
        yield fake_clock
    finally:
        fake_clock.instant_sleep = previous


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Remember whether the test body failed; if so, add the fake peers' timeline to its report."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.when != "call":
        return
    item.stash[_CALL_FAILED] = report.failed
    peers = item.stash.get(_REGISTRY, None)
    if report.failed and peers is not None:
        report.sections.append(("resilient_client fake peers", peers.timeline()))
