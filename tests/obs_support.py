"""
Helpers for the observability tests: a listener importable by dotted path.
"""

from __future__ import annotations

#: What `record` received: a listener importable by dotted path, for the
#: config ``listeners`` tests.
RECORDED: list[object] = []


def record(event: object) -> None:
    """A listener named in configs as ``obs_support:record``."""
    RECORDED.append(event)


#: Not callable: a config naming it must be refused.
NOT_CALLABLE = 42
