"""
A per-call ``timeout=`` read as requests reads it, and never infinite: a
number, a ``(connect, read)`` tuple or a urllib3 ``Timeout`` replaces the
policy's connect/read for the call (None parts keep the policy's).
"""

from __future__ import annotations

import math
from typing import Any, cast

from urllib3.util import Timeout as Urllib3Timeout

from ._policy import MAX_DURATION

__all__ = ["call_timeouts"]


def call_timeouts(policy: tuple[float, float], value: object) -> tuple[float, float]:
    """
    Per-call ``timeout=``, in every form requests accepts (a number, a
    ``(connect, read)`` tuple, a urllib3 ``Timeout``), replaces
    connect/read; None parts mean the policy's. A ``Timeout``'s ``total``
    caps both.
    """
    if value is None:
        return policy
    connect, read = policy
    if isinstance(value, Urllib3Timeout):
        # Its fields as given: connect_timeout/read_timeout combine them
        # with a timer only urllib3 starts, and raise TimeoutStateError
        # before then. Its DEFAULT sentinel (not a number) is the policy's.
        c: object = value._connect
        r: object = value._read
        c = None if c is Urllib3Timeout.DEFAULT_TIMEOUT else c
        r = None if r is Urllib3Timeout.DEFAULT_TIMEOUT else r
        total: object = value.total
        if total is not None and total is not Urllib3Timeout.DEFAULT_TIMEOUT:
            cap = _finite("total", total, 0.0)
            return (min(_finite("connect", c, connect), cap), min(_finite("read", r, read), cap))
    elif isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(f"timeout must be a number or a (connect, read) tuple, got {value!r}")
        c, r = value
    else:
        c = r = value
    return (_finite("connect", c, connect), _finite("read", r, read))


def _finite(name: str, value: object, default: float) -> float:
    if value is None:
        return default
    # What urllib3 (so requests) accepts: anything float() takes but a bool
    # or a string (Decimal, Fraction and numpy numbers included).
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError
        seconds = float(cast(Any, value))
    except OverflowError:  # an int beyond any float
        seconds = math.inf
    except (TypeError, ValueError):
        # urllib3's own wording, which callers may match on.
        raise ValueError(
            f"Timeout value {name} was {value!r}, but it must be an int, float or None."
        ) from None
    if math.isnan(seconds) or math.isinf(seconds) or seconds <= 0:
        raise ValueError(f"{name} timeout must be a finite number > 0, got {value!r}")
    if seconds > MAX_DURATION:
        # The config's bound: the socket layer overflows on such values.
        raise ValueError(f"{name} timeout must be at most {MAX_DURATION:g} s (a day), got {value!r}")
    return seconds
