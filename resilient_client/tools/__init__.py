"""
The tools around the library: the ``resilient-client`` command, the cascade
demos and the HAProxy check.

Nothing in the core imports this package, so a service that only builds a
`ResilientSession` never loads it. Its one public API is the HAProxy check,
for a deployment's own CI::

    from resilient_client.tools import check_haproxy

    for finding in check_haproxy(config, Path("haproxy.cfg").read_text()):
        print(finding)

The command line (``_cli``), the demos (``_demo``, ``_demo_fleet`` and the
gunicorn app ``_demo_fleet_app``) are private modules, reached through the
command.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from ._haproxy import Finding, check_haproxy

__all__ = ["Finding", "check_haproxy"]
