"""
The registry of live sessions behind the test seam (see the end of
`ResilientSession`).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from ._async_client import AsyncResilientClient
    from ._session import ResilientSession

__all__ = ["LIVE_ASYNC_CLIENTS", "LIVE_SESSIONS", "LiveSessions"]

_S = TypeVar("_S", bound=Any)


class LiveSessions(Generic[_S]):
    """
    Every `ResilientSession` alive in this process, oldest first, held
    weakly, and the callbacks that want to hear of each new one: the registry
    behind the test seam (see the end of `ResilientSession`). The testing kit
    finds an application's sessions here, a module-level one built at import
    time included, to put them on its fake clock and reset them between tests.
    Weak, so it keeps no session alive; per process, so parallel test workers
    never see each other's sessions. No callback is registered in production.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Keyed by a serial number: a dict keeps insertion order, so oldest first.
        self._sessions: weakref.WeakValueDictionary[int, _S] = (
            weakref.WeakValueDictionary()
        )
        self._serial = itertools.count()
        self._callbacks: tuple[Callable[[_S], None], ...] = ()

    def add(self, session: _S) -> None:
        with self._lock:
            self._sessions[next(self._serial)] = session
            callbacks = self._callbacks
        for callback in callbacks:  # outside the lock: a callback may build a session
            callback(session)

    def snapshot(self) -> list[_S]:
        with self._lock:
            return list(self._sessions.values())

    def watch(self, callback: Callable[[_S], None]) -> Callable[[], None]:
        with self._lock:
            self._callbacks = (*self._callbacks, callback)

        def unwatch() -> None:
            with self._lock:
                self._callbacks = tuple(c for c in self._callbacks if c is not callback)

        return unwatch

    def after_fork(self) -> list[_S]:
        """
        In the child of an ``os.fork()``, where only the forking thread
        lives on: a fresh lock (another thread may have held the old one at
        the fork, and would never release it here) and the sessions.
        """
        self._lock = threading.Lock()
        return list(self._sessions.values())


#: The one registry of this process's sessions.
LIVE_SESSIONS: LiveSessions[ResilientSession] = LiveSessions()
#: ... and of its `AsyncResilientClient` s (the same seam, see the end of
#: `AsyncResilientClient`); here, so the testing kit finds them without importing httpx.
LIVE_ASYNC_CLIENTS: LiveSessions[AsyncResilientClient] = LiveSessions()
