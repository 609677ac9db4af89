"""
AsyncResilientClient against real loopback sockets (tests/peers.py, in its
threads): every protection, cancellation, drip-fed and hung peers, the
exceptions' classes, and state shared with a sync session through
``state: host``. Run on asyncio by anyio's pytest plugin.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from peers import Peer, answer, drip_body, free_port, hang, retry_after

import resilient_client
from resilient_client import AsyncResilientClient, CircuitBreaker, ResilientSession
from resilient_client._async_parts import SHARDS
from resilient_client.testing import FakeClock

pytestmark = pytest.mark.anyio

FAST = {"backoff": {"initial": 0.001, "max": 0.002}}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def peer() -> Iterator[Peer]:
    with Peer(lifetime=20.0) as p:
        p.on("/ok", answer(200, b"hello"))
        p.on("/flaky", answer(503), answer(503), answer(200, b"fine"))
        p.on("/down", answer(503))
        p.on("/hang", hang())
        p.on("/drip", drip_body(b"x" * 100, 0.02))
        yield p


def _client(defaults: dict[str, Any] | None = None, **kwargs: Any) -> AsyncResilientClient:
    return AsyncResilientClient({"defaults": {"retry": FAST, **(defaults or {})}}, **kwargs)


@pytest.fixture
async def client() -> AsyncIterator[AsyncResilientClient]:
    async with _client() as c:
        yield c


class TestDropIn:
    async def test_is_an_httpx_async_client_and_marks_responses(
            self, client: AsyncResilientClient, peer: Peer) -> None:
        """It is an httpx.AsyncClient; every response says how many tries it took."""
        assert isinstance(client, httpx.AsyncClient)
        resp = await client.get(peer.url("/ok"))
        assert (resp.status_code, resp.text, resp.attempts, resp.is_fallback) == (200, "hello", 1, False)

    def test_import_resilient_client_does_not_import_httpx(self) -> None:
        """httpx is loaded by the async client's name only (the import graph test pins the subprocess)."""
        assert "AsyncResilientClient" in resilient_client._LAZY


class TestExceptions:
    async def test_open_breaker_raises_a_circuit_open_error_that_is_an_httpx_connect_error(
            self, peer: Peer) -> None:
        """The async CircuitOpenError is resilient_client's and httpx's, raised with no network."""
        async with _client({"breaker": {"failure_threshold": 1}}) as c:
            c.circuit(peer.url("/ok")).open()
            with pytest.raises(resilient_client.CircuitOpenError) as info:
                await c.get(peer.url("/ok"))
        assert isinstance(info.value, httpx.ConnectError)
        assert isinstance(info.value, resilient_client.ResilienceError)
        assert info.value.request.url == peer.url("/ok")
        assert info.value.attempts == 0 and peer.hits() == 0

    async def test_deadline_exceeded_is_an_httpx_timeout(self, peer: Peer) -> None:
        """A hung peer ends at `total` with DeadlineExceeded, an httpx.TimeoutException."""
        async with _client({"timeout": {"total": 0.3, "read": 5.0}}) as c:
            started = time.monotonic()
            with pytest.raises(httpx.TimeoutException) as info:
                await c.get(peer.url("/hang"))
            took = time.monotonic() - started
        assert isinstance(info.value, resilient_client.DeadlineExceeded)
        assert 0.25 <= took < 0.8

    async def test_bulkhead_full_is_an_httpx_transport_error(self, peer: Peer) -> None:
        """A call beyond max_concurrent is refused at once with BulkheadFull, an httpx.TransportError."""
        async with _client({"bulkhead": {"max_concurrent": 1}, "timeout": {"total": 2.0}}) as c:
            first = asyncio.ensure_future(c.get(peer.url("/hang")))
            while peer.hits("/hang") == 0:
                await asyncio.sleep(0.005)
            with pytest.raises(resilient_client.BulkheadFull) as info:
                await c.get(peer.url("/ok"))
            assert isinstance(info.value, httpx.TransportError)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            assert (await c.get(peer.url("/ok"))).status_code == 200  # the slot came back


