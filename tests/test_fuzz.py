"""
Fuzzing with hypothesis: bad input must never crash the library.

* Configuration: test_config.py already fuzzes mappings given to
  `load_config`; this file reuses its strategies and adds what it does not
  cover: the same documents as YAML and JSON *files*, config files mangled
  byte by byte, policies built in Python with arbitrary values, and a session
  built from any loadable config resolving arbitrary URLs. Each must load or
  raise `ConfigError` naming a key path, and nothing else.
* The classifier: ``Retry-After`` values and response status/header
  combinations given to `parse_retry_after`, `RetrySafely`, `Backoff`, the
  stop strategies and `failure_kind`, then whole calls through a session
  (``responses`` at unit level, a fake clock): a response or a typed error,
  never a crash.
"""

from __future__ import annotations

import datetime
import json
import math
import string
from typing import Any

import pytest
import requests
import responses
import tenacity
import urllib3.exceptions as u3
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict
from test_config import documents, shaped_documents

from resilient_client import ConfigError, ResilientSession
from resilient_client._config import Config, load_config
from resilient_client._deadline import Deadline
from resilient_client._errors import _SHOWN
from resilient_client._outcome import failure_kind, is_peer_failure
from resilient_client._policy import (
    BackoffPolicy,
    BreakerPolicy,
    BudgetPolicy,
    BulkheadPolicy,
    PoolPolicy,
    RetryPolicy,
    StaleFallback,
    StaticFallback,
    Timeouts,
)
from resilient_client._retry import Call, build_retrying, parse_retry_after
from resilient_client.testing import FakeClock

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def assert_config_error_names_a_path(e: ConfigError) -> None:
    """
    The message is ``<path>: <problem>`` (or just the problem for the document itself), or,
    for several problems, their count and then one such line each.
    """
    assert e.problem
    assert e.errors and e.errors[0] == (e.path, e.problem)
    lines = [f"{path}: {problem}" if path else problem for path, problem in e.errors]
    if len(lines) == 1:
        assert str(e) == lines[0]
    else:
        # Joined, not split: a key may itself hold a line break. The message
        # lists the first _SHOWN problems; .errors keeps them all.
        more = [f"  ... and {len(lines) - _SHOWN} more (all of them are in .errors)"] if len(
            lines) > _SHOWN else []
        assert str(e) == "\n".join([f"{len(lines)} problems in the configuration:",
                                    *(f"  {line}" for line in lines[:_SHOWN]), *more])


def load_or_config_error(source: Any) -> Config | None:
    try:
        return load_config(source)
    except ConfigError as e:
        assert_config_error_names_a_path(e)
        return None


# -- configuration ----------------------------------------------------------------------


def _yaml_text(doc: Any) -> str | None:
    try:
        return yaml.safe_dump(doc, allow_unicode=True)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError):
        return None


def _json_text(doc: Any) -> str | None:
    try:
        return json.dumps(doc)
    except (TypeError, ValueError, RecursionError):
        return None


VALID_FILES = {
    "yaml": (
        "defaults:\n  timeout: {connect: 0.5, read: 2, total: 5}\n  retry: {attempts: 3}\n"
        "secrets: {query: [token]}\nendpoints:\n  - name: inv\n    match: https://inv.internal/\n"
        "    fallback: stale\n"
    ),
    "json": (
        '{"defaults": {"timeout": {"connect": 0.5, "read": 2}, "breaker": {"failure_threshold": 3}},'
        ' "endpoints": [{"match": "https://*.internal/api/*", "methods": ["GET"]}]}'
    ),
    "toml": (
        "[defaults.timeout]\nconnect = 0.5\nread = 2.0\n[defaults.retry]\nattempts = 2\n"
        '[[endpoints]]\nname = "inv"\nmatch = "https://inv.internal/"\nbudget = false\n'
    ),
}


@st.composite
def mangled(draw: st.DrawFn, text: str) -> str:
    """*text* with a few characters deleted, replaced or inserted."""
    chars = list(text)
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(chars)))
        op = draw(st.sampled_from(["del", "put", "ins"]))
        c = draw(st.sampled_from([*":{}[]-#\"'=,.\n\t 0129aZ\\", "\x00", "é", "null", "~", "1e999"]))
        if op == "del" and i < len(chars):
            del chars[i]
        elif op == "put" and i < len(chars):
            chars[i] = c
        else:
            chars.insert(i, c)
    return "".join(chars)


