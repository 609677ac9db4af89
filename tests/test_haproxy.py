"""
Tests for the HAProxy checker (`tools/_haproxy.py`): reading the parts of haproxy.cfg
it needs, and reporting client and proxy settings that contradict each
other, with small haproxy.cfg strings.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from resilient_client import Config
from resilient_client._config import load_config
from resilient_client._policy import BackoffPolicy, Jitter
from resilient_client._retry import Backoff
from resilient_client.tools import Finding, check_haproxy
from resilient_client.tools._haproxy import parse_haproxy, parse_time
from resilient_client.tools._policy_checks import max_backoff, min_backoff


def cfg(**endpoint: Any) -> Config:
    """A config with one endpoint named ``app`` carrying *endpoint*'s sections."""
    endpoints = [{"name": "app", "match": "http://app.internal/", **endpoint}]
    return load_config({"endpoints": endpoints})


def backend(body: str, *, defaults: str = "    mode http\n") -> str:
    """A haproxy.cfg with *defaults* and a backend ``app`` holding *body*."""
    return f"defaults\n{defaults}\nbackend app\n{body}    server s1 127.0.0.1:8080\n"


def codes(findings: list[Finding], endpoint: str | None = "app") -> dict[str, Finding]:
    return {f.code: f for f in findings if f.endpoint == endpoint}


# -- parsing ---------------------------------------------------------------------------


class TestParseTime:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("1500", 1.5), ("1500ms", 1.5), ("2s", 2.0), ("1m", 60.0), ("2h", 7200.0),
         ("1d", 86400.0), ("250000us", 0.25), ("0", None), ("0s", None)],
    )
    def test_units(self, text: str, seconds: float | None) -> None:
        """
        HAProxy times are milliseconds unless suffixed with us, ms, s, m, h or d; 0 is no timeout.
        """
        assert parse_time(text) == seconds

    @pytest.mark.parametrize("text", ["", "1.5s", "10x", "-1s", "s", "1 s", "ten"])
    def test_bad_times(self, text: str) -> None:
        """
        Anything else is refused.
        """
        with pytest.raises(ValueError):
            parse_time(text)