class TestTimeouts:
    async def test_a_drip_fed_body_is_cut_at_total(self, peer: Peer) -> None:
        """One byte every 20 ms never trips the read timeout; the total deadline cuts it."""
        async with _client({"timeout": {"total": 0.3, "read": 1.0}, "retry": None}) as c:
            started = time.monotonic()
            with pytest.raises(resilient_client.DeadlineExceeded):
                await c.get(peer.url("/drip"))
        assert time.monotonic() - started < 0.8

    async def test_per_call_timeout_replaces_the_policy_read_timeout(self, peer: Peer) -> None:
        """timeout= on the call is the read timeout of that call (an httpx.ReadTimeout)."""
        async with _client({"timeout": {"total": 5.0, "read": 5.0}, "retry": None}) as c:
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout):
                await c.get(peer.url("/hang"), timeout=0.1)
        assert time.monotonic() - started < 1.0

    async def test_deadline_scope_of_the_caller_bounds_the_call(self, peer: Peer) -> None:
        """resilient_client.deadline() (the ASGI middleware's context variable) caps `total`."""
        async with _client({"timeout": {"total": 5.0}}) as c:
            started = time.monotonic()
            with resilient_client.deadline(0.2), pytest.raises(resilient_client.DeadlineExceeded):
                await c.get(peer.url("/hang"))
        assert time.monotonic() - started < 0.7

    async def test_propagation_tells_the_peer_the_time_left(self, peer: Peer) -> None:
        """With propagation on, each attempt carries the milliseconds left."""
        async with _client({"timeout": {"total": 2.0}, "propagation": {}}) as c:
            await c.get(peer.url("/ok"))
        sent = int(peer.last("/ok").headers["x-request-timeout-ms"])
        assert 1000 < sent <= 2000


class TestRetries:
    async def test_retries_a_503_then_succeeds(self, client: AsyncResilientClient, peer: Peer) -> None:
        """An idempotent call is retried on 503; the response says 3 tries."""
        resp = await client.get(peer.url("/flaky"))
        assert (resp.status_code, resp.attempts, peer.hits("/flaky")) == (200, 3, 3)
        assert peer.connections == 1  # retried responses gave their connection back

    async def test_post_is_not_retried_after_it_was_sent(
            self, client: AsyncResilientClient, peer: Peer) -> None:
        """A POST answered 503 is returned as it is: it may have acted."""
        resp = await client.post(peer.url("/flaky"), content=b"x")
        assert (resp.status_code, resp.attempts, peer.hits("/flaky")) == (503, 1, 1)

    async def test_connection_refused_is_retried_for_any_method(self) -> None:
        """Nothing reached the peer: a POST is retried, then the last error is raised."""
        async with _client() as c:
            with pytest.raises(httpx.ConnectError) as info:
                await c.post(f"http://127.0.0.1:{free_port()}/x", content=b"x")
        assert info.value.attempts == 3  # type: ignore[attr-defined]

    async def test_retry_after_over_the_maximum_returns_at_once(self, peer: Peer) -> None:
        """A Retry-After past max_retry_after is not slept: that response is returned."""
        peer.on("/later", retry_after(503, "3600"))
        async with _client() as c:
            resp = await c.get(peer.url("/later"))
        assert (resp.status_code, resp.attempts) == (503, 1)

    async def test_events_tell_each_attempt_and_the_retry(self, peer: Peer) -> None:
        """The same events as the sync session: attempts, retries, the call."""
        seen: list[str] = []
        async with _client(listeners=[lambda e: seen.append(e.kind)]) as c:
            await c.get(peer.url("/flaky"))
        assert seen.count("attempt_finished") == 3 and seen.count("retry_scheduled") == 2
        assert seen[-1] == "call_finished"