class TestConfigFiles:
    @FUZZ
    @given(doc=documents | shaped_documents, fmt=st.sampled_from(["yaml", "json"]))
    def test_any_document_as_a_file_loads_or_raises_config_error(
        self, tmp_path_factory: pytest.TempPathFactory, doc: dict[Any, Any], fmt: str
    ) -> None:
        """
        The mapping fuzz of test_config.py, written to a YAML or JSON file and loaded by path.
        """
        text = _yaml_text(doc) if fmt == "yaml" else _json_text(doc)
        if text is None:
            return  # not expressible in that format
        path = tmp_path_factory.mktemp("cfg") / f"c.{fmt}"
        path.write_text(text, encoding="utf-8")
        load_or_config_error(path)

    @FUZZ
    @given(data=st.data(), fmt=st.sampled_from(sorted(VALID_FILES)))
    @example(data=None, fmt="yaml")
    def test_a_mangled_file_loads_or_raises_config_error(
        self, tmp_path_factory: pytest.TempPathFactory, data: Any, fmt: str
    ) -> None:
        """
        A valid config file with a few characters broken loads or raises ConfigError, in every format.
        """
        text = VALID_FILES[fmt] if data is None else data.draw(mangled(VALID_FILES[fmt]))
        path = tmp_path_factory.mktemp("cfg") / f"c.{fmt}"
        path.write_text(text, encoding="utf-8")
        cfg = load_or_config_error(path)
        if data is None:
            assert cfg is not None  # the unmangled file is valid

    @FUZZ
    @given(
        values=st.lists(st.text(alphabet="${}:-_AZN09.,a ", max_size=20), min_size=1, max_size=6),
        # What an environment can hold: no NUL, no lone surrogate.
        environ=st.dictionaries(
            st.sampled_from(["A", "Z", "N", "_A0"]),
            st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=8),
            max_size=3,
        ),
    )
    @example(values=["${N:-3}"], environ={})
    def test_environment_references_anywhere_load_or_raise_config_error(
        self, tmp_path_factory: pytest.TempPathFactory, values: list[str], environ: dict[str, str]
    ) -> None:
        """
        Any text of ``$``, braces and names, in every kind of value, loads or raises ConfigError.
        """
        keys = [("timeout", "read"), ("retry", "attempts"), ("retry", "methods"), ("breaker", "storage"),
                ("retry", "respect_retry_after"), ("timeout", "total")]
        endpoint = {"match": "https://a.internal/", "name": values[0]}
        doc: dict[str, Any] = {"defaults": {}, "endpoints": [endpoint]}
        for (section, key), value in zip(keys, values, strict=False):
            doc["defaults"].setdefault(section, {})[key] = value
        path = tmp_path_factory.mktemp("cfg") / "c.json"
        path.write_text(json.dumps(doc), encoding="utf-8")
        with pytest.MonkeyPatch.context() as mp:
            for name in ("A", "Z", "N", "_A0"):
                mp.delenv(name, raising=False)
            for name, value in environ.items():
                mp.setenv(name, value)
            cfg = load_or_config_error(path)
        if values == ["${N:-3}"]:
            assert cfg is not None and cfg.defaults.timeout.read == 3.0

    @FUZZ
    @given(raw=st.binary(max_size=200), fmt=st.sampled_from(["yaml", "json", "toml"]))
    def test_arbitrary_bytes_in_a_file_load_or_raise_config_error(
        self, tmp_path_factory: pytest.TempPathFactory, raw: bytes, fmt: str
    ) -> None:
        """
        Arbitrary bytes (not even UTF-8) in a config file give ConfigError, never another exception.
        """
        path = tmp_path_factory.mktemp("cfg") / f"c.{fmt}"
        path.write_bytes(raw)
        load_or_config_error(path)