class TestParseHAProxy:
    def test_defaults_apply_to_later_backends(self) -> None:
        """
        A backend starts from the last defaults section before it and overrides what it sets.
        """
        (b,), problems = parse_haproxy(
            "defaults\n  mode http\n  timeout server 30s\n  timeout connect 2s\n  retries 1\n"
            "backend app\n  timeout server 5s\n"
        )
        assert problems == []
        got = (b.name, b.mode, b.timeout_server, b.timeout_connect, b.retries)
        assert got == ("app", "http", 5.0, 2.0, 1)

    def test_haproxy_defaults_when_unset(self) -> None:
        """
        Unset: mode tcp, 3 retries on conn-failure, no redispatch, no timeouts.
        """
        (b,), _ = parse_haproxy("backend app\n  server s 127.0.0.1:1\n")
        assert (b.mode, b.retries, b.retry_on, b.redispatch, b.timeout_server) == (
            "tcp", 3, ("conn-failure",), False, None
        )

    def test_queue_timeout_falls_back_to_connect(self) -> None:
        """
        Without ``timeout queue``, HAProxy uses ``timeout connect`` for the queue.
        """
        (a, b), _ = parse_haproxy(
            "defaults\n timeout connect 4s\nbackend a\nbackend b\n timeout queue 9s\n"
        )
        assert (a.timeout_queue, b.timeout_queue) == (4.0, 9.0)

    def test_a_new_defaults_section_resets(self) -> None:
        """
        An anonymous defaults section starts from HAProxy's defaults, not from the previous one.
        """
        (a, b), _ = parse_haproxy(
            "defaults\n timeout server 7s\nbackend a\ndefaults\n mode http\nbackend b\n"
        )
        assert (a.timeout_server, b.timeout_server, b.mode) == (7.0, None, "http")

    def test_named_defaults_with_from(self) -> None:
        """
        ``backend NAME from DEFAULTS`` takes a named defaults section, not the last one.
        """
        (b,), _ = parse_haproxy(
            "defaults slow\n timeout server 60s\ndefaults fast\n timeout server 1s\n"
            "backend app from slow\n"
        )
        assert b.timeout_server == 60.0

    def test_listen_sections_are_backends_and_frontends_are_not(self) -> None:
        """
        ``listen`` sections are checked like backends; frontends and global are skipped.
        """
        backends, _ = parse_haproxy(
            "global\n retries 9\nfrontend fe\n bind :80\n timeout client 5s\n"
            "listen web\n bind :81\n"
        )
        assert [(b.name, b.section, b.retries) for b in backends] == [("web", "listen", 3)]

    def test_comments_quotes_and_escapes(self) -> None:
        """
        ``#`` starts a comment outside quotes; quoted and escaped words are read whole.
        """
        (b,), problems = parse_haproxy(
            'backend app # the app\n  timeout server 2s # was 30s\n'
            '  http-request set-timeout server "req.hdr_val(X-Request-Timeout-Ms)"'
            ' if { req.hdr(x-a\\#b) -m found }\n'
        )
        assert problems == []
        assert b.timeout_server == 2.0
        assert b.deadline_headers == {"x-request-timeout-ms"}

    def test_retry_on_all_retryable_errors_expands(self) -> None:
        """
        ``retry-on all-retryable-errors`` stands for HAProxy's list of retryable failures.
        """
        (b,), _ = parse_haproxy("backend app\n mode http\n retry-on all-retryable-errors\n")
        assert {"response-timeout", "503", "conn-failure"} <= set(b.retry_on)

    def test_retry_on_is_ignored_in_tcp_mode(self) -> None:
        """
        Outside HTTP mode HAProxy ignores ``retry-on``: only connections are retried.
        """
        (b,), _ = parse_haproxy("backend app\n mode tcp\n retry-on 503 response-timeout\n")
        assert b.retry_on == ("conn-failure",)

    def test_options_toggle(self) -> None:
        """
        ``option redispatch`` / ``option abortonclose`` and their ``no option`` forms are read.
        """
        (a, b), _ = parse_haproxy(
            "defaults\n option redispatch\n option abortonclose\n"
            "backend a\nbackend b\n no option redispatch\n"
        )
        got = (a.redispatch, a.abortonclose, b.redispatch, b.abortonclose)
        assert got == (True, True, False, True)

    def test_set_timeout_reads_only_the_expression(self) -> None:
        """
        The headers named in ``set-timeout server``'s expression are recorded, not those in its
        condition.
        """
        (b,), _ = parse_haproxy(
            "backend app\n mode http\n"
            " http-request set-timeout server req.hdr_val(x-deadline)"
            " if { req.hdr(x-other) -m found }\n"
            " http-request set-timeout tunnel req.hdr_val(x-tunnel)\n"
        )
        assert b.deadline_headers == {"x-deadline"}

    def test_unreadable_values_are_reported_with_their_line(self) -> None:
        """
        A value the checker cannot read becomes a ``haproxy-parse`` finding naming the line.
        """
        _, problems = parse_haproxy("backend app\n timeout server soon\n retries many\n")
        assert [(p.code, p.line) for p in problems] == [("haproxy-parse", 2), ("haproxy-parse", 3)]


# -- client-only ---------------------------------------------------------------------


