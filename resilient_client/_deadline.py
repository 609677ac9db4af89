"""
The ``total`` deadline, enforced down to each socket read.

requests' read timeout bounds one socket read, so a peer that drips a byte
every 100 ms never trips it. We bound the whole call instead:

* Each attempt's connect and read timeouts are capped by the time left.
* Every `HTTPAdapter` on the session (its own `DeadlineAdapter` and any the
  user mounts) builds its connections with a response class whose socket
  reader checks the deadline before every ``recv`` and shrinks the socket
  timeout to what is left. Headers and body both pass through it, so a
  drip-fed peer is cut off within one read of the deadline.

Why a reader and not a timer thread that closes the socket: a socket that
goes back to the pool may be in another thread's hands a moment later. The
reader touches the socket only inside a read on its own response, that is
only while the calling thread owns that connection. The per-attempt `_Arm`
is handed over through a thread-local because the response object is built
deep inside http.client, on the calling thread, with no way to pass it down.

Why user adapters are *equipped* in place rather than subclassed: an
adapter arrives already built (``HTTPAdapter(pool_maxsize=32)``, CacheControl's,
requests-toolbelt's, a user's ``init_poolmanager`` override with an
``ssl_context``), and everything it does of its own lives in how its pool
managers were made: pool sizes, TLS context, source address, socket options,
``max_retries``, caching around ``send``. A subclass made on the fly (or a
wrapper adapter around it) would have to re-run its ``__init__`` or proxy
every method, and ``isinstance`` checks, pickling and the user's own
references to the adapter would see another object. What the deadline needs
is narrower: which *response class* its connections build. So `equip`
leaves the adapter's class and every setting alone and, after its own init,
swaps each pool manager's ``pool_classes_by_scheme`` for subclasses of the
manager's own pool classes (plain, TLS, SOCKS or a user's) whose connection
class builds a response that also is a `_DeadlineHTTPResponse`; its
``proxy_manager`` cache becomes one that equips each proxy manager as
requests' ``proxy_manager_for`` stores it. That is an instance attribute on
the user's manager, never a change to urllib3 or requests: other sessions
and the same adapter class elsewhere are untouched. The session equips on
``mount``, after unpickling, and whenever ``get_adapter`` finds an adapter
unequipped (put into ``session.adapters`` directly, or its pool manager
rebuilt), at the cost of two ``isinstance`` checks per call.

The session's own `DeadlineAdapter` also sizes pools per endpoint (the
``pool`` section): it adds the running attempt's pool size to the pool key
requests builds, and urllib3 keys its pools by their settings, so each size
gets its own pool per origin from the same equipped manager. A user's
adapter keeps its own pool settings: sizing them is what it was mounted for.

An adapter that is not an `HTTPAdapter` has no urllib3 connections to
equip: it keeps the capped connect/read timeouts only, and `equip` logs a
warning once. So does an adapter whose ``max_retries`` may retry: urllib3
retrying inside each of the session's attempts multiplies them.
"""

from __future__ import annotations

import http.client
import io
import logging
import socket
import threading
import weakref
from collections.abc import Callable
from typing import Any, cast

from requests import PreparedRequest
from requests.adapters import HTTPAdapter
from urllib3 import connectionpool as _pools
from urllib3.poolmanager import PoolManager
from urllib3.util.retry import Retry

from ._clock import Deadline
from ._hedge import Abandon

__all__ = ["Deadline", "DeadlineAdapter", "arm", "disarm", "equip", "equip_adapter", "equip_manager",
           "is_equipped", "release"]


class _Arm:
    """
    What one attempt's responses read against; ``deadline`` None = disarmed.
    ``read_timeout`` is the attempt's read timeout before the deadline capped
    it: what a disarmed (streamed) body read gets.
    """

    __slots__ = ("abandon", "deadline", "prev", "read_timeout")

    def __init__(self, deadline: Deadline | None, read_timeout: float | None = None) -> None:
        self.deadline = deadline
        self.read_timeout = read_timeout
        #: A hedged copy's: how another thread stops its reads (see `Abandon`).
        self.abandon: Abandon | None = None
        #: The arm this one hides on its thread: a call made from inside an
        #: attempt (a response hook, a listener) arms its own attempts and
        #: must hand the outer attempt's arm back when it is done, or the
        #: outer call's later redirect hops would read with no deadline.
        self.prev: _Arm | None = None


