"""
The fault matrix: every fault kind x every kind of request x every protection.

Rows are ``<fault>-<method>-<column>``:

* fault: each entry of `faults.FAULTS` (refuse, hang, drips, resets, closes,
  truncated body, garbage, oversized headers, 5xx, 429/503 with Retry-After
  in every form, flap), on a real socket on 127.0.0.1; and each entry of
  `faults.TLS_FAULTS`, over TLS (a handshake that stalls: it ends within the
  connect timeout per attempt; a certificate from an untrusted CA: an
  `SSLError` at once, never retried; a reset in the middle of the body),
  verified with ``verify=`` the test CA's bundle per call;
* method: ``GET``; ``POST`` without an idempotency key; ``POST-key`` with
  ``Idempotency-Key`` (configured as ``retry.idempotency_header``); ``PUT-gen``
  with a generator body (chunked, so it cannot be replayed);
* column: ``plain`` (no breaker, no fallback), ``breaker``
  (``failure_threshold: 2``), ``fallback`` (the same breaker and a static
  fallback). When a call leaves the breaker open, the row makes a second
  call, which must be refused (`CircuitOpenError`, or the fallback with
  ``attempts == 0``) without reaching the peer.

Besides the full product, a few hand-picked rows of `faults.REDIRECT_FAULTS`
(`REDIRECT_ROWS`, not a product: each redirect row costs real time): a write
answered ``303``/``307`` towards a target that refuses, hangs or answers 503
reaches the peer once, because its first hop was sent and acted on (only a
failure before the first byte of the *first* hop makes a write safe to
resend), while a GET or a keyed POST so redirected is retried; a first hop
that answers after most of the deadline, or a chain of quick hops, ends with
`DeadlineExceeded` within the deadline plus `SLACK`, whatever the next hop
does (a port whose connects time out, a hang). Some with ``stream=True``
(methods ``GET-stream``, ``POST-stream``).

The expected outcome of a row is not written by hand: `expect` derives it
from the contract's rules (what is retried, when the breaker opens, when the
fallback answers) and the fault's one-attempt outcome, so a row fails when
the library departs from the contract, not when a table drifts.

Every row asserts the outcome (a typed exception or the fallback), the
requests that reached the peer, that the call ended within the deadline plus
`SLACK`, that no connection stayed open on the peer and the client created
no more connections to an origin than it made attempts, that a write
without a key reached the peer (and a redirect target) at most once, and
that the secrets (Authorization, Cookie, the configured secret header
``X-Api-Key`` and the secret query parameter ``token``) appear in no log
record, event, exception message or repr.

The rows run concurrently (`WORKERS` at a time) in a module fixture, each in
a thread named after it, so that the matrix takes seconds; each test then
checks its own row. The fixture runs only the rows whose tests were
selected, so ``-k`` picks rows without paying for the whole matrix.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from faults import (
    FAULTS,
    REDIRECT_FAULTS,
    REDIRECT_TARGET,
    TLS_FAULTS,
    Fault,
    refused_url,
)
from peers import (
    Peer,
    ca_bundle,
    drip_body,
)

from resilient_client import AttemptFinished, CircuitOpenError, DeadlineExceeded, Event, ResilientSession

#: The matrix's deadline: small, so that drips and hangs end fast.
TOTAL = 1.0
#: How late past the deadline a call may end (scheduling on a busy 2-core box).
SLACK = 0.3
#: Rows run at once. The read timeout leaves room for a peer thread that a
#: busy 2-core box schedules late: a row must not time out where it should reset.
WORKERS = 4
READ = 0.2
CONNECT = 0.2
#: How soon a call that fails on an untrusted certificate must end: no retry, no backoff, no deadline.
FAST = 0.5
AUTH_SECRET = "s3cr3t-bearer-9f2c71"
QUERY_SECRET = "qs-secret-41d07e"
COOKIE_SECRET = "sid-secret-c00k1e"
HEADER_SECRET = "api-key-secret-77aa"
SECRETS = (AUTH_SECRET, QUERY_SECRET, COOKIE_SECRET, HEADER_SECRET)
FALLBACK_TEXT = "served-by-fallback"
ON_STATUS = frozenset({429, 502, 503, 504})
FAILURE_STATUS = frozenset({500, 502, 503, 504})
ATTEMPTS = 3
THRESHOLD = 2

METHODS = ("GET", "POST", "POST-key", "PUT-gen")
COLUMNS = ("plain", "breaker", "fallback")


def config(column: str, timeout: tuple[float, float] | None = None) -> dict[str, Any]:
    """
    The session config of a column: small timeouts (or the fault's own
    *timeout*, connect and read), tiny backoff, no budget.
    """
    connect, read = timeout if timeout is not None else (CONNECT, READ)
    defaults: dict[str, Any] = {
        "timeout": {"connect": connect, "read": read, "total": TOTAL},
        "retry": {
            "attempts": ATTEMPTS,
            "backoff": {"initial": 0.001, "max": 0.004, "jitter": "none"},
            "idempotency_header": "Idempotency-Key",
        },
        "budget": None,
        "breaker": None,
        "fallback": None,
    }
    if column in ("breaker", "fallback"):
        defaults["breaker"] = {"failure_threshold": THRESHOLD, "reset_timeout": 30.0}
    if column == "fallback":
        defaults["fallback"] = {"status": 200, "text": FALLBACK_TEXT}
    return {"defaults": defaults, "secrets": {"query": ["token"], "headers": ["X-Api-Key"]}}


# -- what the contract says a row must produce ---------------------------------------


@dataclass(frozen=True)
class Expected:
    """
    ``outcome`` is an exception class, an HTTP status, or ``"fallback"``;
    ``opened`` says whether the call left the breaker open, so that the
    next call is refused without touching the network.
    """

    outcome: type[BaseException] | int | str
    hits: int
    attempts: int
    opened: bool = False


def _replays(method: str) -> bool:
    """Whether a failure after sending may be retried for this request."""
    # PUT-gen is idempotent, but its body is gone; streaming changes nothing here.
    return method in ("GET", "GET-stream", "POST-key")


def expect(fault: Fault, method: str, column: str) -> Expected:
    """Derive a row's outcome from the fault's one-attempt outcome and the contract's rules."""
    breaker = column in ("breaker", "fallback")
    sequence = [fault.attempt, *fault.then]
    attempts = consecutive = 0
    outcome: type[BaseException] | int = fault.attempt
    for i in range(ATTEMPTS):
        outcome = sequence[i % len(sequence)]
        attempts += 1
        failed = not isinstance(outcome, int) or outcome in FAILURE_STATUS
        consecutive = consecutive + 1 if failed else 0
        if isinstance(outcome, int):
            retry = outcome in ON_STATUS and _replays(method) and fault.retry_after_ok
        elif outcome is DeadlineExceeded or fault.phase == "final":
            retry = False  # the deadline, or a failure every try would meet (an untrusted certificate)
        else:
            retry = fault.phase == "before_send" or _replays(method)
        if not retry or (breaker and consecutive >= THRESHOLD):
            break  # an open breaker stops the retries: the last attempt's outcome is the call's
    opened = breaker and consecutive >= THRESHOLD
    failed = not isinstance(outcome, int) or outcome in FAILURE_STATUS
    hits = attempts if fault.make else 0
    if column == "fallback" and failed:
        return Expected("fallback", hits, attempts, opened)
    return Expected(outcome, hits, attempts, opened)