class TestTheDeadline:
    def test_the_built_in_defaults_pass(self) -> None:
        """
        An empty config reports nothing: 3 x (1 s + 5 s) beyond total 10 s is the defaults' design.
        """
        assert check_haproxy(load_config({}), "") == []

    def test_attempts_beyond_total_are_not_a_mistake(self) -> None:
        """
        Retries that only fast failures can use (a hang would cut them short) are not reported.
        """
        c = cfg(timeout={"connect": 1, "read": 4, "total": 8}, fallback="stale",
                retry={"attempts": 3, "backoff": {"initial": 0.5, "multiplier": 2, "jitter": "none"}})
        assert check_haproxy(c, "") == []

    def test_not_even_one_attempt_fits(self) -> None:
        """
        connect + read beyond total is reported: the read timeout can never fire, no retry follows.
        """
        c = cfg(timeout={"connect": 1, "read": 10, "total": 5})
        f = codes(check_haproxy(c, ""))["attempt-exceeds-total"]
        assert f.severity == "warning"
        assert f.message.startswith("not even one attempt fits in total 5 s: connect 1 s + read 10 s = 11 s")
        assert "no retry can follow it" in f.message
        # Said once: that no retry can start after it follows from the same numbers.
        assert "retry-never-starts" not in codes(check_haproxy(c, ""))

    def test_one_attempt_that_fits_exactly_is_fine(self) -> None:
        """
        connect + read equal to total fits (with full jitter a retry may even start at once).
        """
        assert check_haproxy(cfg(timeout={"connect": 1, "read": 4, "total": 5}, fallback="stale"), "") == []

    def test_no_retry_after_a_read_timeout(self) -> None:
        """
        A read timeout plus the shortest backoff beyond total: read_timeout in retry.on is never retried.
        """
        c = cfg(timeout={"connect": 1, "read": 8.9, "total": 10},
                retry={"backoff": {"initial": 0.5, "jitter": "none"}})
        f = codes(check_haproxy(c, ""))["retry-never-starts"]
        assert f.message.startswith("after a read timeout (the first attempt's worst case, 9.9 s), even "
                                    "the shortest backoff (0.5 s) passes total 10 s")
        assert "only the first of the 3 attempts runs" in f.message

    @pytest.mark.parametrize(("jitter", "initial", "reported"), [
        ("none", 0.5, True), ("equal", 0.5, False), ("equal", 1.0, True),
        ("decorrelated", 0.5, True), ("full", 5.0, False),
    ])
    def test_the_shortest_backoff_is_the_jitters_lowest_draw(self, jitter: str, initial: float,
                                                              reported: bool) -> None:
        """
        "Shortest" is what the jitter can draw lowest: none and decorrelated initial, equal half, full 0.
        """
        c = cfg(timeout={"connect": 0.5, "read": 9.2, "total": 10},
                retry={"backoff": {"initial": initial, "jitter": jitter}})
        assert ("retry-never-starts" in codes(check_haproxy(c, ""))) is reported

    def test_without_timeouts_in_retry_on_only_fast_failures_matter(self) -> None:
        """
        With no timeout in retry.on, a slow first attempt is not meant to be retried: nothing to report.
        """
        c = cfg(timeout={"connect": 1, "read": 8.9, "total": 10},
                retry={"on": ["connect_error"], "backoff": {"initial": 0.5, "jitter": "none"}})
        assert "retry-never-starts" not in codes(check_haproxy(c, ""))

    def test_a_connect_timeout_alone_counts_its_own_wait(self) -> None:
        """
        With connect_timeout (not read_timeout) in retry.on, the first attempt's worst case is connect.
        """
        retry = {"on": ["connect_timeout"], "backoff": {"initial": 2, "jitter": "none"}}
        slow = cfg(timeout={"connect": 3, "read": 1, "total": 4.5}, retry=retry)
        # 2 + 2 + 2 > 4.5, but a read timeout is not in retry.on: only the connect wait counts.
        fast = cfg(timeout={"connect": 2, "read": 2, "total": 4.5}, retry=retry)
        assert "after a connect timeout (the first attempt's worst case, 3 s)" in (
            codes(check_haproxy(slow, ""))["retry-never-starts"].message)
        assert "retry-never-starts" not in codes(check_haproxy(fast, ""))

    def test_a_backoff_as_long_as_total_means_no_retry_ever(self) -> None:
        """
        When the shortest backoff alone reaches total, not even a fast failure is retried.
        """
        c = cfg(timeout={"total": 10}, retry={"attempts": 2, "backoff": {"initial": 10, "max": 20,
                                                                          "jitter": "none"}})
        f = codes(check_haproxy(c, ""))["retry-never-starts"]
        assert f.message.startswith("the shortest first backoff is 10 s, not less than total 10 s: none of "
                                    "the 1 retries can ever start, not even after a fast failure")

    @pytest.mark.parametrize(
        "endpoint", [{"retry": None}, {"retry": {"attempts": 1}}, {"timeout": {"total": None}}]
    )
    def test_quiet_without_retries_or_total(self, endpoint: dict[str, Any]) -> None:
        """
        With no retries nothing can fail to start, and with no total nothing can exceed it.
        """
        endpoint = {**endpoint, "timeout": {"read": 12, **endpoint.get("timeout", {})}}
        found = codes(check_haproxy(cfg(**endpoint), ""))
        assert "retry-never-starts" not in found
        assert ("attempt-exceeds-total" in found) is (endpoint["timeout"].get("total", 10) is not None)


