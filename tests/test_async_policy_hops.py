"""
AsyncResilientClient against loopback peers (tests/peers.py): ``policy=``
per call on its verbs, ``request``, ``stream`` and ``send``, as the sync
session takes it; and redirect hops charged to the endpoint they go to
(its breaker, its timeouts) under the time left, as the sync session's
``_send_hop`` does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from peers import Peer, answer, delay, hang, redirect

import resilient_client
from resilient_client import AsyncResilientClient

pytestmark = pytest.mark.anyio

FAST = {"attempts": 3, "backoff": {"initial": 0.001, "max": 0.002}}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def peer() -> Iterator[Peer]:
    with Peer(lifetime=20.0) as p:
        yield p


@pytest.fixture
def two() -> Iterator[tuple[Peer, Peer]]:
    with Peer(lifetime=20.0) as a, Peer(lifetime=20.0) as b:
        yield a, b


def _client(**defaults: Any) -> AsyncResilientClient:
    return AsyncResilientClient({"defaults": {"retry": FAST, **defaults}}, trust_env=False)


class TestPolicyForOneCall:
    async def test_policy_none_switches_retries_off_for_one_call(self, peer: Peer) -> None:
        """`policy={"retry": None}` makes one try; the next call retries again."""
        peer.on("/x", answer(503))
        async with _client() as c:
            assert (await c.get(peer.url("/x"), policy={"retry": None})).attempts == 1
            assert (await c.get(peer.url("/x"))).attempts == 3
        assert peer.hits("/x") == 4

    async def test_every_verb_request_and_stream_take_it(self, peer: Peer) -> None:
        peer.on("/x", answer(503))
        once = {"retry": None}
        async with _client(breaker=None) as c:
            url = peer.url("/x")
            for verb in (c.get, c.head, c.options, c.delete):
                assert (await verb(url, policy=once)).attempts == 1
            for verb in (c.post, c.put, c.patch):
                assert (await verb(url, json={}, policy=once)).attempts == 1
            assert (await c.request("GET", url, policy=once)).attempts == 1
            async with c.stream("GET", url, policy=once) as resp:
                assert resp.attempts == 1
            assert (await c.send(c.build_request("GET", url), policy=once)).attempts == 1
        assert peer.hits("/x") == 10

    async def test_a_calls_total_replaces_the_endpoints(self, peer: Peer) -> None:
        """`policy={"timeout": {"total": 0.3}}` cuts this call off at 0.3 s."""
        peer.on("/x", hang())
        async with _client(timeout={"connect": 1.0, "read": 5.0, "total": 10.0}, retry=None) as c:
            started = time.monotonic()
            with pytest.raises(resilient_client.DeadlineExceeded):
                await c.get(peer.url("/x"), policy={"timeout": {"total": 0.3}})
            assert time.monotonic() - started < 0.6

    async def test_shared_state_cannot_change_for_one_call(self, peer: Peer) -> None:
        async with _client() as c:
            with pytest.raises(resilient_client.ConfigError, match=r"^policy\.breaker: cannot be changed"):
                await c.get(peer.url("/x"), policy={"breaker": None})

    async def test_a_fallback_for_one_call_answers_an_open_breaker(self, peer: Peer) -> None:
        """With the breaker open, a call given its own fallback gets it instead of CircuitOpenError."""
        peer.on("/x", answer(200, b"ok"))
        async with _client(breaker={"failure_threshold": 1}) as c:
            c.circuit(peer.url("/x")).open()
            resp = await c.get(peer.url("/x"), policy={"fallback": {"status": 200, "text": "later"}})
            assert (resp.is_fallback, resp.text) == (True, "later")
            with pytest.raises(resilient_client.CircuitOpenError):
                await c.get(peer.url("/x"))

    async def test_a_call_from_an_event_hook_is_not_given_the_callers_policy(self, peer: Peer) -> None:
        """send takes the policy before any hook runs: the hook's own call keeps the endpoint's retries."""
        peer.on("/x", answer(200, b"ok"))
        peer.on("/audit", answer(503))
        nested: list[int] = []

        async with _client() as c:
            async def audit(response: httpx.Response) -> None:
                if response.url.path == "/x":
                    nested.append((await c.get(peer.url("/audit"))).attempts)

            c.event_hooks["response"].append(audit)
            assert (await c.get(peer.url("/x"), policy={"retry": None})).attempts == 1
        assert nested == [3]


def _two_endpoints(a: Peer, b: Peer, **defaults: Any) -> AsyncResilientClient:
    """One endpoint per peer (breaker threshold 2, no retry, no budget); redirects followed."""
    config: dict[str, Any] = {"budget": None, "retry": None, "breaker": {"failure_threshold": 2}}
    config.update(defaults)
    return AsyncResilientClient({
        "defaults": config,
        "endpoints": [{"name": "api", "match": a.url("/")}, {"name": "cdn", "match": b.url("/")}],
    }, trust_env=False, follow_redirects=True)


class TestRedirectIntoAnotherEndpoint:
    async def test_the_targets_open_breaker_is_respected(self, two: tuple[Peer, Peer]) -> None:
        """A redirect into an endpoint forced open is not followed; the error does not claim no send."""
        a, b = two
        a.on("/go", redirect(b.url("/file")))
        b.on("/file", answer(200, b"data"))
        async with _two_endpoints(a, b) as c:
            c.circuit("cdn").open()
            with pytest.raises(httpx.ConnectError, match="redirect into endpoint 'cdn'") as caught:
                await c.get(a.url("/go"))
            assert not isinstance(caught.value, resilient_client.CircuitOpenError)
            assert c.circuit("api").state == "closed"
        assert (a.hits(), b.hits()) == (1, 0)

    async def test_the_targets_failures_count_against_the_target_not_the_source(
            self, two: tuple[Peer, Peer]) -> None:
        """A dead redirect target opens its own breaker; the source that answered stays closed."""
        a, b = two
        a.on("/go", redirect(b.url("/file")))
        b.on("/file", answer(503))
        async with _two_endpoints(a, b) as c:
            for _ in range(2):
                assert (await c.get(a.url("/go"))).status_code == 503
            assert (c.circuit("api").state, c.circuit("cdn").state) == ("closed", "open")

    async def test_a_hop_takes_its_endpoints_read_timeout(self, two: tuple[Peer, Peer]) -> None:
        """The target's read timeout (0.2 s), not the source's (5 s), bounds the hop into it."""
        a, b = two
        a.on("/go", redirect(b.url("/hang")))
        b.on("/hang", hang())
        async with AsyncResilientClient({
            "defaults": {"budget": None, "retry": None,
                         "timeout": {"connect": 1.0, "read": 5.0, "total": None}},
            "endpoints": [{"name": "api", "match": a.url("/")},
                          {"name": "cdn", "match": b.url("/"), "timeout": {"read": 0.2}}],
        }, trust_env=False, follow_redirects=True) as c:
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout):
                await c.get(a.url("/go"))
            assert time.monotonic() - started < 1.0
            assert c.circuit("cdn").stats().consecutive_failures == 1
            assert c.circuit("api").stats().consecutive_failures == 0

    async def test_the_hops_share_the_total_deadline(self, two: tuple[Peer, Peer]) -> None:
        """0.3 s spent on the first hop leave the second only what remains of `total` (0.5 s)."""
        a, b = two
        a.on("/go", delay(0.3, redirect(b.url("/hang"))))
        b.on("/hang", hang())
        async with _two_endpoints(a, b, timeout={"connect": 1.0, "read": 5.0, "total": 0.5}) as c:
            started = time.monotonic()
            with pytest.raises(resilient_client.DeadlineExceeded):
                await c.get(a.url("/go"))
            assert time.monotonic() - started < 0.8
            assert b.hits() == 1