# -- running a row ------------------------------------------------------------------------


@dataclass
class Row:
    fault: Fault
    method: str
    column: str
    id: str
    result: requests.Response | BaseException | None = None
    #: A second call, made only when the first left the breaker open.
    second: requests.Response | BaseException | None = None
    hits_after_second: int = 0
    elapsed: float = 0.0
    hits: int = 0
    #: Requests to `REDIRECT_TARGET`, where a redirect fault may point.
    target_hits: int = 0
    bodies: int = 0
    open_after: int = 0
    max_open: int = 0
    client_connections: int = 0
    #: TLS handshakes the peer completed.
    handshakes: int = 0
    events: list[Event] = field(default_factory=list, repr=False)
    #: Everything the library wrote (logs, events, errors, reprs), to scan for secrets.
    texts: list[str] = field(default_factory=list, repr=False)
    crash: str | None = None


def _body() -> Iterator[bytes]:
    yield b"chunk-1;"
    yield b"chunk-2"


def call(session: ResilientSession, url: str, method: str) -> requests.Response:
    """
    Make the row's call: *method* is a column of `METHODS`, or ``GET-stream``/``POST-stream``.
    HTTPS is verified against the test CA per call: ``REQUESTS_CA_BUNDLE`` would override ``session.verify``.
    """
    verify: str | bool = ca_bundle() if url.startswith("https:") else True
    stream = method.endswith("-stream")
    method = method.removesuffix("-stream")
    headers = {
        "Authorization": f"Bearer {AUTH_SECRET}",
        "Cookie": f"sid={COOKIE_SECRET}",
        "X-Api-Key": HEADER_SECRET,
    }
    params = {"token": QUERY_SECRET, "page": "1"}
    if method == "GET":
        return session.get(url, params=params, headers=headers, stream=stream, verify=verify)
    if method == "POST":
        return session.post(url, params=params, headers=headers, data=b"payment=1", stream=stream,
                            verify=verify)
    if method == "POST-key":
        headers["Idempotency-Key"] = "key-1"
        return session.post(url, params=params, headers=headers, data=b"payment=1", verify=verify)
    return session.put(url, params=params, headers=headers, data=_body(), verify=verify)