class TestLikelyMilliseconds:
    @pytest.mark.parametrize(("endpoint", "key", "fix"), [
        ({"timeout": {"read": 5000, "total": None}}, "timeout.read", "read: 5"),
        ({"timeout": {"total": 30000}}, "timeout.total", "total: 30"),
        ({"timeout": {"connect": 500}}, "timeout.connect", "connect: 0.5"),
        ({"breaker": {"reset_timeout": 30000}}, "breaker.reset_timeout", "reset_timeout: 30"),
        ({"retry": {"backoff": {"initial": 1000, "max": 1000}}}, "retry.backoff.initial", "initial: 1"),
    ])
    def test_durations_past_the_threshold_are_reported(self, endpoint: dict[str, Any], key: str,
                                                       fix: str) -> None:
        """
        A duration of 1000 s or more (connect: 60 s) is reported with the seconds it likely meant.
        """
        found = [f for f in check_haproxy(cfg(**endpoint), "") if f.code == "likely-milliseconds"]
        f = next(f for f in found if f.message.startswith(f"{key} is "))
        assert f.severity == "warning" and f.endpoint == "app"
        assert f.message.endswith(f"ms write {fix}")

    @pytest.mark.parametrize("endpoint", [
        {"timeout": {"connect": 59, "read": 999, "total": None}},
        {"breaker": {"reset_timeout": 900}, "retry": {"max_retry_after": 600}},
    ])
    def test_long_but_plausible_durations_are_not(self, endpoint: dict[str, Any]) -> None:
        """
        Just under the thresholds is a choice, not a slip.
        """
        assert "likely-milliseconds" not in codes(check_haproxy(cfg(**endpoint), ""))

    def test_an_inherited_value_is_reported_once_where_it_was_written(self) -> None:
        """
        A slip in defaults is reported for defaults, not again for every endpoint inheriting it.
        """
        c = load_config({"defaults": {"timeout": {"read": 5000, "total": None}},
                         "endpoints": [{"name": n, "match": f"http://{n}.test/", "fallback": "stale"}
                                       for n in ("a", "b")]})
        assert [(f.code, f.endpoint) for f in check_haproxy(c, "")] == [("likely-milliseconds", "default")]


