"""
Adapters mounted by the user: every `HTTPAdapter` (any subclass, from any
library) keeps the ``total`` deadline on each socket read, with its own
behaviour intact; any other adapter gets capped timeouts and a warning.

The ecosystem's own subclasses are tested against real loopback peers
(tests/peers.py) that drip the body and drip the headers: a plain
``HTTPAdapter(pool_maxsize=32)``, CacheControl's adapter, requests-toolbelt's
``SourceAddressAdapter`` and a subclass that overrides ``init_poolmanager``
with an ``ssl_context`` (over TLS). Without the session equipping them, each
drip runs for seconds past ``total``: requests' read timeout bounds one
socket read, and a byte arrives every 0.1 s.
"""

from __future__ import annotations

import http.client
import logging
import pickle
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from peers import Conn, Peer, Request, answer, ca_bundle, drip_body, drip_headers, http_date
from requests.adapters import BaseAdapter, HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.util.retry import Retry

from resilient_client import DeadlineExceeded, ResilientSession
from resilient_client._deadline import _DeadlineHTTPResponse
from resilient_client.testing import FakeClock

cachecontrol = pytest.importorskip("cachecontrol")
toolbelt_adapters = pytest.importorskip("requests_toolbelt.adapters.source")

TOTAL = 0.3
#: How late DeadlineExceeded may come, as in test_timeouts: the design gives
#: about one read; the bound is generous for a loaded CI machine. A drip that
#: is not cut off runs 5 s (50 bytes, one per 0.1 s).
LATE = 0.5


def session(total: float | None = TOTAL) -> ResilientSession:
    """A real-clock session, one try per call: the deadline is all that stops a drip."""
    return ResilientSession({"defaults": {
        "timeout": {"connect": 1.0, "read": 5.0, "total": total}, "retry": None, "breaker": None}})


class CountingContext(ssl.SSLContext):
    """A client TLS context that counts the sockets it wraps: proof that it is the one used."""

    wrapped = 0

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        type(self).wrapped += 1
        return super().wrap_socket(*args, **kwargs)


class ContextAdapter(HTTPAdapter):
    """The usual custom-TLS recipe: ``init_poolmanager`` overridden to pass an ``ssl_context``."""

    def __init__(self, context: ssl.SSLContext, **kwargs: Any) -> None:
        self.context = context
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self.context
        super().init_poolmanager(*args, **kwargs)


def counting_context() -> CountingContext:
    ctx = CountingContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca_bundle())
    CountingContext.wrapped = 0
    return ctx


@dataclass
class Case:
    """One adapter from the ecosystem: how to build it, over which scheme, and what it does of its own."""

    name: str
    build: Callable[[], HTTPAdapter]
    tls: bool = False


CASES = [
    Case("HTTPAdapter(pool_maxsize=32)", lambda: HTTPAdapter(pool_maxsize=32)),
    Case("CacheControlAdapter", lambda: cachecontrol.CacheControlAdapter()),
    Case("toolbelt SourceAddressAdapter",
         lambda: toolbelt_adapters.SourceAddressAdapter(("127.0.0.2", 0))),
    Case("init_poolmanager with ssl_context", lambda: ContextAdapter(counting_context()), tls=True),
]


def mounted(case: Case, total: float | None = TOTAL) -> tuple[ResilientSession, HTTPAdapter]:
    s = session(total)
    adapter = case.build()
    s.mount("https://" if case.tls else "http://", adapter)
    return s, adapter


def verify(peer: Peer) -> str | bool:
    return ca_bundle() if peer.tls else True


def stops_at_total(s: ResilientSession, peer: Peer, path: str) -> float:
    """Call *path*, expect DeadlineExceeded, return how late it came (seconds past TOTAL)."""
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        s.get(peer.url(path), verify=verify(peer))
    return time.monotonic() - started - TOTAL


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
class TestEcosystemAdapters:
    def test_a_dripped_body_stops_at_total(self, case: Case) -> None:
        """A body dripped a byte every 0.1 s is cut off at total through the user's adapter."""
        with Peer(tls=case.tls) as peer:
            peer.on("/drip", drip_body(b"x" * 50, interval=0.1))
            s, _ = mounted(case)
            assert stops_at_total(s, peer, "/drip") < LATE

    def test_dripped_headers_stop_at_total(self, case: Case) -> None:
        """A status line and headers dripped a byte every 0.1 s are cut off at total too."""
        with Peer(tls=case.tls) as peer:
            peer.on("/drip", drip_headers(interval=0.1))
            s, _ = mounted(case)
            assert stops_at_total(s, peer, "/drip") < LATE

    def test_a_healthy_peer_is_served_as_the_adapter_would(self, case: Case) -> None:
        """On a healthy peer the adapter works as it does alone, connections kept alive."""
        with Peer(tls=case.tls) as peer:
            peer.on("/ok", answer(200, b"fine"))
            s, _ = mounted(case)
            bodies = [s.get(peer.url("/ok"), verify=verify(peer)).content for _ in range(5)]
            assert bodies == [b"fine"] * 5
            assert peer.connections == 1


