"""
The testing kit with ``state: host``: the fake clock moves a host-shared
breaker and budget as it moves memory ones, and each test gets a state_dir
of its own even when the config names one (unless it opts in).
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from resilient_client import ResilientSession
from resilient_client._host_dir import STATE_DIR_ENV, path_for
from resilient_client._host_file import HostFile
from resilient_client._host_state import HostBudget
from resilient_client._policy import BudgetPolicy
from resilient_client.exceptions import CircuitOpenError
from resilient_client.testing import FakeClock, FakePeers

pytest_plugins = ["pytester"]

URL = "https://catalog.internal/items/1"
TEST_STATE_DIR_ENV = "RESILIENT_CLIENT_TEST_STATE_DIR"
# The inner run loads only the kit (other plugins cost seconds to import).
OTHER_PLUGINS = [arg for ep in entry_points(group="pytest11") if ep.name != "resilient_client.testing"
                 for arg in ("-p", f"no:{ep.name}")]


def _host_config(**top: Any) -> dict[str, Any]:
    return {
        **top,
        "defaults": {"state": "host", "retry": None},
        "endpoints": [{"name": "catalog", "match": "https://catalog.internal/",
                       "breaker": {"failure_threshold": 1, "reset_timeout": 20.0}}],
    }


class TestFakeClockMovesHostState:
    def test_advance_past_reset_timeout_half_opens_a_host_breaker(
        self, fake_peers: FakePeers, fake_clock: FakeClock
    ) -> None:
        """
        advance(21) with reset_timeout 20: half-open, as with memory state;
        a rejection before that counts down on the fake clock.
        """
        fake_peers.strict = False
        fake_peers.endpoint("catalog").refuse()
        session = ResilientSession(_host_config())
        with pytest.raises(Exception):  # noqa: B017 - the refused call, whatever it raises
            session.get(URL)
        assert session.circuit("catalog").state == "open"
        fake_clock.advance(5)
        with pytest.raises(CircuitOpenError) as rejected:
            session.get(URL)
        assert rejected.value.retry_in == pytest.approx(15.0, abs=0.01)
        fake_clock.advance(16)
        assert session.circuit("catalog").state == "half-open"

    def test_the_host_budget_window_slides_on_the_fake_clock(self, tmp_path: Path) -> None:
        """Retries refused for a spent budget are allowed again once the fake clock passes the window."""
        clock = FakeClock()
        budget = HostBudget(BudgetPolicy(ratio=0.0, min_per_second=0.1, window=10.0), clock,
                            HostFile(str(tmp_path), "inv"))
        assert budget.try_spend()
        assert not budget.try_spend()
        clock.advance(11)
        assert budget.try_spend()


class TestEachTestHasItsOwnStateDir:
    def test_a_config_naming_state_dir_is_overridden_in_tests(self, tmp_path: Path) -> None:
        """A breaker opened in a test never reaches the state_dir the config names (live services')."""
        live = tmp_path / "live"
        session = ResilientSession(_host_config(state_dir=str(live)))
        session.circuit("catalog").open()
        assert not live.exists()
        here = os.environ[TEST_STATE_DIR_ENV]
        assert os.path.exists(path_for(here, "catalog"))

    @pytest.mark.config_state_dir
    def test_the_config_state_dir_marker_opts_in(self, tmp_path: Path) -> None:
        """Marked, a test uses the state_dir its config names."""
        live = tmp_path / "live"
        ResilientSession(_host_config(state_dir=str(live))).circuit("catalog").open()
        assert os.path.exists(path_for(str(live), "catalog"))
        assert TEST_STATE_DIR_ENV not in os.environ and os.environ[STATE_DIR_ENV]

    def test_state_does_not_leak_between_tests_of_a_user_run(self, pytester: pytest.Pytester) -> None:
        """
        In a user's run, a breaker one test opens under a named state_dir is
        closed in the next, and the named directory stays empty.
        """
        live = pytester.path / "live-state"
        pytester.makepyfile(test_inner=f"""
            import resilient_client as rc
            CONFIG = {{"state_dir": {str(live)!r}, "defaults": {{"state": "host"}},
                       "endpoints": [{{"name": "catalog", "match": "https://catalog.internal/"}}]}}

            def test_opens():
                rc.ResilientSession(CONFIG).circuit("catalog").open()

            def test_finds_it_closed():
                assert rc.ResilientSession(CONFIG).circuit("catalog").state == "closed"
        """)
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *OTHER_PLUGINS)
        result.assert_outcomes(passed=2)
        assert not live.exists()
