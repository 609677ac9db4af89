"""
Drop-in compatibility: code written for `requests.Session` keeps working
with `ResilientSession`, against a real loopback peer (tests/peers.py).

Each test states a behaviour of requests and checks ours has it; the
requests project's own suite is run the same way by
``tests/requests_suite/run.sh``.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from peers import Peer, answer, echo, free_port, redirect
from requests.adapters import HTTPAdapter

import resilient_client
from resilient_client import (
    BulkheadFull,
    CircuitOpenError,
    Config,
    ConfigError,
    DeadlineExceeded,
    ResilienceError,
    ResilientSession,
)

#: No retry, breaker or budget: these tests are about requests' behaviour.
PLAIN: dict[str, Any] = {"defaults": {"retry": None, "breaker": None, "budget": None}}


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    with Peer() as p:
        p.on("/echo", echo())
        p.on("/cookie", answer(200, b"set", [("Set-Cookie", "flavour=oat; Path=/"),
                                              ("Set-Cookie", "size=big; Path=/")]))
        for status in (301, 302, 303, 307, 308):
            p.on(f"/r{status}", redirect(p.url("/echo"), status))
        p.on("/to-localhost", redirect(p.url("/echo", host="localhost")))
        p.on("/loop", redirect("/loop"))
        p.on("/big", answer(200, b"0123456789" * 1000))
        p.on("/lines", answer(200, b"one\ntwo\nthree\n"))
        p.on("/404", answer(404, b"nope"))
        p.on("/503", answer(503, b"down"))
        yield p


@pytest.fixture
def s() -> Iterator[ResilientSession]:
    with ResilientSession(PLAIN) as session:
        yield session


def seen(resp: requests.Response) -> dict[str, Any]:
    """What the echo peer saw."""
    doc: dict[str, Any] = resp.json()
    return doc


class TestVerbs:
    @pytest.mark.parametrize("verb", ["get", "post", "put", "patch", "delete", "options"])
    def test_every_verb_reaches_the_peer(self, s: ResilientSession, peer: Peer, verb: str) -> None:
        """Each verb method sends that HTTP method."""
        resp = getattr(s, verb)(peer.url("/echo"))
        assert resp.status_code == 200 and seen(resp)["method"] == verb.upper()

    def test_head_has_no_body(self, s: ResilientSession, peer: Peer) -> None:
        """HEAD sends HEAD and returns an empty body."""
        resp = s.head(peer.url("/echo"))
        assert resp.status_code == 200 and resp.content == b""
        assert peer.last("/echo").method == "HEAD"

    def test_request_with_a_custom_method(self, s: ResilientSession, peer: Peer) -> None:
        """`request()` passes any method through."""
        assert seen(s.request("PURGE", peer.url("/echo")))["method"] == "PURGE"


class TestParamsAndBodies:
    def test_params_are_encoded_and_merged_with_the_query(self, s: ResilientSession, peer: Peer) -> None:
        """`params` (dict or pairs) is encoded and appended to an existing query."""
        resp = s.get(peer.url("/echo?a=1"), params=[("b", "2"), ("b", "3")])
        assert seen(resp)["query"] == {"a": ["1"], "b": ["2", "3"]}
        s.params = {"k": "v"}
        assert seen(s.get(peer.url("/echo"), params={"x": "y z"}))["query"] == {"k": ["v"], "x": ["y z"]}

    def test_json_body(self, s: ResilientSession, peer: Peer) -> None:
        """`json=` sends a JSON body with its content type."""
        got = seen(s.post(peer.url("/echo"), json={"n": [1, 2]}))
        assert json.loads(got["body"]) == {"n": [1, 2]}
        assert got["headers"]["content-type"] == "application/json"

    def test_form_data(self, s: ResilientSession, peer: Peer) -> None:
        """`data=` as a dict is form-encoded."""
        got = seen(s.post(peer.url("/echo"), data={"a": "1", "b": "x y"}))
        assert got["body"] == "a=1&b=x+y"
        assert got["headers"]["content-type"] == "application/x-www-form-urlencoded"

    def test_raw_bytes_and_generator_bodies(self, s: ResilientSession, peer: Peer) -> None:
        """Bytes are sent as is; a generator is sent chunked."""
        assert seen(s.put(peer.url("/echo"), data=b"\x00\x01raw"))["body"] == "\x00\x01raw"
        got = seen(s.post(peer.url("/echo"), data=(c for c in [b"ab", b"cd"])))
        assert got["body"] == "abcd" and got["headers"]["transfer-encoding"] == "chunked"

    def test_file_object_body(self, s: ResilientSession, peer: Peer) -> None:
        """A file object as `data=` is streamed."""
        assert seen(s.post(peer.url("/echo"), data=io.BytesIO(b"from a file")))["body"] == "from a file"

    def test_files_multipart(self, s: ResilientSession, peer: Peer) -> None:
        """`files=` (with `data=`) sends multipart/form-data with the file name and content."""
        got = seen(s.post(peer.url("/echo"), files={"up": ("r.txt", b"file-content", "text/plain")},
                          data={"field": "v"}))
        assert got["headers"]["content-type"].startswith("multipart/form-data; boundary=")
        assert 'filename="r.txt"' in got["body"] and "file-content" in got["body"]
        assert 'name="field"' in got["body"]


class TestHeaders:
    def test_session_and_call_headers_merge(self, s: ResilientSession, peer: Peer) -> None:
        """Session headers are sent, per-call headers add or override, None removes one."""
        s.headers.update({"X-Team": "core", "X-Drop": "me"})
        got = seen(s.get(peer.url("/echo"), headers={"X-Call": "1", "X-Drop": None, "x-team": "edge"}))
        h = got["headers"]
        assert h["x-call"] == "1" and h["x-team"] == "edge" and "x-drop" not in h
        assert h["user-agent"].startswith("python-requests/")

    def test_auth_tuple(self, s: ResilientSession, peer: Peer) -> None:
        """`auth=(user, password)` sends basic auth."""
        assert seen(s.get(peer.url("/echo"), auth=("u", "p")))["headers"]["authorization"] == "Basic dTpw"


class TestCookies:
    def test_jar_keeps_cookies_set_by_the_peer(self, s: ResilientSession, peer: Peer) -> None:
        """Set-Cookie lands in the session jar and is sent on the next request."""
        s.get(peer.url("/cookie"))
        assert s.cookies.get("flavour") == "oat" and s.cookies.get("size") == "big"
        cookie = seen(s.get(peer.url("/echo")))["headers"]["cookie"]
        assert "flavour=oat" in cookie and "size=big" in cookie

    def test_per_request_cookies_are_sent_but_not_kept(self, s: ResilientSession, peer: Peer) -> None:
        """`cookies=` is sent with that call only; jar cookies set by hand are sent too."""
        s.cookies.set("jar", "1")
        cookie = seen(s.get(peer.url("/echo"), cookies={"once": "2"}))["headers"]["cookie"]
        assert "jar=1" in cookie and "once=2" in cookie
        assert "once" not in s.cookies
        assert seen(s.get(peer.url("/echo")))["headers"]["cookie"] == "jar=1"


class TestRedirects:
    @pytest.mark.parametrize(("status", "method"), [(301, "GET"), (302, "GET"), (303, "GET"),
                                                    (307, "POST"), (308, "POST")])
    def test_post_redirect_method_changes(
        self, s: ResilientSession, peer: Peer, status: int, method: str
    ) -> None:
        """POST becomes GET (body dropped) on 301/302/303 and stays POST with its body on 307/308."""
        resp = s.post(peer.url(f"/r{status}"), data=b"payload")
        got = seen(resp)
        assert got["method"] == method
        assert got["body"] == ("payload" if method == "POST" else "")
        assert [r.status_code for r in resp.history] == [status]
        assert resp.url == peer.url("/echo")

    def test_303_turns_any_method_into_get(self, s: ResilientSession, peer: Peer) -> None:
        """A 303 after PUT is followed with GET."""
        assert seen(s.put(peer.url("/r303"), data=b"x"))["method"] == "GET"

    def test_allow_redirects_false_returns_the_redirect(self, s: ResilientSession, peer: Peer) -> None:
        """With allow_redirects=False the 302 itself is returned, and `next` prepares the hop."""
        resp = s.get(peer.url("/r302"), allow_redirects=False)
        assert resp.status_code == 302 and resp.is_redirect and resp.next is not None
        assert resp.attempts == 1 and resp.is_fallback is False  # type: ignore[attr-defined]

    def test_cross_host_redirect_drops_authorization(self, s: ResilientSession, peer: Peer) -> None:
        """Authorization is kept on a same-host redirect and dropped when the host changes."""
        same = seen(s.get(peer.url("/r302"), headers={"Authorization": "Bearer t0ken"}))
        assert same["headers"]["authorization"] == "Bearer t0ken"
        other = s.get(peer.url("/to-localhost"), headers={"Authorization": "Bearer t0ken"})
        assert other.url.startswith("http://localhost:")
        assert "authorization" not in seen(other)["headers"]

    def test_too_many_redirects(self, s: ResilientSession, peer: Peer) -> None:
        """A redirect loop raises requests' TooManyRedirects after max_redirects."""
        s.max_redirects = 5
        with pytest.raises(requests.TooManyRedirects):
            s.get(peer.url("/loop"))

    def test_redirect_hops_are_one_attempt(self, peer: Peer) -> None:
        """Following redirects is part of one attempt: attempts stays 1 with retries on."""
        with ResilientSession() as session:
            resp = session.get(peer.url("/r301"))
        assert resp.status_code == 200 and resp.attempts == 1  # type: ignore[attr-defined]


