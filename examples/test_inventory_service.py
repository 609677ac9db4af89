"""
Tests of inventory_service with the resilient_client pytest plugin: every
way inventory can fail, on a fake clock, in a few milliseconds.

inventory_service builds its session when it is imported, before any test
runs: the fixtures find it by themselves, run it on the fake clock, and give
each test fresh breakers, so no test calls anything to set it up.

Run: python -m pytest examples/test_inventory_service.py
(or python examples/test_inventory_service.py).
"""

from __future__ import annotations

import sys

import pytest
from inventory_service import INVENTORY, SESSION, availability

from resilient_client import RetryScheduled

ITEM = f"{INVENTORY}/items/sku-1"


class TestAvailability:
    def test_reads_stock_from_inventory(self, fake_peers):
        """When inventory answers, the stock it reports is used."""
        fake_peers.url(ITEM).respond(200, json={"available": 3})
        assert availability("sku-1").available == 3

    def test_unknown_when_inventory_is_down(self, fake_peers):
        """A refused connection, after its retries, gives the fallback: availability unknown."""
        fake_peers.endpoint("inventory").refuse()
        assert not availability("sku-1").known
        assert len(fake_peers.fallbacks("inventory")) == 1
        assert fake_peers.attempts("inventory") == 3

    def test_retries_503_twice_then_succeeds(self, fake_peers):
        """Two 503s are retried with backoff; the third answer is used."""
        fake_peers.url(ITEM).statuses([503, 503, 200], json={"available": 1})
        assert availability("sku-1").available == 1
        assert [e.reason for e in fake_peers.events.of(RetryScheduled)] == ["status 503"] * 2

    def test_stops_hammering_inventory_once_the_breaker_opens(self, fake_peers):
        """After five failures the breaker opens: ten more calls never reach inventory."""
        inventory = fake_peers.endpoint("inventory").refuse()
        for _ in range(12):
            assert not availability("sku-1").known
        assert inventory.call_count == 5
        assert fake_peers.breaker("inventory").state == "open"

    def test_each_test_starts_with_a_closed_breaker(self, fake_peers, fake_clock):
        """The breaker the test before opened is closed again, and the session runs on fake time."""
        assert fake_peers.breaker("inventory").state == "closed"
        assert SESSION.clock is fake_clock

    def test_comes_back_after_the_reset_timeout(self, fake_peers, fake_clock):
        """31 fake seconds after opening, one trial call finds inventory back and closes it."""
        fake_peers.endpoint("inventory").refuse(times=5).respond(200, json={"available": 2})
        for _ in range(3):
            availability("sku-1")
        fake_clock.advance(31)
        assert availability("sku-1").available == 2
        assert fake_peers.transitions("inventory")[0] == ("closed", "open")
        assert fake_peers.breaker("inventory").state == "closed"

    def test_dripping_inventory_is_cut_off_at_the_deadline(self, fake_peers, fake_clock):
        """A byte every 100 ms never trips the read timeout; the 5 s deadline cuts it off."""
        fake_peers.endpoint("inventory").drip(b'{"available": 4}' + b" " * 100, every=0.1)
        assert not availability("sku-1").known
        assert fake_clock.now == 5.0


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
