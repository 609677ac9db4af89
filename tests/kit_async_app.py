"""
An application module as a team writes it: an `AsyncResilientClient` built at
import time. tests/test_testing_async.py checks the kit's fixtures find it.
"""

from __future__ import annotations

from typing import Any

from resilient_client import AsyncResilientClient

CONFIG: dict[str, Any] = {
    "defaults": {"timeout": {"connect": 1.0, "read": 2.0, "total": 5.0}},
    "endpoints": [{
        "name": "pricing",
        "match": "https://pricing.internal/",
        "retry": {"attempts": 3, "on_status": [503]},
        "breaker": {"failure_threshold": 2, "reset_timeout": 30.0},
        "fallback": {"status": 200, "json": {"price": None}},
    }],
}

CLIENT = AsyncResilientClient(CONFIG)


async def price(item: int) -> Any:
    resp = await CLIENT.get(f"https://pricing.internal/items/{item}")
    return resp.json()["price"]
