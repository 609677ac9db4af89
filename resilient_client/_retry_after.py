"""
``Retry-After`` read as RFC 9110 says: delay-seconds or an HTTP-date (any of
its three forms), never trusted beyond that (a negative, fractional or
non-ASCII value is refused).
"""

from __future__ import annotations

import datetime
import email.utils
import time
from collections.abc import Callable

__all__ = ["parse_retry_after"]


def parse_retry_after(value: str, *, now: Callable[[], float] = time.time) -> float | None:
    """
    Return the seconds a ``Retry-After`` value asks for, or None when it is
    unparseable or negative. Accepts delay-seconds (a non-negative integer)
    and the three HTTP-date forms; a date in the past means 0.

    .. versionadded:: 0.1.0
    """
    value = value.strip()
    if not value or not value.isascii():
        # Headers are decoded as latin-1: "\u00b2" passes str.isdigit() but
        # is no number, and no valid value has a non-ASCII character.
        return None
    if value.isdigit():
        return float(value)
    if value[0] in "+-" or value.replace(".", "", 1).isdigit():
        return None  # negative, or not the integer the RFC requires
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # asctime dates (which RFC 9110 says recipients must accept) carry no
        # zone, and HTTP-dates are always UTC.
        when = when.replace(tzinfo=datetime.timezone.utc)
    try:
        return max(0.0, when.timestamp() - now())
    except (OverflowError, OSError, ValueError):
        return None
