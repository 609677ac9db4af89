"""
A WSGI app for tests/test_host_gunicorn.py (a helper, not a test file):
each request makes one call to ``RC_TEST_PEER`` through a module-level
`ResilientSession` with ``state: host``, built at import, so with gunicorn
``--preload`` it is built before the fork. Answers the outcome and the pid.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from resilient_client import CircuitOpenError, ResilientSession

SESSION = ResilientSession({
    "state_dir": os.environ["RC_TEST_STATE_DIR"],
    "defaults": {"state": "host", "retry": None, "breaker": {"failure_threshold": 3, "reset_timeout": 60}},
    # Named: an unmatched origin's state stays in the process.
    "endpoints": [{"name": "peer", "match": os.environ["RC_TEST_PEER"]}],
})


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    try:
        outcome = str(SESSION.get(os.environ["RC_TEST_PEER"]).status_code)
    except CircuitOpenError:
        outcome = "open"
    # Hold the worker a moment (an open breaker answers at once): four calls
    # at a time then need four workers, so the test shows them sharing.
    time.sleep(0.05)
    start_response("200 OK", [("X-Outcome", outcome), ("X-Pid", str(os.getpid()))])
    return [b""]
