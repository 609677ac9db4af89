"""
Secrets never show: for requests that carry them, across success, retry,
give-up, timeouts, deadline, breaker open, bulkhead full and fallbacks, no
secret value appears in captured logs (every logger, DEBUG), events,
exceptions (str, repr, chained causes, urllib3 errors nested in args) or
reprs. Real sockets on loopback, so the messages are requests' and urllib3's
own.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import traceback
from collections.abc import Callable
from typing import Any

import pytest
import requests
from peers import Peer, answer, free_port, hang

import resilient_client as rc
from resilient_client._redact import (
    REDACTED,
    call_secret_values,
    redact_exception,
    redact_url,
    secret_values,
)

AUTH = "tok-AUTH-1234abcd"
PROXY = "cHJveHktUFJPWFktOTk5"
COOKIE = "COOKIE-5678efgh"
API_KEY = "KEY-9012ijkl"
QTOK = "QTOK-3456mnop"
PASSWORD = "PASS-7890qrst"
SET_COOKIE = "SETCK-1111uvwx"
BASIC = base64.b64encode(f"user:{PASSWORD}".encode()).decode()
SECRETS = (AUTH, PROXY, COOKIE, API_KEY, QTOK, PASSWORD, SET_COOKIE, BASIC)

HEADERS = {
    "Authorization": f"Bearer {AUTH}",
    "Proxy-Authorization": f"Basic {PROXY}",
    "Cookie": f"sid={COOKIE}; theme=dark",
    "X-Api-Key": API_KEY,
}
PEER_HEADERS = {"Set-Cookie": f"sess={SET_COOKIE}; Path=/", "Content-Type": "application/json"}
OK = answer(200, b'{"ok": true}', PEER_HEADERS)
UNAVAILABLE = answer(503, b"nope", PEER_HEADERS)


def config(**defaults: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "timeout": {"connect": 0.5, "read": 0.5, "total": 2.0},
        "retry": {"attempts": 2, "backoff": {"initial": 0.0, "max": 0.0}},
    }
    base.update(defaults)
    return {"defaults": base, "secrets": {"headers": ["X-Api-Key"], "query": ["token"]}}


class Capture:
    """Everything a secret could leak into during one scenario."""

    def __init__(self) -> None:
        self.events: list[rc.Event] = []
        self.errors: list[BaseException] = []
        self.texts: list[str] = []

    def call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as e:
            self.errors.append(e)
            return None

    def blob(self, caplog: pytest.LogCaptureFixture, *objects: object) -> str:
        parts = list(self.texts)
        fmt = logging.Formatter("%(name)s %(levelname)s %(message)s")
        for r in caplog.records:
            parts.append(fmt.format(r))  # message, args and any traceback
            parts.extend(repr(v) for k, v in vars(r).items() if k.startswith("rc_"))
        for e in self.events:
            parts += [repr(e), json.dumps(e.as_dict(), default=str), str(e)]
        for exc in self.errors:
            parts.append("".join(traceback.format_exception(exc)))  # the whole chain
            stack: list[BaseException] = [exc]
            while stack:  # reprs of every error held in args, cause or context
                e = stack.pop()
                parts += [repr(e), str(e), repr(e.args)]
                stack += [a for a in e.args if isinstance(a, BaseException)]
                stack += [x for x in (e.__cause__, e.__context__, getattr(e, "reason", None))
                          if isinstance(x, BaseException)]
        parts += [repr(o) for o in objects]
        return "\n".join(parts)


def assert_clean(blob: str) -> None:
    leaked = [s for s in SECRETS if s in blob]
    assert not leaked, f"secrets leaked: {leaked}\n{blob}"


@pytest.fixture
def capture(caplog: pytest.LogCaptureFixture) -> Capture:
    caplog.set_level(logging.DEBUG)  # every logger: ours, urllib3's, requests'
    return Capture()


def session_for(cap: Capture, **defaults: Any) -> rc.ResilientSession:
    return rc.ResilientSession(config(**defaults), listeners=[cap.events.append])


def headers_variant(base: str) -> tuple[str, dict[str, str]]:
    """Secrets in headers and the query."""
    return f"{base}/items?token={QTOK}&page=2", dict(HEADERS)


def password_variant(base: str) -> tuple[str, dict[str, str]]:
    """Secrets in the URL's password and the query (requests turns the password into Basic auth)."""
    return base.replace("http://", f"http://user:{PASSWORD}@") + f"/items?token={QTOK}", {}