class TestCriticalWithoutFallback:
    def test_an_endpoint_critical_by_default_is_a_warning(self) -> None:
        """
        An endpoint without a fallback (critical by default) is reported: its open breaker means 503.
        """
        f = codes(check_haproxy(cfg(), ""))["critical-without-fallback"]
        assert f.severity == "warning" and "set critical: false" in f.message

    def test_a_written_critical_true_is_only_a_reminder(self) -> None:
        """
        `critical: true` written by hand is a deliberate choice: reported as info.
        """
        assert codes(check_haproxy(cfg(critical=True), ""))["critical-without-fallback"].severity == "info"

    @pytest.mark.parametrize("endpoint", [{"fallback": "stale"}, {"critical": False}, {"breaker": None}])
    def test_nothing_to_report_when_the_health_view_cannot_turn(self, endpoint: dict[str, Any]) -> None:
        """
        A fallback, critical: false, or no breaker at all: the endpoint never makes /health 503 alone.
        """
        assert "critical-without-fallback" not in codes(check_haproxy(cfg(**endpoint), ""))

    def test_the_defaults_are_not_reported(self) -> None:
        """
        Unmatched origins are critical by the defaults' design; only configured endpoints are reported.
        """
        assert "critical-without-fallback" not in codes(check_haproxy(cfg(), ""), endpoint="default")


class TestBackoffBounds:
    def test_backoff_worst_case(self) -> None:
        """
        The worst-case backoff is the sum of the capped exponential bases (decorrelated: x3 steps).
        """
        full = BackoffPolicy(initial=1, multiplier=2, max=3, jitter=Jitter.FULL)
        decorrelated = BackoffPolicy(initial=1, max=5, jitter=Jitter.DECORRELATED)
        assert max_backoff(full, 3) == 1 + 2 + 3
        assert max_backoff(decorrelated, 3) == 3 + 5 + 5
        assert max_backoff(BackoffPolicy(), 0) == 0

    @pytest.mark.parametrize("jitter", list(Jitter))
    def test_backoff_shortest_case_bounds_what_the_retry_layer_sleeps(self, jitter: Jitter) -> None:
        """
        No first sleep of the retry layer's own Backoff is shorter than min_backoff, and it comes close.
        """
        policy = BackoffPolicy(initial=0.4, max=2.0, jitter=jitter)
        bound = min_backoff(policy)
        firsts = [Backoff(policy, rng=random.Random(seed)).sleep_for(1, 0.0) for seed in range(300)]
        assert min(firsts) >= bound - 1e-9
        assert min(firsts) <= bound + 0.02

    @pytest.mark.parametrize("jitter", list(Jitter))
    def test_backoff_worst_case_bounds_what_the_retry_layer_sleeps(self, jitter: Jitter) -> None:
        """
        No run of the retry layer's own Backoff sleeps longer than max_backoff, and the bound is reached.
        """
        policy = BackoffPolicy(initial=0.1, multiplier=3, max=2.0, jitter=jitter)
        bound = max_backoff(policy, 4)
        longest = 0.0
        for seed in range(300):
            backoff = Backoff(policy, rng=random.Random(seed))
            total, prev = 0.0, 0.0
            for n in range(1, 5):
                prev = backoff.sleep_for(n, prev)
                total += prev
            assert total <= bound + 1e-9
            longest = max(longest, total)
        assert longest >= bound * (0.8 if jitter is not Jitter.NONE else 1.0)


# -- client x HAProxy ------------------------------------------------------------------