class TestStreaming:
    def test_iter_content_reads_the_whole_body(self, s: ResilientSession, peer: Peer) -> None:
        """stream=True defers the body; iter_content yields it in chunks of the asked size."""
        with s.get(peer.url("/big"), stream=True) as resp:
            assert resp._content_consumed is False  # type: ignore[attr-defined]
            chunks = list(resp.iter_content(chunk_size=4000))
        assert b"".join(chunks) == b"0123456789" * 1000
        assert [len(c) for c in chunks] == [4000, 4000, 2000]

    def test_iter_lines_and_raw(self, s: ResilientSession, peer: Peer) -> None:
        """iter_lines and raw.read work on a streamed response."""
        with s.get(peer.url("/lines"), stream=True) as resp:
            assert list(resp.iter_lines()) == [b"one", b"two", b"three"]
        with s.get(peer.url("/lines"), stream=True) as resp:
            assert resp.raw.read(3) == b"one"

    def test_consumed_streams_give_their_connection_back(self, peer: Peer) -> None:
        """Streamed responses read to the end release the keep-alive connection for reuse."""
        with Peer() as own, ResilientSession(PLAIN) as session:
            own.on("/big", answer(200, b"z" * 5000))
            for _ in range(5):
                with session.get(own.url("/big"), stream=True) as resp:
                    assert len(resp.content) == 5000
            assert own.connections == 1