VARIANTS = [headers_variant, password_variant]


@pytest.mark.parametrize("variant", VARIANTS)
class TestNoSecretAnywhere:
    def test_success(self, capture, caplog, variant):
        """A call answered at once (Set-Cookie in the answer) leaves no secret behind."""
        with Peer().on("*", OK) as peer:
            url, headers = variant(peer.origin)
            s = session_for(capture)
            resp = capture.call(lambda: s.get(url, headers=headers))
            assert resp.status_code == 200
            # The request did carry its secrets to the peer.
            sent = json.dumps([(r.target, dict(r.headers)) for r in peer.requests])
            assert QTOK in sent and (AUTH in sent or BASIC in sent)
        blob = capture.blob(caplog, s, s.config, s.circuit(url), resp)
        assert f"token={REDACTED}" in blob  # the URL was logged, redacted
        assert_clean(blob)

    def test_retry_then_success(self, capture, caplog, variant):
        """A retried call logs each attempt and the retry without secrets."""
        with Peer().on("*", UNAVAILABLE, OK) as peer:
            url, headers = variant(peer.origin)
            s = session_for(capture)
            resp = capture.call(lambda: s.get(url, headers=headers))
            assert resp.status_code == 200 and resp.attempts == 2
        assert [e.kind for e in capture.events].count("retry_scheduled") == 1
        assert_clean(capture.blob(caplog, s))

    def test_give_up_on_status(self, capture, caplog, variant):
        """Retries running out on a 503 leave no secret in the give-up event or logs."""
        with Peer().on("*", UNAVAILABLE) as peer:
            url, headers = variant(peer.origin)
            s = session_for(capture)
            resp = capture.call(lambda: s.get(url, headers=headers))
            assert resp.status_code == 503
        assert "gave_up" in [e.kind for e in capture.events]
        assert_clean(capture.blob(caplog, s))

    def test_give_up_on_refused_connection(self, capture, caplog, variant):
        """A refused connection's error (urllib3's MaxRetryError nested in args) is redacted."""
        url, headers = variant(f"http://127.0.0.1:{free_port()}")
        s = session_for(capture)
        capture.call(lambda: s.get(url, headers=headers))
        [err] = capture.errors
        assert isinstance(err, requests.ConnectionError)
        assert "Max retries exceeded with url: /items?token=" + REDACTED in str(err)
        assert_clean(capture.blob(caplog, s))

    def test_read_timeout(self, capture, caplog, variant):
        """A peer that never answers times out, and the timeout error carries no secret."""
        with Peer().on("*", hang()) as peer:
            url, headers = variant(peer.origin)
            s = session_for(capture, timeout={"connect": 0.5, "read": 0.02}, retry=None)
            capture.call(lambda: s.get(url, headers=headers))
        [err] = capture.errors
        assert isinstance(err, requests.ReadTimeout)
        assert_clean(capture.blob(caplog, s))

    def test_deadline(self, capture, caplog, variant):
        """DeadlineExceeded and the timeout chained to it carry no secret."""
        with Peer().on("*", hang()) as peer:
            url, headers = variant(peer.origin)
            s = session_for(capture, timeout={"connect": 0.5, "read": 1.0, "total": 0.03}, retry=None)
            capture.call(lambda: s.get(url, headers=headers))
        [err] = capture.errors
        assert isinstance(err, rc.DeadlineExceeded) and err.__cause__ is not None
        assert_clean(capture.blob(caplog, s))

    def test_breaker_open(self, capture, caplog, variant):
        """The failure that opens the breaker and the rejection after it carry no secret."""
        url, headers = variant(f"http://127.0.0.1:{free_port()}")
        s = session_for(capture, retry=None, breaker={"failure_threshold": 1})
        capture.call(lambda: s.get(url, headers=headers))
        capture.call(lambda: s.get(url, headers=headers))
        assert [type(e) for e in capture.errors] == [requests.ConnectionError, rc.CircuitOpenError]
        assert "breaker_rejected" in [e.kind for e in capture.events]
        assert_clean(capture.blob(caplog, s, s.circuit(url)))

    def test_static_fallback(self, capture, caplog, variant):
        """The error a fallback replaced is described in its event without secrets."""
        url, headers = variant(f"http://127.0.0.1:{free_port()}")
        s = session_for(capture, retry=None, fallback={"status": 200, "json": {"items": []}})
        resp = capture.call(lambda: s.get(url, headers=headers))
        assert resp.is_fallback
        [served] = [e for e in capture.events if isinstance(e, rc.FallbackServed)]
        assert "Max retries exceeded" in served.error
        assert_clean(capture.blob(caplog, s, resp))

    def test_stale_fallback(self, capture, caplog, variant):
        """A stale answer served after a 503 leaves no secret in events or logs."""
        with Peer().on("*", OK, UNAVAILABLE) as peer:
            url, headers = variant(peer.origin)
            s = session_for(capture, retry=None, fallback="stale")
            capture.call(lambda: s.get(url, headers=headers))
            resp = capture.call(lambda: s.get(url, headers=headers))
            assert resp.is_fallback
        assert_clean(capture.blob(caplog, s))

    def test_callable_fallback_that_raises(self, capture, caplog, variant):
        """A fallback that raises with the URL and headers in its message is redacted too."""

        def fallback(request: requests.PreparedRequest, failure: object) -> requests.Response:
            raise RuntimeError(f"no fallback for {request.url} with {dict(request.headers)}")

        url, headers = variant(f"http://127.0.0.1:{free_port()}")
        cfg = rc.Config.load(config(retry=None))
        cfg = dataclasses.replace(cfg, defaults=cfg.defaults.replace(fallback=rc.CallableFallback(fallback)))
        s = rc.ResilientSession(cfg, listeners=[capture.events.append])
        capture.call(lambda: s.get(url, headers=headers))
        [err] = capture.errors
        assert isinstance(err, RuntimeError) and isinstance(err.__cause__, requests.ConnectionError)
        assert REDACTED in str(err)
        assert_clean(capture.blob(caplog, s))

    def test_bulkhead_full(self, capture, caplog, variant):
        """A call refused by a full bulkhead (slot held by a streamed response) carries no secret."""
        with Peer().on("*", OK) as peer:
            url, headers = variant(peer.origin)
            s = session_for(capture, bulkhead={"max_concurrent": 1})
            held = s.get(url, headers=headers, stream=True)
            capture.call(lambda: s.get(url, headers=headers))
            held.close()
        [err] = capture.errors
        assert isinstance(err, rc.BulkheadFull)
        assert_clean(capture.blob(caplog, s, s.health().as_dict()))


