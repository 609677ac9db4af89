"""
Overload control on AsyncResilientClient, against real loopback sockets
(tests/peers.py): the throttle, the adaptive limit as a ceiling, the
Retry-After hold, proxy errors, a cancelled task's place under the limit,
and one host throttle shared by a sync session and an async client. The
semantics are the sync session's (tests/test_overload.py): the same
per-endpoint state, through `resilient_client._admission`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
import pytest
from peers import Peer, answer, hang, redirect, retry_after

import resilient_client
from resilient_client import (
    AsyncResilientClient,
    BulkheadFull,
    CallThrottled,
    ConcurrencyLimitChanged,
    ResilientSession,
    Throttled,
)
from resilient_client.testing import FakeClock

pytestmark = pytest.mark.anyio

THROTTLED = {"defaults": {"retry": None, "breaker": None, "budget": None,
                          "throttle": {"min_requests": 10, "window": 60, "max_reject": 0.9}}}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _in_flight(client: AsyncResilientClient, url: str, n: int) -> None:
    """Wait (bounded) until *n* calls are under the endpoint's limit."""
    for _ in range(500):
        if client.overload(url).in_flight == n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never {n} in flight: {client.overload(url)}")


async def test_the_throttle_refuses_after_failures() -> None:
    events: list[Any] = []
    with Peer().on("*", answer(503)) as peer:
        async with AsyncResilientClient(THROTTLED, listeners=[events.append]) as c:
            refused = 0
            for _ in range(200):
                try:
                    await c.get(peer.url("/x"))
                except Throttled as exc:
                    assert isinstance(exc, httpx.ConnectError)
                    assert exc.reason == "throttle" and exc.attempts == 0
                    refused += 1
            assert refused + peer.hits() == 200
            assert peer.hits() < 80  # the book's steady state: about (1 - max_reject) get through
            status = c.overload(peer.url("/"))
            assert status.refused == refused and status.reject_rate == pytest.approx(0.9)
            assert {e.reason for e in events if isinstance(e, CallThrottled)} == {"throttle"}
            finished = [e for e in events if isinstance(e, resilient_client.CallFinished)]
            assert sum(e.outcome == "throttled" for e in finished) == refused
            rates = [e.new for e in events if isinstance(e, resilient_client.ThrottleRateChanged)]
            assert rates and rates[-1] == pytest.approx(0.9, abs=0.02)
            assert c.health().endpoints[0].throttle_reject_rate == pytest.approx(0.9)


async def test_a_throttled_call_gets_the_fallback() -> None:
    config = {"defaults": {**THROTTLED["defaults"], "fallback": {"status": 200, "text": "cached"}}}
    with Peer().on("*", answer(500)) as peer:
        async with AsyncResilientClient(config) as c:
            answers = [await c.get(peer.url("/x")) for _ in range(60)]
    fallbacks = [r for r in answers if r.is_fallback and r.attempts == 0]
    assert fallbacks and all(r.text == "cached" for r in fallbacks)
    assert peer.hits() + len(fallbacks) == 60


async def test_the_limit_is_a_ceiling_and_a_cancelled_task_gives_its_place_back() -> None:
    config = {"defaults": {"retry": None, "concurrency": {"initial": 2}}}
    events: list[Any] = []
    with Peer(lifetime=20.0).on("/hang", hang()).on("*", answer(200)) as peer:
        async with AsyncResilientClient(config, listeners=[events.append]) as c:
            url = peer.url("/")
            tasks = [asyncio.create_task(c.get(peer.url("/hang"))) for _ in range(2)]
            await _in_flight(c, url, 2)
            with pytest.raises(BulkheadFull) as err:
                await c.get(peer.url("/other"))
            assert isinstance(err.value, httpx.TransportError) and err.value.max_concurrent == 2
            assert peer.hits("/other") == 0
            assert [e.reason for e in events if isinstance(e, CallThrottled)] == ["concurrency"]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert c.overload(url).in_flight == 0
            assert c.overload(url).limit == 2  # a cancellation is no sample of the peer's
            assert (await c.get(peer.url("/other"))).status_code == 200


