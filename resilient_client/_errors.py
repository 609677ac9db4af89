"""
`ConfigError`, defined apart from the other exceptions so that the decision
core (policies, config, routing) can raise it without importing requests;
`resilient_client.exceptions` re-exports it, and that is its public home.
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """
    Invalid configuration. The message names the key path and the bad value,
    e.g. ``endpoints[1].retry.attempts: must be an integer >= 1, got 0``.

    Attributes:
        path: the key path (``""`` for the document itself).
        problem: what is wrong, without the path.

    .. versionadded:: 0.1.0
    """

    __module__ = "resilient_client.exceptions"  # its public home, shown in tracebacks

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)