class TestHooks:
    def test_response_hooks_merge_as_in_requests(self, peer: Peer) -> None:
        """Session hooks run when a call has none; a call's hooks take their place, as in requests."""
        def run(session: requests.Session) -> list[str]:
            calls: list[str] = []
            session.hooks["response"].append(lambda r, *a, **k: calls.append(f"session {r.status_code}"))
            session.get(peer.url("/echo"))
            session.get(peer.url("/echo"), hooks={"response": lambda r, *a, **k: calls.append("call")})
            return calls

        with ResilientSession(PLAIN) as ours, requests.Session() as theirs:
            assert run(ours) == run(theirs) == ["session 200", "call"]

    def test_a_hook_may_replace_the_response(self, s: ResilientSession, peer: Peer) -> None:
        """A hook's return value replaces the response, as in requests."""
        replacement = requests.Response()
        replacement.status_code = 299
        resp = s.get(peer.url("/echo"), hooks={"response": lambda r, *a, **k: replacement})
        assert resp is replacement and resp.attempts == 1  # type: ignore[attr-defined]

    def test_hooks_run_on_every_attempt(self) -> None:
        """A response hook runs once per attempt: each retried response is a real response."""
        seen_statuses: list[int] = []
        s = ResilientSession({"defaults": {"retry": {"backoff": {"initial": 0.001, "jitter": "none"}}}})
        with responses.RequestsMock() as rsps:
            rsps.get("http://svc.test/x", status=503)
            rsps.get("http://svc.test/x", status=200)
            hook = lambda r, *a, **k: seen_statuses.append(r.status_code)  # noqa: E731
            resp = s.get("http://svc.test/x", hooks={"response": hook})
        assert seen_statuses == [503, 200] and resp.attempts == 2  # type: ignore[attr-defined]