class TestTimeouts:
    def test_server_timeout_shorter_than_the_client_wait(self) -> None:
        """
        A client that waits longer than ``timeout server`` and retries 504 is an error.
        """
        text = backend("    timeout server 10s\n")
        f = codes(check_haproxy(cfg(timeout={"read": 30, "total": 30}), text))
        assert f["server-timeout-first"].severity == "error"
        assert "answers 504 after 10 s" in f["server-timeout-first"].message
        assert "runs up to 3 times" in f["server-timeout-first"].message

    def test_server_timeout_first_without_504_retries_is_a_warning(self) -> None:
        """
        Without retries of 504 the same pair is only a warning.
        """
        c = cfg(timeout={"read": 30, "total": 30}, retry={"on_status": [503]})
        f = codes(check_haproxy(c, backend("    timeout server 10s\n")))
        assert f["server-timeout-first"].severity == "warning"

    def test_total_beyond_server_timeout_is_fine_when_read_is_shorter(self) -> None:
        """
        A long total is not reported when each attempt's read timeout is within ``timeout server``.
        """
        text = backend("    timeout server 10s\n")
        f = codes(check_haproxy(cfg(timeout={"read": 5, "total": 30}), text))
        assert "server-timeout-first" not in f

    def test_no_server_timeout(self) -> None:
        """
        A backend without ``timeout server`` is reported: HAProxy never gives up on the server.
        """
        f = codes(check_haproxy(cfg(), backend("")))
        assert f["no-server-timeout"].severity == "warning"

    def test_queue_timeout_shorter_than_the_client_wait(self) -> None:
        """
        ``timeout queue`` shorter than the client's wait is reported; worse when 503 is retried.
        """
        text = backend("    timeout server 30s\n    timeout queue 2s\n")
        retried = codes(check_haproxy(cfg(timeout={"read": 5}), text))["queue-timeout-first"]
        unretried = codes(check_haproxy(cfg(timeout={"read": 5}, retry=None), text))
        quiet = unretried["queue-timeout-first"]
        assert (retried.severity, quiet.severity) == ("warning", "info")
        assert "503" in retried.message and "queues it again, up to 3 times" in retried.message

    def test_orphaned_work_hint_and_its_cure(self) -> None:
        """
        A server timeout longer than the client's wait suggests propagation, unless set-timeout uses
        it.
        """
        c = cfg(timeout={"read": 2, "total": 4}, propagation={})
        plain = codes(check_haproxy(c, backend("    timeout server 60s\n")))
        cured = codes(check_haproxy(c, backend(
            "    timeout server 60s\n"
            "    http-request set-timeout server req.hdr_val(X-Request-Timeout-Ms)\n"
        )))
        assert plain["orphaned-work"].severity == "info"
        assert "abortonclose" in plain["orphaned-work"].message
        assert "orphaned-work" not in cured and "deadline-header" not in cured

    def test_tcp_mode_closes_instead_of_504(self) -> None:
        """
        In TCP mode the server timeout closes the connection rather than answering 504.
        """
        text = backend("    timeout server 1s\n", defaults="    mode tcp\n")
        f = codes(check_haproxy(cfg(timeout={"read": 5}), text))["server-timeout-first"]
        assert "closes the connection" in f.message


class TestStackedRetries:
    def test_post_send_retries_multiply_requests(self) -> None:
        """
        HAProxy retry-on after the request was sent, under client retries, is an error with the
        multiplier.
        """
        text = backend("    timeout server 5s\n    retries 2\n    retry-on 503 response-timeout\n")
        f = codes(check_haproxy(cfg(timeout={"read": 4}), text))["stacked-retries"]
        assert (f.severity, f.multiplier) == ("error", 9)
        assert "3 x 3 = 9 requests per call" in f.message
        assert "same server" in f.message

    def test_connection_retries_are_a_warning(self) -> None:
        """
        HAProxy's default connection retries stack too: 3 client attempts x 4 = 12 connection
        attempts.
        """
        text = backend("    timeout server 5s\n    timeout connect 100ms\n    option redispatch\n")
        f = codes(check_haproxy(cfg(timeout={"read": 4}), text))["stacked-retries"]
        assert (f.severity, f.multiplier) == ("warning", 12)
        assert "connection attempts" in f.message and "same server" not in f.message

    def test_slow_haproxy_retry_chain_is_spelled_out(self) -> None:
        """
        When HAProxy's own retries outlast the client's wait, the message says how long they take.
        """
        text = backend("    timeout server 5s\n    timeout connect 5s\n    retries 3\n")
        f = codes(check_haproxy(cfg(timeout={"read": 4}), text))["stacked-retries"]
        assert "can take 23 s, longer than the client waits (4 s)" in f.message

    @pytest.mark.parametrize(
        ("endpoint", "body"),
        [({"retry": None}, "    retries 3\n"),
         ({}, "    retries 0\n"),
         ({}, "    retry-on none\n")],
        ids=["client-no-retry", "haproxy-retries-0", "retry-on-none"],
    )
    def test_one_layer_is_quiet(self, endpoint: dict[str, Any], body: str) -> None:
        """
        Retrying at one layer only is not reported.
        """
        text = backend("    timeout server 5s\n" + body)
        assert "stacked-retries" not in codes(check_haproxy(cfg(**endpoint), text))