async def test_failures_lower_the_limit_and_a_429_is_a_drop() -> None:
    config = {"defaults": {"retry": None, "breaker": None,
                           "concurrency": {"initial": 20, "min": 3, "backoff": 0.5}}}
    events: list[Any] = []
    with Peer().on("/busy", answer(429)).on("*", answer(503)) as peer:
        async with AsyncResilientClient(config, listeners=[events.append]) as c:
            await c.get(peer.url("/busy"))
            assert c.overload(peer.url("/")).limit == 10
            status = c.overload(peer.url("/"))
            for _ in range(10):
                await c.get(peer.url("/x"))
            status = c.overload(peer.url("/"))
            assert status.limit == 3 and status.in_flight == 0
    changes = [(e.old, e.new) for e in events if isinstance(e, ConcurrencyLimitChanged)]
    assert changes[0] == (20, 10)


async def test_a_429_with_retry_after_holds_the_whole_endpoint() -> None:
    clock = FakeClock()
    config = {"defaults": {"retry": None, "concurrency": {}, "throttle": {"min_requests": 5}}}
    events: list[Any] = []
    with Peer().on("/a", retry_after(429, "5")).on("*", answer(200)) as peer:
        async with AsyncResilientClient(config, clock=clock, listeners=[events.append]) as c:
            assert (await c.get(peer.url("/a"))).status_code == 429
            assert c.overload(peer.url("/")).accepts == 0  # a 429 is never an accept
            with pytest.raises(Throttled) as err:
                await c.get(peer.url("/b"))  # another path, the same endpoint: not sent
            assert err.value.reason == "retry_after" and err.value.retry_in == pytest.approx(5.0)
            assert peer.hits("/b") == 0
            clock.advance(5.0)
            assert (await c.get(peer.url("/b"))).status_code == 200
    assert [e.reason for e in events if isinstance(e, CallThrottled)] == ["retry_after"]


async def test_respect_retry_after_false_does_not_hold_the_endpoint() -> None:
    config = {"defaults": {"retry": {"attempts": 1, "respect_retry_after": False}, "concurrency": {}}}
    with Peer().on("/a", retry_after(429, "10")).on("*", answer(200)) as peer:
        async with AsyncResilientClient(config) as c:
            assert (await c.get(peer.url("/a"))).status_code == 429
            assert c.overload(peer.url("/")).retry_in == 0.0
            assert (await c.get(peer.url("/b"))).status_code == 200


PROXY = {"retry": {"backoff": {"initial": 0, "max": 0}}, "breaker": None,
         "proxy_errors": {"header": "X-Proxy-Error"}}


async def test_a_proxy_503_on_a_post_is_retried_as_a_connect_error() -> None:
    events: list[Any] = []
    proxy_503 = answer(503, b"", {"X-Proxy-Error": "queue timeout"})
    with Peer().on("/w", proxy_503, answer(201)).on("/p", answer(503), answer(201)) as peer:
        async with AsyncResilientClient({"defaults": PROXY}, listeners=[events.append]) as c:
            resp = await c.post(peer.url("/w"), content=b"x")
            assert (resp.status_code, resp.attempts, peer.hits("/w")) == (201, 2, 2)
            # The peer's own 503 is not retried for a POST.
            assert (await c.post(peer.url("/p"), content=b"x")).status_code == 503
            assert peer.hits("/p") == 1
    first = next(e for e in events if isinstance(e, resilient_client.AttemptFinished))
    assert (first.outcome, first.status, first.proxy_error) == ("connect_error", 503, True)


