"""
Callable fallbacks importable by dotted path, for the config tests that
name them (``fallback: {callable: "fallback_support:inventory"}``).
"""

from __future__ import annotations

import requests

import resilient_client

#: Not callable: naming it as a fallback is a ConfigError.
NOT_CALLABLE = 42


def inventory(request: requests.PreparedRequest, failure: object) -> requests.Response:
    """An empty, degraded inventory, built with the public helper only."""
    return resilient_client.fallback_response(
        request, 200, json={"items": [], "degraded": True}, headers={"X-Fallback": "inventory"}
    )
