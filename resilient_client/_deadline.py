"""
The ``total`` deadline, enforced down to each socket read.

requests' read timeout bounds one socket read, so a peer that drips a byte
every 100 ms never trips it. We bound the whole call instead:

* Each attempt's connect and read timeouts are capped by the time left.
* The session's own adapters build their connections with a response class
  whose socket reader checks the deadline before every ``recv`` and shrinks
  the socket timeout to what is left. Headers and body both pass through it,
  so a drip-fed peer is cut off within one read of the deadline.

Why a reader and not a timer thread that closes the socket: a socket that
goes back to the pool may be in another thread's hands a moment later. The
reader touches the socket only inside a read on its own response, that is
only while the calling thread owns that connection. The per-attempt `_Arm`
is handed over through a thread-local because the response object is built
deep inside http.client, on the calling thread, with no way to pass it down.
"""

from __future__ import annotations

import http.client
import io
import socket
import threading
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3 import connectionpool as _pools
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.poolmanager import PoolManager

from ._clock import Deadline

__all__ = ["Deadline", "DeadlineAdapter", "arm", "disarm", "release"]


class _Arm:
    """
    What one attempt's responses read against; ``deadline`` None = disarmed.
    ``read_timeout`` is the attempt's read timeout before the deadline capped
    it: what a disarmed (streamed) body read gets.
    """

    __slots__ = ("deadline", "prev", "read_timeout")

    def __init__(self, deadline: Deadline | None, read_timeout: float | None = None) -> None:
        self.deadline = deadline
        self.read_timeout = read_timeout
        #: The arm this one hides on its thread: a call made from inside an
        #: attempt (a response hook, a listener) arms its own attempts and
        #: must hand the outer attempt's arm back when it is done, or the
        #: outer call's later redirect hops would read with no deadline.
        self.prev: _Arm | None = None


_local = threading.local()


def arm(deadline: Deadline, read_timeout: float | None = None) -> _Arm:
    """
    Make responses built on this thread, until `disarm`, read against
    *deadline*; once disarmed, their reads get *read_timeout* (None: the
    socket's timeout when the response was built).
    """
    a = _Arm(deadline, read_timeout)
    a.prev = getattr(_local, "arm", None)
    _local.arm = a
    return a


def release(a: _Arm) -> None:
    """
    Stop handing *a* to responses built on this thread. Responses already
    built keep reading against it until `disarm`.
    """
    if getattr(_local, "arm", None) is a:
        _local.arm, a.prev = a.prev, None


def disarm(a: _Arm) -> None:
    """Stop *a*: later reads (a streamed body read by the caller) use the read timeout only."""
    a.deadline = None
    release(a)


class _DeadlineReader(io.RawIOBase):
    """A socket reader that refuses to wait past the armed deadline."""

    def __init__(self, sock: socket.socket, raw: io.RawIOBase, a: _Arm) -> None:
        super().__init__()
        self._sock = sock
        self._raw = raw
        self._arm = a
        # urllib3 set the read timeout on the socket just before building the response.
        self._read_timeout = sock.gettimeout()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int | None:
        d = self._arm.deadline
        if d is not None:
            left = d.remaining()
            if left <= 0:
                raise TimeoutError("total deadline passed while reading the response")
            rt = self._read_timeout
            self._sock.settimeout(left if rt is None or left < rt else rt)
        else:
            # Disarmed (a streamed body read by the caller): back to the read
            # timeout, uncapped by the deadline that no longer applies.
            rt = self._arm.read_timeout or self._read_timeout
            if rt is not None:
                self._sock.settimeout(rt)
        return self._raw.readinto(b)

    def close(self) -> None:
        # Closing the socket's own reader drops the reference it holds: the
        # socket itself closes only when the connection has closed it too.
        if not self.closed:
            self._raw.close()
        super().close()


class _DeadlineSocket:
    """What http.client.HTTPResponse sees as the socket: only ``makefile`` is used."""

    __slots__ = ("_arm", "_sock")

    def __init__(self, sock: socket.socket, a: _Arm) -> None:
        self._sock = sock
        self._arm = a

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        # The socket's own unbuffered reader counts as a reference to the
        # socket, as http.client expects: when a response says
        # "Connection: close", the connection closes its socket at once and
        # the body is still read through this reference.
        raw = self._sock.makefile("rb", buffering=0)
        return io.BufferedReader(_DeadlineReader(self._sock, raw, self._arm))


class _DeadlineHTTPResponse(http.client.HTTPResponse):
    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        a: _Arm | None = getattr(_local, "arm", None)
        if a is not None and a.deadline is not None:
            sock = _DeadlineSocket(sock, a)
        super().__init__(sock, *args, **kwargs)


class _HTTPConnection(HTTPConnection):
    response_class = _DeadlineHTTPResponse


class _HTTPSConnection(HTTPSConnection):
    response_class = _DeadlineHTTPResponse


# Named like urllib3's own so error messages read as users expect.
class HTTPConnectionPool(_pools.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class HTTPSConnectionPool(_pools.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOL_CLASSES = {"http": HTTPConnectionPool, "https": HTTPSConnectionPool}
_socks_pools: dict[str, type] = {}


def _socks_pool_classes() -> dict[str, type]:
    """The SOCKS pools with our response class; built on first use (PySocks is optional)."""
    if not _socks_pools:
        from urllib3.contrib import socks

        class _SOCKSConnection(socks.SOCKSConnection):
            response_class = _DeadlineHTTPResponse

        class _SOCKSHTTPSConnection(socks.SOCKSHTTPSConnection):
            response_class = _DeadlineHTTPResponse

        class SOCKSHTTPConnectionPool(socks.SOCKSHTTPConnectionPool):
            ConnectionCls = _SOCKSConnection

        class SOCKSHTTPSConnectionPool(socks.SOCKSHTTPSConnectionPool):
            ConnectionCls = _SOCKSHTTPSConnection

        _socks_pools.update(http=SOCKSHTTPConnectionPool, https=SOCKSHTTPSConnectionPool)
    return _socks_pools


class DeadlineAdapter(HTTPAdapter):
    """
    requests' `HTTPAdapter` whose connections enforce the call's deadline on
    every socket read. ``max_retries`` stays 0: the session is the only
    retry layer.

    .. versionadded:: 0.1.0
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOL_CLASSES

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> PoolManager:
        manager: PoolManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        # A SOCKS manager needs SOCKS connections (they take _socks_options):
        # swapping in plain pools would break it.
        socks = proxy.lower().startswith("socks")
        manager.pool_classes_by_scheme = _socks_pool_classes() if socks else _POOL_CLASSES
        return manager
