"""
How a registry finds the application's sessions and wires them, through the
session's test seam (the end of `ResilientSession`) and nothing else.

Sessions are found, not handed over: while a registry is active it takes
every live session (a module-level one built at import time included) and
every session built meanwhile. It resets each, moves each one running on
the system clock onto the fake clock (with seeded jitter), and records its
calls and events. Stopping undoes all of it: a moved session gets its own
clock back, with fresh state again, so nothing leaks into the next test.

Why sessions from before the registry are held weakly: many of them are
leftovers of earlier tests that only the cyclic garbage collector has yet to
free. Holding them would keep them alive for the whole test, and asking
for an endpoint's breaker could then find a leftover's instead of the
application's (`older` collects garbage first when that is ambiguous).
"""

from __future__ import annotations

import gc
import random
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Union

from .._clock import SYSTEM_CLOCK
from .._live import LIVE_ASYNC_CLIENTS
from .._session import ResilientSession
from ._recording import Recording

if TYPE_CHECKING:
    from .._async_client import AsyncResilientClient

#: What a registry wires: sessions, and async clients through the same seam.
Client = Union[ResilientSession, "AsyncResilientClient"]

__all__ = ["Wiring"]


class _Wired:
    """What was done to one session, and how to undo it (the undo holds no session)."""

    __slots__ = ("existing", "moved", "owned", "undo")

    def __init__(self, existing: bool) -> None:
        self.existing = existing  # alive before the registry started
        self.moved = False  # put on the registry's clock
        self.owned = False  # built by `FakePeers.session`: closed at the end
        self.undo: list[Callable[[], None]] = []


class Wiring:
    """The sessions one registry has wired, recording into *recording*."""

    def __init__(self, recording: Recording, seed: int | None,
                 async_transport: Callable[[], Any] | None = None) -> None:
        self._recording = recording
        self._seed = seed
        # Makes the fake httpx transport an async client is given (imports httpx: called only then).
        self._async_transport = async_transport
        self._lock = threading.RLock()
        # Insertion order is the order sessions were found: oldest live ones first.
        self._wired: weakref.WeakKeyDictionary[Client, _Wired] = (
            weakref.WeakKeyDictionary()
        )
        # Sessions built while active, kept so that breakers can be asked about after the block.
        self._built: list[Client] = []
        self._adapters: weakref.WeakKeyDictionary[object, weakref.ref[ResilientSession]] = (
            weakref.WeakKeyDictionary()
        )
        self._unwatch: Callable[[], None] | None = None
        self._unwatch_async: Callable[[], None] | None = None

    def start(self) -> None:
        """Wire every live session, and every one built from now on."""
        # Watch first, then take the live ones: one built in between is seen twice, wired once.
        self._unwatch = ResilientSession._on_new_session(self._built_now)
        self._unwatch_async = LIVE_ASYNC_CLIENTS.watch(self._built_now)
        for session in ResilientSession._live_sessions():
            self.adopt(session, existing=True)
        # The async clients' seam, read from its registry: no httpx import when there are none.
        for client in LIVE_ASYNC_CLIENTS.snapshot():
            self.adopt(client, existing=True)

    def stop(self) -> None:
        """Undo everything, newest change first; close the sessions the registry built."""
        for unwatch in (self._unwatch, self._unwatch_async):
            if unwatch is not None:
                unwatch()
        self._unwatch = self._unwatch_async = None
        with self._lock:
            wired = list(self._wired.items())
            self._wired.clear()
            self._adapters.clear()
        for session, w in wired:
            for undo in reversed(w.undo):
                undo()
            if w.owned and isinstance(session, ResilientSession):
                session.close()

    def _built_now(self, session: Client) -> None:
        self.adopt(session, existing=False)

    def adopt(self, session: Client, *, existing: bool, move: bool = False) -> None:
        """Wire *session* once: record it, reset it, and move it if on the system clock (or *move*)."""
        rec = self._recording
        with self._lock:
            w = self._wired.get(session)
            fresh = w is None
            if w is None:
                w = self._wired[session] = _Wired(existing)
                if not existing:
                    self._built.append(session)
                if isinstance(session, ResilientSession):
                    for adapter in session.adapters.values():
                        self._adapters[adapter] = weakref.ref(session)
                elif self._async_transport is not None:
                    w.undo.append(session._use_transport(self._async_transport()))
                rec._redaction.learn_secrets(session.config.secrets)
                w.undo.append(session._watch_events(rec._on_event))
                # Installed on the session itself: a reference it holds to itself.
                w.undo.append(
                    session._watch_calls(
                        lambda request: rec._app_call_started(session, request),
                        rec._app_call_ended,
                    )
                )
            if (move or session.clock is SYSTEM_CLOCK) and not w.moved:
                w.moved = True
                rng = random.Random(self._seed) if self._seed is not None else None
                w.undo.append(session._use_clock(rec.clock, rng))  # resets it too
            elif fresh and existing:
                # Built before the test, on a clock of its own: fresh state all the same.
                session._forget_state()

    def own(self, session: ResilientSession) -> None:
        """*session* was built for the registry: wired, and closed when it stops."""
        self.adopt(session, existing=False)
        with self._lock:
            self._wired[session].owned = True

    def owner_of(self, adapter: object) -> ResilientSession | None:
        """The wired session *adapter* is mounted on, if any."""
        ref = self._adapters.get(adapter)
        return ref() if ref is not None else None

    def first(self) -> list[Client]:
        """The sessions to ask about an endpoint first: those that made a call, then those built since."""
        found: dict[int, Client] = {}
        with self._lock:
            for session in (*self._recording._used, *self._built):
                found.setdefault(id(session), session)
        return list(found.values())

    def older_count(self) -> int:
        """How many sessions from before the registry are still alive."""
        with self._lock:
            return sum(w.existing for w in self._wired.values())

    def older(self, *, collect: bool) -> list[Client]:
        """
        The sessions from before the registry, oldest first (a module-level
        session before leftovers of earlier tests); with *collect*, garbage
        is collected first, so that the leftovers are gone.
        """
        if collect:
            gc.collect()
        with self._lock:
            return [session for session, w in self._wired.items() if w.existing]
