"""
`Finding`, what every check of ``resilient-client check`` reports: the
client-only checks (`_policy_checks`) and the HAProxy pairs (`_haproxy`).

A module of its own so that both checkers can build findings without
importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SEVERITIES", "Finding"]

#: Severity of a finding, most serious first.
SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    """
    One incoherent pair of settings, or one setting that is likely a mistake.

    Attributes:
        severity: ``error`` (work is multiplied or a limit can never act),
            ``warning`` (probably not what was meant) or ``info`` (a hint).
        code: a stable short name, e.g. ``stacked-retries``.
        endpoint: the client policy (endpoint name, or ``default``), or None
            for a finding about the HAProxy file alone.
        backend: the HAProxy backend or listen section, or None.
        message: what is wrong, with the numbers.
        multiplier: for ``stacked-retries``, requests (or connection
            attempts) per call across both layers.
        line: the line of the HAProxy section, when there is one.

    .. versionadded:: 0.1.0
    """

    severity: str
    code: str
    endpoint: str | None
    backend: str | None
    message: str
    multiplier: int | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = []
        if self.endpoint is not None:
            where.append(f"endpoint {self.endpoint!r}")
        if self.backend is not None:
            at = f" (line {self.line})" if self.line is not None else ""
            where.append(f"haproxy backend {self.backend!r}{at}")
        elif self.line is not None:
            where.append(f"haproxy line {self.line}")
        place = " / ".join(where) or "config"
        return f"{self.severity}: {place}: {self.message} [{self.code}]"