class TestSecretsFirstSeenOnARedirectHop:
    @pytest.mark.parametrize(
        "location",
        [
            "http://127.0.0.1:{port}/cb?page=2&token={tok}&x=1",  # ConnectionError: "...with url: /cb?..."
            "ftp://files.example/cb?TOKEN={tok}",  # InvalidSchema quotes the URL
            "ftp://user:{pw}@files.example/cb",  # a password, in the same message
        ],
        ids=["refused-hop", "unsupported-scheme-hop", "password-in-hop"],
    )
    def test_a_secret_first_seen_in_a_location_header_is_redacted(
        self, capture: Capture, caplog: pytest.LogCaptureFixture, location: str
    ) -> None:
        """A secret that only a redirect hop's URL carries is redacted from the error, by name or shape."""
        location = location.format(port=free_port(), tok=QTOK, pw=PASSWORD)
        with Peer().on("*", answer(302, b"nope", {"Location": location})) as peer:
            s = session_for(capture, retry=None)
            capture.call(lambda: s.get(peer.url("/login")))
        [err] = capture.errors
        assert isinstance(err, requests.RequestException) and REDACTED in str(err)
        assert_clean(capture.blob(caplog, s))


def _bad_header_calls() -> list[Any]:
    """Every entry point a bad header can come in through, before requests has prepared it."""
    url = "http://127.0.0.1:9/x"
    return [
        pytest.param(lambda s, h: s.get(url, headers=h), id="get"),
        pytest.param(lambda s, h: s.post(url, json={}, headers=h), id="post"),
        pytest.param(lambda s, h: s.request("PATCH", url, headers=h), id="request"),
        pytest.param(lambda s, h: s.request("GET", url, None, None, h), id="positional-headers"),
        pytest.param(lambda s, h: (s.headers.update(h), s.get(url)), id="session-headers"),
    ]


