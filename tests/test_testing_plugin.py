"""
The pytest plugin as a user gets it: loaded through the ``pytest11`` entry
point into a fresh pytest run (pytester, in-process for speed), with the
fixtures used the way the docs show.
"""

from __future__ import annotations

import ast
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

# The inner runs load resilient_client through its entry point, as a user's
# run would, and switch off the other plugins this environment happens to
# have (a fresh import of hypothesis costs seconds in every inner run).
OTHER_PLUGINS = [
    arg
    for ep in entry_points(group="pytest11")
    if ep.name != "resilient_client.testing"
    for arg in ("-p", f"no:{ep.name}")
]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Shared by the inner test files: a service config with one endpoint.
CONFTEST = """
import pytest

CONFIG = {
    "defaults": {"timeout": {"connect": 1.0, "read": 2.0, "total": 5.0}},
    "endpoints": [{
        "name": "inventory",
        "match": "https://inventory.internal/",
        "retry": {"attempts": 3, "on_status": [503]},
        "breaker": {"failure_threshold": 5, "reset_timeout": 30.0},
        "fallback": {"status": 200, "json": {"stock": None}},
    }],
}
URL = "https://inventory.internal/items/42"


@pytest.fixture
def config():
    return CONFIG
"""


@pytest.fixture
def run(pytester):
    """Run inner test source in a fresh in-process pytest, plugins autoloaded as for a user."""
    pytester.makeconftest(CONFTEST)

    def run(source, *args):
        pytester.makepyfile(test_inner=source)
        return pytester.runpytest_inprocess("-p", "no:cacheprovider", *OTHER_PLUGINS, *args)

    return run


class TestEntryPoint:
    def test_fixtures_come_from_the_entry_point(self, run):
        """The plugin is registered under the entry point name and provides the fixtures."""
        result = run(
            """
            def test_plugin(request, fake_peers, fake_clock, fake_http, no_backoff):
                assert request.config.pluginmanager.has_plugin("resilient_client.testing")
                assert fake_peers.clock is fake_clock is no_backoff
                assert fake_http is fake_peers
            """
        )
        result.assert_outcomes(passed=1)

    def test_naming_the_plugin_again_is_harmless(self, run):
        """`-p resilient_client.testing` or `pytest_plugins` with the module name do not register it twice."""
        result = run(
            """
            pytest_plugins = ["resilient_client.testing"]

            def test_plugin(fake_clock):
                assert fake_clock.monotonic() == 0
            """
        )
        result.assert_outcomes(passed=1)

    def test_disabling_the_entry_point_removes_the_fixtures(self, run):
        """With -p no:resilient_client the fixtures are gone, so they came from the entry point."""
        result = run("def test_plugin(fake_peers):\n    pass\n", "-p", "no:resilient_client.testing")
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*fixture 'fake_peers' not found*"])

    def test_plain_tests_are_untouched(self, run):
        """A test that uses no fixture of the plugin runs with requests unpatched."""
        result = run(
            """
            import requests
            from requests.adapters import HTTPAdapter

            def test_plain():
                assert HTTPAdapter.send.__module__ == "requests.adapters"
            """
        )
        result.assert_outcomes(passed=1)


class TestScenarios:
    def test_fallback_retries_and_breaker_in_a_few_lines(self, run):
        """The three tutorial scenarios pass in one run, with no real sleeping."""
        result = run(
            """
            import time
            import resilient_client as rc
            from conftest import CONFIG, URL

            def test_fallback_when_down(fake_peers):
                fake_peers.endpoint("inventory").refuse()
                resp = rc.ResilientSession(CONFIG).get(URL)
                assert resp.is_fallback and resp.json() == {"stock": None}

            def test_retries_503_twice(fake_peers):
                fake_peers.url(URL).statuses([503, 503, 200])
                assert rc.ResilientSession(CONFIG).get(URL).attempts == 3

            def test_breaker_opens_then_half_opens(fake_peers, fake_clock):
                fake_peers.endpoint("inventory").refuse()
                session = rc.ResilientSession(CONFIG)
                started = time.monotonic()
                for _ in range(10):
                    session.get(URL)
                assert fake_peers.attempts("inventory") == 5
                assert session.circuit("inventory").state == "open"
                fake_clock.advance(31)
                assert session.circuit("inventory").state == "half-open"
                assert time.monotonic() - started < 1.0
            """
        )
        result.assert_outcomes(passed=3)

    def test_no_backoff_keeps_the_clock_still_during_backoff(self, run):
        """Under no_backoff the sleeps are recorded but the fake clock does not move."""
        result = run(
            """
            import resilient_client as rc
            from conftest import CONFIG, URL

            def test_still(fake_peers, no_backoff):
                fake_peers.url(URL).statuses([503, 503, 200])
                rc.ResilientSession(CONFIG).get(URL)
                assert len(no_backoff.sleeps) == 2
                assert fake_peers.elapsed == 0.0
            """
        )
        result.assert_outcomes(passed=1)


