"""``python -m resilient_client``: the ``resilient-client`` command."""

from __future__ import annotations

from ._cli import main

raise SystemExit(main())
