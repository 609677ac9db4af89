"""
The overloaded peer of bench_overload.py (a helper, not a benchmark): a WSGI
app whose capacity comes from sleeping, not from CPU (the machine has 2
cores): each request holds its gunicorn sync worker for ``SERVICE_TIME``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

SERVICE_TIME = 0.050


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    time.sleep(SERVICE_TIME)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