ANY = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.sampled_from([10**400, -(10**400), math.nan, math.inf, "5", [], {}, [1], ["GET"], {"a": 1}, b"x"])
    | st.lists(st.integers() | st.text(max_size=4) | st.lists(st.none(), max_size=1), max_size=3)
)
POLICIES = {
    Timeouts: ["connect", "read", "total"],
    BackoffPolicy: ["initial", "multiplier", "max", "jitter"],
    RetryPolicy: ["attempts", "on_status", "on", "methods", "idempotency_header",
                  "respect_retry_after", "max_retry_after", "attempt_header"],
    BudgetPolicy: ["ratio", "min_per_second", "window"],
    BreakerPolicy: ["failure_threshold", "reset_timeout", "storage", "mode", "failure_rate",
                    "window", "min_calls", "slow_call_duration"],
    BulkheadPolicy: ["max_concurrent"],
    PoolPolicy: ["max_size"],
    StaticFallback: ["status", "body", "headers"],
    StaleFallback: ["max_entries"],
}


class TestPoliciesBuiltInPython:
    @FUZZ
    @given(data=st.data(), kind=st.sampled_from(sorted(POLICIES, key=lambda k: k.__name__)))
    def test_any_field_values_build_or_raise_config_error(self, data: Any, kind: type) -> None:
        """
        A policy built in Python from arbitrary values is valid or raises ConfigError naming the field.
        """
        fields = data.draw(st.fixed_dictionaries({}, optional={f: ANY for f in POLICIES[kind]}))
        try:
            kind(**fields)
        except ConfigError as e:
            assert_config_error_names_a_path(e)
            assert e.path.split(".")[0].split("[")[0] in POLICIES[kind], e.path


URLS = st.one_of(
    st.text(max_size=30),
    st.builds(
        lambda scheme, host, path: f"{scheme}://{host}/{path}",
        st.sampled_from(["http", "https", "HTTP", "ftp", ""]),
        st.sampled_from(["inv.internal", "a.internal:8080", "[::1]:99", "x", "", "ünï.internal", "h:99999"]),
        st.text(alphabet=string.printable, max_size=12),
    ),
)


class TestSessionsFromFuzzedConfigs:
    @FUZZ
    @given(doc=shaped_documents, method=st.sampled_from(["GET", "POST", "get", "BREW", ""]), url=URLS)
    def test_a_loadable_config_gives_a_session_that_resolves_any_url(
        self, doc: dict[str, Any], method: str, url: str
    ) -> None:
        """
        Any config that loads builds a session that resolves any URL to a policy (or InvalidURL).
        """
        cfg = load_or_config_error(doc)
        if cfg is None:
            return
        with ResilientSession(cfg) as session:
            try:
                policy = session.policy_for(method, url)
            except requests.exceptions.InvalidURL:
                return  # what requests raises for a URL it cannot parse
            assert 0 < policy.timeout.connect < math.inf and 0 < policy.timeout.read < math.inf


class TestRegressions:
    """Bugs the fuzzing found, pinned."""

    @pytest.mark.parametrize("match", ["http://h:99999/", "http://h:port/", "https://%zz/"])
    def test_an_unparseable_prefix_is_a_config_error(self, match: str) -> None:
        """
        A match prefix urllib3 cannot parse is a ConfigError at load, not a crash building the session.
        """
        with pytest.raises(ConfigError, match=r"^endpoints\[0\]\.match: must be a valid URL prefix"):
            ResilientSession({"endpoints": [{"match": match}]})

    def test_a_glob_match_is_not_parsed_as_a_url(self) -> None:
        """
        Globs keep working: only prefixes are parsed as URLs.
        """
        session = ResilientSession({"endpoints": [{"name": "g", "match": "https://*.internal:*/api/*"}]})
        assert session.policy_for("GET", "https://a.internal:8443/api/x").name == "g"

    def test_sending_an_unparseable_url_raises_invalid_url_like_requests(self) -> None:
        """
        A prepared request with an unparseable URL raises InvalidURL, as requests.Session does.
        """
        prepared = requests.Request("GET", "http://ok.test/").prepare()
        prepared.url = "http://h:99999/?token=s3cr3t"
        with pytest.raises(requests.exceptions.InvalidURL) as plain:
            requests.Session().send(prepared)
        with pytest.raises(type(plain.value)) as ours:
            ResilientSession().send(prepared)
        assert "s3cr3t" not in str(ours.value)

    @pytest.mark.parametrize("url", ["::", "[", "\x80"])
    def test_policy_for_an_unparseable_url_raises_invalid_url(self, url: str) -> None:
        """
        policy_for() and resolve() raise requests' InvalidURL for a URL that cannot be parsed.
        """
        with pytest.raises(requests.exceptions.InvalidURL):
            ResilientSession().policy_for("GET", url)

    @pytest.mark.parametrize("value", ["²", "³", "¹²", "5²"])
    def test_a_latin1_digit_in_retry_after_is_unparseable(self, value: str) -> None:
        """
        A Retry-After with a latin-1 digit (isdigit() but not a number) is refused, not a ValueError.
        """
        assert parse_retry_after(value) is None


