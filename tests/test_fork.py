"""
A session used before ``os.fork()`` (gunicorn ``--preload`` with a warm-up
call, a multiprocessing pool): each child gets its own connections, so no
child ever reads another's answer. Real processes, a real loopback peer.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from typing import Any

import pytest

from resilient_client import ResilientSession
from tests import peers

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

CHILDREN = 4
CALLS = 30


def _child(session: ResilientSession, base: str, start: Any, out: Any) -> None:
    start.wait(10)
    seen: Counter[str] = Counter()
    for i in range(CALLS):
        want = f"/c{os.getpid()}-{i}"
        try:
            got = session.get(base + want).json()["path"]
            seen["own" if got == want else "crossed"] += 1
        except Exception as exc:  # a crossed stream can also fail to parse
            seen[type(exc).__name__] += 1
    out.put(dict(seen))


def test_children_of_a_used_session_never_read_each_others_answers() -> None:
    context = multiprocessing.get_context("fork")
    with peers.Peer().on("*", peers.echo()) as peer:
        session = ResilientSession({"defaults": {"retry": None, "timeout": {"total": 5}}})
        assert session.get(peer.url("/warm-up")).ok  # a pooled keep-alive connection now
        start, out = context.Event(), context.Queue()
        children = [context.Process(target=_child, args=(session, peer.origin, start, out))
                    for _ in range(CHILDREN)]
        for child in children:
            child.start()
        start.set()
        results = [out.get(timeout=30) for _ in children]
        for child in children:
            child.join(10)
        # The parent's own connection still works after its children closed their copies.
        assert session.get(peer.url("/parent")).json()["path"] == "/parent"
    total: Counter[str] = Counter()
    for result in results:
        total.update(result)
    assert total == {"own": CHILDREN * CALLS}, total
    assert all(child.exitcode == 0 for child in children)


def test_a_child_drops_only_http_adapters() -> None:
    """A user's adapter that is not an HTTPAdapter is left alone in the child."""
    import requests

    class Custom(requests.adapters.BaseAdapter):
        closed = False

        def send(self, *args: Any, **kwargs: Any) -> requests.Response:  # pragma: no cover
            raise NotImplementedError

        def close(self) -> None:
            Custom.closed = True

    context = multiprocessing.get_context("fork")
    session = ResilientSession({})
    session.mount("custom://", Custom())
    out = context.Queue()
    child = context.Process(target=lambda: out.put(Custom.closed))
    child.start()
    closed = out.get(timeout=10)
    child.join(10)
    assert closed is False