class TestBreakerAndFallback:
    async def test_breaker_opens_then_one_trial_closes_it(self, peer: Peer) -> None:
        """Failures open the breaker; after reset_timeout (fake clock) a trial success closes it."""
        clock = FakeClock()
        async with _client({"retry": None, "breaker": {"failure_threshold": 2, "reset_timeout": 10}},
                           clock=clock) as c:
            for _ in range(2):
                assert (await c.get(peer.url("/down"))).status_code == 503
            assert c.circuit(peer.url("/ok")).state == "open"
            with pytest.raises(resilient_client.CircuitOpenError):
                await c.get(peer.url("/ok"))
            clock.advance(11)
            assert (await c.get(peer.url("/ok"))).status_code == 200
            assert c.circuit(peer.url("/ok")).state == "closed"

    async def test_static_fallback_on_refused_connection(self) -> None:
        """A fallback answers a call that failed after its retries."""
        async with _client({"fallback": {"status": 200, "json": {"items": []}}}) as c:
            resp = await c.get(f"http://127.0.0.1:{free_port()}/items")
        assert resp.is_fallback and resp.json() == {"items": []} and resp.attempts == 3

    async def test_stale_fallback_serves_the_last_good_get(self, peer: Peer) -> None:
        """`stale` answers with the last 2xx GET of the same URL."""
        async with _client({"fallback": "stale", "retry": None}) as c:
            good = await c.get(peer.url("/ok"))
            peer.on("/ok", answer(503))
            resp = await c.get(peer.url("/ok"))
        assert resp.is_fallback and resp.text == good.text == "hello"
        assert resp.stale_age is not None and "age" in resp.headers

    async def test_async_callable_fallback_gets_request_and_failure(self, peer: Peer) -> None:
        """A coroutine function may be the fallback; it gets the request and what failed."""
        got: list[Any] = []

        async def fallback(request: httpx.Request, failure: object) -> httpx.Response:
            got.append((request.url.path, failure))
            return httpx.Response(200, text="from fallback")

        async with AsyncResilientClient({"endpoints": [
                {"name": "down", "match": peer.url("/"), "retry": None,
                 "fallback": {"callable": fallback}}]}) as c:
            resp = await c.get(peer.url("/down"))
        assert resp.text == "from fallback" and resp.is_fallback
        assert got[0][0] == "/down" and isinstance(got[0][1], httpx.Response)