def _exception_texts(exc: BaseException) -> list[str]:
    """str and repr of *exc* and of everything chained to it or held in its args."""
    out: list[str] = []
    stack: list[BaseException] = [exc]
    seen: set[int] = set()
    while stack and len(seen) < 64:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        out += [str(e), repr(e)]
        out += traceback.format_exception_only(type(e), e)
        for nxt in (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args):
            if isinstance(nxt, BaseException):
                stack.append(nxt)
    return out


def make_peer(fault: Fault, lifetime: float) -> Peer:
    """The peer a fault needs: plain, or TLS (trusted or not, answering its handshakes or not)."""
    if fault.tls is None:
        return Peer(lifetime=lifetime)
    return Peer(lifetime=lifetime, tls=True, trusted=fault.tls != "untrusted",
                handshake="stall" if fault.tls == "stall" else "ok")


def run_row(row: Row) -> None:
    with make_peer(row.fault, 20.0) as peer:
        if row.fault.make is not None:
            peer.on("/r", row.fault.make())
        url = refused_url("/r") if row.fault.make is None and row.fault.tls is None else peer.url("/r")
        if row.fault.target is not None:
            peer.on(REDIRECT_TARGET, row.fault.target())
        session = ResilientSession(config(row.column, row.fault.timeout), listeners=[row.events.append])
        try:
            started = time.monotonic()
            try:
                row.result = call(session, url, row.method)
            except Exception as exc:
                row.result = exc
            row.elapsed = time.monotonic() - started
            row.hits = peer.hits("/r")
            row.target_hits = peer.hits(REDIRECT_TARGET)
            if expect(row.fault, row.method, row.column).opened:
                try:
                    row.second = call(session, url, row.method)
                except Exception as exc:
                    row.second = exc
                row.hits_after_second = peer.hits("/r")
            row.bodies = peer.bodies("/r")
            row.handshakes = peer.handshakes
            for result in (row.result, row.second):
                if isinstance(result, requests.Response):
                    result.close()  # a streamed body nobody reads goes back, as a caller's would
            row.open_after = peer.wait_open_at_most(1, timeout=1.0)
            row.max_open = peer.max_open
            pools = session.get_adapter(url).poolmanager.pools
            # Per origin: a redirect may lead to another one. urllib3's pool
            # container refuses plain iteration, hence .keys().
            row.client_connections = max(
                (getattr(pools[key], "num_connections", 0) for key in pools.keys()),  # noqa: SIM118
                default=0,
            )
            for result in (row.result, row.second):
                if isinstance(result, BaseException):
                    row.texts += _exception_texts(result)
                elif result is not None:
                    row.texts += [repr(result), str(result.headers)]
            row.texts += [repr(e) for e in row.events]
            row.texts.append(repr(session))
        finally:
            session.close()


