"""
How the testing kit finds the application's sessions (resilient_client/
testing/_wiring.py), and the test seam at the end of ResilientSession that
it goes through: sessions built at import time need no call from the test,
and nothing of one test leaks into the next.
"""

from __future__ import annotations

import gc
import pickle
import random
import weakref

import pytest

import resilient_client as rc
from resilient_client._clock import SYSTEM_CLOCK
from resilient_client.testing import FakeClock, FakePeers, fake_peers

URL = "https://inventory.internal/items/42"
CONFIG = {
    "defaults": {"timeout": {"connect": 1.0, "read": 2.0, "total": 5.0}},
    "endpoints": [
        {
            "name": "inventory",
            "match": "https://inventory.internal/",
            "retry": {"attempts": 3, "on_status": [503]},
            "breaker": {"failure_threshold": 2, "reset_timeout": 30.0},
            "fallback": {"status": 200, "json": {"stock": None}},
        }
    ],
}


def open_breaker_by_calls(session: rc.ResilientSession) -> None:
    """Fail enough attempts through *session* for its inventory breaker to open."""
    for _ in range(2):
        session.get(URL)
    assert session.circuit("inventory").state == "open"


class TestSessionsBuiltBeforeTheRegistry:
    def test_an_import_time_session_is_found_with_no_call(self):
        """A session built before the registry runs on its clock, is recorded, matches endpoint scripts."""
        session = rc.ResilientSession(CONFIG)  # as a module would, at import time
        with fake_peers() as peers:
            peers.endpoint("inventory").statuses([503, 200])
            assert session.get(URL).status_code == 200
            assert session.clock is peers.clock
            assert peers.clock.sleeps  # the backoff slept on the fake clock
            assert len(peers.app_calls) == 1 and peers.attempts("inventory") == 2
            assert peers.breaker("inventory") is session.circuit("inventory")
        assert session.clock is SYSTEM_CLOCK
        assert "send" not in vars(session)

    def test_an_opened_breaker_does_not_leak_into_the_next_registry(self):
        """What one test did to a module-level session is gone when the next one starts."""
        session = rc.ResilientSession(CONFIG)
        with fake_peers() as peers:
            peers.endpoint("inventory").refuse()
            open_breaker_by_calls(session)
        assert session.circuit("inventory").state == "closed"  # reset when it got its clock back
        with fake_peers() as peers:
            peers.url(URL).respond(200, json={"stock": 4})
            assert session.get(URL).json() == {"stock": 4}

    def test_a_session_with_its_own_clock_keeps_it_but_starts_fresh(self):
        """A session built with clock= keeps that clock, and its breakers are reset all the same."""
        own = FakeClock()
        session = rc.ResilientSession(CONFIG, clock=own)
        session.circuit("inventory").open()
        with fake_peers() as peers:
            peers.url(URL).respond(200)
            assert session.clock is own
            assert session.circuit("inventory").state == "closed"
            assert session.get(URL).status_code == 200
            assert len(peers.app_calls) == 1

    def test_attach_still_forces_the_fake_clock(self):
        """attach() moves even a session with its own clock, and gives that clock back."""
        own = FakeClock()
        session = rc.ResilientSession(CONFIG, clock=own)
        with fake_peers() as peers:
            assert peers.attach(session) is session
            assert session.clock is peers.clock
            peers.attach(session)  # twice is once
        assert session.clock is own

    def test_breaker_prefers_the_session_that_made_a_call(self):
        """Among sessions with the same endpoint, breaker() answers for the one the application used."""
        unused = rc.ResilientSession(CONFIG)
        used = rc.ResilientSession(CONFIG)
        with fake_peers() as peers:
            peers.endpoint("inventory").refuse()
            open_breaker_by_calls(used)
            assert peers.breaker("inventory") is used.circuit("inventory")
            assert unused.circuit("inventory").state == "closed"

    def test_breaker_without_any_call_answers_for_the_oldest_session(self):
        """Before any call, the oldest live session (a module-level one) is asked first."""
        gc.collect()  # leftovers of earlier tests would be older still
        oldest = rc.ResilientSession(CONFIG)
        newer = rc.ResilientSession(CONFIG)
        with fake_peers() as peers:
            assert peers.breaker("inventory") is oldest.circuit("inventory")
            assert newer.circuit("inventory") is not oldest.circuit("inventory")

    def test_breaker_skips_older_leftovers_that_are_garbage(self):
        """A leftover of an earlier test, older but unreferenced, is not taken for the application's."""
        leftover = rc.ResilientSession(CONFIG)
        leftover.circuit("inventory")  # a breaker refers back to its session: a cycle
        gone = weakref.ref(leftover)
        del leftover
        app = rc.ResilientSession(CONFIG)
        with fake_peers() as peers:
            assert peers.breaker("inventory") is app.circuit("inventory")
            assert gone() is None  # the registry held it only weakly