class TestStrictTeardown:
    def test_unused_script_errors_at_teardown_with_expected_and_actual(self, run):
        """A script not used up fails the test at teardown: what was expected, what happened."""
        result = run(
            """
            import resilient_client as rc
            from conftest import URL

            def test_forgets_a_call(fake_peers):
                fake_peers.url(URL).statuses([503, 503, 200])
                session = rc.ResilientSession({"defaults": {"retry": None}})
                session.get(URL)
                session.get(URL)
            """
        )
        result.assert_outcomes(passed=1, errors=1)
        result.stdout.fnmatch_lines(
            [
                "*ERROR at teardown of test_forgets_a_call*",
                "*fake peers: 1 problem (strict mode)*",
                "*statuses([[]503, 503, 200[]]) was not used up: "
                "expected at least 3 requests, got 2 (503, 503)*",
                "*What happened (fake clock*",
            ]
        )
        assert "Traceback" not in result.stdout.str()

    def test_unmatched_request_fails_the_test_once_with_near_misses(self, run):
        """An unmatched request fails the test with near misses; teardown adds no second error."""
        result = run(
            """
            import resilient_client as rc
            from conftest import CONFIG, URL

            def test_wrong_item(fake_peers):
                fake_peers.url(URL).respond(200)
                rc.ResilientSession(CONFIG).get("https://inventory.internal/items/43")
            """
        )
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(
            [
                "*UnmatchedRequest: GET https://inventory.internal/items/43"
                " [[]endpoint inventory[]]*",
                "*Near misses, closest first:*",
                "*URL https://inventory.internal/items/43 is not https://inventory.internal/items/42*",
            ]
        )

    def test_failing_test_report_shows_the_timeline(self, run):
        """A failed assertion's report carries the fake peers' timeline as a section."""
        result = run(
            """
            import resilient_client as rc
            from conftest import CONFIG, URL

            def test_wrong_expectation(fake_peers):
                fake_peers.url(URL).statuses([503, 200])
                rc.ResilientSession(CONFIG).get(URL)
                assert fake_peers.attempts(URL) == 1
            """
        )
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(
            [
                "*- resilient_client fake peers -*",
                "*peer  GET https://inventory.internal/items/42 -> 503*",
                "*retry_scheduled [[]inventory[]]*",
            ]
        )

    def test_strict_can_be_switched_off_in_a_test(self, run):
        """fake_peers.strict = False refuses unmatched requests and lets unused scripts pass."""
        result = run(
            """
            import resilient_client as rc
            from conftest import CONFIG, URL

            def test_lenient(fake_peers):
                fake_peers.strict = False
                fake_peers.url(URL).statuses([503, 503, 200])
                resp = rc.ResilientSession(CONFIG).get("https://inventory.internal/other")
                assert resp.is_fallback
            """
        )
        result.assert_outcomes(passed=1)


class TestImportTimeSessions:
    APP = """
import resilient_client
from conftest import CONFIG

# What a Flask app module does: one session, built when it is imported.
SESSION = resilient_client.ResilientSession(CONFIG)
"""

    def test_fixtures_find_an_import_time_session_with_no_call(self, run, pytester):
        """A module-level session needs no attach(): scripts match, backoff is fake, state is fresh."""
        pytester.makepyfile(app=self.APP)
        result = run(
            """
            import time
            import app
            from conftest import URL

            def test_opens_the_breaker(fake_peers, fake_clock):
                fake_peers.endpoint("inventory").refuse()
                started = time.monotonic()
                for _ in range(3):
                    app.SESSION.get(URL)
                assert time.monotonic() - started < 1.0 and fake_clock.sleeps
                assert app.SESSION.clock is fake_clock
                assert fake_peers.breaker("inventory").state == "open"
                assert fake_peers.attempts("inventory") == 5

            def test_next_test_starts_closed(fake_peers):
                assert fake_peers.breaker("inventory") is app.SESSION.circuit("inventory")
                assert fake_peers.breaker("inventory").state == "closed"
                fake_peers.url(URL).respond(200, json={"stock": 2})
                assert app.SESSION.get(URL).json() == {"stock": 2}

            def test_without_the_kit_it_is_reset_too():
                assert app.SESSION.circuit("inventory").state == "closed"
                assert app.SESSION.clock is not None and "send" not in vars(app.SESSION)
            """,
            "-p",
            "no:randomly",
        )
        result.assert_outcomes(passed=3)

    def test_a_breaker_opened_outside_the_kit_is_reset_before_the_next_test(self, run, pytester):
        """The autouse reset covers tests that do not use fake_peers at all."""
        pytester.makepyfile(app=self.APP)
        result = run(
            """
            import app

            def test_forces_it_open():
                app.SESSION.circuit("inventory").open()

            def test_finds_it_closed():
                assert app.SESSION.circuit("inventory").state == "closed"
            """
        )
        result.assert_outcomes(passed=2)


class TestUnittest:
    def test_unittest_testcase_runs_under_pytest(self, run):
        """A unittest.TestCase using the context manager runs under pytest too."""
        result = run(
            """
            import unittest
            import resilient_client as rc
            from resilient_client.testing import fake_peers
            from conftest import CONFIG, URL

            class InventoryTest(unittest.TestCase):
                def test_fallback(self):
                    with fake_peers() as peers:
                        peers.endpoint("inventory").refuse()
                        resp = peers.session(CONFIG).get(URL)
                    self.assertTrue(resp.is_fallback)
                    self.assertEqual(peers.attempts("inventory"), 3)
            """
        )
        result.assert_outcomes(passed=1)


def count_tests(source):
    """How many test functions and TestX methods *source* defines."""
    tree = ast.parse(source)
    count = 0
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            count += 1
        elif isinstance(node, ast.ClassDef):
            count += sum(
                isinstance(n, ast.FunctionDef) and n.name.startswith("test") for n in node.body
            )
    return count


class TestExamples:
    def test_example_service_tests_pass_with_the_plugin(self, pytester):
        """Every test of examples/test_inventory_service.py passes with the plugin."""
        test_file = EXAMPLES / "test_inventory_service.py"
        pytester.makepyfile(inventory_service=(EXAMPLES / "inventory_service.py").read_text())
        pytester.makepyfile(test_inventory_service=test_file.read_text())
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *OTHER_PLUGINS)
        expected = count_tests(test_file.read_text())
        assert expected >= 6
        result.assert_outcomes(passed=expected)
