"""
AsyncResilientClient: what issue 16's review found, each pinned on loopback
sockets (tests/peers.py) and, for the Redis breaker, a real ``redis-server``:
a Redis breaker asked on threads of its own (never anyio's shared pool),
within the call's deadline, and cancellation-safe; the caller's own pool
wait (``limits=``) is not the peer's failure; httpx's log line redacted;
``files=`` retried when it can be re-sent; the caller's own TimeoutError
and a finished call's deadline left alone; a slow call cut by the deadline.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest
from peers import Peer, answer, delay, drip_body, hang

import resilient_client
from resilient_client import AsyncResilientClient, CircuitBreaker
from resilient_client._events import DeadlinePassed, Event

pytestmark = pytest.mark.anyio

FAST = {"initial": 0.001, "max": 0.002}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def peer() -> Iterator[Peer]:
    with Peer(lifetime=20.0) as p:
        p.on("/ok", answer(200, b"ok"))
        p.on("/down", answer(503))
        p.on("/hang", hang())
        yield p


def _redis_config(peer: Peer, redis_url: str, **timeout: float) -> dict[str, Any]:
    return {"endpoints": [{"name": "svc", "match": peer.url("/"), "retry": None,
                           "timeout": {"connect": 0.5, "read": 5, "total": 10, **timeout},
                           "breaker": {"storage": redis_url, "failure_threshold": 1, "reset_timeout": 0.2}}]}


async def _open_then_half_open(client: AsyncResilientClient, peer: Peer) -> None:
    await client.get(peer.url("/down"))
    assert client.circuit("svc").state == "open"
    await anyio.sleep(0.25)  # past reset_timeout: the next call is the trial


async def _first_success(client: AsyncResilientClient, url: str, within: float) -> float:
    """Seconds until a call to *url* succeeds (the trial was given back), failing after *within*."""
    started = time.monotonic()
    while True:  # bounded by *within*
        try:
            await client.get(url)
            return time.monotonic() - started
        except resilient_client.CircuitOpenError:
            if time.monotonic() - started > within:
                raise
            await anyio.sleep(0.05)


@pytest.fixture
def busy_default_threads() -> Iterator[threading.Event]:
    """anyio's default thread pool (40 threads, Starlette's run_in_threadpool) held busy until set."""
    return threading.Event()


@pytest.fixture
async def held_pool(busy_default_threads: threading.Event) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(anyio.to_thread.run_sync(busy_default_threads.wait, 30.0))
             for _ in range(40)]
    await anyio.sleep(0.05)
    try:
        yield
    finally:
        busy_default_threads.set()
        await asyncio.gather(*tasks)


@pytest.mark.redis
class TestRedisBreakerOffTheLoop:
    async def test_a_trial_cancelled_while_redis_claims_it_is_given_back(
            self, peer: Peer, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """The worker claims the trial after its caller was cancelled: it gives it back itself."""
        async with AsyncResilientClient(_redis_config(peer, redis_url)) as c:
            await _open_then_half_open(c, peer)
            before_call = CircuitBreaker.before_call

            def slow_claim(self: CircuitBreaker) -> bool:
                is_trial = before_call(self)
                time.sleep(0.1)  # Redis answered slowly: the caller is gone meanwhile
                return is_trial

            monkeypatch.setattr(CircuitBreaker, "before_call", slow_claim)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.03):
                    await c.get(peer.url("/ok"))
            monkeypatch.setattr(CircuitBreaker, "before_call", before_call)
            await _first_success(c, peer.url("/ok"), within=1.5)  # not the trial lease's 30 s
            assert c.circuit("svc").state == "closed"

    @pytest.mark.usefixtures("held_pool")
    async def test_a_trial_success_is_recorded_though_its_caller_was_cancelled(
            self, peer: Peer, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """Cancelled while its record is on the way (anyio's pool busy): it ends at once, the record lands."""
        record = CircuitBreaker.record

        def slow_record(self: CircuitBreaker, **kwargs: Any) -> None:
            time.sleep(0.2)
            record(self, **kwargs)

        # The pool is held until the test ends: a wait for it would hang, so fail instead.
        with anyio.fail_after(4):
            async with AsyncResilientClient(_redis_config(peer, redis_url)) as c:
                await _open_then_half_open(c, peer)
                monkeypatch.setattr(CircuitBreaker, "record", slow_record)
                started = time.monotonic()
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await c.get(peer.url("/ok"))
                assert time.monotonic() - started < 0.18  # not waiting, shielded, for the record
                for _ in range(40):  # bounded: 2 s
                    await anyio.sleep(0.05)
                    if c.circuit("svc").state == "closed":
                        break
                assert c.circuit("svc").state == "closed"  # the trial's success was recorded

    @pytest.mark.usefixtures("held_pool")
    async def test_a_busy_anyio_thread_pool_delays_nothing(
            self, peer: Peer, redis_url: str) -> None:
        """anyio's 40 threads all busy: calls, and a cancelled trial, never wait for them."""
        async with AsyncResilientClient(_redis_config(peer, redis_url, total=1.0)) as c:
            with anyio.fail_after(3):  # the pool is held until the test ends: a wait would hang
                started = time.monotonic()
                assert (await c.get(peer.url("/ok"))).status_code == 200
                assert time.monotonic() - started < 0.5
                await _open_then_half_open(c, peer)
                started = time.monotonic()
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.3):
                        await c.get(peer.url("/hang"))  # the trial, cancelled
                assert time.monotonic() - started < 0.6
                await _first_success(c, peer.url("/ok"), within=1.0)  # the trial was given back

    async def test_a_slow_redis_costs_a_call_at_most_its_wait_and_never_its_deadline(
            self, peer: Peer, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """No answer within WAIT: the call goes through; a deadline sooner ends it at the deadline."""
        from resilient_client import _async_breaker

        before_call = CircuitBreaker.before_call

        def stuck(self: CircuitBreaker) -> bool:
            time.sleep(0.6)
            return before_call(self)

        async with AsyncResilientClient(_redis_config(peer, redis_url)) as c:
            await c.get(peer.url("/ok"))
            monkeypatch.setattr(CircuitBreaker, "before_call", stuck)
            started = time.monotonic()
            assert (await c.get(peer.url("/ok"))).status_code == 200  # degraded: let through
            assert time.monotonic() - started < _async_breaker.WAIT + 0.2
        async with AsyncResilientClient(_redis_config(peer, redis_url, total=0.15)) as c:
            started = time.monotonic()
            with pytest.raises(resilient_client.DeadlineExceeded):
                await c.get(peer.url("/ok"))
            assert time.monotonic() - started < 0.3
            assert peer.hits("/ok") == 2  # the warm-up and the degraded call: none at the deadline
        await anyio.sleep(0.7)  # let the stuck workers finish before Redis goes


class TestLocalPoolWait:
    async def test_waiting_for_our_own_pool_is_not_the_peers_failure(self) -> None:
        """limits= of 1 connection: the calls that wait past the pool timeout get PoolTimeout, once."""
        with Peer(lifetime=20.0) as peer:
            peer.on("*", delay(0.3, answer(200, b"ok")))
            config = {"endpoints": [{"name": "svc", "match": peer.url("/"),
                                     "timeout": {"connect": 0.1, "read": 2, "total": 5},
                                     "retry": {"attempts": 3, "backoff": FAST},
                                     "breaker": {"failure_threshold": 1, "reset_timeout": 30}}]}
            async with AsyncResilientClient(config, limits=httpx.Limits(max_connections=1)) as c:
                results = await asyncio.gather(*(c.get(peer.url(f"/{i}")) for i in range(3)),
                                               return_exceptions=True)
                timeouts = [r for r in results if isinstance(r, httpx.PoolTimeout)]
                assert len(timeouts) == 2, results
                assert all(getattr(r, "attempts", None) == 1 for r in timeouts)  # not retried
                assert c.circuit("svc").state == "closed"
                assert (await c.get(peer.url("/after"))).status_code == 200
            assert peer.hits() == 2


class TestHttpxLogLine:
    async def test_httpx_request_line_is_redacted(self, peer: Peer, caplog: pytest.LogCaptureFixture) -> None:
        """httpx's own INFO line: no password, no secret query value."""
        host = peer.url("/").split("//")[1].rstrip("/")
        config = {"secrets": {"query": ["api_key"]}, "endpoints": [{"name": "svc", "match": peer.url("/")}]}
        with caplog.at_level(logging.INFO, logger="httpx"):
            async with AsyncResilientClient(config) as c:
                await c.get(f"http://u:PW@{host}/ok?api_key=SECRET&page=2")
        lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
        assert any("api_key=" in line and "page=2" in line for line in lines), lines
        assert not any("SECRET" in line or "PW@" in line for line in lines), lines


class TestFilesRetried:
    @staticmethod
    def config(peer: Peer) -> dict[str, Any]:
        return {"endpoints": [{"name": "svc", "match": peer.url("/"), "breaker": None,
                               "retry": {"attempts": 3, "backoff": FAST}}]}

    async def test_a_put_with_seekable_files_is_retried_whole(self, peer: Peer) -> None:
        peer.on("/f", answer(503), answer(200, b"ok"))
        async with AsyncResilientClient(self.config(peer)) as c:
            resp = await c.put(peer.url("/f"), files={"f": ("a.txt", io.BytesIO(b"hello"))})
        assert (resp.status_code, resp.attempts) == (200, 2)
        bodies = [r.body for r in peer.requests if r.path == "/f"]
        assert len(bodies) == 2 and b"hello" in bodies[1]

    async def test_an_unseekable_file_is_sent_once(self, peer: Peer) -> None:
        class Pipe(io.RawIOBase):
            def __init__(self) -> None:
                self.left = b"hello"

            def readable(self) -> bool:
                return True

            def seekable(self) -> bool:
                return False

            def read(self, size: int = -1) -> bytes:
                chunk, self.left = self.left, b""
                return chunk

        peer.on("/p", answer(503), answer(200, b"ok"))
        async with AsyncResilientClient(self.config(peer)) as c:
            resp = await c.put(peer.url("/p"), files={"f": ("a.txt", Pipe())})
        assert (resp.status_code, resp.attempts) == (503, 1)


class TestTheCallersOwn:
    async def test_a_timeout_error_of_a_hook_passes_through(self, peer: Peer) -> None:
        """Only our deadline's cut becomes DeadlineExceeded; the hook's own TimeoutError is raised as is."""
        async def hook(response: httpx.Response) -> None:
            await asyncio.wait_for(asyncio.sleep(1), 0.01)

        events: list[Event] = []
        config = {"endpoints": [{"name": "svc", "match": peer.url("/"), "timeout": {"total": 10}}]}
        async with AsyncResilientClient(config, listeners=[events.append],
                                        event_hooks={"response": [hook]}) as c:
            with pytest.raises(TimeoutError) as info:
                await c.get(peer.url("/ok"))
        assert not isinstance(info.value, resilient_client.DeadlineExceeded)
        assert not any(isinstance(e, DeadlinePassed) for e in events)

    async def test_a_task_started_from_a_hook_outlives_the_calls_deadline(self, peer: Peer) -> None:
        """A fire-and-forget call from a response hook has its own endpoint's total once the call ended."""
        peer.on("/audit", delay(0.3, answer(200, b"logged")))
        config = {"endpoints": [{"name": "api", "match": peer.url("/ok"), "timeout": {"total": 0.2}},
                                {"name": "audit", "match": peer.url("/audit"), "timeout": {"total": 5}}]}
        background: list[asyncio.Task[httpx.Response]] = []
        async with AsyncResilientClient(config) as c:
            async def audit(response: httpx.Response) -> None:
                if response.request.url.path == "/ok":
                    background.append(asyncio.create_task(c.get(peer.url("/audit"))))

            c.event_hooks["response"] = [audit]
            assert (await c.get(peer.url("/ok"))).status_code == 200
            assert (await background[0]).status_code == 200


class TestSlowCallCutByTheDeadline:
    async def test_a_drip_cut_by_the_deadline_is_a_slow_call(self, peer: Peer) -> None:
        """As the sync session (tests/test_timeouts.py): past slow_call_duration, the cut counts."""
        peer.on("/drip", drip_body(b"x" * 50, 0.05))
        breaker = {"failure_threshold": 2, "reset_timeout": 30, "slow_call_duration": 0.1}
        config = {"defaults": {"timeout": {"connect": 1, "read": 1, "total": 0.3},
                               "retry": None, "breaker": breaker}}
        async with AsyncResilientClient(config) as c:
            for _ in range(2):
                with pytest.raises(resilient_client.DeadlineExceeded):
                    await c.get(peer.url("/drip"))
            assert c.circuit(peer.url("/drip")).state == "open"
            with pytest.raises(resilient_client.CircuitOpenError):
                await c.get(peer.url("/drip"))
        assert peer.hits("/drip") == 2
