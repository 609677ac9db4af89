"""
Tests for reading configuration (`_config`) and the policy values (`_policy`).

The contract: every key is optional, unknown keys and bad values are a
`ConfigError` naming the key path, the built-in defaults are safe, and an
endpoint's sections are merged over ``defaults`` key by key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from requests import Response

from resilient_client import (
    BackoffPolicy,
    BreakerPolicy,
    BudgetPolicy,
    BulkheadPolicy,
    CallableFallback,
    Config,
    ConfigError,
    Endpoint,
    Jitter,
    Policy,
    PoolPolicy,
    RetryPolicy,
    Secrets,
    StaleFallback,
    StaticFallback,
    Timeouts,
)
from resilient_client._config import (
    _ENDPOINT_KEYS,
    _FALLBACK_FORMS,
    _NULLABLE,
    _SECRETS_KEYS,
    _SECTION_KEYS,
    _SECTION_KINDS,
    _STALE_KEYS,
    _TOP_KEYS,
    _yaml_loads,
    load_config,
)
from resilient_client._errors import _SHOWN

ROOT = Path(__file__).resolve().parent.parent
ALWAYS_SECRET = {"authorization", "proxy-authorization", "cookie", "set-cookie"}


# -- helpers ------------------------------------------------------------------


def defaults(**sections: Any) -> dict[str, Any]:
    """A config whose ``defaults`` holds *sections*."""
    return {"defaults": sections}


def ep(**keys: Any) -> dict[str, Any]:
    """One endpoint entry, with a valid ``match`` unless *keys* gives one."""
    return {"match": "https://svc.internal/", **keys}


def endpoints(*entries: Any) -> dict[str, Any]:
    """A config whose ``endpoints`` are *entries*."""
    return {"endpoints": list(entries)}


def third(**keys: Any) -> dict[str, Any]:
    """A config whose bad entry is ``endpoints[2]``, after two valid ones."""
    return endpoints(ep(match="https://a.internal/"), ep(match="https://b.internal/"), ep(**keys))


def load_error(source: Any) -> ConfigError:
    """Load *source*, expecting a `ConfigError`, and return it."""
    with pytest.raises(ConfigError) as info:
        load_config(source)
    return info.value


def bad(
    id: str, config: Any, path: str, problem: str
) -> Any:
    """One row of the bad-input table."""
    marks: list[Any] = []
    return pytest.param(config, path, problem, id=id, marks=marks)


# -- the built-in defaults ----------------------------------------------------

#: Every default of the contract, as (attribute path on Config, value).
CONTRACT_DEFAULTS = [
    ("defaults.timeout.connect", 1.0),
    ("defaults.timeout.read", 5.0),
    ("defaults.timeout.total", 10.0),
    ("defaults.retry.attempts", 3),
    ("defaults.retry.backoff.initial", 0.1),
    ("defaults.retry.backoff.multiplier", 2.0),
    ("defaults.retry.backoff.max", 5.0),
    ("defaults.retry.backoff.jitter", "full"),
    ("defaults.retry.on_status", {429, 502, 503, 504}),
    ("defaults.retry.on", {"connect_error", "connect_timeout", "read_timeout", "read_error"}),
    ("defaults.retry.methods", {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"}),
    ("defaults.retry.idempotency_header", None),
    ("defaults.retry.respect_retry_after", True),
    ("defaults.retry.max_retry_after", 30.0),
    ("defaults.budget.ratio", 0.2),
    ("defaults.budget.min_per_second", 10),
    ("defaults.failure_status", {500, 502, 503, 504}),
    ("defaults.breaker.failure_threshold", 5),
    ("defaults.breaker.reset_timeout", 30.0),
    ("defaults.breaker.storage", "memory"),
    ("defaults.bulkhead.max_concurrent", 50),
    ("defaults.fallback", None),
    ("secrets.headers", ALWAYS_SECRET),
    ("secrets.query", set()),
    ("endpoints", ()),
]


def attr(obj: object, dotted: str) -> Any:
    """Follow a dotted attribute path from *obj*."""
    for name in dotted.split("."):
        obj = getattr(obj, name)
    return obj


class TestDefaults:
    @pytest.mark.parametrize(
        ("dotted", "expected"), CONTRACT_DEFAULTS, ids=[d for d, _ in CONTRACT_DEFAULTS]
    )
    def test_contract_default(self, dotted: str, expected: object) -> None:
        """
        With no config, every setting has the value the contract documents.
        """
        assert attr(load_config(None), dotted) == expected

    @pytest.mark.parametrize(
        "source",
        [None, {}, {"defaults": None}, {"defaults": {}}, {"endpoints": []}, {"secrets": {}}],
        ids=["none", "empty", "defaults-null", "defaults-empty", "no-endpoints", "secrets-empty"],
    )
    def test_empty_sources_are_the_defaults(self, source: Any) -> None:
        """
        None, an empty mapping and empty sections all give the built-in defaults.
        """
        assert load_config(source) == Config()

    def test_default_timeouts_are_finite(self) -> None:
        """
        The built-in defaults are safe: connect, read and total are finite.
        """
        t = Config().defaults.timeout
        assert t.total is not None
        assert all(0 < v < math.inf for v in (t.connect, t.read, t.total))

    def test_config_load_is_load_config(self) -> None:
        """
        `Config.load` reads a mapping the same way as `load_config`.
        """
        raw = defaults(retry={"attempts": 2})
        assert Config.load(raw) == load_config(raw)

    def test_a_config_is_returned_as_is(self) -> None:
        """
        An already-validated `Config` is passed through unchanged.
        """
        cfg = load_config(defaults(retry=None))
        assert load_config(cfg) is cfg
        assert Config.load(cfg) is cfg

    @pytest.mark.parametrize("source", [42, 1.5, b"{}", [], [{"defaults": {}}]], ids=repr)
    def test_other_source_types_are_a_config_error(self, source: Any) -> None:
        """
        A source that is neither a mapping, a path nor a Config is a ConfigError.
        """
        err = load_error(source)
        assert err.path == ""
        assert "must be a mapping, a file path or a Config" in str(err)


# -- bad values ---------------------------------------------------------------

INF, NAN = math.inf, math.nan
BAD_INPUTS = [
    # The example from the contract, to the letter (checked in full below).
    bad("contract-example", endpoints(ep(match="https://a.internal/"), ep(retry={"attempts": 0})),
        "endpoints[1].retry.attempts", "must be an integer >= 1, got 0"),
    # Wrong types: a string for a number, a list for a mapping, a mapping for a list.
    bad("str-for-connect", defaults(timeout={"connect": "1"}), "defaults.timeout.connect",
        "must be a number, got '1'"),
    bad("str-with-unit", defaults(timeout={"read": "5s"}), "defaults.timeout.read",
        "must be a number, got '5s'"),
    bad("str-for-attempts", defaults(retry={"attempts": "3"}), "defaults.retry.attempts",
        "must be an integer >= 1, got '3'"),
    bad("list-for-number", defaults(timeout={"total": [10]}), "defaults.timeout.total",
        "must be a number, got [10]"),
    bad("float-for-integer", defaults(retry={"attempts": 2.5}), "defaults.retry.attempts",
        "must be an integer >= 1, got 2.5"),
    bad("list-for-timeout", defaults(timeout=[1, 5]), "defaults.timeout",
        "must be a mapping of keys"),
    bad("list-for-retry", defaults(retry=[3]), "defaults.retry", "must be a mapping of keys"),
    bad("str-for-backoff", defaults(retry={"backoff": "exponential"}), "defaults.retry.backoff",
        "must be a mapping of keys"),
    bad("null-backoff", defaults(retry={"backoff": None}), "defaults.retry.backoff",
        "must be a mapping of keys"),
    bad("list-for-breaker", defaults(breaker=[5]), "defaults.breaker", "must be a mapping of keys"),
    bad("true-for-bulkhead", defaults(bulkhead=True), "defaults.bulkhead",
        "must be a mapping of keys"),
    bad("list-for-secrets", {"secrets": ["X-Api-Key"]}, "secrets", "must be a mapping of keys"),
    bad("str-for-endpoint", endpoints("https://a.internal/"), "endpoints[0]",
        "must be a mapping of keys"),
    bad("endpoint-list-in-endpoints", endpoints([ep()]), "endpoints[0]",
        "must be a mapping of keys"),
    bad("mapping-for-endpoints", {"endpoints": {"inventory": ep()}}, "endpoints",
        "must be a list"),
    bad("mapping-for-on-status", defaults(retry={"on_status": {"503": True}}),
        "defaults.retry.on_status", "must be a list"),
    bad("str-for-methods", defaults(retry={"methods": "GET"}), "defaults.retry.methods",
        "must be a list, got 'GET'"),
    bad("str-for-retry-on", defaults(retry={"on": "connect_error"}), "defaults.retry.on",
        "must be a list, got 'connect_error'"),
    bad("int-for-failure-status", defaults(failure_status=500), "defaults.failure_status",
        "must be a list, got 500"),
    bad("null-failure-status", defaults(failure_status=None), "defaults.failure_status",
        "must be a list, got None"),
    bad("mapping-for-secret-headers", {"secrets": {"headers": {"X-Api-Key": True}}},
        "secrets.headers", "must be a list"),
    bad("str-for-secret-query", {"secrets": {"query": "token"}}, "secrets.query",
        "must be a list, got 'token'"),
    bad("str-for-respect-retry-after", defaults(retry={"respect_retry_after": "yes"}),
        "defaults.retry.respect_retry_after", "must be true or false, got 'yes'"),
    bad("int-for-critical", defaults(critical=1), "defaults.critical",
        "must be true or false, got 1"),
    # Wrong-typed sections that are falsy are silently read as empty.
    bad("empty-list-for-defaults", {"defaults": []}, "defaults", "must be a mapping"),
    bad("false-for-defaults", {"defaults": False}, "defaults", "must be a mapping"),
    bad("empty-mapping-for-endpoints", {"endpoints": {}}, "endpoints", "must be a list"),
    bad("zero-for-endpoints", {"endpoints": 0}, "endpoints", "must be a list"),
    bad("empty-list-for-fallback-headers", defaults(fallback={"text": "x", "headers": []}),
        "defaults.fallback.headers", "must be a mapping"),
    bad("zero-for-stale", defaults(fallback={"stale": 0}), "defaults.fallback.stale",
        "must be a mapping"),
    # Negatives and zero.
    bad("negative-connect", defaults(timeout={"connect": -1}), "defaults.timeout.connect",
        "must be a number > 0, got -1.0"),
    bad("zero-read", defaults(timeout={"read": 0}), "defaults.timeout.read",
        "must be a number > 0, got 0.0"),
    bad("zero-total", defaults(timeout={"total": 0}), "defaults.timeout.total",
        "must be a number > 0, got 0.0"),
    bad("negative-attempts", defaults(retry={"attempts": -2}), "defaults.retry.attempts",
        "must be an integer >= 1, got -2"),
    bad("negative-initial", defaults(retry={"backoff": {"initial": -0.1}}),
        "defaults.retry.backoff.initial", "must be a number >= 0, got -0.1"),
    bad("multiplier-below-one", defaults(retry={"backoff": {"multiplier": 0.5}}),
        "defaults.retry.backoff.multiplier", "must be a number >= 1, got 0.5"),
    bad("max-below-initial", defaults(retry={"backoff": {"initial": 2, "max": 1}}),
        "defaults.retry.backoff.max", "must be >= initial (2), got 1.0"),
    bad("negative-max-retry-after", defaults(retry={"max_retry_after": -1}),
        "defaults.retry.max_retry_after", "must be a number >= 0, got -1.0"),
    bad("negative-ratio", defaults(budget={"ratio": -0.5}), "defaults.budget.ratio",
        "must be a number >= 0, got -0.5"),
    bad("negative-min-per-second", defaults(budget={"min_per_second": -1}),
        "defaults.budget.min_per_second", "must be a number >= 0, got -1.0"),
    bad("zero-failure-threshold", defaults(breaker={"failure_threshold": 0}),
        "defaults.breaker.failure_threshold", "must be an integer >= 1, got 0"),
    bad("zero-reset-timeout", defaults(breaker={"reset_timeout": 0}),
        "defaults.breaker.reset_timeout", "must be a number > 0, got 0.0"),
    bad("zero-max-concurrent", defaults(bulkhead={"max_concurrent": 0}),
        "defaults.bulkhead.max_concurrent", "must be an integer >= 1, got 0"),
    bad("negative-max-concurrent", endpoints(ep(bulkhead={"max_concurrent": -3})),
        "endpoints[0].bulkhead.max_concurrent", "must be an integer >= 1, got -3"),
    bad("zero-max-entries", defaults(fallback={"stale": {"max_entries": 0}}),
        "defaults.fallback.stale.max_entries", "must be an integer >= 1, got 0"),
    # Infinity and NaN.
    bad("inf-connect", defaults(timeout={"connect": INF}), "defaults.timeout.connect",
        "must be a finite number, got inf"),
    bad("inf-read", endpoints(ep(timeout={"read": INF})), "endpoints[0].timeout.read",
        "must be a finite number, got inf"),
    bad("inf-total", defaults(timeout={"total": INF}), "defaults.timeout.total",
        "must be a finite number, got inf"),
    bad("minus-inf-connect", defaults(timeout={"connect": -INF}), "defaults.timeout.connect",
        "must be a finite number, got -inf"),
    bad("inf-max-retry-after", defaults(retry={"max_retry_after": INF}),
        "defaults.retry.max_retry_after", "must be a finite number, got inf"),
    bad("inf-attempts", defaults(retry={"attempts": INF}), "defaults.retry.attempts",
        "must be an integer >= 1, got inf"),
    bad("nan-read", defaults(timeout={"read": NAN}), "defaults.timeout.read",
        "must be a finite number, got nan"),
    bad("nan-multiplier", defaults(retry={"backoff": {"multiplier": NAN}}),
        "defaults.retry.backoff.multiplier", "must be a finite number, got nan"),
    bad("nan-attempts", defaults(retry={"attempts": NAN}), "defaults.retry.attempts",
        "must be an integer >= 1, got nan"),
    bad("nan-reset-timeout", defaults(breaker={"reset_timeout": NAN}),
        "defaults.breaker.reset_timeout", "must be a finite number, got nan"),
    bad("huge-int-connect", defaults(timeout={"connect": 10**400}), "defaults.timeout.connect",
        "must be a finite number"),
    # Booleans where numbers are expected (bool is an int in Python).
    bad("true-connect", defaults(timeout={"connect": True}), "defaults.timeout.connect",
        "must be a number, got True"),
    bad("true-total", defaults(timeout={"total": True}), "defaults.timeout.total",
        "must be a number, got True"),
    bad("true-attempts", defaults(retry={"attempts": True}), "defaults.retry.attempts",
        "must be an integer >= 1, got True"),
    bad("false-max-concurrent", defaults(bulkhead={"max_concurrent": False}),
        "defaults.bulkhead.max_concurrent", "must be an integer >= 1, got False"),
    bad("true-in-on-status", defaults(retry={"on_status": [503, True]}),
        "defaults.retry.on_status[1]", "must be an HTTP status 100-599, got True"),
    bad("true-in-failure-status", defaults(failure_status=[True]), "defaults.failure_status[0]",
        "must be an HTTP status 500-599, got True"),
    bad("true-fallback-status", defaults(fallback={"status": True, "text": "x"}),
        "defaults.fallback.status", "must be an HTTP status 100-599, got True"),
    # Timeouts cannot be switched off.
    bad("timeout-null", defaults(timeout=None), "defaults.timeout",
        "cannot be switched off: connect and read timeouts are mandatory"),
    bad("endpoint-timeout-null", endpoints(ep(timeout=None)), "endpoints[0].timeout",
        "cannot be switched off"),
    bad("timeout-false", defaults(timeout=False), "defaults.timeout", "cannot be switched off"),
    bad("connect-null", defaults(timeout={"connect": None}), "defaults.timeout.connect",
        "must be a number, got None"),
    bad("read-null", endpoints(ep(timeout={"read": None})), "endpoints[0].timeout.read",
        "must be a number, got None"),
    bad("read-false", defaults(timeout={"read": False}), "defaults.timeout.read",
        "must be a number, got False"),
    # Unknown keys, at every level.
    bad("unknown-top", {"retries": 3}, "retries",
        "unknown key; expected one of defaults, secrets, endpoints"),
    bad("unknown-top-typo", {"endpoint": []}, "endpoint", "unknown key"),
    bad("unknown-in-defaults", defaults(retries={}), "defaults.retries", "unknown key"),
    bad("endpoint-key-in-defaults", defaults(match="https://a.internal/"), "defaults.match",
        "unknown key"),
    bad("unknown-in-timeout", defaults(timeout={"conect": 1}), "defaults.timeout.conect",
        "unknown key; expected one of connect, read, total"),
    bad("unknown-in-retry", defaults(retry={"attempt": 3}), "defaults.retry.attempt",
        "unknown key"),
    bad("unknown-in-budget", defaults(budget={"percent": 20}), "defaults.budget.percent",
        "unknown key"),
    bad("unknown-in-breaker", defaults(breaker={"threshold": 5}), "defaults.breaker.threshold",
        "unknown key"),
    bad("unknown-in-bulkhead", defaults(bulkhead={"max": 5}), "defaults.bulkhead.max",
        "unknown key"),
    bad("unknown-in-endpoint", endpoints(ep(timeouts={"read": 1})), "endpoints[0].timeouts",
        "unknown key"),
    bad("unknown-in-third-endpoint", third(retrys=None), "endpoints[2].retrys", "unknown key"),
    bad("unknown-in-endpoint-section", endpoints(ep(retry={"tries": 2})),
        "endpoints[0].retry.tries", "unknown key"),
    bad("unknown-in-backoff", defaults(retry={"backoff": {"base": 0.1}}),
        "defaults.retry.backoff.base",
        "unknown key; expected one of initial, multiplier, max, jitter"),
    bad("unknown-in-endpoint-backoff", endpoints(ep(retry={"backoff": {"cap": 1}})),
        "endpoints[0].retry.backoff.cap", "unknown key"),
    bad("unknown-in-fallback", defaults(fallback={"status": 200, "body": "x"}),
        "defaults.fallback.body", "unknown key; expected one of status, json, text, headers"),
    bad("unknown-in-stale", defaults(fallback={"stale": {"size": 10}}),
        "defaults.fallback.stale.size", "unknown key; expected one of max_entries"),
    bad("status-beside-stale", defaults(fallback={"stale": None, "status": 200}),
        "defaults.fallback.status", "unknown key; expected one of stale"),
    bad("unknown-in-secrets", {"secrets": {"cookies": ["sid"]}}, "secrets.cookies",
        "unknown key; expected one of headers, query"),
    # Durations: finite is not enough, sockets overflow on huge timeouts (a day at most).
    bad("connect-over-a-day", defaults(timeout={"connect": 1e10}), "defaults.timeout.connect",
        "must be a number of seconds <= 86400 (a day), got 1e+10"),
    bad("read-over-a-day", endpoints(ep(timeout={"read": 86400.5})), "endpoints[0].timeout.read",
        "must be a number of seconds <= 86400 (a day), got 86400.5"),
    bad("total-over-a-day", defaults(timeout={"total": 1e300}), "defaults.timeout.total",
        "got 1e+300"),
    bad("backoff-initial-over-a-day", defaults(retry={"backoff": {"initial": 1e6, "max": 1e6}}),
        "defaults.retry.backoff.initial", "must be a number of seconds <= 86400"),
    bad("backoff-max-over-a-day", defaults(retry={"backoff": {"max": 123456789}}),
        "defaults.retry.backoff.max", "got 123456789"),
    bad("max-retry-after-over-a-day", defaults(retry={"max_retry_after": 1e9}),
        "defaults.retry.max_retry_after", "must be a number of seconds <= 86400"),
    bad("reset-timeout-over-a-day", defaults(breaker={"reset_timeout": 1e12}),
        "defaults.breaker.reset_timeout", "must be a number of seconds <= 86400"),
    bad("breaker-window-over-a-day", defaults(breaker={"window": 1e12}),
        "defaults.breaker.window", "must be a number of seconds <= 86400"),
    bad("slow-call-over-a-day", defaults(breaker={"slow_call_duration": 1e12}),
        "defaults.breaker.slow_call_duration", "must be a number of seconds <= 86400"),
    bad("budget-window-over-a-day", defaults(budget={"window": 1e12}),
        "defaults.budget.window", "must be a number of seconds <= 86400"),
    # Endpoint matching: globs, schemes, methods, a required match.
    bad("bracket-glob", endpoints(ep(match="https://[ab].internal/")), "endpoints[0].match",
        "bad glob: only * and ? are supported"),
    bad("open-bracket-glob", third(match="https://a.internal/items/["), "endpoints[2].match",
        "bad glob"),
    bad("ftp-scheme", endpoints(ep(match="ftp://files.internal/")), "endpoints[0].match",
        "must start with http:// or https://, got 'ftp://files.internal/'"),
    bad("no-scheme", endpoints(ep(match="inventory.internal/")), "endpoints[0].match",
        "must start with http:// or https://"),
    bad("scheme-only", endpoints(ep(match="https://")), "endpoints[0].match",
        "must start with http:// or https://"),
    bad("empty-match", endpoints(ep(match="")), "endpoints[0].match",
        "must be a URL prefix or glob"),
    bad("space-in-match", endpoints(ep(match="https://in ventory.internal/")),
        "endpoints[0].match", "must not contain spaces"),
    bad("missing-match", endpoints({"name": "inventory"}), "endpoints[0].match", "is required"),
    bad("missing-match-third", endpoints(ep(), ep(), {"name": "x"}), "endpoints[2].match",
        "is required"),
    bad("int-match", endpoints(ep(match=5)), "endpoints[0].match", "got 5"),
    bad("null-match", endpoints(ep(match=None)), "endpoints[0].match", "got None"),
    bad("bad-endpoint-method", endpoints(ep(methods=["GET", "FETCH"])),
        "endpoints[0].methods[1]", "must be an HTTP method"),
    bad("str-endpoint-methods", endpoints(ep(methods="GET")), "endpoints[0].methods",
        "must be a list, got 'GET'"),
    bad("int-endpoint-method", endpoints(ep(methods=[1])), "endpoints[0].methods[0]",
        "must be an HTTP method"),
    bad("bad-retry-method", defaults(retry={"methods": ["GET", "get it"]}),
        "defaults.retry.methods[1]", "must be an HTTP method"),
    bad("empty-name", endpoints(ep(name="")), "endpoints[0].name",
        "must be a non-empty string, got ''"),
    bad("int-name", endpoints(ep(name=7)), "endpoints[0].name", "must be a non-empty string"),
    # Statuses.
    bad("4xx-in-failure-status", defaults(failure_status=[500, 404]),
        "defaults.failure_status[1]", "must be an HTTP status 500-599, got 404"),
    bad("2xx-in-failure-status", endpoints(ep(failure_status=[200])),
        "endpoints[0].failure_status[0]", "must be an HTTP status 500-599, got 200"),
    bad("600-in-on-status", defaults(retry={"on_status": [600]}), "defaults.retry.on_status[0]",
        "must be an HTTP status 100-599, got 600"),
    bad("str-in-on-status", defaults(retry={"on_status": ["503"]}),
        "defaults.retry.on_status[0]", "got '503'"),
    bad("bad-retry-on", defaults(retry={"on": ["connect_error", "timeout"]}),
        "defaults.retry.on[1]",
        "must be one of connect_error, connect_timeout, read_error, read_timeout"),
    # Jitter, breaker storage and mode.
    bad("bad-jitter", defaults(retry={"backoff": {"jitter": "random"}}),
        "defaults.retry.backoff.jitter",
        "must be one of none | full | equal | decorrelated, got 'random'"),
    bad("bool-jitter", defaults(retry={"backoff": {"jitter": True}}),
        "defaults.retry.backoff.jitter", "got True"),
    bad("http-storage", defaults(breaker={"storage": "http://redis.internal:6379"}),
        "defaults.breaker.storage", "must be 'memory' or a redis:// URL"),
    bad("bare-redis-storage", endpoints(ep(breaker={"storage": "redis"})),
        "endpoints[0].breaker.storage", "must be 'memory' or a redis:// URL, got 'redis'"),
    bad("int-storage", defaults(breaker={"storage": 1}), "defaults.breaker.storage", "got 1"),
    bad("bad-breaker-mode", defaults(breaker={"mode": "sometimes"}), "defaults.breaker.mode",
        "must be consecutive | rate"),
    bad("failure-rate-above-one", defaults(breaker={"failure_rate": 1.5}),
        "defaults.breaker.failure_rate", "between 0 and 1"),
    # Fallbacks.
    bad("json-and-text", defaults(fallback={"json": {}, "text": "x"}), "defaults.fallback",
        "give json or text, not both"),
    bad("unknown-fallback-word", defaults(fallback="cache"), "defaults.fallback",
        "must be 'stale', null or a mapping"),
    bad("int-fallback", endpoints(ep(fallback=5)), "endpoints[0].fallback", "got 5"),
    bad("fallback-status-99", defaults(fallback={"status": 99, "text": "x"}),
        "defaults.fallback.status", "must be an HTTP status 100-599, got 99"),
    bad("fallback-text-not-str", defaults(fallback={"text": 5}), "defaults.fallback.text",
        "must be a string, got 5"),
    bad("fallback-json-not-serialisable", defaults(fallback={"json": {1, 2}}),
        "defaults.fallback.json", "must be JSON-serialisable"),
    bad("fallback-headers-list", defaults(fallback={"text": "x", "headers": ["X-A"]}),
        "defaults.fallback.headers", "must be a mapping"),
    bad("fallback-bad-header-name", defaults(fallback={"text": "x", "headers": {"X A": "1"}}),
        "defaults.fallback.headers.X A", "must be an HTTP header name, got 'X A'"),
    bad("fallback-header-newline", defaults(fallback={"text": "x", "headers": {"X-A": "1\r\n2"}}),
        "defaults.fallback.headers.X-A", "must be a single-line string"),
    bad("fallback-header-int-value", defaults(fallback={"text": "x", "headers": {"X-A": 1}}),
        "defaults.fallback.headers.X-A", "must be a single-line string, got 1"),
    bad("stale-str", defaults(fallback={"stale": "yes"}), "defaults.fallback.stale",
        "must be a mapping"),
    # Header names.
    bad("space-in-idempotency-header", defaults(retry={"idempotency_header": "Idempotency Key"}),
        "defaults.retry.idempotency_header", "must be an HTTP header name, got 'Idempotency Key'"),
    bad("empty-idempotency-header", endpoints(ep(retry={"idempotency_header": ""})),
        "endpoints[0].retry.idempotency_header", "must be an HTTP header name, got ''"),
    bad("colon-in-attempt-header", defaults(retry={"attempt_header": "X-Attempt:"}),
        "defaults.retry.attempt_header", "must be an HTTP header name"),
    bad("bad-secret-header", {"secrets": {"headers": ["X-Api-Key", "X Token"]}},
        "secrets.headers[1]", "must be an HTTP header name, got 'X Token'"),
    bad("int-secret-header", {"secrets": {"headers": [1]}}, "secrets.headers[0]",
        "must be an HTTP header name, got 1"),
    bad("empty-secret-query", {"secrets": {"query": ["token", ""]}}, "secrets.query[1]",
        "must be a query parameter name, got ''"),
    # Endpoints that share a name share state, so their shared sections must agree.
    bad("shared-name-different-breaker",
        endpoints(ep(name="inv", match="https://a.internal/", breaker={"failure_threshold": 2}),
                  ep(name="inv", match="https://b.internal/")),
        "endpoints[1].breaker", "endpoint name 'inv' is also used by endpoints[0]"),
    bad("shared-name-different-bulkhead",
        endpoints(ep(name="x", match="https://a.internal/"), ep(name="y"),
                  ep(name="x", match="https://b.internal/", bulkhead={"max_concurrent": 1})),
        "endpoints[2].bulkhead", "different bulkhead"),
    bad("shared-name-different-budget",
        endpoints(ep(name="x", match="https://a.internal/", budget=None),
                  ep(name="x", match="https://b.internal/")),
        "endpoints[1].budget", "different budget"),
    bad("shared-default-name", endpoints(ep(), ep(breaker=None)), "endpoints[1].breaker",
        "endpoint name 'https://svc.internal/' is also used by endpoints[0]"),
]


class TestBadInputs:
    @pytest.mark.parametrize(("config", "path", "problem"), BAD_INPUTS)
    def test_bad_input_names_the_key_path(self, config: Any, path: str, problem: str) -> None:
        """
        Each bad input raises ConfigError whose message starts with the exact key path.
        """
        err = load_error(config)
        assert err.path == path
        assert err.errors[0] == (path, err.problem)
        # One problem is one line; more are listed one per line after a count.
        first_line = str(err) if len(err.errors) == 1 else str(err).splitlines()[1].strip()
        assert first_line.startswith(f"{path}: ")
        assert problem in str(err)

    def test_contract_example_message_is_exact(self) -> None:
        """
        The contract's example message is reproduced to the letter.
        """
        err = load_error(endpoints(ep(match="https://a.internal/"), ep(retry={"attempts": 0})))
        assert str(err) == "endpoints[1].retry.attempts: must be an integer >= 1, got 0"
        assert err.problem == "must be an integer >= 1, got 0"

    def test_unknown_key_lists_the_valid_keys(self) -> None:
        """
        An unknown key's message lists the keys that are valid there.
        """
        err = load_error(defaults(retry={"attempt": 3}))
        for key in ("attempts", "backoff", "on_status", "on", "methods", "idempotency_header"):
            assert key in err.problem

    def test_config_error_is_a_value_error(self) -> None:
        """
        ConfigError is a ValueError, so `except ValueError` catches bad config.
        """
        with pytest.raises(ValueError):
            load_config(defaults(timeout={"connect": 0}))
        assert issubclass(ConfigError, ValueError)

    def test_config_error_has_path_and_problem(self) -> None:
        """
        ConfigError keeps the key path and the problem apart as attributes.
        """
        err = ConfigError("defaults.timeout.read", "must be a number > 0, got 0.0")
        assert (err.path, err.problem) == ("defaults.timeout.read", "must be a number > 0, got 0.0")
        assert str(err) == "defaults.timeout.read: must be a number > 0, got 0.0"
        assert str(ConfigError("", "config file is empty")) == "config file is empty"

    def test_the_first_error_in_document_order_is_reported(self) -> None:
        """
        With several mistakes, the one earliest in its mapping is the one named.
        """
        err = load_error(endpoints(ep(), ep(timeout={"read": 0}), ep(retry={"attempts": 0})))
        assert err.path == "endpoints[1].timeout.read"

    def test_unhashable_retry_on_item_is_a_config_error(self) -> None:
        """
        A list or mapping inside retry.on is a ConfigError, not a TypeError.
        """
        err = load_error(defaults(retry={"on": [["connect_error"]]}))
        assert err.path == "defaults.retry.on[0]"

    def test_a_duration_of_exactly_a_day_is_accepted(self) -> None:
        """
        The upper bound on durations is inclusive: a day (86400 s) loads.
        """
        cfg = load_config(defaults(timeout={"connect": 86400, "read": 86400, "total": 86400}))
        assert cfg.defaults.timeout.connect == cfg.defaults.timeout.total == 86400.0

    def test_huge_integer_is_a_config_error(self) -> None:
        """
        An integer too large for a float (as JSON or YAML can hold) is a ConfigError.
        """
        err = load_error(defaults(retry={"max_retry_after": 10**400}))
        assert err.path == "defaults.retry.max_retry_after"


class TestEveryProblemAtOnce:
    def test_every_problem_of_a_document_is_reported_in_one_error(self) -> None:
        """
        A document with five mistakes in different places raises one ConfigError listing all five.
        """
        doc = {
            "defaults": {"timeout": {"conect": 1.0}, "retry": {"attempts": 0}},
            "secrets": {"headers": ["bad header"]},
            "endpoints": [ep(breaker={"failure_threshold": 0}), {"name": "x"}],
        }
        err = load_error(doc)
        assert err.errors == [
            ("defaults.timeout.conect", "unknown key; expected one of connect, read, total"),
            ("defaults.retry.attempts", "must be an integer >= 1, got 0"),
            ("secrets.headers[0]", "must be an HTTP header name, got 'bad header'"),
            ("endpoints[0].breaker.failure_threshold", "must be an integer >= 1, got 0"),
            ("endpoints[1].match", "is required"),
        ]
        assert (err.path, err.problem) == err.errors[0]
        assert str(err) == "\n".join([
            "5 problems in the configuration:",
            *(f"  {path}: {problem}" for path, problem in err.errors),
        ])

    def test_problems_are_listed_in_the_order_of_the_document(self) -> None:
        """
        A bad value written before an unknown key is listed before it, whichever check found each.
        """
        err = load_error(defaults(retry={"attempts": 0, "attemps": 3}, timeout={"read": 0}))
        assert [path for path, _ in err.errors] == [
            "defaults.retry.attempts", "defaults.retry.attemps", "defaults.timeout.read",
        ]

    def test_the_documented_message_is_the_real_one(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """
        The three-problem message shown in docs/configuration.md is what such a file gives.
        """
        monkeypatch.delenv("INVENTORY_URL", raising=False)
        text = ("defaults:\n  timeout: {conect: 1.0}\nendpoints:\n  - match: ${INVENTORY_URL}\n"
                "  - match: https://payments.internal/\n    retry: {attempts: 0}\n")
        err = load_error(write(tmp_path, "c.yaml", text))
        m = re.search(r"```text\n\s*(3 problems in the configuration:\n.*?)\n\s*```",
                      DOC.read_text("utf-8"), re.S)
        assert m, "docs/configuration.md lost its three-problem example"
        # The page indents the block inside a list item: compare line by line, unindented.
        shown = [line.strip() for line in m.group(1).splitlines()]
        assert [line.strip() for line in str(err).splitlines()] == shown

    def test_one_problem_keeps_the_one_line_message(self) -> None:
        """
        With a single problem the message is exactly ``path: problem``, as before.
        """
        err = load_error(endpoints(ep(), ep(retry={"attempts": 0})))
        assert err.errors == [("endpoints[1].retry.attempts", "must be an integer >= 1, got 0")]
        assert str(err) == "endpoints[1].retry.attempts: must be an integer >= 1, got 0"

    def test_every_bad_key_of_one_section_is_reported(self) -> None:
        """
        Several bad values in one section are each reported, in the order they are written.
        """
        err = load_error(defaults(breaker={"reset_timeout": -1, "failure_threshold": 0, "mode": "x"}))
        assert [path for path, _ in err.errors] == [
            "defaults.breaker.reset_timeout", "defaults.breaker.failure_threshold", "defaults.breaker.mode",
        ]

    def test_every_bad_item_of_a_list_is_reported(self) -> None:
        """
        Each bad item of a list is its own problem, with its index.
        """
        err = load_error(defaults(failure_status=[404, 500, 200], retry={"methods": ["GET", "FETCH", 1]}))
        assert [path for path, _ in err.errors] == [
            "defaults.failure_status[0]", "defaults.failure_status[2]",
            "defaults.retry.methods[1]", "defaults.retry.methods[2]",
        ]

    def test_a_bad_value_is_not_also_reported_by_the_checks_that_depend_on_it(self) -> None:
        """
        A bad backoff.initial is one problem: max is not also said to be below it.
        """
        err = load_error(defaults(retry={"backoff": {"initial": "soon", "max": 0.01}}))
        assert err.errors == [("defaults.retry.backoff.initial", "must be a number, got 'soon'")]

    def test_endpoints_that_are_wrong_are_not_compared_with_their_namesakes(self) -> None:
        """
        An endpoint whose own breaker is wrong is not also said to differ from another of its name.
        """
        err = load_error(endpoints(ep(name="x"), ep(name="x", breaker={"failure_threshold": 0})))
        assert err.errors == [("endpoints[1].breaker.failure_threshold", "must be an integer >= 1, got 0")]

    def test_problems_in_a_fallback_are_all_reported(self) -> None:
        """
        A fixed fallback with a bad status and a bad header reports both.
        """
        err = load_error(defaults(fallback={"status": 99, "headers": {"X-A": 1}, "colour": "red"}))
        assert [path for path, _ in err.errors] == [
            "defaults.fallback.status", "defaults.fallback.headers.X-A", "defaults.fallback.colour",
        ]

    def test_policies_built_in_python_report_every_problem(self) -> None:
        """
        A policy value built in Python with two bad fields names both.
        """
        with pytest.raises(ConfigError) as info:
            Timeouts(connect=0, read=-1)
        assert [path for path, _ in info.value.errors] == ["connect", "read"]
        assert str(info.value).startswith("2 problems in the configuration:\n  connect: ")

    def test_nothing_is_built_from_a_config_with_any_problem(self) -> None:
        """
        One bad key among good ones still builds no session at all.
        """
        from resilient_client import ResilientSession

        with pytest.raises(ConfigError):
            ResilientSession(endpoints(
                ep(name="good"), ep(match="https://b.internal/", retry={"attempts": 0})
            ))

    def test_config_error_with_several_problems_pickles(self) -> None:
        """
        A ConfigError survives pickling (multiprocessing, test runners) with every problem.
        """
        import pickle

        err = load_error(defaults(timeout={"connect": 0, "read": 0}))
        copy = pickle.loads(pickle.dumps(err))
        assert (copy.errors, copy.path, copy.problem) == (err.errors, err.path, err.problem)
        assert str(copy) == str(err)

    def test_config_error_of_needs_a_problem(self) -> None:
        """
        An error listing no problem at all cannot be made.
        """
        with pytest.raises(ValueError):
            ConfigError.of([])


# -- files ----------------------------------------------------------------------

#: One realistic config, as a mapping; the files below say the same thing.
MAPPING: dict[str, Any] = {
    "defaults": {
        "timeout": {"connect": 0.5, "read": 3, "total": 8},
        "retry": {
            "attempts": 4,
            "backoff": {"initial": 0.05, "max": 2, "jitter": "equal"},
            "on_status": [503, 429],
            "idempotency_header": "Idempotency-Key",
        },
        "budget": {"ratio": 0.1},
        "failure_status": [500, 503],
        "breaker": {"failure_threshold": 3, "reset_timeout": 15},
        "bulkhead": None,
    },
    "secrets": {"headers": ["X-Api-Key"], "query": ["token"]},
    "endpoints": [
        {
            "name": "inventory",
            "match": "https://inventory.internal/",
            "methods": ["GET"],
            "timeout": {"read": 2},
            "fallback": "stale",
        },
        {
            "name": "search",
            "match": "https://*.search.internal/v?/*",
            "retry": None,
            "fallback": {
                "status": 200,
                "json": {"results": []},
                "headers": {"X-Fallback": "static"},
            },
        },
        {
            "name": "payments",
            "match": "https://payments.internal/",
            "breaker": {"storage": "redis://redis.internal:6379/0"},
            "bulkhead": {"max_concurrent": 10},
        },
    ],
}

YAML_TEXT = """\
# The same config as MAPPING, in YAML.
defaults:
  timeout: {connect: 0.5, read: 3, total: 8}
  retry:
    attempts: 4
    backoff: {initial: 0.05, max: 2, jitter: equal}
    on_status: [503, 429]
    idempotency_header: Idempotency-Key
  budget:
    ratio: 0.1
  failure_status: [500, 503]
  breaker:
    failure_threshold: 3
    reset_timeout: 15
  bulkhead: null
