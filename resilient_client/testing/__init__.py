"""
Test support for users of resilient_client: make any peer fail in any way,
run retries, deadlines and breaker timers on a fake clock, and assert what
the resilience layers did.

Installing the package registers a pytest plugin (entry point ``pytest11``)
with these fixtures:

``fake_clock``
    a `FakeClock`: ``sleep()`` and ``advance()`` move it, nothing waits.
``fake_peers`` (alias ``fake_http``)
    a started `FakePeers` registry on that clock, strict by default, wired
    to every `ResilientSession` of the application (a module-level one
    built at import time included) with no call from the test.
``no_backoff``
    backoff sleeps no longer move the fake clock either.

and every test starts with fresh breakers and caches in every live session.

Without pytest (unittest), use the registry as a context manager::

    from resilient_client.testing import fake_peers

    with fake_peers() as peers:
        peers.url("https://inventory.internal/items/42").statuses([503, 200])
        resp = peers.session().get("https://inventory.internal/items/42")

The registry is built on `responses` (``peers.mock`` is its
`responses.RequestsMock`), so plain responses and matchers keep working
beside the scripted peers.

The modules behind it, one concern each, none importing this package:
``_fake_clock`` (the clock), ``_scripts``, ``_target`` and ``_peer`` (what a
fake peer does, to which requests), ``_transport`` (the responses-based
transport, the only module that needs responses), ``_records``,
``_recording`` and ``_timeline`` (what happened, the questions asked of it,
and its redacted text), ``_registry`` (`FakePeers`, which finds the sessions
through the session's test seam) and ``_plugin`` (the fixtures).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from ._fake_clock import FakeClock
from ._peer import FakePeer
from ._records import AppCall, EventLog, PeerCall, UnmatchedRequest
from ._registry import FakePeers, fake_peers

__all__ = [
    "AppCall",
    "EventLog",
    "FakeClock",
    "FakePeer",
    "FakePeers",
    "PeerCall",
    "UnmatchedRequest",
    "fake_peers",
]

# Public names say where users import them from: reprs, tracebacks and
# pickles show resilient_client.testing.FakeClock, not a private module.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name

# This package is the module the pytest11 entry point names (see setup.py), so
# the plugin's fixtures and hook are its attributes when pytest is importable;
# unittest users without pytest import it all the same.
try:
    import pytest as _pytest  # noqa: F401
except ModuleNotFoundError:  # pragma: no cover - depends on the environment
    pass
else:
    from ._plugin import fake_clock_fixture as _fake_clock_fixture  # noqa: F401
    from ._plugin import fake_http_fixture as _fake_http_fixture  # noqa: F401
    from ._plugin import fake_peers_fixture as _fake_peers_fixture  # noqa: F401
    from ._plugin import fresh_sessions_fixture as _fresh_sessions_fixture  # noqa: F401
    from ._plugin import no_backoff_fixture as _no_backoff_fixture  # noqa: F401
    from ._plugin import pytest_configure, pytest_runtest_makereport  # noqa: F401
    from ._plugin import state_dir_fixture as _state_dir_fixture  # noqa: F401
