"""
Test support for users of resilient_client: a pytest plugin (registered
through the ``pytest11`` entry point) and helpers usable without pytest.
"""

from __future__ import annotations

__all__: list[str] = []