class TestSessionsBuiltDuringTheRegistry:
    def test_a_session_built_inside_gets_the_system_clock_back(self):
        """A module imported during a test must not keep a fake clock nobody moves afterwards."""
        with fake_peers() as peers:
            session = rc.ResilientSession(CONFIG)
            assert session.clock is peers.clock
        assert session.clock is SYSTEM_CLOCK

    def test_an_unpickled_session_is_found_too(self):
        """A session unpickled while the registry is active is wired like one built."""
        data = pickle.dumps(rc.ResilientSession(CONFIG))
        with fake_peers() as peers:
            session = pickle.loads(data)
            peers.url(URL).respond(200)
            assert session.clock is peers.clock
            session.get(URL)
            assert len(peers.app_calls) == 1

    def test_registry_session_is_closed_and_keeps_its_state(self):
        """peers.session() is the registry's own: closed at the end, its breakers readable after."""
        with fake_peers() as peers:
            peers.endpoint("inventory").refuse()
            session = peers.session(CONFIG)
            open_breaker_by_calls(session)
        assert peers.breaker("inventory").state == "open"
        assert session.clock is peers.clock


class TestTheSessionSeam:
    def test_live_sessions_are_held_weakly_oldest_first(self):
        """The registry of live sessions keeps none alive and lists them in the order they were built."""
        first, second = rc.ResilientSession(), rc.ResilientSession()
        live = rc.ResilientSession._live_sessions()
        assert live.index(first) < live.index(second)
        gone = weakref.ref(first)
        del first, live
        gc.collect()
        assert gone() is None
        assert [s for s in rc.ResilientSession._live_sessions() if s is second] == [second]

    def test_on_new_session_until_unwatched(self):
        """A callback hears of each session built until it is unwatched."""
        heard: list[rc.ResilientSession] = []
        unwatch = rc.ResilientSession._on_new_session(heard.append)
        built = rc.ResilientSession()
        unwatch()
        rc.ResilientSession()
        assert heard == [built]

    def test_use_clock_moves_every_clock_reader_and_restores(self):
        """After _use_clock, backoff sleeps and breaker timers read the new clock; restore undoes it."""
        session = rc.ResilientSession(CONFIG)
        before = session.circuit("inventory")
        clock = FakeClock()
        restore = session._use_clock(clock, random.Random(0))
        after = session.circuit("inventory")
        assert after is not before  # the old breaker held the system clock
        with fake_peers(clock=clock) as peers:
            peers.endpoint("inventory").refuse()
            open_breaker_by_calls(session)
            assert clock.sleeps  # tenacity slept on the new clock
            clock.advance(31)
            assert session.circuit("inventory").state == "half-open"
        restore()
        assert session.clock is SYSTEM_CLOCK
        assert session.circuit("inventory").state == "closed"
        restore()  # twice is once

    def test_use_clock_keeps_an_rng_given_at_construction(self):
        """A jitter source the application chose stays; one is supplied only where there was none."""

        def backoff(session: rc.ResilientSession, clock: FakeClock) -> list[float]:
            with fake_peers(clock=clock) as peers:
                peers.endpoint("inventory").statuses([503, 200])
                session.get(URL)
            assert len(clock.sleeps) == 1
            return clock.sleeps

        chosen, supplied = FakeClock(), FakeClock()
        given = rc.ResilientSession(CONFIG, clock=FakeClock(), rng=random.Random(7))
        given._use_clock(chosen, random.Random(0))
        bare = rc.ResilientSession(CONFIG, clock=FakeClock())
        bare._use_clock(supplied, random.Random(0))
        reference = FakeClock()
        assert backoff(given, chosen) == backoff(
            rc.ResilientSession(CONFIG, clock=reference, rng=random.Random(7)), reference
        )
        reference = FakeClock()
        assert backoff(bare, supplied) == backoff(
            rc.ResilientSession(CONFIG, clock=reference, rng=random.Random(0)), reference
        )

    def test_forget_state_drops_the_health_counts(self):
        """_forget_state resets the health tracker too (counted on the old clock) and unsubscribes it."""
        with fake_peers() as peers:
            peers.endpoint("inventory").refuse()
            session = peers.session(CONFIG)
            listeners = len(session._bus.listeners)
            session.health()  # counting starts here
            session.get(URL)
            assert session.health()["inventory"].failures > 0
            session._forget_state()
            assert len(session._bus.listeners) == listeners
            assert session.health()["inventory"].failures == 0

    def test_watch_calls_wraps_send_until_unwatched(self):
        """_watch_calls sees each call (not redirect hops it declines) and leaves no trace once undone."""
        seen = []
        session = rc.ResilientSession(CONFIG)
        unwatch = session._watch_calls(lambda r: r.url, lambda t, resp, exc: seen.append((t, resp)))
        with fake_peers() as peers:
            peers.url(URL).respond(200)
            session.get(URL)
        unwatch()
        assert [t for t, _ in seen] == [URL]
        assert "send" not in vars(session)


class TestOneRegistryAtATime:
    def test_a_second_registry_is_refused(self):
        """Two active registries in one process would share requests' transport: refused."""
        with fake_peers(), pytest.raises(RuntimeError, match="already active"):
            FakePeers().start()