secrets:
  headers: [X-Api-Key]
  query: [token]
endpoints:
  - name: inventory
    match: "https://inventory.internal/"
    methods: [GET]
    timeout: {read: 2}
    fallback: stale
  - name: search
    match: "https://*.search.internal/v?/*"
    retry: ~
    fallback:
      status: 200
      json: {results: []}
      headers: {X-Fallback: static}
  - name: payments
    match: "https://payments.internal/"
    breaker: {storage: "redis://redis.internal:6379/0"}
    bulkhead: {max_concurrent: 10}
"""

# TOML has no null: `false` switches a section off.
TOML_TEXT = """\
[defaults]
failure_status = [500, 503]
bulkhead = false

[defaults.timeout]
connect = 0.5
read = 3
total = 8

[defaults.retry]
attempts = 4
on_status = [503, 429]
idempotency_header = "Idempotency-Key"

[defaults.retry.backoff]
initial = 0.05
max = 2
jitter = "equal"

[defaults.budget]
ratio = 0.1

[defaults.breaker]
failure_threshold = 3
reset_timeout = 15

[secrets]
headers = ["X-Api-Key"]
query = ["token"]

[[endpoints]]
name = "inventory"
match = "https://inventory.internal/"
methods = ["GET"]
timeout = { read = 2 }
fallback = "stale"

