"""
Routing: which endpoint rule a URL resolves to. URLs and rules are
normalised the same way (leading whitespace stripped as requests does,
scheme and host lower-cased, default ports dropped), whether a rule is a
prefix or a glob.
"""

from __future__ import annotations

import pytest
import requests
import responses

from resilient_client import ResilientSession
from resilient_client._routing import normalise_url


def session(match: str) -> ResilientSession:
    return ResilientSession({"endpoints": [{"name": "ep", "match": match}]})


class TestDefaultPorts:
    @pytest.mark.parametrize(
        ("match", "url"),
        [
            ("http://api.internal:80/v1/*", "http://api.internal/v1/x"),
            ("https://api.internal:443/*", "https://api.internal/v1/x"),
            ("HTTPS://API.internal:0443/v?/*", "https://api.internal/v1/x"),
            ("*://api.internal:443/*", "https://api.internal/x"),
            ("*://api.internal:443/*", "http://api.internal:443/x"),
            ("https://*.internal:*/api/*", "https://a.internal/api/x"),
            ("https://*.internal:*/api/*", "https://a.internal:8443/api/x"),
            ("http://api.internal:80/v1/", "http://api.internal/v1/x"),
            ("https://api.internal:443", "https://api.internal/x"),
        ],
    )
    def test_a_rule_that_spells_out_the_default_port_matches_urls_without_it(
        self, match: str, url: str
    ) -> None:
        """A glob or prefix naming the default port matches the URL that omits it, as requests sends it."""
        assert session(match).policy_for("GET", url).name == "ep"

    @pytest.mark.parametrize(
        ("match", "url"),
        [
            ("http://api.internal:443/*", "https://api.internal/x"),  # 443 is not http's default
            ("*://api.internal:443/*", "http://api.internal/x"),
            ("https://api.internal:8443/*", "https://api.internal/x"),
            ("https://*.internal:8*/api/*", "https://a.internal/api/x"),
        ],
    )
    def test_a_rule_with_another_port_does_not_match_the_default_one(self, match: str, url: str) -> None:
        """Dropping a default port never makes a rule match a URL on another port or scheme."""
        assert session(match).policy_for("GET", url).name == "default"


class TestGlobsAreNormalisedAsUrls:
    @pytest.mark.parametrize(
        ("match", "url"),
        [
            ("https://bücher.example/*", "https://BÜCHER.example/x"),
            ("https://bücher.example/*", "https://xn--bcher-kva.example/x"),  # as requests sends it
            ("https://api.internal/v1/ü/*", "https://api.internal/v1/ü/x"),
            ("https://api.internal/v1/%c3%bc/*", "https://api.internal/v1/%C3%BC/x"),
            ("https://api.internal/a/../v1/*", "https://api.internal/v1/x"),
        ],
    )
    def test_a_glob_matches_the_url_requests_sends(self, match: str, url: str) -> None:
        """A glob's host is IDNA-encoded and its path percent-encoded, as every URL is before matching."""
        assert session(match).policy_for("GET", url).name == "ep"
        prepared = requests.Request("GET", url).prepare().url
        assert prepared is not None and session(match).policy_for("GET", prepared).name == "ep"


class TestWhitespace:
    @pytest.mark.parametrize("space", [" ", "  ", "\t", "\n ", "\r\n"])
    def test_a_url_with_leading_whitespace_routes_as_requests_sends_it(self, space: str) -> None:
        """requests strips leading whitespace before parsing a URL: so does routing."""
        assert normalise_url(space + "https://API.internal/x?q=1") == normalise_url("https://api.internal/x")
        routed = session("https://api.internal/*").policy_for("GET", space + "https://api.internal/x")
        assert routed.name == "ep"

    def test_a_call_to_a_url_with_leading_whitespace_succeeds_as_in_requests(self) -> None:
        """session.get("  http://...") is sent, as requests.Session sends it, not refused as InvalidURL."""
        with responses.RequestsMock() as rsps:
            rsps.get("http://svc.test/x", json={})
            assert requests.Session().get("  http://svc.test/x", timeout=1).status_code == 200
            assert ResilientSession().get("  http://svc.test/x").status_code == 200


class TestUnparseableUrls:
    def test_an_unparseable_non_http_url_fails_as_in_requests(self) -> None:
        """A URL requests does not parse (not http) fails with requests' InvalidSchema, not InvalidURL."""
        url = "ftp://files.example:99999/x"  # a port urllib3 refuses to parse
        with pytest.raises(requests.exceptions.InvalidSchema) as plain:
            requests.Session().get(url)
        with pytest.raises(type(plain.value)):
            ResilientSession().get(url)
