"""
The upstream service of ``resilient-client demo --fleet``: a WSGI app that
gunicorn workers import (``resilient_client.tools._demo_fleet_app:app``).

Each request makes one call to the downstream named by the environment
(``RC_DEMO_DOWNSTREAM``): with ``RC_DEMO_CLIENT=plain``, through a plain
``requests.Session`` with ``timeout=(1, 3)``; otherwise through one
`ResilientSession` per worker process whose endpoint has the ``state``
named by ``RC_DEMO_STATE``: ``memory`` (a breaker per worker), ``host``
(one breaker, budget and bulkhead for the workers, in ``RC_DEMO_STATE_DIR``)
or a ``redis://`` URL (the breaker in Redis). The answer is always 200 with
the outcome in the ``X-Demo-Outcome`` header (``ok``, ``fallback`` or
``error``), unless the call raised (500). The first time any worker sees a
breaker open, the wall-clock moment goes to the file ``RC_DEMO_OPENED``
(created exclusively: the first worker wins), so the demo can count the
calls that reached the failing downstream before it opened.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["app"]

PLAIN_TIMEOUT = (1.0, 3.0)

_lock = threading.Lock()
_session: Any = None


def _make_session() -> Any:
    # Built lazily in each worker after the fork (gunicorn imports this
    # module in the workers without --preload): nothing is shared but Redis.
    from .._events import BreakerStateChanged, Event
    from .._session import ResilientSession
    from ._demo import demo_policy

    url = os.environ["RC_DEMO_DOWNSTREAM"]
    reset = float(os.environ.get("RC_DEMO_RESET_TIMEOUT", "1.0"))
    config = demo_policy(url, reset_timeout=reset)
    config["endpoints"][0]["state"] = os.environ.get("RC_DEMO_STATE", "memory")
    config["state_dir"] = os.environ.get("RC_DEMO_STATE_DIR") or None
    opened = os.environ.get("RC_DEMO_OPENED")

    def on_event(event: Event) -> None:
        if opened and isinstance(event, BreakerStateChanged) and event.new == "open":
            with contextlib.suppress(OSError):  # a demo statistic, never the answer; the first wins
                fd = os.open(opened, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(fd, repr(time.time()).encode())
                os.close(fd)

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
