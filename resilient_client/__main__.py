"""``python -m resilient_client``: the ``resilient-client`` command."""

from __future__ import annotations

from .tools._cli import main

raise SystemExit(main())