[[endpoints]]
name = "search"
match = "https://*.search.internal/v?/*"
retry = false
fallback = { status = 200, json = { results = [] }, headers = { X-Fallback = "static" } }

[[endpoints]]
name = "payments"
match = "https://payments.internal/"
breaker = { storage = "redis://redis.internal:6379/0" }
bulkhead = { max_concurrent = 10 }
"""

JSON_TEXT = json.dumps(MAPPING, indent=2)


def write(tmp_path: Path, name: str, text: str) -> Path:
    """Write *text* to *name* under *tmp_path* and return the path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


class TestFiles:
    @pytest.mark.parametrize(
        ("name", "text"),
        [
            ("config.yaml", YAML_TEXT),
            ("config.yml", YAML_TEXT),
            ("CONFIG.YAML", YAML_TEXT),
            ("config.toml", TOML_TEXT),
            ("config.json", JSON_TEXT),
        ],
        ids=["yaml", "yml", "upper-case-suffix", "toml", "json"],
    )
    def test_file_loads_like_the_mapping(self, tmp_path: Path, name: str, text: str) -> None:
        """
        A YAML, TOML or JSON file loads to the same Config as the equivalent mapping.
        """
        assert load_config(write(tmp_path, name, text)) == load_config(MAPPING)

    def test_the_realistic_config_is_what_it_says(self) -> None:
        """
        The shared realistic config reads as written (so the file tests compare something).
        """
        cfg = load_config(MAPPING)
        inventory, search, payments = cfg.endpoints
        assert cfg.defaults.bulkhead is None
        assert cfg.defaults.retry is not None
        assert cfg.defaults.retry.backoff.jitter is Jitter.EQUAL
        assert inventory.policy.timeout == Timeouts(connect=0.5, read=2.0, total=8.0)
        assert inventory.policy.fallback == StaleFallback()
        assert search.policy.retry is None
        assert isinstance(search.policy.fallback, StaticFallback)
        assert json.loads(search.policy.fallback.body) == {"results": []}
        assert payments.policy.breaker == BreakerPolicy(
            failure_threshold=3, reset_timeout=15, storage="redis://redis.internal:6379/0"
        )
        assert "x-api-key" in cfg.secrets.headers

    @pytest.mark.parametrize("as_str", [False, True], ids=["pathlib", "str"])
    def test_path_may_be_str_or_pathlike(self, tmp_path: Path, as_str: bool) -> None:
        """
        A path is accepted as a `str` or an `os.PathLike`, through `Config.load` too.
        """
        path = write(tmp_path, "c.json", JSON_TEXT)
        source = str(path) if as_str else path
        assert Config.load(source) == load_config(MAPPING)

    @pytest.mark.parametrize(
        "section", ["retry", "budget", "breaker", "bulkhead", "fallback"], ids=str
    )
    def test_toml_false_switches_a_section_off(self, tmp_path: Path, section: str) -> None:
        """
        In TOML, `section = false` switches the section off, as null does.
        """
        text = (
            f"[defaults]\n{section} = false\n\n"
            f'[[endpoints]]\nmatch = "https://a.internal/"\n{section} = false\n'
        )
        cfg = load_config(write(tmp_path, "c.toml", text))
        assert getattr(cfg.defaults, section) is None
        assert getattr(cfg.endpoints[0].policy, section) is None
        assert cfg == load_config({
            "defaults": {section: None},
            "endpoints": [{"match": "https://a.internal/", section: None}],
        })

    @pytest.mark.parametrize(
        ("toml", "dotted"),
        [
            ("[defaults.timeout]\ntotal = false\n", "defaults.timeout.total"),
            ("[defaults.retry]\nidempotency_header = false\n", "defaults.retry.idempotency_header"),
        ],
        ids=["total", "idempotency_header"],
    )
    def test_toml_false_switches_a_nullable_key_off(
        self, tmp_path: Path, toml: str, dotted: str
    ) -> None:
        """
        In TOML, `false` also means null for a single key that may be null.
        """
        assert attr(load_config(write(tmp_path, "c.toml", toml)), dotted) is None

    def test_toml_false_cannot_switch_timeouts_off(self, tmp_path: Path) -> None:
        """
        `timeout = false` in TOML is a ConfigError: timeouts are mandatory.
        """
        err = load_error(write(tmp_path, "c.toml", "[defaults]\ntimeout = false\n"))
        assert err.path == "defaults.timeout"

    def test_toml_false_is_not_null_for_a_number(self, tmp_path: Path) -> None:
        """
        `false` only means null where null is allowed: `connect = false` is a ConfigError.
        """
        err = load_error(write(tmp_path, "c.toml", "[defaults.timeout]\nconnect = false\n"))
        assert str(err) == "defaults.timeout.connect: must be a number, got False"

    def test_bad_value_in_a_file_names_the_key_path(self, tmp_path: Path) -> None:
        """
        A bad value read from a file is reported with the same key path as from a mapping.
        """
        text = (
            "endpoints:\n"
            "  - match: https://a.internal/\n"
            "  - match: https://b.internal/\n"
            "    retry: {attempts: 0}\n"
        )
        err = load_error(write(tmp_path, "c.yaml", text))
        assert str(err) == "endpoints[1].retry.attempts: must be an integer >= 1, got 0"

    @pytest.mark.parametrize("name", ["c.yaml", "c.yml", "c.toml", "c.json"])
    @pytest.mark.parametrize("text", ["", "  \n\n\t\n"], ids=["empty", "blank"])
    def test_empty_file_is_a_config_error(self, tmp_path: Path, name: str, text: str) -> None:
        """
        An empty or blank file is a ConfigError that names the file.
        """
        path = write(tmp_path, name, text)
        err = load_error(path)
        assert "config file is empty" in str(err)
        assert str(path) in str(err)

    def test_yaml_on_key_is_the_key_on(self, tmp_path: Path) -> None:
        """
        In YAML, an unquoted `on:` under retry is the key "on", as the contract writes it.
        """
        text = "defaults:\n  retry:\n    on: [connect_error]\n"
        retry = load_config(write(tmp_path, "c.yaml", text)).defaults.retry
        assert retry is not None
        assert retry.on == {"connect_error"}

    @pytest.mark.parametrize(
        ("name", "text"),
        [
            ("c.yaml", 'defaults:\n  retry:\n    "on": [connect_error]\n'),
            ("c.toml", '[defaults.retry]\non = ["connect_error"]\n'),
            ("c.json", '{"defaults": {"retry": {"on": ["connect_error"]}}}'),
        ],
        ids=["yaml-quoted", "toml", "json"],
    )
    def test_retry_on_in_files(self, tmp_path: Path, name: str, text: str) -> None:
        """
        retry.on is read from TOML, JSON and a quoted YAML key.
        """
        retry = load_config(write(tmp_path, name, text)).defaults.retry
        assert retry is not None
        assert retry.on == {"connect_error"}

    @pytest.mark.parametrize("word", ["yes", "no", "on", "off"])
    def test_yaml_yes_no_on_off_are_not_booleans(self, tmp_path: Path, word: str) -> None:
        """
        YAML is read with YAML 1.2 booleans, so `yes`/`no`/`on`/`off` are strings, not true/false.
        """
        text = f"defaults:\n  retry:\n    respect_retry_after: {word}\n"
        err = load_error(write(tmp_path, "c.yaml", text))
        assert str(err) == (
            f"defaults.retry.respect_retry_after: must be true or false, got {word!r}"
        )

    @pytest.mark.parametrize("word", ["true", "True", "TRUE", "false", "False", "FALSE"])
    def test_yaml_true_false_are_booleans(self, tmp_path: Path, word: str) -> None:
        """
        YAML's true and false, in the three spellings YAML 1.2 allows, are booleans.
        """
        text = f"defaults:\n  retry:\n    respect_retry_after: {word}\n"
        retry = load_config(write(tmp_path, "c.yaml", text)).defaults.retry
        assert retry is not None
        assert retry.respect_retry_after is (word.lower() == "true")

    def test_yaml_of_only_comments_is_a_config_error(self, tmp_path: Path) -> None:
        """
        A YAML file holding only comments (a null document) is a ConfigError.
        """
        load_error(write(tmp_path, "c.yaml", "# nothing configured yet\n"))

    @pytest.mark.parametrize(
        ("name", "text", "kind"),
        [
            ("c.yaml", "defaults: [unclosed\n", "invalid YAML"),
            ("c.yaml", "defaults:\n  timeout: {connect: 1\n", "invalid YAML"),
            ("c.yaml", "defaults:\n\ttimeout: {}\n", "invalid YAML"),
            ("c.yaml", "x: !!python/object:os.system {}\n", "invalid YAML"),
            ("c.toml", "[defaults\n", "invalid TOML"),
            ("c.toml", "[defaults]\nretry = null\n", "invalid TOML"),
            ("c.toml", "a = 1\na = 2\n", "invalid TOML"),
            ("c.json", "{", "invalid JSON"),
            ("c.json", "{'defaults': {}}", "invalid JSON"),
            ("c.json", '{"defaults": {},}', "invalid JSON"),
        ],
        ids=[
            "yaml-unclosed-list", "yaml-unclosed-mapping", "yaml-tab", "yaml-python-tag",
            "toml-unclosed-table", "toml-null", "toml-duplicate-key",
            "json-truncated", "json-single-quotes", "json-trailing-comma",
        ],
    )
    def test_invalid_syntax_is_a_config_error(
        self, tmp_path: Path, name: str, text: str, kind: str
    ) -> None:
        """
        A file that its format cannot parse is a ConfigError naming the file and the format.
        """
        path = write(tmp_path, name, text)
        err = load_error(path)
        assert kind in str(err)
        assert str(path) in str(err)

    @pytest.mark.parametrize(
        ("name", "text"),
        [
            ("c.yaml", "- defaults\n"),
            ("c.json", "[]"),
            ("c.yaml", "just a string\n"),
            ("c.json", "3"),
        ],
        ids=["yaml-list", "json-list", "yaml-scalar", "json-number"],
    )
    def test_document_that_is_not_a_mapping_is_a_config_error(
        self, tmp_path: Path, name: str, text: str
    ) -> None:
        """
        A file whose document is not a mapping is a ConfigError.
        """
        err = load_error(write(tmp_path, name, text))
        assert "must be" in str(err)

    @pytest.mark.parametrize("name", ["c.ini", "c.cfg", "c.txt", "config", "c.yaml.bak"])
    def test_unknown_suffix_is_a_config_error(self, tmp_path: Path, name: str) -> None:
        """
        A file whose suffix is not .yaml, .yml, .toml or .json is a ConfigError.
        """
        err = load_error(write(tmp_path, name, "{}"))
        assert "unknown config format" in str(err)
        assert "use .yaml, .yml, .toml or .json" in str(err)

    def test_missing_file_is_a_config_error(self, tmp_path: Path) -> None:
        """
        A path to no file is a ConfigError that names the path, not a FileNotFoundError.
        """
        path = tmp_path / "absent.yaml"
        err = load_error(path)
        assert "cannot read config file" in str(err)
        assert str(path) in str(err)

    def test_directory_is_a_config_error(self, tmp_path: Path) -> None:
        """
        A directory given as the config file is a ConfigError.
        """
        (tmp_path / "conf.json").mkdir()
        assert "cannot read config file" in str(load_error(tmp_path / "conf.json"))

    def test_non_utf8_file_is_a_config_error(self, tmp_path: Path) -> None:
        """
        A file that is not UTF-8 text is a ConfigError.
        """
        path = tmp_path / "c.yaml"
        path.write_bytes(b"defaults:\n  name: \xff\xfe\n")
        assert "not UTF-8" in str(load_error(path))

    def test_json_nan_is_rejected_as_a_value(self, tmp_path: Path) -> None:
        """
        JSON's non-standard NaN and Infinity, which Python reads, are still rejected.
        """
        err = load_error(write(tmp_path, "c.json", '{"defaults": {"timeout": {"read": Infinity}}}'))
        assert str(err) == "defaults.timeout.read: must be a finite number, got inf"