class TestTheAdaptersOwnBehaviourIsKept:
    def test_pool_settings(self) -> None:
        """HTTPAdapter(pool_maxsize=32)'s pools hold 32 connections, as without the session."""
        with Peer() as peer:
            peer.on("/ok", answer(200, b"fine"))
            s, adapter = mounted(CASES[0])
            s.get(peer.url("/ok"))
            manager = adapter.poolmanager
            (pool,) = [manager.pools[key] for key in manager.pools.keys()]  # noqa: SIM118 - not iterable
            assert pool.pool is not None and pool.pool.maxsize == 32
            assert isinstance(pool, HTTPConnectionPool)
            assert issubclass(pool.ConnectionCls.response_class, _DeadlineHTTPResponse)

    def test_cachecontrol_still_caches(self) -> None:
        """CacheControl answers a fresh cached response itself: the peer sees one request."""
        with Peer() as peer:
            # CacheControl stores a max-age response only if it carries a Date.
            headers = {"Cache-Control": "max-age=60", "Date": http_date(0)}
            peer.on("/cached", answer(200, b"cached body", headers))
            s, _ = mounted(CASES[1])
            first = s.get(peer.url("/cached"))
            second = s.get(peer.url("/cached"))
            assert first.content == second.content == b"cached body"
            assert getattr(second, "from_cache", False) is True
            assert peer.hits("/cached") == 1

    def test_source_address_is_used(self) -> None:
        """toolbelt's SourceAddressAdapter still binds its connections to the source address."""
        with Peer() as peer:
            peer.on("/ok", answer(200, b"fine"))
            s, adapter = mounted(CASES[2])
            s.get(peer.url("/ok"))
            manager = adapter.poolmanager
            # The kept-alive connection, idle in its pool: nobody owns it now.
            idle = [c for k in manager.pools.keys() for c in manager.pools[k].pool.queue if c]  # noqa: SIM118
            assert [c.sock.getsockname()[0] for c in idle] == ["127.0.0.2"]

    def test_its_ssl_context_is_used(self) -> None:
        """The ssl_context passed in init_poolmanager wraps every TLS connection made."""
        with Peer(tls=True) as peer:
            peer.on("/ok", answer(200, b"fine"))
            s, _ = mounted(CASES[3])
            assert s.get(peer.url("/ok"), verify=ca_bundle()).content == b"fine"
            assert CountingContext.wrapped == peer.handshakes == 1

    def test_a_connection_class_with_its_own_response_class(self) -> None:
        """A pool whose connections build their own response class keeps it, deadline added."""

        class MarkedResponse(http.client.HTTPResponse):
            marked = True

        class MarkedConnection(HTTPConnection):
            response_class = MarkedResponse

        class MarkedPool(HTTPConnectionPool):
            ConnectionCls = MarkedConnection

        class MarkedAdapter(HTTPAdapter):
            def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
                super().init_poolmanager(*args, **kwargs)
                self.poolmanager.pool_classes_by_scheme = {"http": MarkedPool}

        with Peer() as peer:
            peer.on("/ok", answer(200, b"fine"))
            peer.on("/drip", drip_body(b"x" * 50, interval=0.1))
            s = session()
            s.mount("http://", MarkedAdapter())
            resp = s.get(peer.url("/ok"), stream=True)
            assert isinstance(resp.raw._fp, MarkedResponse) and resp.raw._fp.marked
            resp.close()
            assert stops_at_total(s, peer, "/drip") < LATE