_local = threading.local()


def arm(deadline: Deadline | None, read_timeout: float | None = None) -> _Arm:
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
        abandon = self._arm.abandon
        if abandon is not None:
            return abandon.read(self._sock, self._raw, b)
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
    """
    http.client's response reading through a `_DeadlineSocket` while this
    thread's attempt is armed. Also a mixin: a connection class with a
    response class of its own gets a subclass of both (see `_response_class`).
    """

    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        a: _Arm | None = getattr(_local, "arm", None)
        if a is not None and (a.deadline is not None or a.abandon is not None):
            sock = _DeadlineSocket(sock, a)
        super().__init__(sock, *args, **kwargs)


# -- equipping any HTTPAdapter -------------------------------------------------
#
# Derived classes are made once per original class and kept for the life of
# the process: there are as many as the distinct pool, connection and
# response classes in use (a handful), and a subclass holds its base anyway.
_derived_lock = threading.Lock()
_derived: dict[tuple[str, type], type] = {}


def _derive(kind: str, base: type, attrs: dict[str, Any]) -> type:
    with _derived_lock:
        found = _derived.get((kind, base))
        if found is None:
            # Named like the original, so that errors ("HTTPSConnectionPool(host=...):
            # Max retries exceeded") and reprs read as users expect.
            found = _derived[(kind, base)] = type(base.__name__, (base,), attrs)
        return found


def _response_class(cls: type[http.client.HTTPResponse]) -> type[http.client.HTTPResponse]:
    if issubclass(cls, _DeadlineHTTPResponse):
        return cls
    if cls is http.client.HTTPResponse:
        return _DeadlineHTTPResponse
    # A connection class's own response class keeps its behaviour: ours only
    # wraps the socket it is given, then hands over to it.
    with _derived_lock:
        found = _derived.get(("response", cls))
        if found is None:
            found = _derived[("response", cls)] = type(cls.__name__, (_DeadlineHTTPResponse, cls), {})
        return found


def _connection_class(cls: type[Any]) -> type[Any]:
    if issubclass(cls.response_class, _DeadlineHTTPResponse):
        return cls
    return _derive("connection", cls, {"response_class": _response_class(cls.response_class)})


def _pool_class(cls: type[_pools.HTTPConnectionPool]) -> type[_pools.HTTPConnectionPool]:
    conn: type[Any] = cls.ConnectionCls  # urllib3 types it as its base protocol class
    if issubclass(conn.response_class, _DeadlineHTTPResponse):
        return cls
    return _derive("pool", cls, {"ConnectionCls": _connection_class(conn)})


class _DeadlinePools(dict):  # type: ignore[type-arg]  # urllib3's own mapping is untyped
    """A manager's ``pool_classes_by_scheme`` once equipped: the type marks it as done."""


def equip_manager(manager: PoolManager) -> PoolManager:
    """
    Make the pools *manager* builds from now on read against the deadline:
    each of its own pool classes (plain, TLS, SOCKS, or a user's) is
    replaced by a subclass whose connections use our response class.
    Everything else about the manager (its pool settings, TLS context,
    source address, socket options) is left as it is.
    """
    classes = manager.pool_classes_by_scheme
    if isinstance(classes, _DeadlinePools):
        return manager
    equipped = _DeadlinePools({scheme: _pool_class(cls) for scheme, cls in classes.items()})
    if len(manager.pools):
        # Pools built before the adapter was mounted have connections that
        # read with no deadline: closing them once is the price of the
        # guarantee (connections in use are closed when given back).
        manager.clear()
    # An instance attribute: urllib3's class-level mapping is left untouched.
    manager.pool_classes_by_scheme = equipped
    return manager


class _EquippedManagers(dict):  # type: ignore[type-arg]
    """
    An adapter's ``proxy_manager`` cache that equips every proxy manager put
    into it: requests' ``proxy_manager_for`` (which overrides such as
    requests-toolbelt's call) builds them lazily, on the first proxied call.
    """

    def __setitem__(self, proxy: str, manager: PoolManager) -> None:
        super().__setitem__(proxy, equip_manager(manager))


def is_equipped(adapter: object) -> bool:
    """Whether *adapter* is an `HTTPAdapter` whose managers are all equipped (cheap: per call)."""
    manager = getattr(adapter, "poolmanager", None)
    return isinstance(getattr(manager, "pool_classes_by_scheme", None), _DeadlinePools) and isinstance(
        getattr(adapter, "proxy_manager", None), _EquippedManagers)