async def test_a_proxy_error_is_a_rejection_for_the_throttle() -> None:
    config = {"defaults": {**PROXY, "retry": None, "throttle": {"min_requests": 0}}}
    with Peer().on("*", answer(502, b"", {"X-Proxy-Error": "1"})) as peer:
        async with AsyncResilientClient(config) as c:
            await c.get(peer.url("/"))
            status = c.overload(peer.url("/"))
    assert (status.requests, status.accepts) == (1, 0)


async def test_a_redirect_into_another_endpoint_charges_the_endpoint_that_answered() -> None:
    target = Peer().on("*", retry_after(429, "30"))
    with target, Peer().on("*", redirect(target.url("/x"))) as source:
        config = {"defaults": {"retry": None, "breaker": None, "concurrency": {}},
                  "endpoints": [{"name": "src", "match": source.url("/")},
                                {"name": "dst", "match": target.url("/")}]}
        async with AsyncResilientClient(config, follow_redirects=True) as c:
            assert (await c.get(source.url("/go"))).status_code == 429
            assert c.overload("dst").retry_in > 0 and c.overload("src").retry_in == 0.0
            assert c.overload("dst").in_flight == 0 and c.overload("src").in_flight == 0
            with pytest.raises(httpx.ConnectError, match="Retry-After"):
                await c.get(source.url("/go"))  # the hold: the hop is not followed
            assert target.hits() == 1


async def test_a_sync_session_and_an_async_client_share_a_host_throttle(tmp_path: Any) -> None:
    """What the sync session saw (a failing peer) throttles the async client's calls, as across processes."""
    with Peer().on("*", answer(503)) as peer:
        config = {"state_dir": str(tmp_path),
                  "endpoints": [{"name": "shared", "match": peer.url("/"), "state": "host",
                                 "retry": None, "breaker": None, "budget": None,
                                 "throttle": {"min_requests": 10, "max_reject": 0.9}}]}
        with ResilientSession(config) as s:
            s.trust_env = False
            for _ in range(40):
                with contextlib.suppress(Throttled):
                    s.get(peer.url("/x"))
            time.sleep(0.06)  # past the host throttle's flush interval
            assert (s.overload("shared").requests or 0) >= 40  # (this read flushes)
        hits_before = peer.hits()
        async with AsyncResilientClient(config) as c:
            status = c.overload("shared")
            assert status.requests is not None and status.requests >= 40
            assert status.reject_rate == pytest.approx(0.9)
            refused = 0
            for _ in range(50):
                try:
                    await c.get(peer.url("/x"))
                except Throttled:
                    refused += 1
            assert refused > 30
        assert peer.hits() - hits_before == 50 - refused


# -- found by the review of the async overload control ------------------------------------------


def _proxy_first(then: Any) -> Peer:
    return Peer().on("/w", answer(503, b"", {"X-Proxy-Error": "queue timeout"}), then)


async def test_a_proxy_503_is_not_retried_when_the_body_cannot_be_replayed() -> None:
    """The proxy read the body (though the peer never saw it): a one-shot body is not sent again."""

    async def once() -> Any:
        yield b"ab"

    with _proxy_first(answer(201)) as peer:
        async with AsyncResilientClient({"defaults": PROXY}) as c:
            resp = await c.post(peer.url("/w"), content=once())
    assert (resp.status_code, resp.attempts, peer.hits("/w")) == (503, 1, 1)


def test_a_proxy_503_is_not_retried_with_an_empty_body_by_the_sync_session() -> None:
    """Before: the retry sent an empty body (the generator was spent) and the peer took it."""
    with _proxy_first(answer(201)) as peer:
        session = ResilientSession({"defaults": PROXY})
        session.trust_env = False
        resp = session.post(peer.url("/w"), data=(chunk for chunk in [b"ab"]))
    assert (resp.status_code, resp.attempts, peer.hits("/w")) == (503, 1, 1)