class TestDeadlineHeader:
    def test_haproxy_expects_a_header_the_client_does_not_send(self) -> None:
        """
        set-timeout from a header while the client's propagation is off is a warning.
        """
        text = backend(
            "    timeout server 5s\n"
            "    http-request set-timeout server req.hdr_val(X-Request-Timeout-Ms)\n"
        )
        f = codes(check_haproxy(cfg(timeout={"read": 4}), text))["deadline-header"]
        assert "propagation is off" in f.message

    def test_header_names_must_agree(self) -> None:
        """
        A client sending another header than the one HAProxy reads is a warning.
        """
        text = backend(
            "    timeout server 5s\n    http-request set-timeout server req.hdr_val(X-Budget)\n"
        )
        c = cfg(timeout={"read": 4}, propagation={})
        f = codes(check_haproxy(c, text))["deadline-header"]
        assert "x-budget" in f.message and "X-Request-Timeout-Ms" in f.message


class TestPairing:
    def test_endpoint_pairs_with_the_backend_of_its_name(self) -> None:
        """
        An endpoint is checked against the backend of the same name only.
        """
        text = (
            "defaults\n mode http\n"
            "backend app\n timeout server 60s\n"
            "backend other\n timeout server 1s\n"
        )
        found = check_haproxy(cfg(timeout={"read": 5}), text)
        assert {f.backend for f in found if f.endpoint == "app" and f.backend} == {"app"}
        # The defaults policy is checked against the backend nobody claimed.
        assert {f.backend for f in found if f.endpoint == "default" and f.backend} == {"other"}

    def test_unpaired_policies_meet_every_unclaimed_backend(self) -> None:
        """
        Without matching names, every policy is checked against every backend.
        """
        text = "defaults\n mode http\n timeout server 1s\nbackend a\nbackend b\n"
        found = check_haproxy(cfg(timeout={"read": 5}), text)
        pairs = {(f.endpoint, f.backend) for f in found if f.code == "server-timeout-first"}
        assert pairs == {("app", "a"), ("app", "b"), ("default", "a"), ("default", "b")}

    def test_most_serious_first_and_printable(self) -> None:
        """
        Findings come errors first, and print as one line naming both sides.
        """
        text = backend("    timeout server 1s\n    retry-on 503\n")
        found = check_haproxy(cfg(timeout={"read": 5}), text)
        ranks = [("error", "warning", "info").index(f.severity) for f in found]
        assert ranks == sorted(ranks) and ranks[0] == 0
        line = str(found[0])
        assert line.startswith("error: endpoint 'app' / haproxy backend 'app' (line 4): ")
        assert line.endswith("]") and "\n" not in line

    def test_a_coherent_setup_has_no_findings(self) -> None:
        """
        The setup the docs recommend (one retry layer, deadline header enforced) is clean.
        """
        c = cfg(timeout={"connect": 0.5, "read": 2, "total": 6}, propagation={}, fallback="stale",
                retry={"attempts": 2, "backoff": {"initial": 0.1, "max": 0.5}})
        text = backend(
            "    timeout connect 500ms\n    timeout queue 5s\n    timeout server 6s\n"
            "    retries 0\n    option abortonclose\n"
            "    http-request set-timeout server req.hdr_val(X-Request-Timeout-Ms)"
            " if { req.hdr_val(X-Request-Timeout-Ms) 1:6000 }\n"
        )
        assert [str(f) for f in check_haproxy(c, text) if f.endpoint == "app"] == []