class TestEveryWayAnAdapterArrives:
    def test_through_an_http_proxy(self) -> None:
        """A call through a proxy (a manager the adapter builds on first use) stops at total."""
        with Peer() as proxy:
            # The peer serves an absolute-form request line by its path: a forward proxy.
            proxy.on("/drip", drip_body(b"x" * 50, interval=0.1))
            proxy.on("/ok", answer(200, b"via proxy"))
            s, adapter = mounted(CASES[0])
            proxies = {"http": proxy.url("/")}
            assert s.get("http://upstream.test/ok", proxies=proxies).content == b"via proxy"
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                s.get("http://upstream.test/drip", proxies=proxies)
            assert time.monotonic() - started - TOTAL < LATE
            assert proxy.last("/ok").target == "http://upstream.test/ok"
            assert len(adapter.proxy_manager) == 1

    def test_socks_managers_keep_socks_pools_and_the_source_address(self) -> None:
        """A SOCKS manager of toolbelt's adapter keeps SOCKS pools and the source address, reader added."""
        pytest.importorskip("socks")
        from urllib3.contrib.socks import SOCKSConnection, SOCKSHTTPConnectionPool

        _, adapter = mounted(CASES[2])
        manager = adapter.proxy_manager_for("socks5://127.0.0.1:1080")
        pool = manager.pool_classes_by_scheme["http"]
        assert issubclass(pool, SOCKSHTTPConnectionPool)
        assert issubclass(pool.ConnectionCls, SOCKSConnection)
        assert issubclass(pool.ConnectionCls.response_class, _DeadlineHTTPResponse)
        assert manager.connection_pool_kw["source_address"] == ("127.0.0.2", 0)

    def test_after_unpickling(self) -> None:
        """An unpickled session's adapters (rebuilt pool managers) keep the deadline and their settings."""
        with Peer() as peer:
            peer.on("/drip", drip_body(b"x" * 50, interval=0.1))
            s, _ = mounted(CASES[0])
            copy = pickle.loads(pickle.dumps(s))
            adapter = copy.get_adapter(peer.url("/"))
            assert isinstance(adapter, HTTPAdapter) and adapter._pool_maxsize == 32
            assert stops_at_total(copy, peer, "/drip") < LATE

    def test_put_into_adapters_directly(self) -> None:
        """An adapter put into session.adapters without mount() is equipped on first use."""
        with Peer() as peer:
            peer.on("/drip", drip_body(b"x" * 50, interval=0.1))
            s = session()
            s.adapters["http://"] = HTTPAdapter()
            assert stops_at_total(s, peer, "/drip") < LATE

    def test_used_before_it_was_mounted(self) -> None:
        """Pools an adapter built before it was mounted are replaced: their connections had no deadline."""
        with Peer() as peer:
            peer.on("/ok", answer(200, b"fine"))
            peer.on("/drip", drip_body(b"x" * 50, interval=0.1))
            adapter = HTTPAdapter()
            with requests.Session() as plain:
                plain.mount("http://", adapter)
                assert plain.get(peer.url("/ok"), timeout=5).content == b"fine"
            s = session()
            s.mount("http://", adapter)
            assert stops_at_total(s, peer, "/drip") < LATE