class _Records(logging.Handler):
    """Every record of the ``resilient_client`` logger, by thread name."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.by_thread: dict[str, list[str]] = {}
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage() + repr(record.__dict__)
        if record.exc_info:
            text += "".join(traceback.format_exception(*record.exc_info))
        with self._lock2:
            self.by_thread.setdefault(record.threadName, []).append(text)


def _dripped_body_is_lost() -> bool:
    """
    Whether this build loses a body dripped after ``Connection: close``
    (OSError: Bad file descriptor instead of the body or the deadline): the
    connection closes its socket under the deadline reader. The foundation
    branch fixes it; until it is merged, the drip-body rows are expected to
    fail, and once it is, the mark is not applied and the rows must pass.
    """
    with Peer(lifetime=5.0) as peer:
        peer.on("/p", drip_body(b"xy", 0.01))
        with ResilientSession({"defaults": {"retry": None}}) as session:
            try:
                return session.get(peer.url("/p")).content != b"xy"
            except requests.RequestException:
                return True


DRIP_BODY_LOST = pytest.mark.xfail(
    _dripped_body_is_lost(), strict=True,
    reason="Connection: close body read after the connection closed its socket (fixed on foundation)",
)

def _lost(row_id: str) -> bool:
    # Where the error is not retried and the fallback answers, the lost body
    # gives the same outcome as the deadline: those rows pass either way.
    return row_id.startswith("drip-body-") and not row_id.endswith(("-POST-fallback", "-PUT-gen-fallback"))


def _redirect(name: str) -> Fault:
    return next(f for f in REDIRECT_FAULTS if f.name == name)


#: A few redirect rows, not a product (see the module docstring).
REDIRECT_ROWS = [
    # A write redirected to a failing target: sent once, whatever the target does.
    (_redirect("redirect-303-refuse"), "POST", "plain"),
    (_redirect("redirect-303-refuse"), "POST", "fallback"),
    (_redirect("redirect-303-refuse"), "POST-stream", "plain"),
    (_redirect("redirect-307-refuse"), "POST", "plain"),
    (_redirect("redirect-303-hang"), "POST", "plain"),
    (_redirect("redirect-303-503"), "POST", "plain"),
    # The contrast: a read, or a write with its key, may be sent again.
    (_redirect("redirect-303-refuse"), "GET", "plain"),
    (_redirect("redirect-303-refuse"), "POST-key", "plain"),
    # Slow hops: the deadline covers every hop, connect included.
    (_redirect("redirect-slow-hop-blackhole"), "GET", "plain"),
    (_redirect("redirect-slow-hop-blackhole"), "GET-stream", "plain"),
    (_redirect("redirect-slow-hop-hang"), "GET", "plain"),
    (_redirect("redirect-chain"), "GET", "plain"),
]

ROWS = [
    (fault, method, column)
    for fault in FAULTS + TLS_FAULTS
    for method in METHODS
    for column in COLUMNS
] + REDIRECT_ROWS
IDS = [f"{f.name}-{m}-{c}" for f, m, c in ROWS]


def _selected_rows(request: pytest.FixtureRequest) -> set[str]:
    """
    The row ids of this module's collected tests: ``-k redirect`` runs the
    redirect rows, not the whole matrix. Every row when none is selected.
    """
    wanted = set()
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if getattr(item, "module", None) is request.module and callspec is not None:
            row_id = callspec.params.get("row_id")
            if isinstance(row_id, str):
                wanted.add(row_id)
    return wanted or set(IDS)


@pytest.fixture(scope="module")
def matrix(request: pytest.FixtureRequest) -> dict[str, Row]:
    """Run every selected row, WORKERS at a time, each in a thread named after its id."""
    wanted = _selected_rows(request)
    rows = {rid: Row(f, m, c, rid) for rid, (f, m, c) in zip(IDS, ROWS, strict=True) if rid in wanted}
    logger = logging.getLogger("resilient_client")
    records = _Records()
    old_level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)  # the per-attempt events are logged too
    slots = threading.Semaphore(WORKERS)

    def work(row: Row) -> None:
        try:
            run_row(row)
        except BaseException:
            row.crash = traceback.format_exc()
        finally:
            slots.release()

    threads = []
    # The timing bounds are about the library, not about the test process: a
    # full collection of the objects earlier tests left (250,000 of them, 0.17 s
    # on a busy 2-core box) stalls every thread, the peers' too, long enough to
    # trip a 0.2 s read timeout. Collect once now and keep those objects out
    # of the collections while the rows run.
    gc.collect()
    gc.freeze()
    try:
        # The slow redirect rows (their own, longer timeouts) first: they
        # overlap the rest of the matrix instead of trailing it.
        for row in sorted(rows.values(), key=lambda r: r.fault.timeout is None):
            slots.acquire()
            t = threading.Thread(target=work, args=(row,), name=row.id, daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(timeout=30.0)
    finally:
        gc.unfreeze()
        logger.removeHandler(records)
        logger.setLevel(old_level)
    for row in rows.values():
        row.texts += records.by_thread.get(row.id, [])
    return rows


class TestFaultMatrix:
    @pytest.mark.parametrize("row_id", [pytest.param(i, marks=DRIP_BODY_LOST) if _lost(i) else i
                                        for i in IDS])
    def test_row(self, matrix: dict[str, Row], row_id: str) -> None:
        """
        A row ends with the contract's outcome, hits and attempts, in time, leaking no connection or secret.
        """
        row = matrix[row_id]
        assert row.crash is None, row.crash
        want = expect(row.fault, row.method, row.column)
        got = row.result

        if want.outcome == "fallback":
            assert isinstance(got, requests.Response), got
            assert got.is_fallback and got.text == FALLBACK_TEXT
            assert got.attempts == want.attempts
        elif isinstance(want.outcome, int):
            assert isinstance(got, requests.Response), got
            assert (got.status_code, got.is_fallback) == (want.outcome, False)
            assert got.attempts == want.attempts
        else:
            assert type(got) is want.outcome, repr(got)
        assert row.hits == want.hits
        # A call that left the breaker open: the next one is refused without a request.
        if want.opened:
            if row.column == "fallback":
                assert isinstance(row.second, requests.Response), row.second
                assert (row.second.is_fallback, row.second.attempts) == (True, 0)
            else:
                assert type(row.second) is CircuitOpenError, repr(row.second)
            assert row.hits_after_second == row.hits
        else:
            assert row.second is None

        # Bounded: never past the deadline, plus scheduling slack.
        assert row.elapsed <= TOTAL + SLACK, row.elapsed
        # No leak: the peer sees at most one (idle keep-alive) connection left,
        # never more than two at once, and the client opened one per attempt at most
        # to each origin (a redirect may lead to another).
        assert row.open_after <= 1
        assert row.max_open <= 2
        assert row.client_connections <= max(1, want.attempts)
        # A write without a key reaches the peer at most once, whatever happens,
        # and so does the redirect target it was answered with.
        if row.method in ("POST", "POST-stream"):
            assert row.hits <= 1
            assert row.target_hits <= 1
        # Every write that reached the peer carried its whole body, retries included.
        if not row.method.startswith("GET"):
            assert row.bodies == row.hits
        # TLS: the attempts are counted from the events (no request reaches the
        # peer's HTTP layer to count them there). A handshake that stalls ends
        # within the connect timeout, per attempt; an untrusted certificate
        # fails at once, never retried.
        if row.fault.tls is not None:
            attempts = sum(isinstance(e, AttemptFinished) for e in row.events)
            assert attempts == want.attempts, [e for e in row.events if isinstance(e, AttemptFinished)]
        if row.fault.tls == "stall":
            assert row.handshakes == 0
            assert row.elapsed <= want.attempts * CONNECT + SLACK, row.elapsed
        if row.fault.tls == "untrusted":
            assert (want.attempts, row.handshakes) == (1, 0)
            assert row.elapsed <= FAST, row.elapsed
        if row.fault.tls == "ok":
            assert row.handshakes == row.hits  # a new connection after each reset
        # Secrets never leave: logs, events, the exception, reprs.
        leaked = [t for t in row.texts if any(s in t for s in SECRETS)]
        assert not leaked, leaked[:3]

    def test_matrix_covers_every_fault_method_and_column(self) -> None:
        """
        The matrix is the full product of fault kinds, methods and columns, plus the redirect rows.
        """
        faults = len(FAULTS) + len(TLS_FAULTS)
        assert len(IDS) == len(set(IDS)) == faults * len(METHODS) * len(COLUMNS) + len(REDIRECT_ROWS)
        assert {f.tls for f in TLS_FAULTS} == {"stall", "untrusted", "ok"}
        assert all(f in REDIRECT_FAULTS for f, _, _ in REDIRECT_ROWS)
        assert {f.name for f, _, _ in REDIRECT_ROWS} == {f.name for f in REDIRECT_FAULTS}

    def test_a_redirected_write_is_expected_once_and_a_redirected_read_again(self) -> None:
        """
        A redirected write whose first hop was sent is expected once; a redirected GET or keyed POST, again.
        """
        refuse = _redirect("redirect-303-refuse")
        assert expect(refuse, "POST", "plain") == Expected(requests.ConnectionError, 1, 1)
        assert expect(refuse, "POST-stream", "plain") == Expected(requests.ConnectionError, 1, 1)
        assert expect(refuse, "POST", "fallback") == Expected("fallback", 1, 1)
        assert expect(refuse, "GET", "plain") == Expected(requests.ConnectionError, ATTEMPTS, ATTEMPTS)
        assert expect(refuse, "POST-key", "plain") == Expected(requests.ConnectionError, ATTEMPTS, ATTEMPTS)
        assert expect(_redirect("redirect-303-503"), "POST", "plain") == Expected(503, 1, 1)
        for name in ("redirect-slow-hop-blackhole", "redirect-slow-hop-hang", "redirect-chain"):
            assert expect(_redirect(name), "GET", "plain") == Expected(DeadlineExceeded, 1, 1)

    def test_tls_faults_are_expected_as_the_contract_says(self) -> None:
        """
        A stalled handshake is retried for a GET only, an untrusted certificate never, a reset as any.
        """
        stall, untrusted, reset_mid_body = TLS_FAULTS
        assert expect(stall, "GET", "plain") == Expected(requests.ReadTimeout, 0, ATTEMPTS)
        assert expect(stall, "POST", "plain") == Expected(requests.ReadTimeout, 0, 1)
        assert expect(stall, "GET", "breaker") == Expected(requests.ReadTimeout, 0, THRESHOLD, opened=True)
        for method in METHODS:
            assert expect(untrusted, method, "plain") == Expected(requests.exceptions.SSLError, 0, 1)
            assert expect(untrusted, method, "fallback") == Expected("fallback", 0, 1)
        broken = requests.exceptions.ChunkedEncodingError
        assert expect(reset_mid_body, "GET", "plain") == Expected(broken, ATTEMPTS, ATTEMPTS)
        assert expect(reset_mid_body, "POST", "plain") == Expected(broken, 1, 1)

    def test_the_rows_exercise_every_outcome(self) -> None:
        """
        The expectations include each typed exception, a retried success, a fallback and an open breaker.
        """
        outcomes = {expect(f, m, c).outcome for f, m, c in ROWS}
        assert any(expect(f, m, c).opened for f, m, c in ROWS)
        for kind in (DeadlineExceeded, requests.ReadTimeout,
                     requests.exceptions.ChunkedEncodingError, requests.ConnectionError,
                     requests.exceptions.SSLError,
                     "fallback", 200, 429, 500, 503):
            assert kind in outcomes