class TestErrorsRaisedBeforeSend:
    @pytest.mark.parametrize("call", _bad_header_calls())
    @pytest.mark.parametrize(
        "headers",
        [
            {"Authorization": f"Bearer {AUTH}\n"},
            {"X-Api-Key": f" {API_KEY}"},
            {"Proxy-Authorization": f"Basic {PROXY}\r\n".encode()},
            {"Cookie": f"sid={COOKIE}\n"},
        ],
        ids=["authorization-newline", "custom-leading-space", "bytes-crlf", "cookie-newline"],
    )
    def test_a_bad_secret_header_value_is_redacted_from_invalid_header(
        self, capture: Capture, caplog: pytest.LogCaptureFixture, call: Any, headers: dict[str, Any]
    ) -> None:
        """requests' InvalidHeader, raised while preparing (before send), quotes no secret, even escaped."""
        s = session_for(capture)
        capture.call(lambda: call(s, headers))
        [err] = capture.errors
        assert isinstance(err, requests.exceptions.InvalidHeader) and REDACTED in str(err)
        assert_clean(capture.blob(caplog, s))

    @pytest.mark.parametrize(
        ("url", "exc"),
        [
            (f"127.0.0.1/x?token={QTOK}", requests.exceptions.MissingSchema),
            (f"http:///x?a=1&token={QTOK}", requests.exceptions.InvalidURL),
        ],
        ids=["missing-schema", "no-host"],
    )
    def test_a_url_requests_cannot_prepare_is_redacted(
        self, capture: Capture, caplog: pytest.LogCaptureFixture, url: str, exc: type
    ) -> None:
        """requests' own error for a URL it cannot prepare (it quotes the URL) carries no secret."""
        s = session_for(capture)
        capture.call(lambda: s.get(url))
        [err] = capture.errors
        assert isinstance(err, exc) and f"token={REDACTED}" in str(err)
        assert_clean(capture.blob(caplog, s))