class TestEnvironment:
    """``${VAR}`` and ``${VAR:-default}`` in config files."""

    @pytest.fixture(autouse=True)
    def _clean(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("READ", "N", "HOST", "FB", "TOTAL", "METHODS", "CODES", "RRA", "STORE", "UNSET"):
            monkeypatch.delenv(name, raising=False)

    @pytest.mark.parametrize(("name", "text"), [
        ("c.yaml", "defaults:\n  timeout:\n    read: ${READ:-2.0}\n  retry: {attempts: '${N:-4}'}\n"),
        ("c.toml", '[defaults.timeout]\nread = "${READ:-2.0}"\n[defaults.retry]\nattempts = "${N:-4}"\n'),
        ("c.json", '{"defaults": {"timeout": {"read": "${READ:-2.0}"}, "retry": {"attempts": "${N:-4}"}}}'),
    ])
    def test_a_whole_reference_takes_the_type_its_key_expects(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str
    ) -> None:
        """
        In YAML, TOML and JSON alike, an unset variable's default is read as a number where one is expected.
        """
        cfg = load_config(write(tmp_path, name, text))
        assert cfg.defaults.timeout.read == 2.0
        assert cfg.defaults.retry is not None and cfg.defaults.retry.attempts == 4
        monkeypatch.setenv("READ", "3")
        monkeypatch.setenv("N", "2")
        cfg = load_config(write(tmp_path, name, text))
        assert cfg.defaults.timeout.read == 3.0
        assert cfg.defaults.retry is not None and cfg.defaults.retry.attempts == 2

    def test_booleans_nulls_lists_and_fallbacks(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """
        A whole reference is read as its key expects: true/false, null, a comma-separated list, `stale`.
        """
        monkeypatch.setenv("METHODS", "get, head")
        monkeypatch.setenv("CODES", "502,503")
        text = (
            "defaults:\n"
            "  timeout: {total: '${TOTAL:-null}'}\n"
            "  retry:\n"
            "    respect_retry_after: ${RRA:-false}\n"
            "    methods: ${METHODS}\n"
            "    on_status: ${CODES}\n"
            "  fallback: ${FB:-stale}\n"
        )
        cfg = load_config(write(tmp_path, "c.yaml", text))
        retry = cfg.defaults.retry
        assert retry is not None
        assert cfg.defaults.timeout.total is None
        assert retry.respect_retry_after is False
        assert retry.methods == {"GET", "HEAD"}
        assert retry.on_status == {502, 503}
        assert cfg.defaults.fallback == StaleFallback()

    def test_a_reference_inside_a_string_is_substituted(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """
        A reference within a longer string is replaced in place, and the value stays a string.
        """
        monkeypatch.setenv("HOST", "inventory.internal")
        text = "endpoints:\n  - match: https://${HOST}/v1/\n    name: inv-${N:-1}\n"
        cfg = load_config(write(tmp_path, "c.yaml", text))
        assert (cfg.endpoints[0].match, cfg.endpoints[0].name) == ("https://inventory.internal/v1/", "inv-1")

    def test_an_unset_variable_without_default_names_the_key_path(self, tmp_path: Path) -> None:
        """
        An unset variable with no default is a ConfigError at its key path, said in these words.
        """
        text = "endpoints:\n  - match: ${INVENTORY_URL}\n"
        err = load_error(write(tmp_path, "c.yaml", text))
        assert str(err) == ("endpoints[0].match: environment variable INVENTORY_URL is not set "
                            "(and no ${INVENTORY_URL:-default} given)")

    def test_unset_variables_are_reported_with_the_other_problems(self, tmp_path: Path) -> None:
        """
        Unset variables are listed with every other problem, in file order, and not again as a bad value.
        """
        text = ("defaults:\n  timeout: {read: '${UNSET}'}\n  retry: {attempts: 0}\n"
                "endpoints:\n  - match: ${UNSET}\n")
        err = load_error(write(tmp_path, "c.yaml", text))
        assert [path for path, _ in err.errors] == [
            "defaults.timeout.read", "defaults.retry.attempts", "endpoints[0].match",
        ]
        assert str(err).startswith("3 problems in the configuration:\n")

    def test_an_empty_variable_takes_the_default(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """
        As in a shell, ``${VAR:-default}`` takes the default when VAR is set but empty.
        """
        monkeypatch.setenv("READ", "")
        cfg = load_config(write(tmp_path, "c.yaml", "defaults: {timeout: {read: '${READ:-2.5}'}}\n"))
        assert cfg.defaults.timeout.read == 2.5

    def test_double_dollar_is_a_literal(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """
        ``$${`` is written ``${``, and is not looked up; a lone ``$`` is itself.
        """
        monkeypatch.setenv("HOST", "x")
        text = "defaults:\n  fallback: {text: 'cost: $5, template: $${HOST}'}\n"
        fb = load_config(write(tmp_path, "c.yaml", text)).defaults.fallback
        assert isinstance(fb, StaticFallback) and fb.body == b"cost: $5, template: ${HOST}"

    @pytest.mark.parametrize("ref", ["${1X}", "${X:2}", "${X", "${}", "${X-y}"])
    def test_a_malformed_reference_is_a_config_error(self, tmp_path: Path, ref: str) -> None:
        """
        A ``${`` that is no well-formed reference is a ConfigError at its key path.
        """
        err = load_error(write(tmp_path, "c.yaml", f"defaults:\n  breaker: {{storage: '{ref}'}}\n"))
        assert err.path == "defaults.breaker.storage"
        assert "bad environment reference" in err.problem

    def test_a_value_from_the_environment_is_not_interpolated_again(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """
        A variable whose value holds ``${`` is taken as it is (one pass).
        """
        monkeypatch.setenv("HOST", "${N}")
        path = write(tmp_path, "c.yaml", "defaults: {fallback: {text: '${HOST}'}}\n")
        fb = load_config(path).defaults.fallback
        assert isinstance(fb, StaticFallback) and fb.body == b"${N}"

    def test_keys_are_not_interpolated(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """
        A ``${...}`` in a key stays as written (and so is an unknown key).
        """
        monkeypatch.setenv("N", "timeout")
        err = load_error(write(tmp_path, "c.yaml", "defaults: {'${N}': {read: 1}}\n"))
        assert err.path == "defaults.${N}"

    def test_mappings_from_python_are_not_interpolated(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """
        Only files are interpolated: a mapping built in Python is taken as it is.
        """
        monkeypatch.setenv("HOST", "x")
        fb = load_config(defaults(fallback={"text": "${HOST}"})).defaults.fallback
        assert isinstance(fb, StaticFallback) and fb.body == b"${HOST}"

    def test_a_string_from_the_environment_is_not_shown_in_errors(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """
        A bad value read from the environment is shown as written in the file, never its (secret) value.
        """
        monkeypatch.setenv("STORE", "http://user:hunter2@redis.internal/")
        err = load_error(write(tmp_path, "c.yaml", "defaults: {breaker: {storage: '${STORE}'}}\n"))
        assert str(err) == "defaults.breaker.storage: must be 'memory' or a redis:// URL, got '${STORE}'"
        monkeypatch.setenv("READ", "hunter2")
        err = load_error(write(tmp_path, "c.yaml", "defaults: {timeout: {read: '${READ}'}}\n"))
        assert str(err) == "defaults.timeout.read: must be a number, got '${READ}'"

    def test_every_scalar_key_has_a_type_for_whole_references(self) -> None:
        """
        Every field of every section (a new one too) is typed for ``${...}``: none is left "anything".
        """
        from resilient_client._interpolation import _ANY, _expected

        owners: dict[tuple[str, ...], type] = {("defaults", k): kind for k, kind in _SECTION_KINDS.items()}
        owners[("defaults", "retry", "backoff")] = BackoffPolicy
        untyped = [
            ".".join((*where, f.name))
            for where, kind in owners.items()
            for f in dataclasses.fields(kind)
            if _expected((*where, f.name)) == _ANY
        ]
        assert not untyped
        for key in ("failure_status", "critical"):
            assert _expected(("defaults", key)) != _ANY

    def test_the_documented_environment_example_loads(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """
        The environment example of the configuration reference loads with its variables set.
        """
        text = DOC.read_text(encoding="utf-8")
        m = re.search(r"<!-- environment -->\s*```yaml\n(.*?)^```", text, re.S | re.M)
        assert m, "docs/configuration.md lost its <!-- environment --> block"
        monkeypatch.setenv("INVENTORY_URL", "https://inventory.internal/")
        monkeypatch.setenv("REDIS_PASSWORD", "pw")
        cfg = load_config(write(tmp_path, "c.yaml", m.group(1)))
        assert cfg.endpoints[0].match == "https://inventory.internal/"
        assert cfg.endpoints[0].policy.timeout.read == 2.0


class TestCallableFallbackByPath:
    """``fallback: {callable: "package.module:function"}``, imported when the config is loaded."""

    @pytest.mark.parametrize("spec", ["fallback_support:inventory", "fallback_support.inventory"])
    def test_a_dotted_path_loads_the_function(self, tmp_path: Path, spec: str) -> None:
        """
        Either spelling of the dotted path names the function, imported at load time.
        """
        import fallback_support

        text = f"endpoints:\n  - match: https://inventory.internal/\n    fallback: {{callable: '{spec}'}}\n"
        fb = load_config(write(tmp_path, "c.yaml", text)).endpoints[0].policy.fallback
        assert fb == CallableFallback(fallback_support.inventory)

    @pytest.mark.parametrize(("spec", "problem"), [
        ("not a path", "must be a dotted path such as 'package.module:fallback', got 'not a path'"),
        (3, "must be a dotted path such as 'package.module:fallback', got 3"),
        ("no_such_module_here:f", "cannot import 'no_such_module_here:f': ModuleNotFoundError"),
        ("fallback_support:missing", "cannot import 'fallback_support:missing': AttributeError"),
        ("fallback_support:NOT_CALLABLE", "'fallback_support:NOT_CALLABLE' is not callable, got 42"),
    ])
    def test_a_bad_path_is_a_config_error_at_its_key_path(self, spec: object, problem: str) -> None:
        """
        A path that is malformed, cannot be imported or names no callable fails at load, at its key path.
        """
        err = load_error(endpoints(ep(), ep(fallback={"callable": spec})))
        assert err.path == "endpoints[1].fallback.callable"
        assert err.problem.startswith(problem)

    def test_callable_takes_no_other_key(self) -> None:
        """
        A callable fallback is only its path: a status beside it is an unknown key.
        """
        err = load_error(defaults(fallback={"callable": "fallback_support:inventory", "status": 200}))
        assert err.errors == [("defaults.fallback.status", "unknown key; expected one of callable")]

    def test_a_bad_path_is_listed_with_the_other_problems(self) -> None:
        """
        A fallback that cannot be imported is one problem among the others of the document.
        """
        err = load_error(defaults(fallback={"callable": "no_such_module_here:f"}, retry={"attempts": 0}))
        assert [path for path, _ in err.errors] == ["defaults.fallback.callable", "defaults.retry.attempts"]

    def test_a_python_callable_is_taken_as_is(self) -> None:
        """
        In a mapping built in Python, ``callable`` may be the function itself.
        """
        import fallback_support

        fb = load_config(defaults(fallback={"callable": fallback_support.inventory})).defaults.fallback
        assert fb == CallableFallback(fallback_support.inventory)

    def test_a_bare_python_callable_is_shorthand_for_the_mapping(self) -> None:
        """
        ``fallback: fn`` (in Python) is ``fallback: {callable: fn}``: same
        policy, same signature check, at its key path.
        """
        import fallback_support

        fb = load_config(defaults(fallback=fallback_support.inventory)).defaults.fallback
        assert fb == CallableFallback(fallback_support.inventory)
        err = load_error(defaults(fallback=lambda: None))
        assert err.path == "defaults.fallback.callable"
        assert err.problem.startswith("must take (request, failure)")

    def test_the_session_serves_the_named_fallback(self, tmp_path: Path) -> None:
        """
        A session built from the file answers a failed call with the function's response.
        """
        import requests
        import responses

        from resilient_client import ResilientSession

        text = ("endpoints:\n  - match: https://inventory.internal/\n    retry: null\n"
                "    fallback: {callable: fallback_support:inventory}\n")
        session = ResilientSession(write(tmp_path, "c.yaml", text))
        with responses.RequestsMock() as rsps:
            rsps.add("GET", "https://inventory.internal/items", body=requests.ConnectionError("down"))
            resp = session.get("https://inventory.internal/items")
        assert resp.is_fallback and resp.status_code == 200
        assert resp.json() == {"items": [], "degraded": True}
        assert resp.headers["X-Fallback"] == "inventory"


class TestFallbackResponse:
    """`resilient_client.fallback_response`: a response for a callable fallback, from public parts."""

    @staticmethod
    def request() -> Any:
        import requests

        return requests.Request("GET", "https://inventory.internal/items/42").prepare()

    def test_json_body(self) -> None:
        """
        json= gives a JSON body, its content type, the status's reason, and the request and URL.
        """
        import resilient_client

        req = self.request()
        resp = resilient_client.fallback_response(req, 203, json={"name": "unknown"})
        assert (resp.status_code, resp.reason, resp.json()) == (203, "Non-Authoritative Information",
                                                                {"name": "unknown"})
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.request is req and resp.url == req.url
        assert isinstance(resp, Response)

    def test_text_body_and_headers(self) -> None:
        """
        text= gives a UTF-8 text body; headers add to, or override, the content type.
        """
        import resilient_client

        resp = resilient_client.fallback_response(
            self.request(), text="café", headers={"Content-Type": "text/html; charset=utf-8", "X-A": "1"}
        )
        assert (resp.status_code, resp.text, resp.content) == (200, "café", "café".encode())
        assert (resp.headers["content-type"], resp.headers["X-A"]) == ("text/html; charset=utf-8", "1")

    def test_json_none_is_a_json_null_and_no_body_is_empty(self) -> None:
        """
        json=None is the JSON null; with neither json nor text the body is empty.
        """
        import resilient_client

        assert resilient_client.fallback_response(self.request(), json=None).content == b"null"
        assert resilient_client.fallback_response(self.request(), 204).content == b""

    @pytest.mark.parametrize(("kwargs", "problem"), [
        ({"json": {}, "text": ""}, "give json or text, not both"),
        ({"status": 999}, "status: must be an HTTP status 100-599, got 999"),
        ({"json": {1j}}, "json: must be JSON-serialisable"),
        ({"headers": {"X-A": "a\nb"}}, "headers.X-A: must be a single-line string"),
    ])
    def test_bad_arguments_are_value_errors(self, kwargs: dict[str, Any], problem: str) -> None:
        """
        A bad argument is a ValueError that says which, and not a ConfigError: this is a call.
        """
        import resilient_client

        with pytest.raises(ValueError, match=re.escape(problem)) as info:
            resilient_client.fallback_response(self.request(), **kwargs)
        assert not isinstance(info.value, ConfigError)


# -- merging --------------------------------------------------------------------


def only(config: dict[str, Any]) -> Policy:
    """Load *config* and return the policy of its only endpoint."""
    (endpoint,) = load_config(config).endpoints
    return endpoint.policy


class TestMerging:
    def test_endpoint_section_merges_over_defaults_key_by_key(self) -> None:
        """
        An endpoint's timeout keys replace only those keys of the defaults' timeout.
        """
        config = defaults(timeout={"connect": 0.5, "total": 20})
        policy = only(config | endpoints(ep(timeout={"read": 2})))
        assert policy.timeout == Timeouts(connect=0.5, read=2.0, total=20.0)

    def test_nested_backoff_merges_key_by_key(self) -> None:
        """
        retry.backoff is merged key by key too, under an endpoint's retry.
        """
        config = defaults(retry={"attempts": 5, "backoff": {"max": 10, "jitter": "none"}})
        config |= endpoints(ep(retry={"backoff": {"initial": 0.5}}))
        retry = only(config).retry
        assert retry is not None
        assert retry.attempts == 5
        assert retry.backoff == BackoffPolicy(initial=0.5, max=10, jitter=Jitter.NONE)

    @pytest.mark.parametrize(
        ("section", "default_value", "endpoint_value", "dotted", "expected"),
        [
            ("retry", {"on_status": [502, 503]}, {"on_status": [429]}, "retry.on_status", {429}),
            ("retry", {"methods": ["GET", "PUT"]}, {"methods": ["POST"]}, "retry.methods",
             {"POST"}),
            ("retry", {"on": ["connect_error"]}, {"on": ["read_timeout"]}, "retry.on",
             {"read_timeout"}),
            ("failure_status", [500, 502], [503], "failure_status", {503}),
        ],
        ids=["on_status", "methods", "on", "failure_status"],
    )
    def test_lists_are_replaced_whole(
        self, section: str, default_value: Any, endpoint_value: Any, dotted: str, expected: set[Any]
    ) -> None:
        """
        A list given by an endpoint replaces the defaults' list; it is not merged with it.
        """
        config = defaults(**{section: default_value})
        policy = only(config | endpoints(ep(**{section: endpoint_value})))
        assert attr(policy, dotted) == expected

    def test_an_empty_list_replaces_too(self) -> None:
        """
        An endpoint's empty on_status means no status is retried there.
        """
        retry = only(endpoints(ep(retry={"on_status": []}))).retry
        assert retry is not None
        assert retry.on_status == frozenset()

    def test_fallback_is_replaced_whole(self) -> None:
        """
        An endpoint's fallback replaces the defaults' one: its omitted keys are not inherited.
        """
        config = defaults(
            fallback={"status": 503, "json": {"down": True}, "headers": {"X-Fallback": "1"}}
        )
        config |= endpoints(ep(fallback={"text": "maintenance"}))
        fallback = only(config).fallback
        assert fallback == StaticFallback.from_text(200, "maintenance")
        assert isinstance(fallback, StaticFallback)
        assert "X-Fallback" not in fallback.headers

    def test_endpoint_without_a_section_inherits_the_defaults(self) -> None:
        """
        An endpoint that omits a section (fallback included) gets the defaults' one.
        """
        config = defaults(fallback="stale", bulkhead={"max_concurrent": 7}, retry={"attempts": 2})
        policy = only(config | endpoints(ep(name="bare")))
        defaults_policy = load_config(config).defaults
        assert policy == defaults_policy.replace(name="bare")

    @pytest.mark.parametrize(
        ("section", "given", "expected"),
        [
            ("retry", {"attempts": 5}, RetryPolicy(attempts=5)),
            ("retry", {"backoff": {"max": 1}}, RetryPolicy(backoff=BackoffPolicy(max=1))),
            ("budget", {"ratio": 0.5}, BudgetPolicy(ratio=0.5)),
            ("breaker", {"reset_timeout": 5}, BreakerPolicy(reset_timeout=5)),
            ("bulkhead", {}, BulkheadPolicy()),
        ],
        ids=["retry", "retry-backoff", "budget", "breaker", "bulkhead-empty"],
    )
    def test_section_null_in_defaults_takes_builtin_defaults(
        self, section: str, given: dict[str, Any], expected: object
    ) -> None:
        """
        A section null in defaults but set in an endpoint takes built-in defaults for the rest.
        """
        config = defaults(**{section: None}) | endpoints(ep(**{section: given}))
        cfg = load_config(config)
        assert getattr(cfg.defaults, section) is None
        assert getattr(cfg.endpoints[0].policy, section) == expected

    def test_total_null_in_defaults_given_in_endpoint(self) -> None:
        """
        total null in defaults (no deadline) can be set again by an endpoint.
        """
        config = defaults(timeout={"total": None}) | endpoints(ep(timeout={"total": 3}))
        cfg = load_config(config)
        assert cfg.defaults.timeout.total is None
        assert cfg.endpoints[0].policy.timeout == Timeouts(total=3.0)

    @pytest.mark.parametrize("section", ["retry", "budget", "breaker", "bulkhead", "fallback"])
    def test_null_in_endpoint_switches_the_section_off(self, section: str) -> None:
        """
        null for a section in an endpoint switches it off there, whatever defaults say.
        """
        given: dict[str, Any] = {"fallback": "stale"} if section == "fallback" else {section: {}}
        cfg = load_config({"defaults": given, "endpoints": [ep(**{section: None})]})
        assert getattr(cfg.defaults, section) is not None
        assert getattr(cfg.endpoints[0].policy, section) is None

    def test_endpoint_total_null_switches_the_deadline_off(self) -> None:
        """
        total: null in an endpoint drops the deadline, keeping connect and read.
        """
        timeout = only(endpoints(ep(timeout={"total": None}))).timeout
        assert timeout == Timeouts(total=None)

    def test_endpoints_do_not_leak_into_each_other(self) -> None:
        """
        An endpoint's settings apply to it alone, not to the endpoints after it.
        """
        cfg = load_config(
            endpoints(ep(match="https://a.internal/", retry=None), ep(match="https://b.internal/"))
        )
        assert cfg.endpoints[0].policy.retry is None
        assert cfg.endpoints[1].policy.retry == RetryPolicy()

    def test_endpoints_keep_their_order(self) -> None:
        """
        Endpoints are kept in the order written, since the first match wins.
        """
        matches = [f"https://e{i}.internal/" for i in range(5)]
        cfg = load_config(endpoints(*(ep(match=m) for m in reversed(matches))))
        assert [e.match for e in cfg.endpoints] == list(reversed(matches))

    def test_name_defaults_to_match(self) -> None:
        """
        An endpoint without a name is named by its match pattern.
        """
        (endpoint,) = load_config(endpoints(ep(match="https://*.internal/api/*"))).endpoints
        assert endpoint.name == "https://*.internal/api/*"
        assert endpoint.policy.name == endpoint.name

    def test_defaults_policy_is_named_default(self) -> None:
        """
        The defaults' policy is named "default".
        """
        assert load_config({}).defaults.name == "default"

    def test_shared_name_with_same_settings_is_allowed(self) -> None:
        """
        Endpoints may share a name when breaker, budget and bulkhead agree.
        """
        cfg = load_config(endpoints(
            ep(name="inv", match="https://a.internal/", breaker={"failure_threshold": 2},
               timeout={"read": 1}),
            ep(name="inv", match="https://b.internal/", breaker={"failure_threshold": 2}),
        ))
        assert [e.name for e in cfg.endpoints] == ["inv", "inv"]

    def test_methods_are_upper_cased(self) -> None:
        """
        Methods are matched case-insensitively and stored upper-case.
        """
        cfg = load_config(endpoints(ep(methods=["get", "Post"], retry={"methods": ["put"]})))
        endpoint = cfg.endpoints[0]
        assert endpoint.methods == frozenset({"GET", "POST"})
        assert endpoint.policy.retry is not None
        assert endpoint.policy.retry.methods == {"PUT"}

    def test_endpoint_without_methods_applies_to_any_method(self) -> None:
        """
        An endpoint with no methods has methods None, meaning every method.
        """
        assert load_config(endpoints(ep())).endpoints[0].methods is None

    @pytest.mark.parametrize(
        ("match", "is_glob"),
        [
            ("https://inventory.internal/", False),
            ("https://inventory.internal:8443/v1/items", False),
            ("https://*.internal/api/*", True),
            ("https://api.internal/v?/items", True),
            ("*://inventory.internal/*", True),
        ],
        ids=["prefix", "prefix-with-port", "star", "question-mark", "star-scheme"],
    )
    def test_prefix_or_glob(self, match: str, is_glob: bool) -> None:
        """
        A match with * or ? is a glob; otherwise it is a URL prefix.
        """
        assert load_config(endpoints(ep(match=match))).endpoints[0].is_glob is is_glob

    def test_secrets_add_to_the_always_secret_headers(self) -> None:
        """
        secrets.headers adds to the four always-secret headers; names are lower-cased.
        """
        raw = {"secrets": {"headers": ["X-Api-Key"], "query": ["Token", "api_key"]}}
        secrets = load_config(raw).secrets
        assert secrets.headers == ALWAYS_SECRET | {"x-api-key"}
        assert secrets.query == {"token", "api_key"}

    def test_secrets_can_not_remove_the_always_secret_headers(self) -> None:
        """
        An empty secrets.headers still keeps the four always-secret headers.
        """
        assert load_config({"secrets": {"headers": []}}).secrets.headers == ALWAYS_SECRET

    @pytest.mark.parametrize(
        ("fallback", "expected"),
        [
            ("stale", StaleFallback()),
            ({"stale": None}, StaleFallback()),
            ({"stale": {"max_entries": 10}}, StaleFallback(max_entries=10)),
            ({"status": 503}, StaticFallback(status=503)),
            ({"text": "ok"}, StaticFallback.from_text(200, "ok")),
            ({"status": 200, "json": [1, 2]}, StaticFallback.from_json(200, [1, 2])),
            (None, None),
        ],
        ids=[
            "stale-word", "stale-null", "stale-max-entries", "status-only", "text", "json", "null",
        ],
    )
    def test_fallback_forms(self, fallback: Any, expected: object) -> None:
        """
        Each documented fallback form builds the expected fallback value.
        """
        assert load_config(defaults(fallback=fallback)).defaults.fallback == expected

    def test_json_fallback_body_and_headers(self) -> None:
        """
        A json fallback is served as application/json; given headers add to (or override) that.
        """
        fb = load_config(defaults(fallback={
            "status": 200,
            "json": {"items": [], "stale": True},
            "headers": {"X-Fallback": "static", "Content-Type": "application/vnd.api+json"},
        })).defaults.fallback
        assert isinstance(fb, StaticFallback)
        assert json.loads(fb.body) == {"items": [], "stale": True}
        assert fb.headers == {"Content-Type": "application/vnd.api+json", "X-Fallback": "static"}

    def test_text_fallback_is_utf8(self) -> None:
        """
        A text fallback's body is the text encoded as UTF-8, served as text/plain.
        """
        fb = load_config(defaults(fallback={"text": "indisponible – réessayez"})).defaults.fallback
        assert isinstance(fb, StaticFallback)
        assert fb.body == "indisponible – réessayez".encode()
        assert fb.headers["Content-Type"] == "text/plain; charset=utf-8"

    def test_integral_float_is_accepted_as_integer(self) -> None:
        """
        2.0 where an integer is expected is read as 2 (JSON and YAML writers may emit it).
        """
        retry = load_config(defaults(retry={"attempts": 2.0})).defaults.retry
        assert retry is not None
        assert retry.attempts == 2
        assert isinstance(retry.attempts, int)


# -- the policy values ------------------------------------------------------------

FROZEN_VALUES = [
    pytest.param(Timeouts(), "read", 1.0, id="Timeouts"),
    pytest.param(BackoffPolicy(), "max", 1.0, id="BackoffPolicy"),
    pytest.param(RetryPolicy(), "attempts", 10, id="RetryPolicy"),
    pytest.param(BudgetPolicy(), "ratio", 1.0, id="BudgetPolicy"),
    pytest.param(BreakerPolicy(), "failure_threshold", 1, id="BreakerPolicy"),
    pytest.param(BulkheadPolicy(), "max_concurrent", 1, id="BulkheadPolicy"),
    pytest.param(StaticFallback(), "status", 500, id="StaticFallback"),
    pytest.param(StaleFallback(), "max_entries", 1, id="StaleFallback"),
    pytest.param(CallableFallback(lambda req, err: Response()), "function", print,
                 id="CallableFallback"),
    pytest.param(Policy(), "retry", None, id="Policy"),
    pytest.param(Endpoint(match="https://a.internal/"), "match", "https://b.internal/",
                 id="Endpoint"),
    pytest.param(Secrets(), "query", frozenset({"token"}), id="Secrets"),
    pytest.param(Config(), "endpoints", (), id="Config"),
]


class TestPolicies:
    @pytest.mark.parametrize(("value", "field", "new"), FROZEN_VALUES)
    def test_values_are_frozen(self, value: object, field: str, new: object) -> None:
        """
        Assigning to a field of a policy value raises FrozenInstanceError.
        """
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, field, new)

    def test_policy_replace_returns_a_new_policy(self) -> None:
        """
        Policy.replace returns a changed copy and leaves the original as it was.
        """
        base = Policy()
        changed = base.replace(retry=None, timeout=Timeouts(read=2.0))
        assert changed.retry is None
        assert changed.timeout.read == 2.0
        assert base == Policy()

    @pytest.mark.parametrize(
        ("changes", "path"),
        [
            ({"failure_status": [404]}, "failure_status[0]"),
            ({"timeout": None}, "timeout"),
            ({"retry": {"attempts": 3}}, "retry"),
            ({"fallback": "stale"}, "fallback"),
            ({"name": ""}, "name"),
            ({"critical": "yes"}, "critical"),
        ],
        ids=[
            "4xx-failure-status", "no-timeout", "mapping-for-retry", "str-fallback", "empty-name",
            "str-critical",
        ],
    )
    def test_policy_replace_validates(self, changes: dict[str, Any], path: str) -> None:
        """
        Policy.replace validates the changed policy and raises ConfigError naming the field.
        """
        with pytest.raises(ConfigError) as info:
            Policy().replace(**changes)
        assert info.value.path == path

    @pytest.mark.parametrize(
        ("build", "path"),
        [
            (lambda: Timeouts(connect=0), "connect"),
            (lambda: Timeouts(read=math.inf), "read"),
            (lambda: dataclasses.replace(Timeouts(), total=-1), "total"),
            (lambda: Timeouts(read=1e10), "read"),
            (lambda: RetryPolicy(attempts=0), "attempts"),
            (lambda: RetryPolicy(backoff={"initial": 1}), "backoff"),  # type: ignore[arg-type]
            (lambda: BackoffPolicy(jitter="random"), "jitter"),  # type: ignore[arg-type]
            (lambda: BreakerPolicy(storage="file:///tmp/x"), "storage"),
            (lambda: BulkheadPolicy(max_concurrent=0), "max_concurrent"),
            (lambda: StaticFallback(body="text"), "body"),  # type: ignore[arg-type]
            (lambda: CallableFallback(function="no"), "fallback"),  # type: ignore[arg-type]
            (lambda: Endpoint(match="ftp://a.internal/"), "match"),
            (lambda: Secrets(headers=["bad header"]), "headers[0]"),  # type: ignore[arg-type]
        ],
        ids=[
            "timeouts-zero", "timeouts-inf", "replace-timeouts", "timeouts-huge", "retry-attempts",
            "retry-backoff-dict", "backoff-jitter", "breaker-storage", "bulkhead", "static-body",
            "callable", "endpoint", "secrets",
        ],
    )
    def test_values_built_in_python_are_validated(self, build: Any, path: str) -> None:
        """
        A policy value built in Python is validated where it is written, naming the field.
        """
        with pytest.raises(ConfigError) as info:
            build()
        assert info.value.path == path

    def test_values_are_normalised(self) -> None:
        """
        Friendly inputs are normalised once: ints to floats, lists to frozensets, strings to enums.
        """
        assert isinstance(Timeouts(connect=1).connect, float)
        retry = RetryPolicy(
            methods=["get"], on_status=[503, 503], on=["read_error"]  # type: ignore[arg-type]
        )
        assert retry.methods == frozenset({"GET"})
        assert retry.on_status == frozenset({503})
        assert retry.on == frozenset({"read_error"})
        backoff = BackoffPolicy(jitter="decorrelated")  # type: ignore[arg-type]
        assert backoff.jitter is Jitter.DECORRELATED

    def test_jitter_compares_equal_to_its_string(self) -> None:
        """
        Jitter members compare equal to, and print as, their config strings.
        """
        assert Jitter.FULL == "full"  # type: ignore[comparison-overlap]
        assert str(Jitter.EQUAL) == "equal"
        assert [j.value for j in Jitter] == ["none", "full", "equal", "decorrelated"]

    def test_policies_compare_by_value(self) -> None:
        """
        Two configs loaded from the same input are equal, so tests can compare them.
        """
        assert load_config(MAPPING) == load_config(json.loads(JSON_TEXT))
        assert load_config(defaults(retry={"attempts": 2})) != load_config({})

    def test_config_from_python_matches_config_from_mapping(self) -> None:
        """
        A Config built in Python equals the one loaded from the equivalent mapping.
        """
        built = Config(
            defaults=Policy(timeout=Timeouts(read=2.0), bulkhead=None),
            endpoints=[  # type: ignore[arg-type]
                Endpoint(
                    match="https://inventory.internal/",
                    methods=frozenset({"GET"}),
                    policy=Policy(
                        name="inventory",
                        timeout=Timeouts(read=2.0),
                        bulkhead=None,
                        fallback=StaleFallback(),
                    ),
                )
            ],
        )
        assert isinstance(built.endpoints, tuple)
        assert built == load_config({
            "defaults": {"timeout": {"read": 2}, "bulkhead": None},
            "endpoints": [{
                "name": "inventory",
                "match": "https://inventory.internal/",
                "methods": ["GET"],
                "fallback": "stale",
            }],
        })


# -- documented configs -------------------------------------------------------------

FENCE = re.compile(r"^```(yaml|toml|json)\n(.*?)^```", re.S | re.M)
DOC = ROOT / "docs" / "configuration.md"
EXAMPLE = ROOT / "examples" / "config.yaml"


def doc_blocks() -> list[Any]:
    """Every YAML, TOML and JSON block of docs/configuration.md, as test params."""
    if not DOC.exists():  # pragma: no cover - docs are part of the repository
        return []
    text = DOC.read_text(encoding="utf-8")
    blocks = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        fmt, block = m.group(1), m.group(2)
        blocks.append(pytest.param(fmt, block, id=f"{fmt}-line{line}"))
    return blocks


class TestDocumentedConfigs:
    @pytest.mark.parametrize(("fmt", "text"), doc_blocks())
    def test_every_documented_block_loads(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, text: str
    ) -> None:
        """
        Every YAML, TOML and JSON example in docs/configuration.md is a valid config.
        """
        # The environment example needs its required variables.
        monkeypatch.setenv("INVENTORY_URL", "https://inventory.internal/")
        monkeypatch.setenv("REDIS_PASSWORD", "pw")
        assert isinstance(load_config(write(tmp_path, f"block.{fmt}", text)), Config)

    def test_docs_have_examples_in_every_format(self) -> None:
        """
        The configuration reference shows YAML, TOML and JSON examples.
        """
        assert {p.values[0] for p in doc_blocks()} == {"yaml", "toml", "json"}

    def test_documented_defaults_are_the_real_defaults(self, tmp_path: Path) -> None:
        """
        The docs' spelled-out defaults block loads to exactly the built-in defaults.
        """
        text = DOC.read_text(encoding="utf-8")
        m = re.search(r"<!-- defaults -->\s*```yaml\n(.*?)^```", text, re.S | re.M)
        assert m, "docs/configuration.md lost its <!-- defaults --> block"
        assert load_config(write(tmp_path, "defaults.yaml", m.group(1))) == Config()

    def test_example_config_loads(self) -> None:
        """
        examples/config.yaml loads, with its inventory, payments and search endpoints.
        """
        cfg = load_config(EXAMPLE)
        by_name = {e.name: e for e in cfg.endpoints}
        assert {"inventory", "payments", "search"} <= set(by_name)
        assert by_name["inventory"].policy.fallback == StaleFallback()
        payments = by_name["payments"].policy
        assert payments.retry is not None
        assert payments.retry.idempotency_header == "Idempotency-Key"
        assert "POST" not in payments.retry.methods
        assert payments.breaker is not None
        search = by_name["search"].policy
        assert isinstance(search.fallback, StaticFallback)
        assert search.timeout.read < cfg.defaults.timeout.read

    def test_example_uses_no_real_hosts(self) -> None:
        """
        The example config only names .internal hosts.
        """
        for endpoint in load_config(EXAMPLE).endpoints:
            host = endpoint.match.split("://", 1)[1].split("/", 1)[0].split(":", 1)[0]
            assert host.endswith(".internal"), endpoint.match



def page_section(heading: str) -> str:
    """The text of docs/configuration.md under *heading*, up to the next heading of its level or above."""
    text = DOC.read_text(encoding="utf-8")
    level = len(heading) - len(heading.lstrip("#"))
    start = text.find(f"\n{heading}\n")
    assert start != -1, f"docs/configuration.md has no heading {heading!r}"
    body = text[start + len(heading) + 2:]
    end = re.search(rf"^#{{1,{level}}} ", body, re.M)
    return body[: end.start()] if end else body


def row(key: str) -> str:
    """How a key starts its row in a reference table."""
    return f"| `{key}` |"


class TestReferenceIsComplete:
    """
    docs/configuration.md claims to list every key: each key the loader accepts
    (its own key lists, and every field of a section's dataclass) is on the page.
    """

    def test_top_level_keys_are_in_the_document_table(self) -> None:
        """
        Each top-level key has a row in "The document".
        """
        missing = [k for k in _TOP_KEYS if row(k) not in page_section("## The document")]
        assert not missing

    def test_every_section_is_listed_and_has_its_heading(self) -> None:
        """
        Each section is in the list of sections and the endpoints' "any section" row, and has a heading.
        """
        listed = page_section("## The document").split("The sections, valid in", 1)[1].split("\n\n")[0]
        any_section = next(line for line in page_section("## `endpoints`").splitlines()
                           if line.startswith("| any section |"))
        text = DOC.read_text(encoding="utf-8")
        for key in _SECTION_KEYS:
            assert f"`{key}`" in listed, key
            assert f"`{key}`" in any_section, key
            assert f"\n## `{key}`\n" in text, key

    def test_every_field_of_every_section_has_a_row(self) -> None:
        """
        Each field of each section's dataclass (retry.backoff's too) has a row under its section.
        """
        tables = {key: (kind, page_section(f"## `{key}`")) for key, kind in _SECTION_KINDS.items()}
        tables["retry.backoff"] = (BackoffPolicy, page_section("### `retry.backoff`"))
        missing = [
            f"{key}.{f.name}"
            for key, (kind, text) in tables.items()
            for f in dataclasses.fields(kind)
            if row(f.name) not in text
        ]
        assert not missing
        for key in ("failure_status", "critical", "state"):  # the sections that are one value
            assert row(key) in page_section(f"## `{key}`")

    def test_endpoint_and_secrets_keys_have_rows(self) -> None:
        """
        Each key of an endpoint (besides the sections) and of secrets has a row.
        """
        endpoint_keys = [k for k in _ENDPOINT_KEYS if k not in _SECTION_KEYS]
        assert not [k for k in endpoint_keys if row(k) not in page_section("## `endpoints`")]
        assert not [k for k in _SECRETS_KEYS if row(k) not in page_section("## `secrets`")]

    def test_every_fallback_form_is_shown(self) -> None:
        """
        Each key of each fallback form is shown in the fallback table.
        """
        text = page_section("## `fallback`")
        keys = [k for form in _FALLBACK_FORMS for k in form] + list(_STALE_KEYS)
        assert not [k for k in keys if f"{k}:" not in text]

    def test_every_nullable_key_is_in_the_toml_paragraph(self) -> None:
        """
        Each key where TOML's false means null is named in "TOML has no null".
        """
        text = page_section("### TOML has no `null`")
        assert not [k for k in sorted(_NULLABLE) if f"`{k}" not in text]

    def test_the_defaults_block_spells_out_every_key(self) -> None:
        """
        The defaults block has every top-level key, every section, and every key of each section that is on.
        """
        text = DOC.read_text(encoding="utf-8")
        m = re.search(r"<!-- defaults -->\s*```yaml\n(.*?)^```", text, re.S | re.M)
        assert m
        block = _yaml_loads(m.group(1))  # the loader's YAML: `on` is the key on
        assert set(block) == set(_TOP_KEYS)
        assert list(block["defaults"]) == list(_SECTION_KEYS)
        assert list(block["secrets"]) == list(_SECRETS_KEYS)
        for key, kind in _SECTION_KINDS.items():
            if getattr(Policy(), key) is not None:
                assert list(block["defaults"][key]) == [f.name for f in dataclasses.fields(kind)], key
            else:
                assert block["defaults"][key] is None, key
        backoff = [f.name for f in dataclasses.fields(BackoffPolicy)]
        assert list(block["defaults"]["retry"]["backoff"]) == backoff

# -- property: any structure loads or raises ConfigError ---------------------------

#: The real key names, so random documents reach deep into the parser.
KEY_NAMES = [
    "defaults", "secrets", "endpoints",
    "timeout", "retry", "budget", "failure_status", "breaker", "bulkhead", "fallback", "critical",
    "name", "match", "methods", "state", "state_dir",
    "connect", "read", "total",
    "attempts", "backoff", "on_status", "on", "idempotency_header", "respect_retry_after",
    "max_retry_after", "attempt_header",
    "initial", "multiplier", "max", "jitter",
    "ratio", "min_per_second", "window",
    "failure_threshold", "reset_timeout", "storage", "mode", "failure_rate", "min_calls",
    "slow_call_duration", "max_concurrent",
    "status", "json", "text", "headers", "stale", "max_entries", "query",
]
JUNK_KEYS = ["retries", "Timeout", "attempt", "x", "0", "", "défaut"]
WORDS = [
    "stale", "full", "none", "equal", "decorrelated", "memory", "redis://r.internal:6379/0",
    "consecutive", "rate", "GET", "post", "connect_error", "read_timeout", "Idempotency-Key",
    "https://a.internal/", "https://*.internal/api/*", "ftp://a.internal/", "https://[a].internal/",
    "", "  ",
]


keys = st.sampled_from(KEY_NAMES) | st.sampled_from(JUNK_KEYS) | st.text(max_size=4)
scalars = (
    st.none()
    | st.booleans()
    | st.sampled_from([0, 1, 2, 3, 5, 50, 200, 404, 429, 500, 503, 600, -1, 0.5, 2.5, 10**400])
    | st.integers()
    | st.floats()
    | st.sampled_from(WORDS)
    | st.text(max_size=6)
)
trees = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=30,
)
#: Any nesting of mappings, lists and scalars.
documents = st.dictionaries(keys, trees, max_size=4)

#: The fields of each section, so shaped documents reach every validator.
SECTION_FIELDS = {
    "timeout": ["connect", "read", "total"],
    "retry": [
        "attempts", "backoff", "on_status", "on", "methods", "idempotency_header",
        "respect_retry_after", "max_retry_after", "attempt_header",
    ],
    "budget": ["ratio", "min_per_second", "window"],
    "breaker": [
        "failure_threshold", "reset_timeout", "storage", "mode", "failure_rate", "window",
        "min_calls", "slow_call_duration",
    ],
    "bulkhead": ["max_concurrent"],
    "fallback": ["status", "json", "text", "headers", "stale"],
    "pool": ["max_size"],
}
BACKOFF_FIELDS = ["initial", "multiplier", "max", "jitter"]

#: Values valid for some field, so that a document often gets past one field to the next.
PLAUSIBLE = [
    1, 2, 3, 0.5, 5.0, 10, 30.0, 200, None, True, "full", "equal", "memory", "consecutive",
    "stale", "Idempotency-Key", "ok", [503], [502, 503], [500, 503], ["GET", "put"],
    ["connect_error", "read_timeout"], ["X-Api-Key"],
]


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Draw from *common* three times in four, else from *rare*."""
    return st.integers(0, 3).flatmap(lambda i: rare if i == 0 else common)


nested_lists = st.lists(
    scalars | st.lists(scalars, max_size=2) | st.dictionaries(keys, scalars, max_size=2), max_size=4
)
values = mostly(st.sampled_from(PLAUSIBLE), scalars | nested_lists | trees)


def fields_of(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Mappings with some of the real field *names*, holding random values."""
    optional = {
        name: mostly(fields_of(BACKOFF_FIELDS), values) if name == "backoff" else values
        for name in names
    }
    return st.fixed_dictionaries({}, optional=optional)


#: Sections made of real field names with random values inside.
sections = st.fixed_dictionaries(
    {},
    optional={
        **{name: mostly(fields_of(fields), values) for name, fields in SECTION_FIELDS.items()},
        "failure_status": values,
        "critical": values,
    },
)
endpoint_entries = st.builds(
    lambda rule, secs: {**rule, **secs},
    st.fixed_dictionaries(
        {"match": st.sampled_from(WORDS) | scalars},
        optional={"name": st.sampled_from(["inventory", "search"]) | scalars, "methods": values},
    ),
    sections,
)
#: Documents shaped like real configs, with random values inside.
shaped_documents = st.fixed_dictionaries(
    {},
    optional={
        "defaults": mostly(sections, values),
        "endpoints": mostly(st.lists(mostly(endpoint_entries, values), max_size=3), values),
        "secrets": mostly(fields_of(["headers", "query"]), values),
    },
)


class TestProperties:
    @settings(
        max_examples=400,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(documents | shaped_documents)
    @example({"defaults": {"retry": {"on": [["connect_error"]]}}})
    @example({"defaults": {"timeout": {"connect": 10**400}}})
    def test_any_structure_loads_or_raises_config_error(self, doc: dict[Any, Any]) -> None:
        """
        Any nested structure either loads or raises ConfigError starting with its key path.
        """
        check_loads_or_config_error(doc)

    @settings(
        max_examples=400,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(shaped_documents)
    def test_shaped_documents_load_or_raise_config_error(self, doc: dict[str, Any]) -> None:
        """
        Documents shaped like real configs either load or raise ConfigError with a key path.
        """
        check_loads_or_config_error(doc)


def check_loads_or_config_error(doc: dict[Any, Any]) -> None:
    """Assert that *doc* loads, or raises a ConfigError listing its problems, each with its path."""
    try:
        cfg = load_config(doc)
    except ConfigError as e:
        assert e.errors[0] == (e.path, e.problem)
        lines = []
        for path, problem in e.errors:
            assert problem
            if path:
                # The path starts at one of the document's own top-level keys.
                assert any(
                    path == str(k) or path.startswith((f"{k}.", f"{k}[")) for k in doc
                ), (path, doc)
            lines.append(f"{path}: {problem}" if path else problem)
        if len(lines) == 1:
            assert str(e) == lines[0]
        else:
            shown = lines[:_SHOWN]  # the message lists this many; .errors keeps them all
            more = [f"  ... and {len(lines) - _SHOWN} more (all of them are in .errors)"] if len(
                lines) > _SHOWN else []
            assert str(e) == "\n".join([f"{len(lines)} problems in the configuration:",
                                        *(f"  {line}" for line in shown), *more])
    else:
        assert isinstance(cfg, Config)
        # Whatever loads is safe: connect and read are finite and positive.
        for policy in (cfg.defaults, *(ep.policy for ep in cfg.endpoints)):
            assert 0 < policy.timeout.connect < math.inf
            assert 0 < policy.timeout.read < math.inf


class TestEdgeCases:
    def test_empty_methods_list_is_an_error(self) -> None:
        """An endpoint with `methods: []` could never match, so it is refused."""
        with pytest.raises(ConfigError, match=r"endpoints\[0\]\.methods: must list at least one method"):
            load_config({"endpoints": [{"match": "http://a.internal/", "methods": []}]})

    def test_toml_false_timeout_says_it_cannot_be_switched_off(self, tmp_path: Path) -> None:
        """`timeout = false` in TOML is refused with the reason, not a type complaint."""
        f = tmp_path / "c.toml"
        f.write_text("[defaults]\ntimeout = false\n")
        with pytest.raises(ConfigError, match=r"defaults\.timeout: cannot be switched off"):
            load_config(f)

    def test_a_file_that_is_not_a_mapping_names_the_file(self, tmp_path: Path) -> None:
        """A YAML file holding a list (or only comments) is refused with its name."""
        f = tmp_path / "c.yaml"
        f.write_text("- a\n- b\n")
        with pytest.raises(ConfigError, match=r"c\.yaml: the config must be a mapping of keys, got list"):
            load_config(f)


class TestPool:
    """The ``pool`` section: connections kept per origin, following the bulkhead by default."""

    def test_the_default_pool_follows_the_bulkhead(self) -> None:
        """With no pool setting, the pool is as large as bulkhead.max_concurrent (50)."""
        policy = Config().defaults
        assert policy.pool == PoolPolicy(max_size=None)
        assert policy.pool_size == 50

    @pytest.mark.parametrize(("config", "size"), [
        (defaults(bulkhead={"max_concurrent": 8}), 8),
        (defaults(bulkhead=None), 10),
        (defaults(pool={"max_size": 64}), 64),
        (defaults(pool={"max_size": 64}, bulkhead={"max_concurrent": 8}), 64),
        (defaults(pool=None), 10),
        (defaults(pool={"max_size": None}, bulkhead={"max_concurrent": 20_000}), 10_000),
    ], ids=["bulkhead 8", "no bulkhead", "max_size", "max_size over bulkhead", "pool null",
            "a huge bulkhead is capped"])
    def test_pool_size(self, config: dict[str, Any], size: int) -> None:
        """The size is max_size, else the bulkhead's (capped), else requests' 10."""
        assert load_config(config).defaults.pool_size == size

    def test_an_endpoint_merges_over_defaults(self) -> None:
        """An endpoint's pool overrides defaults'; one that omits it follows its own bulkhead."""
        cfg = load_config({"defaults": {"pool": {"max_size": 30}}, "endpoints": [
            ep(match="https://a.internal/", pool={"max_size": 4}),
            ep(match="https://b.internal/", pool={"max_size": None}, bulkhead={"max_concurrent": 7}),
        ]})
        assert [e.policy.pool_size for e in cfg.endpoints] == [4, 7]

    @pytest.mark.parametrize(("config", "path", "problem"), [
        (defaults(pool={"max_size": 0}), "defaults.pool.max_size", "must be an integer >= 1, got 0"),
        (third(pool={"max_size": 10_001}), "endpoints[2].pool.max_size", "must be at most 10000"),
        (defaults(pool={"max_size": "32"}), "defaults.pool.max_size", "must be an integer >= 1"),
        (defaults(pool={"max_size": True}), "defaults.pool.max_size", "must be an integer >= 1"),
        (defaults(pool={"maxsize": 32}), "defaults.pool.maxsize", "unknown key; expected one of max_size"),
        (defaults(pool=32), "defaults.pool", "must be a mapping"),
    ], ids=["zero", "too large", "string", "bool", "typo", "not a mapping"])
    def test_bad_values_name_the_key_path(self, config: dict[str, Any], path: str, problem: str) -> None:
        """Every bad pool value is a ConfigError at its key path."""
        err = load_error(config)
        assert err.path == path and problem in err.problem

    def test_toml_false_is_null(self, tmp_path: Path) -> None:
        """In TOML, pool = false is requests' pool and max_size = false follows the bulkhead."""
        cfg = load_config(write(tmp_path, "c.toml", "[defaults]\npool = false\n"))
        assert cfg.defaults.pool is None and cfg.defaults.pool_size == 10
        cfg = load_config(write(tmp_path, "d.toml", "[defaults.pool]\nmax_size = false\n"))
        assert cfg.defaults.pool == PoolPolicy()

    def test_one_call_cannot_change_it(self) -> None:
        """The pool is the endpoint's, shared by its calls: policy={"pool": ...} is refused."""
        from resilient_client._config import call_policy

        with pytest.raises(ConfigError) as info:
            call_policy(Policy(), {"pool": {"max_size": 3}})
        assert info.value.path == "policy.pool"



def _takes_nothing() -> None:
    return None


class TestThirdReview:
    """What the third adversarial review found in the loader, pinned."""

    def test_a_duplicate_yaml_key_is_refused_not_the_last_one_kept(self, tmp_path: Path) -> None:
        """`breaker:` twice must not let a later `null` switch the breaker off silently."""
        path = tmp_path / "c.yaml"
        path.write_text("defaults:\n  breaker: {failure_threshold: 3}\n  breaker: null\n")
        with pytest.raises(ConfigError, match=r"duplicate key 'breaker' at line 3 \(first at line 2\)"):
            Config.load(path)

    def test_a_duplicate_json_key_is_refused(self, tmp_path: Path) -> None:
        """The same in JSON."""
        path = tmp_path / "c.json"
        path.write_text('{"defaults": {"breaker": {"failure_threshold": 3}, "breaker": null}}')
        with pytest.raises(ConfigError, match="duplicate key 'breaker'"):
            Config.load(path)

    def test_a_json_file_with_a_bom_loads(self, tmp_path: Path) -> None:
        """Editors write a BOM; YAML reads past it, and so does JSON now."""
        path = tmp_path / "c.json"
        path.write_text('\ufeff{"defaults": {"retry": null}}', encoding="utf-8")
        assert Config.load(path).defaults.retry is None

    def test_yaml_alias_bombs_are_refused_quickly(self, tmp_path: Path) -> None:
        """A few hundred bytes of nested aliases is a ConfigError, not minutes of CPU."""
        lines = ["a: &a [1,2,3,4,5,6,7,8,9,10]"]
        for prev, name in zip("abcde", "bcdef", strict=True):
            lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]")
        path = tmp_path / "c.yaml"
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(ConfigError, match="too large or too deeply nested"):
            Config.load(path)

    def test_a_very_long_error_message_is_capped_but_every_error_is_kept(self) -> None:
        """1,000 problems: the message shows 50 and says how many more; .errors has them all."""
        err = load_error({"defaults": {f"junk{i}": 1 for i in range(1000)}})
        assert len(err.errors) == 1000
        assert "... and 950 more" in str(err) and len(str(err).splitlines()) == 52

    def test_a_redis_url_with_a_bad_port_is_a_config_error(self) -> None:
        """Not a bare ValueError on every call."""
        err = load_error({"defaults": {"breaker": {"storage": "redis://127.0.0.1:99999999/"}}})
        assert err.path == "defaults.breaker.storage"

    def test_a_callable_fallback_with_the_wrong_signature_fails_at_load(self) -> None:
        """fn(request, failure) is how it is called: a function taking nothing is refused now."""
        err = load_error({"defaults": {"fallback": {"callable": f"{__name__}:_takes_nothing"}}})
        assert err.path == "defaults.fallback.callable" and "must take (request, failure)" in str(err)

    def test_an_endpoint_name_with_a_line_break_is_refused(self) -> None:
        """The name is in every log line: no injected lines."""
        err = load_error(endpoints(ep(name="inv\nFAKE LOG LINE")))
        assert err.path == "endpoints[0].name"

    def test_an_environment_value_is_never_quoted_at_a_parent_key(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`timeout: [${PW}]` is "must be a mapping", without the value it was given."""
        monkeypatch.setenv("PW", "hunter2SECRET")
        path = tmp_path / "c.yaml"
        path.write_text('defaults:\n  timeout: ["${PW}"]\n')
        with pytest.raises(ConfigError) as caught:
            Config.load(path)
        assert "hunter2SECRET" not in str(caught.value) and "${PW}" in str(caught.value)