class RecordingHTTPAdapter(HTTPAdapter):
    """A user's own HTTPAdapter subclass: records what it sends and the timeouts it got."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, Any]] = []
        self.closed = 0

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self.sent.append((request.url or "", kwargs.get("timeout")))
        return super().send(request, *args, **kwargs)

    def close(self) -> None:
        self.closed += 1
        super().close()


class TestUserAdapters:
    def test_a_mounted_adapter_subclass_is_used_with_policy_timeouts(
        self, s: ResilientSession, peer: Peer
    ) -> None:
        """A user's adapter mounted on a prefix serves those URLs, with finite timeouts capped by total."""
        adapter = RecordingHTTPAdapter()
        s.mount(peer.url("/echo"), adapter)
        resp = s.get(peer.url("/echo"))
        s.get(peer.url("/lines"))  # another prefix: our adapter
        assert resp.status_code == 200 and resp.attempts == 1  # type: ignore[attr-defined]
        assert [url for url, _ in adapter.sent] == [peer.url("/echo")]
        connect, read = adapter.sent[0][1]
        assert 0 < connect <= 1.0 and 0 < read <= 5.0

    def test_most_specific_mount_wins(self, s: ResilientSession) -> None:
        """get_adapter picks the longest mounted prefix, as in requests."""
        a, b = RecordingHTTPAdapter(), RecordingHTTPAdapter()
        s.mount("http://svc.test", a)
        s.mount("http://svc.test/api/", b)
        assert s.get_adapter("http://svc.test/api/x") is b and s.get_adapter("http://svc.test/x") is a

    def test_responses_mock_and_retries(self) -> None:
        """`responses` intercepts our sends; a retried 503 then 200 gives attempts == 2."""
        s = ResilientSession({"defaults": {"retry": {"backoff": {"initial": 0.001, "jitter": "none"}}}})
        with responses.RequestsMock() as rsps:
            rsps.get("http://svc.test/items", status=503)
            rsps.get("http://svc.test/items", json={"ok": True})
            resp = s.get("http://svc.test/items")
            assert len(rsps.calls) == 2
        assert resp.json() == {"ok": True}
        assert resp.attempts == 2 and resp.is_fallback is False  # type: ignore[attr-defined]


class TestLifecycle:
    def test_with_block_closes_every_adapter(self) -> None:
        """Leaving a `with` block closes the session's adapters, the user's included."""
        adapter = RecordingHTTPAdapter()
        with ResilientSession() as session:
            assert isinstance(session, ResilientSession) and isinstance(session, requests.Session)
            session.mount("http://svc.test/", adapter)
        assert adapter.closed == 1

    def test_close_is_idempotent_and_the_session_still_works(self, peer: Peer) -> None:
        """close() may be called twice; a closed session opens new connections when used again."""
        session = ResilientSession(PLAIN)
        assert session.get(peer.url("/echo")).status_code == 200
        session.close()
        session.close()
        assert session.get(peer.url("/echo")).status_code == 200
        session.close()


