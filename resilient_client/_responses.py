"""
What happens to a response or an error on its way out of a call: a
discarded response gives its connection back, a streamed one keeps its
bulkhead slot until it is read, closed or dropped, and an error says how
many attempts were made.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

import requests

if TYPE_CHECKING:
    from ._bulkhead import Bulkhead

__all__ = ["discard", "hand_slot_to", "mark", "tell_attempts"]

# requests pickles (and copy.copy copies) a Response's `__attrs__` only: an
# instance's own list, with ours added, keeps them through a cache that
# pickles responses.
_ATTRS = [*requests.Response.__attrs__, "attempts", "is_fallback", "stale_age", "hedged"]


def mark(
    resp: requests.Response, attempts: int, *, is_fallback: bool, stale_age: float | None,
    hedged: bool = False,
) -> None:
    """Set what every response the session returns carries (see the contract)."""
    resp.attempts = attempts  # type: ignore[attr-defined]
    resp.is_fallback = is_fallback  # type: ignore[attr-defined]
    resp.stale_age = stale_age  # type: ignore[attr-defined]
    resp.hedged = hedged  # type: ignore[attr-defined]
    resp.__attrs__ = _ATTRS


def discard(resp: requests.Response) -> None:
    """Return a discarded response's connection to the pool (drain a small body, else close)."""
    try:
        if not resp._content_consumed and resp.raw is not None:  # type: ignore[attr-defined]
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) <= 65536:
                resp.raw.drain_conn()
    except Exception:
        pass
    finally:
        resp.close()


def tell_attempts(exc: BaseException, attempts: int) -> None:
    """
    Put the call's attempt count on the error it raises (``exc.attempts``)
    and, after a retry, say it in a note (shown in tracebacks and by
    ``logging.exception``): urllib3's "Max retries exceeded" counts none of
    ours. An error that already carries a count (a nested call's, passing
    through its caller) keeps it.
    """
    if getattr(exc, "attempts", None) is not None:
        return
    try:
        exc.attempts = attempts  # type: ignore[attr-defined]
    except AttributeError:  # an exception class with __slots__: nothing to attach to
        return
    add_note = getattr(exc, "add_note", None)  # Python 3.11+
    if attempts > 1 and add_note is not None:
        add_note(f"resilient_client: gave up after {attempts} attempts")


def hand_slot_to(resp: requests.Response, bulkhead: Bulkhead) -> None:
    """A streamed response keeps its bulkhead slot until it is consumed or closed."""
    raw = resp.raw
    released = False
    lock = threading.Lock()

    def release() -> None:
        nonlocal released
        with lock:
            if released:
                return
            released = True
        bulkhead.release()

    original = getattr(raw, "release_conn", None)
    if raw is None or original is None or resp._content_consumed:  # type: ignore[attr-defined]
        # Nothing to hold: no connection, or a hook read the body already
        # (and urllib3 released the connection before we could watch it).
        release()
        return

    # The wrapper must not hold `raw` strongly: raw -> its release_conn ->
    # raw would be a reference cycle, and a dropped response would free
    # its slot only at the next garbage collection, not when dropped.
    unbound = getattr(original, "__func__", None)
    if unbound is not None and getattr(original, "__self__", None) is raw:
        raw_ref = weakref.ref(raw)

        def call_original() -> None:
            still = raw_ref()
            if still is not None:
                unbound(still)
    else:
        call_original = original

    def release_conn() -> None:
        try:
            call_original()
        finally:
            release()

    raw.release_conn = release_conn  # type: ignore[method-assign,union-attr]
    # A response dropped unread and unclosed (`if r.status_code != 200:
    # return`) calls neither: its slot comes back when it is collected.
    # Watched through `raw`, which a caller may keep (`.raw` streaming)
    # after dropping the response.
    try:
        weakref.finalize(raw, release)
    except TypeError:  # a raw object that takes no weak reference
        weakref.finalize(resp, release)