async def test_a_raising_response_hook_is_no_rejection_for_the_throttle() -> None:
    """raise_for_status on a 404 (an answer the peer accepted) must not make the throttle refuse."""

    async def raise_for_status(response: httpx.Response) -> None:
        response.raise_for_status()

    config = {"defaults": {"retry": None, "breaker": None, "budget": None,
                           "throttle": {"min_requests": 5, "max_reject": 0.9}}}
    with Peer().on("*", answer(404)) as peer:
        async with AsyncResilientClient(config, event_hooks={"response": [raise_for_status]}) as c:
            for _ in range(30):
                with pytest.raises(httpx.HTTPStatusError):
                    await c.get(peer.url("/x"))
            status = c.overload(peer.url("/"))
        session = ResilientSession(config)
        session.trust_env = False
        session.hooks["response"].append(lambda r, *a, **k: r.raise_for_status())
        for _ in range(30):
            with pytest.raises(Exception) as info:
                session.get(peer.url("/y"))
            assert not isinstance(info.value, Throttled)
        sync_status = session.overload(peer.url("/"))
    assert (status.refused, sync_status.refused) == (0, 0)
    assert peer.hits() == 60


async def test_an_answer_before_the_callers_own_timeout_still_counts() -> None:
    """Cancelled in the retry's backoff, after the peer's 503: the 503 counts for the throttle."""
    retry = {"attempts": 3, "backoff": {"initial": 0.2, "max": 0.2, "jitter": "none"}}
    config = {"defaults": {"retry": retry, "breaker": None, "budget": None, "throttle": {"min_requests": 5}}}
    with Peer().on("*", answer(503)) as peer:
        async with AsyncResilientClient(config) as c:
            for _ in range(10):
                with contextlib.suppress(TimeoutError, Throttled):
                    async with asyncio.timeout(0.1):
                        await c.get(peer.url("/x"))
            status = c.overload(peer.url("/"))
    assert status.requests == 10 and status.accepts == 0
    assert status.refused > 0


async def test_closing_writes_the_host_throttle_counts(tmp_path: Any) -> None:
    """Counts of the last 50 ms reach the shared file when the client or session closes."""
    with Peer().on("*", answer(503)) as peer:
        config = {"state_dir": str(tmp_path),
                  "endpoints": [{"name": "shared", "match": peer.url("/"), "state": "host",
                                 "retry": None, "breaker": None, "budget": None,
                                 "throttle": {"min_requests": 100000, "window": 600}}]}
        async with AsyncResilientClient(config) as c:
            for _ in range(3):
                await c.get(peer.url("/x"))
        with ResilientSession(config) as s:
            s.trust_env = False
            for _ in range(3):
                s.get(peer.url("/x"))
        # A reader that never called: what it sees is only what reached the file.
        with ResilientSession(config) as reader:
            seen = reader.overload("shared").requests
    assert seen is not None and seen >= 6, seen


async def test_async_events_say_the_scope_of_host_shared_state(tmp_path: Any) -> None:
    """As the sync session's: a breaker and a budget shared on the host say ``host`` in their events."""
    events: list[Any] = []
    with Peer().on("*", answer(503)) as peer:
        config = {"state_dir": str(tmp_path),
                  "endpoints": [{"name": "shared", "match": peer.url("/"), "state": "host",
                                 "retry": {"attempts": 3, "backoff": {"initial": 0, "max": 0}},
                                 "budget": {"ratio": 0.0, "min_per_second": 0.0001},
                                 "breaker": {"failure_threshold": 2}}]}
        async with AsyncResilientClient(config, listeners=[events.append]) as c:
            for _ in range(2):  # one attempt each (no budget for a retry): the second opens it
                await c.get(peer.url("/x"))
            with pytest.raises(resilient_client.CircuitOpenError):
                await c.get(peer.url("/x"))
    scoped = [e for e in events if isinstance(e, (resilient_client.BreakerStateChanged,
                                                  resilient_client.BreakerRejected,
                                                  resilient_client.BudgetExhausted))]
    assert {type(e).__name__ for e in scoped} >= {"BreakerStateChanged", "BreakerRejected"}
    assert {e.scope for e in scoped} == {"host"}, scoped