class TestCancellation:
    async def test_cancelled_task_gives_back_slot_trial_and_connection(self, peer: Peer) -> None:
        """A task cancelled mid-call releases its bulkhead slot and half-open trial, and closes its socket."""
        clock = FakeClock()
        policy = {"bulkhead": {"max_concurrent": 1}, "retry": None, "timeout": {"total": 5.0},
                  "breaker": {"failure_threshold": 1, "reset_timeout": 1}}
        async with _client(policy, clock=clock) as c:
            await c.get(peer.url("/down"))
            breaker = c.circuit(peer.url("/hang"))
            clock.advance(2)  # half-open: the next call is the trial
            task = asyncio.ensure_future(c.get(peer.url("/hang")))
            while peer.hits("/hang") == 0:
                await asyncio.sleep(0.005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert c._endpoints.route_for("GET", peer.url("/hang")).state.bulkhead.in_flight == 0  # type: ignore[union-attr]
            assert breaker.state == "half-open"  # the trial was given back, not counted
            assert peer.wait_open_at_most(0) == 0
            assert (await c.get(peer.url("/ok"))).status_code == 200
            assert breaker.state == "closed"

    async def test_asyncio_timeout_around_a_call(self, peer: Peer) -> None:
        """asyncio.timeout() around a call raises TimeoutError promptly and leaks no slot."""
        async with _client({"bulkhead": {"max_concurrent": 1}, "timeout": {"total": 5.0}}) as c:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await c.get(peer.url("/hang"))
            assert time.monotonic() - started < 0.6
            assert (await c.get(peer.url("/ok"))).status_code == 200

    async def test_streamed_response_holds_its_slot_until_closed(self, peer: Peer) -> None:
        """stream=True: the slot goes with the response, back when it is closed."""
        async with _client({"bulkhead": {"max_concurrent": 1}}) as c:
            async with c.stream("GET", peer.url("/ok")) as resp:
                with pytest.raises(resilient_client.BulkheadFull):
                    await c.get(peer.url("/ok"))
                assert (await resp.aread()) == b"hello"
            assert (await c.get(peer.url("/ok"))).status_code == 200


class TestSharedState:
    async def test_a_sync_session_and_an_async_client_share_a_breaker(
            self, peer: Peer, tmp_path: Path) -> None:
        """state: host: the breaker a sync session opened refuses the async client's call."""
        config = {"state_dir": str(tmp_path), "endpoints": [{
            "name": "shared", "match": peer.url("/"), "state": "host", "retry": None,
            "breaker": {"failure_threshold": 2, "reset_timeout": 30}}]}
        with ResilientSession(config) as session:
            for _ in range(2):
                session.get(peer.url("/down"))
        hits = peer.hits()
        async with AsyncResilientClient(config) as c:
            assert c.circuit("shared").state == "open"
            with pytest.raises(resilient_client.CircuitOpenError):
                await c.get(peer.url("/ok"))
        assert peer.hits() == hits

    @pytest.mark.redis
    async def test_a_redis_breaker_is_shared_and_asked_off_the_loop(
            self, peer: Peer, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """A Redis breaker a sync session opened refuses the async call, asked from a worker thread."""
        config = {"endpoints": [{"name": "shared-redis", "match": peer.url("/"), "retry": None,
                                 "breaker": {"failure_threshold": 1, "storage": redis_url}}]}
        with ResilientSession(config) as session:
            session.get(peer.url("/down"))
        hits = peer.hits()
        threads: list[int] = []
        before_call = CircuitBreaker.before_call

        def watched(self: CircuitBreaker) -> bool:
            threads.append(threading.get_ident())
            return before_call(self)

        monkeypatch.setattr(CircuitBreaker, "before_call", watched)
        async with AsyncResilientClient(config) as c:
            with pytest.raises(resilient_client.CircuitOpenError):
                await c.get(peer.url("/ok"))
        assert peer.hits() == hits
        assert threads and threading.get_ident() not in threads  # never in the event loop's thread


class TestPools:
    async def test_each_endpoint_gets_a_pool_sized_like_the_sync_session(self, peer: Peer) -> None:
        """pool.max_size is the connections kept; a pool never makes a call wait."""
        async with AsyncResilientClient({"endpoints": [
                {"name": "small", "match": peer.url("/ok"), "pool": {"max_size": 2}}]}) as c:
            await c.get(peer.url("/ok"))
            await c.get(peer.url("/drip"), timeout=2.0)
            assert c._pools is not None
            small = c._pools.transport_for(c._endpoints.route_for("GET", peer.url("/ok")))
            rest = c._pools.transport_for(c._endpoints.route_for("GET", peer.url("/drip")))
        pool = small._pool
        assert small is not rest
        assert pool._max_keepalive_connections == 1  # 2 kept, over the shards (at least 1 each)
        assert pool._max_connections > 10**9  # None: never a wait for a connection
        assert c.policy_for("GET", peer.url("/drip")).pool_size == 50
        assert rest._pool._max_keepalive_connections == -(-50 // SHARDS)
        assert small._pool._ssl_context is rest._pool._ssl_context  # one TLS context, CAs loaded once


class TestDocs:
    async def test_the_asyncio_page_blocks_run_and_its_test_passes(self, fake_http: Any) -> None:
        """docs/asyncio.md: every block runs, and the test it shows passes on the kit's fake peers."""
        from test_docs_pages import blocks

        namespace: dict[str, Any] = {"__name__": "docs_asyncio"}
        for directive, code, line in blocks("asyncio.md"):
            if directive.startswith("no-run"):  # needs what the suite does not install (fastapi)
                continue
            exec(compile(code, f"asyncio.md:{line}", "exec"), namespace)
        await namespace["test_breaker_opens_and_recovers"](fake_http)


class TestRequestsReused:
    async def test_a_request_sent_twice_gets_the_policy_timeouts_both_times(self, peer: Peer) -> None:
        """The attempt's capped timeouts are not left on the caller's request for its next send."""
        async with _client({"timeout": {"total": 5.0, "read": 4.0}}) as c:
            request = c.build_request("GET", peer.url("/ok"))
            await c.send(request)
            assert "timeout" not in request.extensions
            assert (await c.send(request)).status_code == 200


class TestSecrets:
    async def test_secrets_never_reach_events_or_errors(self) -> None:
        """A secret query parameter and the Authorization header stay out of events and error messages."""
        seen: list[str] = []
        config = {"secrets": {"query": ["token"]}, "defaults": {"retry": FAST}}
        async with AsyncResilientClient(config, listeners=[lambda e: seen.append(repr(e))]) as c:
            with pytest.raises(httpx.ConnectError) as info:
                await c.get(f"http://127.0.0.1:{free_port()}/x?token=s3cr3t-value",
                            headers={"Authorization": "Bearer top-s3cr3t"})
        text = "\n".join([*seen, str(info.value), *getattr(info.value, "__notes__", [])])
        assert seen and "s3cr3t-value" not in text and "top-s3cr3t" not in text


class TestHealth:
    async def test_health_reports_the_async_client_s_endpoints(self) -> None:
        """health() reads the same endpoint state as the sync session's."""
        transport = httpx.MockTransport(lambda request: httpx.Response(503))
        async with AsyncResilientClient({"defaults": {"retry": None}}, transport=transport) as c:
            c.health()  # counting starts here
            for _ in range(5):
                await c.get("http://inventory.test/items")
            health = c.health()
        (endpoint,) = health.endpoints
        assert not health.healthy and endpoint.breaker == "open" and endpoint.failures == 5