# -- the classifier ---------------------------------------------------------------------------

LATIN1 = st.text(alphabet=st.characters(max_codepoint=255), max_size=40)
HTTP_DATES = st.datetimes(
    min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime(9999, 12, 31)
).map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S GMT"))
RETRY_AFTER = st.one_of(
    LATIN1,
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True).map(str),
    HTTP_DATES,
    st.sampled_from(["²", "¹²", "0", "-0", "+5", "00", " 7 ", "1e3", "Inf", "NaN", "Sun Nov  6 08:49:37 1994",
                     "Sun, 06 Nov 1994 08:49:37 +2400", "Mon, 32 Foo 99999 99:99:99 GMT", "9" * 400]),
)


class TestRetryAfterParsing:
    @settings(max_examples=500, deadline=None, database=None)
    @given(value=RETRY_AFTER)
    @example(value="²")  # a latin-1 digit: str.isdigit() says yes, float() says no
    def test_never_raises_and_never_returns_a_negative_delay(self, value: str) -> None:
        """
        Any header value gives None or a delay >= 0, never an exception.
        """
        seconds = parse_retry_after(value, now=lambda: 1_700_000_000.0)
        assert seconds is None or seconds >= 0

    @settings(max_examples=200, deadline=None, database=None)
    @given(n=st.integers(0, 10**12))
    def test_delay_seconds_are_read_exactly(self, n: int) -> None:
        """
        A non-negative integer is that many seconds.
        """
        assert parse_retry_after(str(n)) == float(n)


HEADER_NAMES = st.sampled_from(
    ["Retry-After", "retry-after", "RETRY-AFTER", "Content-Length", "Content-Type", "Connection", "X-Other"]
)
HEADERS = st.dictionaries(HEADER_NAMES, RETRY_AFTER, max_size=4)
STATUSES = st.integers(100, 599) | st.sampled_from([429, 500, 502, 503, 504])


def _response(status: int, headers: dict[str, str]) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp.headers = CaseInsensitiveDict(headers)
    resp._content = b""
    return resp


RETRY_POLICIES = st.builds(
    RetryPolicy,
    attempts=st.integers(1, 5),
    backoff=st.builds(BackoffPolicy, initial=st.floats(0, 1), multiplier=st.floats(1, 4),
                      max=st.floats(1, 10),
                      jitter=st.sampled_from(["none", "full", "equal", "decorrelated"])),
    respect_retry_after=st.booleans(),
    max_retry_after=st.floats(0, 100),
    idempotency_header=st.sampled_from([None, "Idempotency-Key"]),
)

EXCEPTIONS = st.sampled_from([
    requests.ConnectionError(),
    requests.ConnectionError(None),
    requests.ConnectionError("text"),
    requests.ConnectionError(u3.MaxRetryError(None, "/x", None)),  # type: ignore[arg-type]
    requests.ConnectionError(u3.MaxRetryError(None, "/x", u3.NewConnectionError(None, "refused"))),  # type: ignore[arg-type]
    requests.ConnectionError(u3.MaxRetryError(None, "/x", u3.ProtocolError("x"))),  # type: ignore[arg-type]
    requests.ConnectionError(u3.ReadTimeoutError(None, "/x", "t")),  # type: ignore[arg-type]
    requests.ConnectionError(u3.ConnectTimeoutError()),
    requests.ConnectTimeout(),
    requests.ReadTimeout(),
    requests.exceptions.ChunkedEncodingError(),
    requests.exceptions.SSLError(),
    requests.exceptions.TooManyRedirects(),
    requests.exceptions.InvalidURL(),
    OSError("raw"),
    ValueError("bad"),
])


