"""
The testing kit driving `AsyncResilientClient`: the same fake-peer scripts,
fake clock and assertions as for `ResilientSession`, each scenario written
once and run against both fronts; under anyio's plugin (asyncio and trio)
and pytest-asyncio's; an application's import-time client found with no
call from the test. Nothing here touches the network or really waits.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
import requests

import resilient_client
from resilient_client import AsyncResilientClient, ResilientSession
from resilient_client.testing import FakePeers, UnmatchedRequest, fake_peers

CONFIG: dict[str, Any] = {
    "defaults": {"timeout": {"connect": 1.0, "read": 2.0, "total": 5.0}},
    "endpoints": [{
        "name": "inventory",
        "match": "https://inventory.internal/",
        "retry": {"attempts": 3, "on_status": [503]},
        "breaker": {"failure_threshold": 5, "reset_timeout": 30.0},
    }],
}
WITH_FALLBACK: dict[str, Any] = {**CONFIG, "endpoints": [
    {**CONFIG["endpoints"][0], "retry": None, "breaker": {"failure_threshold": 2, "reset_timeout": 30.0},
     "fallback": {"status": 200, "json": {"stock": None}}}]}
URL = "https://inventory.internal/items/42"


class Front:
    """One call site, over either front: the scenario reads the same for both."""

    def __init__(self, kind: str, config: dict[str, Any]) -> None:
        self.kind = kind
        self.session = ResilientSession(config) if kind == "sync" else None
        self.client = AsyncResilientClient(config) if kind == "async" else None

    async def get(self, url: str = URL) -> Any:
        if self.session is not None:
            return self.session.get(url)
        assert self.client is not None
        return await self.client.get(url)

    async def close(self) -> None:
        if self.session is not None:
            self.session.close()
        if self.client is not None:
            await self.client.aclose()


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def front(kind: str, fake_http: FakePeers) -> AsyncIterator[Front]:
    f = Front(kind, CONFIG)
    yield f
    await f.close()


@pytest.fixture
async def front_fb(kind: str, fake_http: FakePeers) -> AsyncIterator[Front]:
    f = Front(kind, WITH_FALLBACK)
    yield f
    await f.close()


@pytest.mark.anyio
class TestOneScenarioBothFronts:
    async def test_retries_until_the_peer_recovers(self, front: Front, fake_http: FakePeers) -> None:
        """Backoff runs on the fake clock; attempts and amplification are counted alike."""
        fake_http.endpoint("inventory").statuses([503, 503, 200])
        began = time.monotonic()
        resp = await front.get()
        assert (resp.status_code, resp.attempts) == (200, 3)
        assert fake_http.attempts("inventory") == 3
        assert fake_http.amplification("inventory") == 3.0
        assert [c.attempts for c in fake_http.app_calls] == [3]
        assert fake_http.elapsed > 0
        assert fake_http.clock.sleeps  # the backoff moved the fake clock...
        assert time.monotonic() - began < 1.0  # ...not the real one

    async def test_breaker_opens_serves_the_fallback_and_recovers(
            self, front_fb: Front, fake_http: FakePeers) -> None:
        fake_http.endpoint("inventory").refuse(times=2).respond(200, json={"stock": 3})
        first = await front_fb.get()
        assert first.is_fallback and first.json() == {"stock": None}
        assert (await front_fb.get()).is_fallback
        assert fake_http.breaker("inventory").state == "open"
        assert fake_http.transitions("inventory") == [("closed", "open")]
        assert (await front_fb.get()).is_fallback  # refused by the breaker: the peer never asked
        assert fake_http.attempts("inventory") == 2
        assert len(fake_http.fallbacks("inventory")) == 3
        fake_http.clock.advance(31)
        assert (await front_fb.get()).json() == {"stock": 3}
        assert fake_http.breaker("inventory").state == "closed"
        assert fake_http.transitions("inventory")[-1] == ("half-open", "closed")

    async def test_a_hung_peer_costs_the_total_deadline(self, front: Front, fake_http: FakePeers) -> None:
        fake_http.endpoint("inventory").read_timeout()
        with pytest.raises(resilient_client.DeadlineExceeded):
            await front.get()
        assert fake_http.elapsed == pytest.approx(5.0)
        assert fake_http.attempts("inventory") == 3
        assert "deadline_passed" in fake_http.events.kinds()

    async def test_a_drip_is_cut_at_total(self, front: Front, fake_http: FakePeers) -> None:
        fake_http.endpoint("inventory").drip(b"x" * 100, every=0.1)
        with pytest.raises(resilient_client.DeadlineExceeded):
            await front.get()
        assert fake_http.elapsed == pytest.approx(5.0)
        assert fake_http.calls[0].outcome.startswith("200 body cut after")

    async def test_slow_and_connect_timeouts_move_the_fake_clock(
            self, front: Front, fake_http: FakePeers) -> None:
        fake_http.endpoint("inventory").connect_timeout(times=1).slow(1.5, 200, json={"ok": True})
        resp = await front.get()
        assert resp.json() == {"ok": True}
        assert fake_http.elapsed > 2.5  # 1 s connect timeout, backoff, 1.5 s answer
        assert [c.outcome for c in fake_http.calls] == ["connect timeout", "200 after 1.5s"]

    async def test_an_unmatched_request_fails_the_call(self, front: Front, fake_http: FakePeers) -> None:
        with pytest.raises(UnmatchedRequest, match=r"no fake peer matched|matched no"):
            await front.get("https://elsewhere.internal/x")
        fake_http.strict = False
        assert len(fake_http.unmatched) == 1

    async def test_plain_responses_serve_both(self, front: Front, fake_http: FakePeers) -> None:
        fake_http.mock.add("GET", URL, json={"plain": 1}, status=200)
        assert (await front.get()).json() == {"plain": 1}


def _timeline(kind: str) -> str:
    """One scenario on a registry of its own: the timeline it leaves."""
    async def scenario(f: Front) -> None:
        for _ in range(2):
            with contextlib.suppress(resilient_client.ResilienceError):
                await f.get()
        await f.close()

    with fake_peers() as peers:
        peers.endpoint("inventory").statuses([503, 200]).read_timeout()
        peers.strict = False
        anyio.run(scenario, Front(kind, CONFIG))
    return peers.timeline().replace("AsyncDeadlineExceeded", "DeadlineExceeded")


def test_the_same_script_leaves_the_same_timeline_on_both_fronts() -> None:
    sync, asynchronous = _timeline("sync"), _timeline("async")
    assert "deadline_passed" in sync
    assert sync == asynchronous


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_under_trio_too(anyio_backend: str, fake_http: FakePeers) -> None:
    fake_http.endpoint("inventory").statuses([503, 200])
    async with AsyncResilientClient(CONFIG) as client:
        assert (await client.get(URL)).attempts == 2


@pytest.mark.anyio
async def test_a_held_request_fills_the_bulkhead(fake_http: FakePeers) -> None:
    """hold() keeps the request in flight without blocking the event loop."""
    config = {**CONFIG, "defaults": {**CONFIG["defaults"], "bulkhead": {"max_concurrent": 1}}}
    peer = fake_http.endpoint("inventory").hold()
    async with AsyncResilientClient(config) as client:
        got: list[int] = []

        async def first() -> None:
            got.append((await client.get(URL)).status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            with anyio.fail_after(2):
                while peer._gate.held < 1:
                    await anyio.sleep(0.001)
            with pytest.raises(resilient_client.BulkheadFull):
                await client.get(URL)
            peer.release()
        assert got == [200]


# -- pytest-asyncio, and a client built at import time --------------------------


@pytest.mark.asyncio
async def test_pytest_asyncio_and_an_import_time_client(fake_http: FakePeers) -> None:
    import kit_async_app

    fake_http.endpoint("pricing").statuses([503, 200], json={"price": 7})
    assert await kit_async_app.price(1) == 7
    assert fake_http.attempts("pricing") == 2
    assert fake_http.app_calls[0].attempts == 2


@pytest.mark.asyncio
async def test_the_import_time_client_starts_each_test_afresh(fake_http: FakePeers) -> None:
    """The breaker the test before opened (below) is closed again; then it opens here."""
    import kit_async_app

    fake_http.endpoint("pricing").refuse()
    assert await kit_async_app.price(1) is None  # the fallback
    assert await kit_async_app.price(1) is None
    assert fake_http.breaker("pricing").state == "open"
    assert len(fake_http.fallbacks("pricing")) == 2


@pytest.mark.asyncio
async def test_the_import_time_client_again(fake_http: FakePeers) -> None:
    import kit_async_app

    fake_http.endpoint("pricing").respond(200, json={"price": 1})
    assert fake_http.breaker("pricing").state == "closed"
    assert await kit_async_app.price(1) == 1


async def test_unwired_after_the_registry_stops() -> None:
    """Outside a registry the client's own transport is back (a refused loopback port, here)."""
    client = AsyncResilientClient({"defaults": {"retry": None}})
    with fake_peers() as peers:
        peers.url("http://127.0.0.1:9/x").respond(204)
        assert (await client.get("http://127.0.0.1:9/x")).status_code == 204
    with pytest.raises(httpx.ConnectError):
        await client.get("http://127.0.0.1:9/x")
    await client.aclose()


test_unwired_after_the_registry_stops = pytest.mark.anyio(test_unwired_after_the_registry_stops)


def test_the_kit_imports_httpx_only_for_an_async_client() -> None:
    code = (
        "import sys, resilient_client.testing as t, resilient_client as rc\n"
        "with t.fake_peers() as p:\n"
        "    p.url('https://a.internal/').respond(200)\n"
        "    assert p.session().get('https://a.internal/').status_code == 200\n"
        "assert 'httpx' not in sys.modules, 'httpx imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert requests  # the sync front's own client is all it needs
