"""
A small service module that calls the inventory service through
resilient_client: short timeouts, two retries of a 503, a circuit breaker,
and "availability unknown" when inventory cannot answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import resilient_client

INVENTORY = "https://inventory.internal"

CONFIG = {
    "endpoints": [
        {
            "name": "inventory",
            "match": f"{INVENTORY}/",
            "timeout": {"connect": 0.5, "read": 2.0, "total": 5.0},
            "retry": {"attempts": 3, "on_status": [503]},
            "breaker": {"failure_threshold": 5, "reset_timeout": 30.0},
            # What callers get when inventory is down: availability unknown.
            "fallback": {"status": 200, "json": {"available": None}},
        }
    ]
}

# One session for the whole service, built when the module is imported, as
# a Flask app module does (in production, from a file:
# ResilientSession("/etc/orders/resilience.yaml")).
SESSION = resilient_client.ResilientSession(CONFIG)


@dataclass(frozen=True)
class Availability:
    """How many of *sku* are in stock; ``available`` is None when unknown."""

    sku: str
    available: int | None

    @property
    def known(self) -> bool:
        return self.available is not None


def availability(sku: str) -> Availability:
    """What inventory says about *sku*."""
    resp = SESSION.get(f"{INVENTORY}/items/{sku}")
    resp.raise_for_status()
    return Availability(sku, resp.json()["available"])
