"""
The fault table for the fault matrix, stress and process tests, on top of
`peers` (the one test server, which plays every fault as a behaviour).

* `FAULTS`, the table of every fault kind with what one attempt against it
  produces, which the matrix turns into expected outcomes;
* `REDIRECT_FAULTS`, the same for a first hop that redirects to a failure;
* `TLS_FAULTS`, the same for a peer that speaks TLS (a handshake that
  stalls, a certificate no bundle trusts, a reset in the middle of the body);
* `client_sockets`, what the client holds open, as the kernel sees it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from peers import (
    Behaviour,
    blackholed,
    close_early,
    delay,
    drip_body,
    drip_headers,
    flap,
    free_port,
    garbage,
    hang,
    http_date,
    oversized_headers,
    redirect,
    redirect_chain,
    redirect_to,
    reset,
    retry_after,
    server_error,
    truncated,
)

__all__ = [
    "FAULTS",
    "REDIRECT_FAULTS",
    "REDIRECT_TARGET",
    "RETRY_AFTER_FORMS",
    "TLS_FAULTS",
    "Fault",
    "client_sockets",
    "refused_url",
]

#: The path on the same peer where a redirect fault's Location points; the
#: matrix plays the fault's ``target`` there.
REDIRECT_TARGET = "/target"


# -- the table of fault kinds ------------------------------------------------------------


#: Retry-After values by form, with whether the client may sleep and retry
#: on them inside the matrix's deadline (the others return the response at once).
RETRY_AFTER_FORMS: dict[str, tuple[Callable[[], str], bool]] = {
    "seconds-0": (lambda: "0", True),
    "seconds-past-deadline": (lambda: "5", False),
    "date-past": (lambda: http_date(-3600), True),
    "date-future": (lambda: http_date(20), False),
    "huge": (lambda: "99999999999999999999", False),
    "negative": (lambda: "-1", False),
    "decimal": (lambda: "0.5", False),
    "garbage": (lambda: "soon, maybe", False),
}


@dataclass(frozen=True)
class Fault:
    """
    One fault kind and what one attempt against it produces.

    ``make`` builds the behaviour (None: the port refuses, or for a TLS
    fault, no request gets past the handshake to be played). ``attempt`` is
    the outcome of one attempt: an exception class, or an HTTP status.
    ``phase`` says when it fails, which decides what may be retried:
    ``before_send`` (any method), ``after_send`` (idempotent and replayable
    only), ``status`` (a status in ``retry.on_status``: the same), ``final``
    (not retried: a success, a status not retried, or the deadline).
    ``retry_after_ok`` is False when a Retry-After forbids sleeping.

    A redirect fault's first hop reaches the peer and answers a redirect;
    ``attempt`` is what the hop it leads to produces, and ``phase`` is never
    ``before_send``: the first hop was sent (and acted on), so the redirect
    target failing before its own first byte does not make the call safe to
    resend. ``target`` is what the peer plays at `REDIRECT_TARGET`, and
    ``timeout`` the (connect, read) the row needs instead of the matrix's
    (a slow hop must meet the deadline, not the read timeout).
    """

    name: str
    make: Callable[[], Behaviour] | None
    attempt: type[BaseException] | int
    phase: str
    retry_after_ok: bool = True
    #: The statuses the next attempts get (a flap), if not the same.
    then: tuple[int, ...] = ()
    #: What the peer plays at `REDIRECT_TARGET`, for a redirect that points there.
    target: Callable[[], Behaviour] | None = None
    #: (connect, read) instead of the matrix's, or None.
    timeout: tuple[float, float] | None = None
    #: The peer speaks TLS: ``"ok"``, ``"stall"`` (never answers the
    #: ClientHello) or ``"untrusted"`` (a certificate from a CA the client's
    #: bundle lacks); None for plain HTTP.
    tls: str | None = None


def _faults() -> list[Fault]:
    import requests

    from resilient_client import DeadlineExceeded

    conn_err = requests.ConnectionError
    broken = requests.exceptions.ChunkedEncodingError  # the body was cut off
    faults = [
        Fault("refuse", None, conn_err, "before_send"),
        Fault("hang", hang, requests.ReadTimeout, "after_send"),
        Fault("slow-answer", lambda: delay(0.03), 200, "final"),
        Fault("drip-headers", lambda: drip_headers(0.02), DeadlineExceeded, "final"),
        Fault("drip-body", lambda: drip_body(b"x" * 400, 0.02), DeadlineExceeded, "final"),
        Fault("reset-before-answer", lambda: reset(), conn_err, "after_send"),
        Fault("reset-mid-headers", lambda: reset(mid_headers=True), conn_err, "after_send"),
        Fault("reset-mid-body", lambda: reset(mid_response=True), broken, "after_send"),
        Fault("close-early", lambda: close_early(after_headers=False), conn_err, "after_send"),
        Fault("truncated-body", truncated, broken, "after_send"),
        Fault("garbage", garbage, conn_err, "after_send"),
        Fault("oversized-headers", oversized_headers, conn_err, "after_send"),
        Fault("500", lambda: server_error(500), 500, "final"),
        Fault("503", lambda: server_error(503), 503, "status"),
        Fault("flap", flap, 503, "status", then=(200, 503)),
    ]
    for status in (429, 503):
        for form, (value, ok) in RETRY_AFTER_FORMS.items():
            make = functools.partial(_retry_after_now, status, value)
            faults.append(Fault(f"{status}-retry-after-{form}", make, status, "status", retry_after_ok=ok))
    return faults


def _retry_after_now(status: int, value: Callable[[], str]) -> Behaviour:
    """Answer *status* with the Retry-After *value* computes now (dates are relative to now)."""
    return retry_after(status, value())


#: Every fault kind the matrix covers.
FAULTS: tuple[Fault, ...] = tuple(_faults())

#: How long a slow first hop takes to answer its redirect: most of the
#: matrix's 1 s deadline, so that what the next hop may take is what is left.
SLOW_HOP = 0.7


def _redirect_faults() -> list[Fault]:
    import requests

    from resilient_client import DeadlineExceeded

    conn_err = requests.ConnectionError
    # Timeouts longer than what the slow hops leave of the deadline: only the deadline can end them.
    slow = (1.0, 1.0)
    return [
        Fault("redirect-303-refuse", lambda: redirect(refused_url("/receipt"), 303), conn_err, "after_send"),
        Fault("redirect-307-refuse", lambda: redirect(refused_url("/receipt"), 307), conn_err, "after_send"),
        Fault("redirect-303-hang", lambda: redirect(REDIRECT_TARGET, 303), requests.ReadTimeout,
              "after_send", target=hang),
        Fault("redirect-303-503", lambda: redirect(REDIRECT_TARGET, 303), 503, "status",
              target=lambda: server_error(503)),
        Fault("redirect-slow-hop-blackhole", lambda: delay(SLOW_HOP, redirect_to(blackholed("/next"))),
              DeadlineExceeded, "final", timeout=slow),
        Fault("redirect-slow-hop-hang", lambda: delay(SLOW_HOP, redirect(REDIRECT_TARGET)),
              DeadlineExceeded, "final", target=hang, timeout=slow),
        # Each hop well inside the read timeout; eight of them are not inside the deadline.
        Fault("redirect-chain", lambda: redirect_chain(8, 0.15), DeadlineExceeded, "final",
              target=lambda: redirect_chain(8, 0.15), timeout=slow),
    ]


#: Redirect faults: a first hop that answers (at once or slowly) with a
#: redirect to a target that fails. The matrix picks a few rows of them.
REDIRECT_FAULTS: tuple[Fault, ...] = tuple(_redirect_faults())


def refused_url(path: str = "/") -> str:
    """A URL on 127.0.0.1 whose port refuses connections."""
    return f"http://127.0.0.1:{free_port()}{path}"


def _tls_faults() -> list[Fault]:
    import requests

    broken = requests.exceptions.ChunkedEncodingError
    return [
        # The TCP connect completes and the handshake never does. urllib3 ends
        # it at the *connect* timeout and reports a read timeout: the client
        # cannot tell it from a request sent and never answered, so it is
        # treated as one (a write is not resent).
        Fault("tls-handshake-stall", None, requests.ReadTimeout, "after_send", tls="stall"),
        # A certificate no bundle trusts: every try would get the same answer,
        # so it is final, and nothing reaches the peer's HTTP layer.
        Fault("tls-untrusted", None, requests.exceptions.SSLError, "final", tls="untrusted"),
        Fault("tls-reset-mid-body", lambda: reset(mid_response=True), broken, "after_send", tls="ok"),
    ]


#: TLS faults: the peer speaks HTTPS and the client verifies it against
#: `peers.ca_bundle`, passed per call as ``verify=``. The matrix crosses
#: them with every method and column, as it does `FAULTS`.
TLS_FAULTS: tuple[Fault, ...] = tuple(_tls_faults())


# -- client sockets, as the kernel sees them -----------------------------------------------

#: TCP states of a socket that is not closed yet: SYN_SENT, ESTABLISHED, CLOSE_WAIT.
_LIVE_STATES = {"02", "01", "08"}


def client_sockets(port: int) -> int:
    """
    How many TCP sockets on this machine are connected (or connecting) to
    127.0.0.1:*port* and not closed yet, read from ``/proc/net/tcp`` (Linux).

    A client that leaks sockets keeps them ESTABLISHED or CLOSE_WAIT; a closed
    one is in TIME_WAIT or gone, so this counts what the client holds, with
    no lag on the server's side.
    """
    count = 0
    with open("/proc/net/tcp", encoding="ascii") as f:
        next(f)
        for line in f:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state in _LIVE_STATES and int(remote.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count