class TestRedactionUnits:
    def test_redact_exception_scrubs_secret_query_values_by_name_in_any_url(self):
        """Values of secret query names go, in any URL of any message, wherever the URL came from."""
        secrets = rc.Secrets(query=["token"])
        err = requests.ConnectionError(
            f"url: /cb?token={QTOK}&page=2 (Caused by x) and 'ftp://h/p?a=1&Token={QTOK}#f' "
            f"and https://u:{PASSWORD}@h.test/ and a bare {QTOK}"
        )
        redact_exception(err, set(), secrets)
        assert str(err) == (
            f"url: /cb?token={REDACTED}&page=2 (Caused by x) and 'ftp://h/p?a=1&Token={REDACTED}#f' "
            f"and https://u:{REDACTED}@h.test/ and a bare {REDACTED}"
        )

    def test_redact_exception_scrubs_the_secrets_of_requests_attached_to_errors(self):
        """The secrets of the request an error carries (a redirect hop's, say) go too."""
        hop = requests.Request("GET", "http://h.test/", headers={"X-Api-Key": API_KEY}).prepare()
        err = requests.ConnectionError(f"rejected key {API_KEY}", request=hop)
        redact_exception(err, set(), rc.Secrets(headers=["X-Api-Key"]))
        assert str(err) == f"rejected key {REDACTED}"

    def test_call_secret_values_reads_every_argument_that_can_carry_a_secret(self):
        """URL, params, headers (positional too), cookies, auth, proxies and the session's own defaults."""
        secrets = rc.Secrets(headers=["X-Api-Key"], query=["token"])
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {AUTH}"
        s.cookies.set("sid", COOKIE)
        s.params = {"token": "session-param-token"}
        values = call_secret_values(
            secrets, s, f"http://u:{PASSWORD}@h.test/?token=url-token",
            ({"token": ["list-token"]}, None, {b"X-Api-Key": API_KEY.encode()}),
            {"cookies": {"theme": "call-cookie"}, "auth": ("user", "auth-password"),
             "proxies": {"http": "http://p:proxy-password@proxy.test:3128"}},
        )
        expected = {AUTH, COOKIE, "session-param-token", PASSWORD, "url-token", "list-token", API_KEY,
                    "call-cookie", "auth-password", "proxy-password"}
        assert expected <= values
        assert call_secret_values(secrets, s, "http://h.test/", ("token=str-token",), {}) >= {
            "str-token"}

    def test_set_cookie_values_are_secret_but_not_their_attributes(self):
        """Each cookie of a Set-Cookie is a secret; its Path, Domain or Max-Age are not (too common)."""
        header = (f"sess={SET_COOKIE}; Path=/api; Domain=api.internal, other={COOKIE}; "
                  "Expires=Wed, 21 Oct 2015 07:28:00 GMT; Max-Age=3600")
        values = secret_values("", {"Set-Cookie": header}, rc.Secrets())
        assert {SET_COOKIE, COOKIE} <= values
        assert not {"/api", "api.internal", "3600"} & values

    def test_secret_values_include_forms_a_message_may_show(self):
        """A header value is also found stripped and repr-escaped, and bytes values are read."""
        values = secret_values("", {b"Authorization": b"Bearer ab\x00cd\n"}, rc.Secrets())
        assert {"ab\x00cd", "ab\\x00cd\\n", "Bearer ab\\x00cd\\n"} <= values

    def test_redact_url_hides_password_and_secret_query_values(self):
        """Only the password and named query values are replaced; the rest of the URL stays."""
        secrets = rc.Secrets(query=["token", "API_KEY"])
        url = f"https://user:{PASSWORD}@h.test:8443/p?a=1&token={QTOK}&api_key=zzz&Token=t2#f"
        assert redact_url(url, secrets) == (
            f"https://user:{REDACTED}@h.test:8443/p?a=1&token={REDACTED}&api_key={REDACTED}"
            f"&Token={REDACTED}#f")

    def test_redact_url_leaves_clean_urls_untouched(self):
        """A URL with nothing secret comes back as the very same string (the fast path)."""
        url = "https://h.test/p?a=1"
        assert redact_url(url, rc.Secrets(query=["token"])) == url
        assert redact_url("https://h.test/p", rc.Secrets(query=["token"])) == "https://h.test/p"
        assert redact_url(url + "&token=x", rc.Secrets()) == url + "&token=x"

    def test_secret_values_include_tokens_cookies_and_encodings(self):
        """Bearer tokens, cookie values and percent-encoded query values are all found."""
        secrets = rc.Secrets(query=["token"])
        values = secret_values("http://u:p%40ss@h/?token=a%20b%2Fc", HEADERS, secrets)
        assert {f"Bearer {AUTH}", AUTH, PROXY, COOKIE, "a b/c", "a%20b%2Fc", "p@ss"} <= values
        assert "dark" in values  # every cookie value, not just the first
        assert "X-Api-Key" not in str(values)  # names are not values

    def test_redact_exception_walks_args_causes_and_urllib3_url(self):
        """Nested errors in args, the cause chain and urllib3's .url attribute are all scrubbed."""
        from urllib3.exceptions import MaxRetryError

        inner = MaxRetryError(None, f"/x?token={QTOK}", ValueError(f"reason {QTOK}"))  # type: ignore[arg-type]
        outer = requests.ConnectionError(inner)
        try:
            raise RuntimeError(f"wrapped {QTOK}") from outer
        except RuntimeError as e:
            top = e
        redact_exception(top, {QTOK})
        text = "".join(traceback.format_exception(top)) + repr(inner.reason) + inner.url
        assert QTOK not in text and REDACTED in text

    def test_urllib3_debug_lines_are_only_rewritten_during_our_attempts(self, caplog):
        """The filter on urllib3's loggers leaves lines made outside a session alone."""
        from resilient_client._redact import install_log_filter

        install_log_filter()
        log = logging.getLogger("urllib3.connectionpool")
        with caplog.at_level(logging.DEBUG):
            log.debug('%s "%s %s"', "h", "GET", f"/x?token={QTOK}")
        assert QTOK in caplog.text  # not ours to touch


class TestUrlFormsInEvents:
    def test_semicolon_separated_and_fragment_secrets_are_redacted(self) -> None:
        """`;` separates pairs as `&` does, and a fragment may carry a token."""
        from resilient_client._config import Secrets
        from resilient_client._redact import redact_url

        secrets = Secrets(query=frozenset({"token"}))
        assert "SEMI1" not in redact_url("http://h/x?a=1;token=SEMI1", secrets)
        assert "FRAG1" not in redact_url("http://h/x#token=FRAG1", secrets)
        assert redact_url("http://h/x?a=1;b=2", secrets) == "http://h/x?a=1;b=2"

    def test_a_bytes_header_value_is_redacted_as_bytes_are_quoted(self) -> None:
        """A non-ASCII secret given as bytes is not quoted in InvalidHeader."""
        import resilient_client

        session = resilient_client.ResilientSession({"secrets": {"headers": ["X-Api-Key"]}})
        with pytest.raises(requests.exceptions.InvalidHeader) as caught:
            session.get("http://127.0.0.1:1/", headers={"X-Api-Key": "sécretHB1\n".encode()})
        assert "cretHB1" not in str(caught.value)
