"""
What the testing kit renders (resilient_client/testing/_timeline.py): the
timeline, strict mode's report and an unmatched request's near misses all
go through the library's redaction, as its logs and events do.
"""

from __future__ import annotations

import pytest
import requests
from responses import matchers

import resilient_client as rc
from resilient_client.testing import UnmatchedRequest, fake_peers

SECRET = "k3y-s3cret"
HEADER_SECRET = "h3ader-s3cret"
CONFIG = {
    "secrets": {"query": ["api_key"], "headers": ["X-Api-Key"]},
    "endpoints": [
        {
            "name": "inventory",
            "match": "https://inventory.internal/",
            "retry": {"attempts": 2, "on_status": [503]},
            "fallback": {"status": 200, "json": {"stock": None}},
        }
    ],
}
ITEMS = "https://inventory.internal/items"


def assert_clean(text: str) -> None:
    assert SECRET not in text
    assert HEADER_SECRET not in text
    assert "REDACTED" in text


class TestTimelineRedaction:
    def test_the_timeline_redacts_the_url_a_peer_was_scripted_with(self):
        """Regression: the timeline printed the scripted peer's URL with its api_key value."""
        session = rc.ResilientSession(CONFIG)  # built at import time, found by the registry
        with fake_peers() as peers:
            peers.url(f"{ITEMS}?api_key={SECRET}").statuses([503, 200])
            session.get(ITEMS, params={"api_key": SECRET}, headers={"X-Api-Key": HEADER_SECRET})
            timeline = peers.timeline()
        assert_clean(timeline)
        assert f"by url('{ITEMS}?api_key=REDACTED')" in timeline

    def test_the_strict_report_is_redacted(self):
        """A script not used up is reported with its URL redacted, timeline included."""
        rc.ResilientSession(CONFIG)
        peers = fake_peers()
        with pytest.raises(AssertionError) as info, peers:
            peers.url(f"{ITEMS}?api_key={SECRET}").statuses([503, 200])
        assert_clean(str(info.value))
        assert peers.problems() == [
            f"url('{ITEMS}?api_key=REDACTED').statuses([503, 200]) was never used: "
            "expected at least 2 requests, got none"
        ]

    def test_near_misses_redact_query_values_and_matchers_reasons(self):
        """An unmatched request's message redacts secret query values and secret headers a matcher quotes."""
        session = rc.ResilientSession(CONFIG)
        with fake_peers() as peers:
            peers.url(f"{ITEMS}?api_key=other-value").respond(200).optional()
            peers.url(
                f"{ITEMS}/7", match=[matchers.header_matcher({"X-Api-Key": "expected"})]
            ).respond(200).optional()
            with pytest.raises(UnmatchedRequest) as info:
                session.get(ITEMS, params={"api_key": SECRET}, headers={"X-Api-Key": HEADER_SECRET})
            with pytest.raises(UnmatchedRequest) as info7:
                session.get(f"{ITEMS}/7", headers={"X-Api-Key": HEADER_SECRET})
            peers.unmatched.clear()
        message = str(info.value)
        assert_clean(message)
        assert "other-value" not in message  # the scripted value of a secret name, too
        assert HEADER_SECRET not in str(info7.value)

    def test_a_plain_requests_call_is_redacted_with_the_sessions_secrets(self):
        """A request no session sent is shown with what the live sessions call secret."""
        # Held: an unreferenced session is garbage a collection may free before the registry starts.
        session = rc.ResilientSession(CONFIG)
        with fake_peers() as peers:
            peers.url(ITEMS).respond(200)
            requests.get(ITEMS, params={"api_key": SECRET}, timeout=1)
            assert peers.calls[0].endpoint is None
            timeline = peers.timeline()
        assert SECRET not in timeline and SECRET not in repr(peers.calls[0])
        del session