def equip_adapter(adapter: HTTPAdapter) -> None:
    """Equip *adapter*'s pool manager and every proxy manager it has or will build."""
    with _equip_lock:
        manager = getattr(adapter, "poolmanager", None)
        if isinstance(manager, PoolManager):
            equip_manager(manager)
        proxies = getattr(adapter, "proxy_manager", None)
        if not isinstance(proxies, _EquippedManagers):
            equipped = _EquippedManagers()
            for proxy, m in dict(proxies or {}).items():
                equipped[proxy] = m
            adapter.proxy_manager = equipped


_equip_lock = threading.Lock()
logger = logging.getLogger("resilient_client")
#: Adapters already warned about: each warning is logged once per adapter,
#: however often it is mounted or found unequipped.
_warned: weakref.WeakSet[object] = weakref.WeakSet()


def equip(adapter: object, prefix: str | None = None) -> bool:
    """
    Give *adapter*, mounted on a `ResilientSession`, every guarantee it can
    have; True when the deadline is enforced on each of its socket reads.

    An `HTTPAdapter` (any subclass) is equipped in place (`equip_adapter`);
    one whose ``max_retries`` may retry is equipped and warned about once. Any
    other adapter keeps connect/read timeouts capped by the time left (the
    session does that) and is warned about once.
    """
    if isinstance(adapter, HTTPAdapter):
        if not is_equipped(adapter):
            equip_adapter(adapter)
        if _may_retry(getattr(adapter, "max_retries", None)):
            _warn_once(adapter, (
                "%s mounted on a ResilientSession%s has max_retries=%r: urllib3 retries inside "
                "each of the session's attempts, so attempts multiply (use max_retries=0 and "
                "the session's retry policy)"), prefix, adapter.max_retries)
        return True
    _warn_once(adapter, (
        "%s mounted on a ResilientSession%s is not a requests HTTPAdapter: its calls get "
        "connect/read timeouts capped by the time left, but the total deadline is not "
        "enforced on each socket read (a peer dripping bytes can run past total)"), prefix)
    return False


def _warn_once(adapter: object, message: str, prefix: str | None, *args: object) -> None:
    try:
        if adapter in _warned:
            return
        _warned.add(adapter)
    except TypeError:
        pass  # not weakly referable: warned at every mount
    where = f" on {prefix!r}" if prefix else ""
    logger.warning(message, type(adapter).__qualname__, where, *args)


def _may_retry(retries: object) -> bool:
    """Whether urllib3 may retry under *retries* (an adapter's ``max_retries``)."""
    if not isinstance(retries, Retry):
        return bool(retries)
    if retries.total is False or retries.total == 0:
        return False
    # A count of None is limited only by total; False or 0 allows none.
    return any(c is None or (c is not False and c > 0)
               for c in (retries.connect, retries.read, retries.status, retries.other))


class DeadlineAdapter(HTTPAdapter):
    """
    The session's own adapter: requests' `HTTPAdapter` whose connections
    enforce the call's deadline on every socket read, from construction and
    after unpickling alike. ``max_retries`` stays 0: the session is the only
    retry layer.

    .. versionadded:: 0.1.0
    """

    #: The pool size the running call's endpoint wants (None: the adapter's
    #: own); the session sets it. Not pickled (requests pickles ``__attrs__``
    #: only): an unpickled session sets it again.
    pool_size: Callable[[], int | None] | None = None

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        equip_adapter(self)

    def build_connection_pool_key_attributes(
        self, request: PreparedRequest, verify: bool | str, cert: str | tuple[str, str] | None = None
    ) -> Any:
        """
        requests' own, plus the endpoint's pool size: urllib3 keys its pools
        by their settings, so each size gets its own pool per origin, built
        by the same equipped manager (the deadline reader included). (A
        requests older than 2.32 never calls this hook: its pools keep the
        adapter's size of 10.)
        """
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        size = self.pool_size() if self.pool_size is not None else None
        if size is not None and size != getattr(self, "_pool_maxsize", None):
            # A key urllib3 accepts (PoolKey.key_maxsize) that requests' stubs do not list.
            cast(dict[str, Any], pool_kwargs)["maxsize"] = size
        return host_params, pool_kwargs