class TestResponseAttributes:
    @pytest.mark.parametrize("path", ["/echo", "/404", "/r302", "/big"])
    def test_every_network_response_carries_attempts_and_is_fallback(self, peer: Peer, path: str) -> None:
        """Responses of every kind (2xx, 4xx, redirected, streamed) carry attempts=1, is_fallback=False."""
        with ResilientSession() as session:
            for stream in (False, True):
                resp = session.get(peer.url(path), stream=stream)
                assert (resp.attempts, resp.is_fallback) == (1, False)  # type: ignore[attr-defined]
                resp.close()

    def test_retried_final_status_counts_every_attempt(self, peer: Peer) -> None:
        """A 503 that stays 503 comes back as the last response with attempts == 3."""
        config = {"defaults": {"retry": {"backoff": {"initial": 0.001, "jitter": "none"}}, "breaker": None}}
        with ResilientSession(config) as session:
            resp = session.get(peer.url("/503"))
        assert resp.status_code == 503 and resp.attempts == 3  # type: ignore[attr-defined]

    def test_fallback_response_is_marked(self) -> None:
        """A static fallback's response has is_fallback True and counts the attempts made."""
        port = free_port()
        config = {"defaults": {"retry": None, "fallback": {"status": 200, "json": {"cached": True}}}}
        with ResilientSession(config) as session:
            resp = session.get(f"http://127.0.0.1:{port}/x")
        assert resp.json() == {"cached": True}
        assert resp.is_fallback is True and resp.attempts == 1  # type: ignore[attr-defined]


class TestExceptions:
    @pytest.mark.parametrize(
        ("exc", "bases"),
        [
            (ResilienceError, (requests.RequestException,)),
            (CircuitOpenError, (ResilienceError, requests.ConnectionError, requests.RequestException)),
            (DeadlineExceeded, (ResilienceError, requests.Timeout, requests.RequestException)),
            (BulkheadFull, (ResilienceError, requests.RequestException)),
            (ConfigError, (ValueError,)),
        ],
    )
    def test_hierarchy_fits_requests(self, exc: type, bases: tuple[type, ...]) -> None:
        """Each exception is a subclass of the requests classes the contract names."""
        assert all(issubclass(exc, b) for b in bases)

    def test_exceptions_are_importable_from_both_places(self) -> None:
        """The exceptions are the same objects in resilient_client and resilient_client.exceptions."""
        from resilient_client import exceptions

        names = ("ResilienceError", "CircuitOpenError", "DeadlineExceeded", "BulkheadFull", "ConfigError")
        for name in names:
            assert getattr(exceptions, name) is getattr(resilient_client, name)

    def test_refused_connection_is_requests_connection_error(self) -> None:
        """A refused connect raises requests' own ConnectionError, unwrapped."""
        with ResilientSession(PLAIN) as session, pytest.raises(requests.ConnectionError) as info:
            session.get(f"http://127.0.0.1:{free_port()}/")
        assert type(info.value) is requests.ConnectionError

    def test_open_breaker_is_caught_as_connection_error(self, peer: Peer) -> None:
        """A forced-open breaker raises CircuitOpenError, caught by `except requests.ConnectionError`."""
        with ResilientSession() as session:
            session.circuit(peer.url("/echo")).open()
            before = peer.hits()
            try:
                session.get(peer.url("/echo"))
            except requests.ConnectionError as e:
                caught: BaseException = e
        assert isinstance(caught, CircuitOpenError) and peer.hits() == before

    def test_full_bulkhead_is_caught_as_request_exception(self, peer: Peer) -> None:
        """With max_concurrent 1, an unread streamed response holds the slot: the next call is refused."""
        with ResilientSession({"defaults": {"bulkhead": {"max_concurrent": 1}}}) as session:
            held = session.get(peer.url("/big"), stream=True)
            with pytest.raises(requests.RequestException) as info:
                session.get(peer.url("/echo"))
            held.close()
            assert session.get(peer.url("/echo")).status_code == 200
        assert isinstance(info.value, BulkheadFull)

    @pytest.mark.parametrize(("url", "exc"), [("svc.test/x", requests.exceptions.MissingSchema),
                                              ("http://", requests.exceptions.InvalidURL),
                                              ("gopher://svc.test/", requests.exceptions.InvalidSchema)])
    def test_bad_urls_raise_requests_errors(self, s: ResilientSession, url: str, exc: type) -> None:
        """Bad URLs raise the same requests exceptions as before."""
        with pytest.raises(exc):
            s.get(url)

    def test_sending_an_unprepared_request_raises_value_error(self, s: ResilientSession) -> None:
        """send() of a Request that was not prepared raises requests' own ValueError."""
        with pytest.raises(ValueError, match="You can only send PreparedRequests"):
            s.send(requests.Request("GET", "http://svc.test/"))  # type: ignore[arg-type]

    def test_raise_for_status_is_unchanged(self, s: ResilientSession, peer: Peer) -> None:
        """raise_for_status raises requests' HTTPError for a 4xx."""
        with pytest.raises(requests.HTTPError):
            s.get(peer.url("/404")).raise_for_status()


