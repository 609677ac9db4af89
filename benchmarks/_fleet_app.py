"""
The WSGI app of benchmarks/bench_host_fleet.py (a helper, not a benchmark):
each request makes one call to ``RC_BENCH_PEER`` through a module-level
`ResilientSession` built from the JSON config in ``RC_BENCH_CONFIG`` (with
gunicorn ``--preload``, before the fork). Answers 200 with the outcome in
``X-Outcome``: the peer's status, ``open``, ``full`` or the error's name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from resilient_client import BulkheadFull, CircuitOpenError, ResilientSession

if "redis://" in os.environ.get("RC_BENCH_CONFIG", ""):
    # Imported once in the master (--preload), not by each worker on its
    # first call: redis-py's import takes seconds on a loaded 2-CPU machine.
    import redis  # noqa: F401

SESSION = ResilientSession(json.loads(os.environ["RC_BENCH_CONFIG"]))
PEER = os.environ["RC_BENCH_PEER"]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    try:
        outcome = str(SESSION.get(PEER).status_code)
    except CircuitOpenError:
        outcome = "open"
    except BulkheadFull:
        outcome = "full"
    except Exception as exc:  # every outcome is reported, none fails the worker
        outcome = type(exc).__name__
    start_response("200 OK", [("X-Outcome", outcome)])
    return [b""]