class RecordingBaseAdapter(BaseAdapter):
    """An adapter that is not an HTTPAdapter: it records the timeout it gets and answers 200."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[Any] = []

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Any = None) -> requests.Response:
        self.timeouts.append(timeout)
        resp = requests.Response()
        resp.status_code = 200
        resp._content = b"ok"
        resp.url = request.url or ""
        resp.request = request
        return resp

    def close(self) -> None:
        pass


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "resilient_client" and r.levelno == logging.WARNING]


class TestWarnings:
    def test_a_base_adapter_gets_capped_timeouts_and_one_warning(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A BaseAdapter is warned about once, however often mounted or used; total caps its timeouts."""
        caplog.set_level(logging.WARNING, logger="resilient_client")
        s = ResilientSession({"defaults": {"timeout": {"connect": 1.0, "read": 5.0, "total": 2.0},
                                           "retry": None}}, clock=FakeClock(1000.0))
        adapter = RecordingBaseAdapter()
        s.mount("http://", adapter)
        s.mount("http://svc.test/", adapter)
        s.get("http://svc.test/x")
        s.get("http://other.test/x")
        assert adapter.timeouts == [(1.0, 2.0), (1.0, 2.0)]
        (message,) = warnings_in(caplog)
        assert "RecordingBaseAdapter" in message and "not a requests HTTPAdapter" in message
        assert "total deadline is not enforced on each socket read" in message

    @pytest.mark.parametrize("retries", [3, Retry(total=2), Retry(total=None, connect=1, read=0)])
    def test_an_adapter_that_retries_is_warned_about_once(
        self, retries: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        """max_retries that may retry multiplies attempts: one warning, and the adapter keeps its Retry."""
        caplog.set_level(logging.WARNING, logger="resilient_client")
        s = session()
        adapter = HTTPAdapter(max_retries=retries)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        (message,) = warnings_in(caplog)
        assert "max_retries" in message and "attempts multiply" in message
        assert adapter.max_retries is not None and adapter.max_retries.total == Retry.from_int(retries).total

    @pytest.mark.parametrize("retries", [0, Retry(0, read=False), Retry(total=False),
                                         Retry(total=None, connect=0, read=False, status=0, other=0)])
    def test_an_adapter_that_never_retries_is_not_warned_about(
        self, retries: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        """max_retries that cannot retry (requests' default included) gives no warning."""
        caplog.set_level(logging.WARNING, logger="resilient_client")
        s = session()
        s.mount("http://", HTTPAdapter(max_retries=retries))
        s.mount("https://", cachecontrol.CacheControlAdapter())
        assert warnings_in(caplog) == []


# -- connection pools sized per endpoint -------------------------------------------


class Together:
    """Answers 200 once *n* requests are in flight at once: every round holds n connections."""

    def __init__(self, n: int) -> None:
        self.barrier = threading.Barrier(n)

    def serve(self, conn: Conn, request: Request) -> bool:
        self.barrier.wait(timeout=5)
        return answer(200, b"ok").serve(conn, request)


def rounds(get: Callable[[str], Any], url: str, n: int, count: int = 3) -> None:
    """*count* rounds of *n* concurrent calls; each round ends before the next starts."""
    errors: list[BaseException] = []

    def call() -> None:
        try:
            assert get(url).status_code == 200
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    for _ in range(count):
        threads = [threading.Thread(target=call, daemon=True) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert not errors, errors


class TestPoolsSizedPerEndpoint:
    N = 16

    def test_requests_default_pool_churns(self) -> None:
        """
        The baseline: with requests' pool of 10, each round of 16 concurrent
        calls closes 6 connections as they come back, and the next round reopens them.
        """
        with Peer() as peer, requests.Session() as plain:
            peer.on("/x", Together(self.N))
            rounds(lambda url: plain.get(url, timeout=5), peer.url("/x"), self.N)
            assert peer.connections == self.N + 2 * (self.N - 10)

    def test_the_default_pool_follows_the_bulkhead(self) -> None:
        """With the defaults (bulkhead 50), 16 concurrent calls keep 16 connections round after round."""
        with Peer() as peer:
            peer.on("/x", Together(self.N))
            s = ResilientSession({"defaults": {"retry": None}})
            rounds(s.get, peer.url("/x"), self.N)
            assert peer.connections == self.N

    def test_an_endpoint_pool_size_is_its_own(self) -> None:
        """An endpoint's pool.max_size sizes its pool: 4 kept, 12 reopened per round; others keep 50."""
        with Peer() as peer:
            peer.on("/x", Together(self.N))
            s = ResilientSession({"defaults": {"retry": None}, "endpoints": [
                {"name": "small", "match": peer.url("/x"), "pool": {"max_size": 4}}]})
            rounds(s.get, peer.url("/x"), self.N)
            assert peer.connections == self.N + 2 * (self.N - 4)
            adapter = s.get_adapter(peer.url("/"))
            assert isinstance(adapter, HTTPAdapter)
            manager = adapter.poolmanager
            sizes = [manager.pools[k].pool.maxsize for k in manager.pools.keys()]  # noqa: SIM118
            assert sizes == [4]

    def test_a_sized_pool_keeps_the_deadline(self) -> None:
        """Connections of a sized pool read against the total deadline too."""
        with Peer() as peer:
            peer.on("/drip", drip_body(b"x" * 50, interval=0.1))
            s = ResilientSession({"defaults": {
                "timeout": {"total": TOTAL}, "retry": None, "pool": {"max_size": 3}}})
            assert stops_at_total(s, peer, "/drip") < LATE

    def test_an_unpickled_session_sizes_its_pools(self) -> None:
        """After unpickling, the session's own adapters size their pools again."""
        with Peer() as peer:
            peer.on("/x", Together(self.N))
            s = pickle.loads(pickle.dumps(ResilientSession({"defaults": {"retry": None}})))
            rounds(s.get, peer.url("/x"), self.N)
            assert peer.connections == self.N