CONFIG = {"defaults": {"timeout": {"read": 2.5}}, "endpoints": [{"name": "inv", "match": "http://inv.test/"}]}


class TestConfigSources:
    def test_from_config_equals_the_constructor(self) -> None:
        """`from_config(source)` builds the same config as `ResilientSession(source)`."""
        a, b = ResilientSession.from_config(CONFIG), ResilientSession(CONFIG)
        assert isinstance(a, ResilientSession) and a.config == b.config
        assert a.policy_for("GET", "http://inv.test/x").name == "inv"

    @pytest.mark.parametrize("as_path", [str, Path], ids=["str", "Path"])
    @pytest.mark.parametrize("suffix", [".json", ".yaml", ".toml"])
    def test_config_from_a_file_path(self, tmp_path: Path, as_path: Any, suffix: str) -> None:
        """A str or Path to a JSON, YAML or TOML file gives the same config as the mapping."""
        file = tmp_path / f"resilience{suffix}"
        if suffix == ".toml":
            file.write_text('[defaults.timeout]\nread = 2.5\n\n[[endpoints]]\nname = "inv"\nmatch = "http://inv.test/"\n')
        else:
            file.write_text(json.dumps(CONFIG))  # JSON is valid YAML
        session = ResilientSession(as_path(file))
        assert session.config == Config.load(CONFIG)
        assert ResilientSession.from_config(as_path(file)).config == session.config

    def test_a_config_object_and_none(self) -> None:
        """A Config is used as is; None gives the safe built-in defaults."""
        config = Config.load(CONFIG)
        assert ResilientSession(config).config is config
        t = ResilientSession().config.defaults.timeout
        assert (t.connect, t.read, t.total) == (1.0, 5.0, 10.0)

    def test_bad_config_raises_config_error(self, tmp_path: Path) -> None:
        """A bad key raises ConfigError naming its path, a missing file names the file."""
        with pytest.raises(ConfigError, match=r"defaults\.timeout\.read"):
            ResilientSession({"defaults": {"timeout": {"read": 0}}})
        with pytest.raises(ConfigError, match=r"nope\.yaml"):
            ResilientSession(tmp_path / "nope.yaml")


def keep_listener(event: object) -> None:
    """A module-level (picklable) listener."""


class TestPickling:
    def test_round_trip_keeps_config_and_requests_state(self, peer: Peer) -> None:
        """A pickled session keeps config, headers, cookies, mounts and listeners, and still works."""
        session = ResilientSession(CONFIG, listeners=[keep_listener])
        session.headers["X-Kept"] = "yes"
        session.cookies.set("c", "1")
        session.mount("http://svc.test/", RecordingHTTPAdapter())
        clone = pickle.loads(pickle.dumps(session))
        assert isinstance(clone, ResilientSession)
        assert clone.config == session.config and clone.clock is resilient_client._clock.SYSTEM_CLOCK
        assert isinstance(clone.get_adapter("http://svc.test/"), RecordingHTTPAdapter)
        assert keep_listener in clone._bus.listeners
        got = seen(clone.get(peer.url("/echo")))
        assert got["headers"]["x-kept"] == "yes" and got["headers"]["cookie"] == "c=1"
        assert clone.get(peer.url("/echo")).attempts == 1  # type: ignore[attr-defined]

    def test_endpoint_state_starts_afresh(self) -> None:
        """Breaker state is not pickled: a clone of a session with an open breaker starts closed."""
        session = ResilientSession(CONFIG)
        session.circuit("inv").open()
        clone = pickle.loads(pickle.dumps(session))
        assert clone.circuit("inv").state == "closed"

    def test_unpicklable_listener_fails_loudly(self) -> None:
        """A lambda listener cannot be pickled, as with requests' lambda hooks."""
        session = ResilientSession(listeners=[lambda e: None])
        with pytest.raises((pickle.PicklingError, AttributeError)):
            pickle.dumps(session)
