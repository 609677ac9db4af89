"""
The upstream service of ``resilient-client demo --fleet``: a WSGI app that
gunicorn workers import (``resilient_client.tools._demo_fleet_app:app``).

Each request makes one call to the downstream named by the environment
(``RC_DEMO_DOWNSTREAM``): with ``RC_DEMO_CLIENT=plain``, through a plain
``requests.Session`` with ``timeout=(1, 3)``; otherwise through one
`ResilientSession` per worker process,
whose breaker keeps its state in Redis (``RC_DEMO_REDIS``), so every worker
of the fleet sees the same circuit. The answer is always 200 with the
outcome in the ``X-Demo-Outcome`` header (``ok``, ``fallback`` or
``error``), unless the call raised (500). The first time any worker sees the
breaker open, the wall-clock moment goes to the Redis key
``rc-demo:opened_at`` (SET NX), so the demo can count the calls that reached
the failing downstream before the shared breaker opened.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["app"]

OPENED_KEY = "rc-demo:opened_at"
PLAIN_TIMEOUT = (1.0, 3.0)

_lock = threading.Lock()
_session: Any = None


def _make_session() -> Any:
    # Built lazily in each worker after the fork (gunicorn imports this
    # module in the workers without --preload): nothing is shared but Redis.
    import redis

    from .._events import BreakerStateChanged, Event
    from .._session import ResilientSession
    from ._demo import demo_policy

    url = os.environ["RC_DEMO_DOWNSTREAM"]
    redis_url = os.environ["RC_DEMO_REDIS"]
    reset = float(os.environ.get("RC_DEMO_RESET_TIMEOUT", "1.0"))
    config = demo_policy(url, reset_timeout=reset)
    config["endpoints"][0]["breaker"]["storage"] = redis_url
    client = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)

    def on_event(event: Event) -> None:
        if isinstance(event, BreakerStateChanged) and event.new == "open":
            with contextlib.suppress(Exception):  # a demo statistic, never the answer
                client.set(OPENED_KEY, repr(time.time()), nx=True)

    return ResilientSession(config, listeners=[on_event])


def _get_session() -> Any:
    global _session
    with _lock:
        if _session is None:
            if os.environ.get("RC_DEMO_CLIENT", "resilient") == "plain":
                import requests

                _session = requests.Session()
            else:
                _session = _make_session()
        return _session


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Serve one upstream request by calling the downstream once."""
    session = _get_session()
    try:
        # The plain fleet: requests with the threaded demo's timeout, nothing else.
        timeout = None if hasattr(session, "subscribe") else PLAIN_TIMEOUT
        resp = session.get(os.environ["RC_DEMO_DOWNSTREAM"], timeout=timeout)
        if getattr(resp, "is_fallback", False):
            outcome = "fallback"
        else:
            outcome = "ok" if resp.status_code == 200 else "error"
        body = resp.content
        status = "200 OK"
    except Exception:  # the upstream answers 500, as an unguarded app would
        outcome, body, status = "error", b'{"error": "upstream failed"}', "500 Internal Server Error"
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body))),
                            ("X-Demo-Outcome", outcome)])
    return [body]