class TestClassifier:
    @settings(max_examples=300, deadline=None, database=None)
    @given(policy=RETRY_POLICIES, status=STATUSES, headers=HEADERS,
           method=st.sampled_from(["GET", "POST", "PUT"]),
           keyed=st.booleans(), attempt=st.integers(1, 10), left=st.floats(-1, 100) | st.none())
    def test_any_status_and_headers_are_classified_without_crashing(
        self, policy: RetryPolicy, status: int, headers: dict[str, str], method: str, keyed: bool,
        attempt: int, left: float | None,
    ) -> None:
        """
        RetrySafely, Backoff and the stop strategies accept any response; the wait is finite and bounded.
        """
        clock = FakeClock(1000.0)
        retrying = build_retrying(policy, sleep=clock.sleep, before_sleep=lambda rs: None,
                                  wall_clock=lambda: 1_700_000_000.0)
        key = {"Idempotency-Key": "k"} if keyed else {}
        request = requests.Request(method, "http://peer.test/x", headers=key)
        prepared = request.prepare()
        deadline = None if left is None else Deadline(clock, max(left, 0.001), at=clock.monotonic() + left)
        call = Call(prepared, {}, deadline, None, idempotent=method != "POST" or keyed, replayable=True)
        rs = tenacity.RetryCallState(retrying, None, (call,), {})
        rs.attempt_number = attempt
        rs.set_result(_response(status, headers))
        retry = retrying.retry(rs)
        assert isinstance(retry, bool)
        wait = retrying.wait(rs)
        assert 0 <= wait <= max(policy.max_retry_after, policy.backoff.max) and math.isfinite(wait)
        rs.upcoming_sleep = wait
        assert isinstance(retrying.stop(rs), bool)
        if retry and not retrying.stop(rs) and deadline is not None:
            assert wait < deadline.remaining()  # a retry that happens never sleeps past the deadline

    @settings(max_examples=200, deadline=None, database=None)
    @given(policy=RETRY_POLICIES, exc=EXCEPTIONS, method=st.sampled_from(["GET", "POST"]))
    def test_any_exception_is_classified_without_crashing(
        self, policy: RetryPolicy, exc: BaseException, method: str
    ) -> None:
        """
        failure_kind, is_peer_failure and RetrySafely accept any exception; only transport errors retry.
        """
        kind = failure_kind(exc)
        assert kind in (None, "connect_error", "connect_timeout", "read_timeout", "read_error")
        assert isinstance(is_peer_failure(exc), bool)
        retrying = build_retrying(policy, sleep=lambda s: None, before_sleep=lambda rs: None)
        prepared = requests.Request(method, "http://peer.test/x").prepare()
        call = Call(prepared, {}, None, None, idempotent=method == "GET", replayable=True)
        rs = tenacity.RetryCallState(retrying, None, (call,), {})
        rs.set_exception((type(exc), exc, None))
        if retrying.retry(rs):
            assert kind is not None


class TestWholeCalls:
    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(
        script=st.lists(st.tuples(STATUSES, HEADERS), min_size=1, max_size=4),
        column=st.sampled_from(["plain", "breaker", "fallback", "stale"]),
        method=st.sampled_from(["GET", "POST", "PUT"]),
    )
    def test_any_sequence_of_answers_gives_a_response_or_a_typed_error(
        self, script: list[tuple[int, dict[str, str]]], column: str, method: str
    ) -> None:
        """
        Whatever statuses and headers the peer answers, a call gives a response or a typed error.
        """
        defaults: dict[str, Any] = {
            "timeout": {"connect": 1, "read": 1, "total": 5},
            "retry": {"attempts": 4, "max_retry_after": 3},
            "breaker": {"failure_threshold": 2} if column != "plain" else None,
        }
        if column == "fallback":
            defaults["fallback"] = {"status": 200, "text": "fb"}
        if column == "stale":
            defaults["fallback"] = "stale"
        clock = FakeClock(1000.0)
        with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
            for status, headers in script:
                safe = {k: v for k, v in headers.items() if k.lower() not in ("content-length", "connection")}
                mock.add(method, "http://peer.test/x", status=status, headers=safe, body=b"b")
            with ResilientSession({"defaults": defaults}, clock=clock) as session:
                for _ in range(2):  # the second call meets the breaker and stale cache the first left
                    try:
                        resp = session.request(method, "http://peer.test/x")
                    except requests.RequestException:
                        continue
                    assert 100 <= resp.status_code <= 599
                    assert resp.attempts >= (0 if resp.is_fallback else 1)
        assert sum(clock.sleeps) <= 5

