"""requests' environment lookups reused per origin: always the same result as requests' own."""

from __future__ import annotations

import os
from unittest import mock

import pytest
import requests
import requests.utils
from hypothesis import given, settings
from hypothesis import strategies as st

import resilient_client
from resilient_client import _environ

PROXY_VARS = ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "no_proxy",
              "NO_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "REQUEST_METHOD", "ftp_proxy"]
URLS = [
    "http://127.0.0.1:8080/items?x=1",
    "https://api.internal/v1/items",
    "https://api.internal:8443/v1/items",
    "http://sub.example.test/a/b",
    "http://[::1]:9000/x",
    "http://user:pw@host.test/x",
]


@pytest.fixture
def clean_env(monkeypatch):
    """No proxy or CA-bundle variable from the machine leaks into a test."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name in (
                "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "REQUEST_METHOD"):
            monkeypatch.delenv(name)
    return monkeypatch


def both(url, proxies=None, stream=None, verify=None, cert=None, *, ours=None, theirs=None):
    ours = ours or resilient_client.ResilientSession()
    theirs = theirs or requests.Session()
    a = ours.merge_environment_settings(url, dict(proxies or {}), stream, verify, cert)
    b = theirs.merge_environment_settings(url, dict(proxies or {}), stream, verify, cert)
    return a, b


class TestSameAsRequests:
    @pytest.mark.parametrize("url", URLS)
    @pytest.mark.parametrize("env", [
        {},
        {"HTTP_PROXY": "http://proxy:3128", "HTTPS_PROXY": "http://sproxy:3128"},
        {"http_proxy": "http://lower:1", "HTTP_PROXY": "http://upper:2", "no_proxy": "127.0.0.1,.internal"},
        {"all_proxy": "socks5://s:1080", "NO_PROXY": "api.internal:8443"},
        {"https_proxy": "http://p:1", "no_proxy": "127.0.0.0/8,example.test"},
        {"http_proxy": "http://p:1", "REQUEST_METHOD": "GET"},
        {"REQUESTS_CA_BUNDLE": "/etc/ca.pem"},
        {"CURL_CA_BUNDLE": "/etc/curl.pem", "no_proxy": "*"},
    ])
    def test_matches_requests(self, clean_env, url, env):
        """For each environment and URL, the settings equal requests' own, twice in a row (cache hit)."""
        for k, v in env.items():
            clean_env.setenv(k, v)
        ours = resilient_client.ResilientSession()
        for _ in range(2):
            a, b = both(url, ours=ours)
            assert a == b

    @pytest.mark.parametrize("verify", [None, True, False, "/my/ca.pem"])
    def test_verify_and_session_settings_are_merged_like_requests(self, clean_env, verify):
        """Per-call verify/stream/cert and the session's own settings merge as in requests."""
        clean_env.setenv("REQUESTS_CA_BUNDLE", "/env/ca.pem")
        ours, theirs = resilient_client.ResilientSession(), requests.Session()
        for s in (ours, theirs):
            s.proxies = {"http": "http://session-proxy:1"}
            s.cert = "/c.pem"
            s.stream = True
        a, b = both(URLS[0], {"https": "http://call:2"}, False, verify, None, ours=ours, theirs=theirs)
        assert a == b

    def test_picks_up_a_change_to_the_environment(self, clean_env):
        """A proxy variable set after the first call is seen by the next call."""
        ours = resilient_client.ResilientSession()
        url = "https://api.internal/x"
        first = ours.merge_environment_settings(url, {}, None, None, None)
        assert first["proxies"] == {}
        clean_env.setenv("HTTPS_PROXY", "http://late:3128")
        second = ours.merge_environment_settings(url, {}, None, None, None)
        assert second["proxies"] == {"https": "http://late:3128"}
        clean_env.setenv("NO_PROXY", "api.internal")
        assert ours.merge_environment_settings(url, {}, None, None, None)["proxies"] == {}
        with mock.patch.dict(os.environ, {"REQUESTS_CA_BUNDLE": "/patched.pem"}):
            assert ours.merge_environment_settings(url, {}, None, None, None)["verify"] == "/patched.pem"
        assert ours.merge_environment_settings(url, {}, None, None, None)["verify"] is True

    def test_does_not_alias_the_callers_proxies(self, clean_env):
        """The caller's proxies dict is filled as requests fills it, and the cache is not shared with it."""
        clean_env.setenv("HTTP_PROXY", "http://p:1")
        ours = resilient_client.ResilientSession()
        mine: dict[str, str] = {}
        ours.merge_environment_settings("http://h.test/", mine, None, None, None)
        mine["http"] = "http://changed:9"
        again = ours.merge_environment_settings("http://h.test/", {}, None, None, None)
        assert again["proxies"] == {"http": "http://p:1"}


class TestFallsBackToRequests:
    def test_per_call_no_proxy(self, clean_env):
        """A call with its own no_proxy runs requests' code (the lookup depends on it)."""
        clean_env.setenv("HTTP_PROXY", "http://p:1")
        a, b = both("http://skip.test/x", {"no_proxy": "skip.test"})
        assert a == b
        assert "http" not in a["proxies"]

    def test_patched_requests_functions_are_honoured(self, clean_env):
        """A test that patches requests' proxy lookup sees its patch, not a cached value."""
        ours = resilient_client.ResilientSession()
        ours.merge_environment_settings("http://h.test/", {}, None, None, None)
        with mock.patch("requests.sessions.get_environ_proxies", return_value={"http": "http://mocked:1"}):
            got = ours.merge_environment_settings("http://h.test/", {}, None, None, None)
        assert got["proxies"] == {"http": "http://mocked:1"}
        with mock.patch.object(requests.utils, "getproxies", return_value={"http": "http://sys:1"}):
            assert _environ._environment_only() is False

    def test_trust_env_false(self, clean_env):
        """With trust_env off, the environment is ignored, as in requests."""
        clean_env.setenv("HTTP_PROXY", "http://p:1")
        ours, theirs = resilient_client.ResilientSession(), requests.Session()
        ours.trust_env = theirs.trust_env = False
        a, b = both("http://h.test/", ours=ours, theirs=theirs)
        assert a == b == {"proxies": {}, "stream": False, "verify": True, "cert": None}

    def test_replaced_os_environ(self, clean_env):
        """When os.environ is not the interpreter's mapping, nothing is cached."""
        clean_env.setattr(os, "environ", {"HTTP_PROXY": "http://p:1"})
        assert _environ.EnvironCache().lookup("http://h.test/") is None


class TestBounded:
    def test_origins_are_bounded(self, clean_env):
        """Calling many origins never keeps more than the bound in memory."""
        cache = _environ.EnvironCache()
        for i in range(_environ._MAX_ORIGINS * 2 + 3):
            assert cache.lookup(f"http://host{i}.test/x") == ({}, None)
        assert len(cache._state[1]) <= _environ._MAX_ORIGINS


names = st.sampled_from(PROXY_VARS)
values = st.sampled_from(["http://p:1", "", "*", "127.0.0.1", ".test", "api.internal:8443",
                          "10.0.0.0/8,127.0.0.0/8", "h.test, other", "/ca.pem"])
hosts = st.sampled_from(["127.0.0.1", "h.test", "a.h.test", "api.internal:8443", "api.internal",
                         "[::1]:80", "10.1.2.3:8080", "localhost"])


class TestProperty:
    @settings(max_examples=150, deadline=None)
    @given(env=st.dictionaries(names, values, max_size=5), host=hosts,
           scheme=st.sampled_from(["http", "https"]), path=st.sampled_from(["/", "/x?y=1", ""]))
    def test_any_environment_any_url(self, env, host, scheme, path):
        """Whatever the proxy variables and the URL, the result equals requests' own, cached or not."""
        url = f"{scheme}://{host}{path}"
        ours = resilient_client.ResilientSession()
        with mock.patch.dict(os.environ, env, clear=False):
            for name in PROXY_VARS:
                if name not in env:
                    os.environ.pop(name, None)
            for _ in range(2):
                a, b = both(url, ours=ours)
                assert a == b


class TestProxiesMerge:
    @pytest.mark.parametrize("call_proxies", [
        {}, {"http": "http://c:1"}, {"http": None}, {"https": "http://c:2", "x": None}])
    @pytest.mark.parametrize("session_proxies", [{}, {"http": "http://s:1"}, {"https": "http://s:2", "http": "http://s:3"}])
    def test_same_as_requests_merge_setting(self, call_proxies, session_proxies):
        """The direct merge of two dicts gives requests' merge_setting result, type and order included."""
        from requests.sessions import merge_setting

        from resilient_client._environ import merge_proxies as _merge_proxies

        ours = _merge_proxies(dict(call_proxies), dict(session_proxies))
        theirs = merge_setting(dict(call_proxies), dict(session_proxies))
        assert type(ours) is type(theirs)
        assert list(ours.items()) == list(theirs.items())

    def test_other_types_go_to_requests(self):
        """Anything but two plain dicts is merged by requests' own code."""
        from requests.structures import CaseInsensitiveDict

        from resilient_client._environ import merge_proxies as _merge_proxies

        assert _merge_proxies({"http": "x"}, None) == {"http": "x"}
        assert _merge_proxies(CaseInsensitiveDict({"http": "x"}), {}) == {"http": "x"}
