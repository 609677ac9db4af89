"""
`ResilientSession`: a `requests.Session` whose ``send`` runs every request
through the endpoint's policy, one concern per layer::

    send                      route (cached), then:
    _send_with_fallback       deadline, bulkhead slot, fallback on failure
    _send_with_retries        tenacity, inside the retry budget
    _hedged_attempt           (``hedge`` on, safe calls) each try a race of copies
                              on the hedge pool's threads (`_hedge`), each copy
                              an `_attempt` carrying the call's context
    _attempt                  breaker, timeouts capped by the deadline, the adapter
    resolve_redirects         each hop of an attempt back through send, as
    _send_hop                 the same attempt under the time left then

Retries run outside the breaker, so an open breaker also stops the
remaining retries (`CircuitOpenError` is never retried).

Why it is long: it is the requests front, and requests' own API is wide:
``request``, ``prepare_request``, ``resolve_redirects``,
``merge_environment_settings`` and ``send`` are each overridden here, beside
the layers of one call and the test seam the session owns. What is not the
call's flow lives beside it: endpoint state and routes (`_endpoints`), the
decisions (`_verdict`, `_outcome`, `_retry`), auth and hooks per attempt
(`_per_attempt`), responses on their way out (`_responses`), timeouts
(`_timeouts`), the deadline reader (`_deadline`).

Why redirect hops are handed over explicitly: requests follows a redirect by
calling ``send`` again from inside the attempt's own ``send``. Telling a hop
from a new call by "an attempt is running on this thread" also catches calls
made from a response hook or an event listener, which then ran with no
policy at all. `resolve_redirects` (requests' own generator, wrapped) marks
exactly the next ``send`` it makes as a hop of the running attempt; any other
``send``, nested or not, is a call with its own policy.
"""

from __future__ import annotations

import copy
import os
import random
import threading
import uuid
import weakref
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import requests
import tenacity
from requests.auth import HTTPBasicAuth
from tenacity import RetryCallState

from ._admission import finished, held_redirect, hold_on, refusal_event
from ._breaker import BreakerState, CircuitBreaker
from ._bulkhead import Bulkhead
from ._clock import SYSTEM_CLOCK, Clock
from ._config import Config, ConfigSource
from ._deadline import Deadline, DeadlineAdapter, arm, disarm, equip, is_equipped, release
from ._endpoints import Endpoints, EndpointState, Route
from ._environ import EnvironCache, merge_proxies
from ._events import (
    AttemptFinished,
    BreakerRejected,
    BreakerStateChanged,
    BudgetExhausted,
    BulkheadRejected,
    CallFinished,
    CallThrottled,
    DeadlinePassed,
    Event,
    EventBus,
    FallbackServed,
    GaveUp,
    HedgeSent,
    HedgeSkipped,
    HedgeWon,
    RetryScheduled,
    load_listeners,
)
from ._fallback import make_response
from ._hedge import Abandon, Copy, Race, hedge_pool
from ._live import LIVE_SESSIONS
from ._outcome import RetryPredicate, classify_error, is_replayable
from ._overload import LIMIT, Overload, OverloadStatus
from ._per_attempt import REAUTH, HookGuard, PreAuth, reauthenticated
from ._policy import (
    HEDGE_DELAY_CEILING,
    CallableFallback,
    HedgePolicy,
    Policy,
    RetryPolicy,
    StaleFallback,
    StaticFallback,
)
from ._propagation import call_deadline, header_value, retries_allowed
from ._redact import (
    attempt_secrets,
    call_secret_values,
    install_log_filter,
    redact_exception,
    redact_url,
    secret_values,
)
from ._responses import discard, hand_slot_to, mark, tell_attempts
from ._retry import Call, ReplayFirst, build_retrying, clone_call, decide
from ._retry_core import gave_up_reason, retry_reason
from ._routing import Resolution, Router
from ._timeouts import call_timeouts
from ._urls import URLLIB3_FORM
from ._verdict import AttemptOutcome, of_proxy_status, of_status
from .exceptions import BulkheadFull, CircuitOpenError, DeadlineExceeded, Throttled

if TYPE_CHECKING:
    from ._health import Health, HealthTracker
    from ._traced import TracedCall

__all__ = ["ResilientSession"]

_T = TypeVar("_T")

# requests' own, untyped in its stubs.
_merge_setting = cast(Callable[[Any, Any], Any], requests.sessions.merge_setting)
# The attribute that carries request(policy=...) from prepare_request to send.
_CALL_POLICY = "_resilient_call_policy"
# The outcomes of refusals made before an attempt: constants, not classified anew.
_DEADLINE = AttemptOutcome("deadline", None, False, False)
_CIRCUIT_OPEN = AttemptOutcome("circuit_open", None, False, False)
# A hedged copy that lost, stopped by us: neither the peer's failure nor a refusal.
_ABANDONED = AttemptOutcome("abandoned", None, False, False)
# A response hook raised: the peer answered; the error is the caller's own.
_HOOK_RAISED = AttemptOutcome("error", None, True, False)
#: How long a hedged attempt's caller waits past the deadline for its copies
#: (which read against the deadline themselves) before abandoning them.
_HEDGE_GRACE = 0.05
#: What a copy of a hedged attempt carries over to the call when it is chosen.
_COPY_STATE = ("outcome", "error", "reached_peer", "left_endpoint", "hook_error", "hook_guard", "arm")


class ResilientSession(requests.Session):
    """
    A drop-in `requests.Session` that enforces, per endpoint, mandatory
    timeouts, a total deadline, retries within a budget, a circuit breaker,
    a bulkhead and a fallback.

    Args:
        config: a mapping, a path to a YAML/TOML/JSON file, a `Config`, or
            None for the built-in (safe) defaults.
        clock: where time comes from (monotonic reading and sleep); tests
            pass a fake one.
        listeners: callables receiving every `Event` (after those named
            in the config's ``listeners``).
        retry_if: ``(request, response_or_exception) -> bool | None``
            overriding the built-in retry decision (None = use the built-in
            rules). A body that cannot be replayed is still never resent.
        rng: the random source for backoff jitter and the throttle's
            refusal draw (the testing kit seeds it: deterministic refusals).

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        config: ConfigSource = None,
        *,
        clock: Clock | None = None,
        listeners: Iterable[Callable[[Event], None]] = (),
        retry_if: RetryPredicate | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__()
        self._setup(Config.load(config), clock or SYSTEM_CLOCK, list(listeners), retry_if, rng)
        # Our adapters enforce the deadline on every socket read; max_retries
        # stays 0 so that this session is the only retry layer.
        self.mount("https://", self._own_adapter(DeadlineAdapter()))
        self.mount("http://", self._own_adapter(DeadlineAdapter()))
        LIVE_SESSIONS.add(self)  # last: it is complete, adapters mounted

    def _setup(
        self,
        config: Config,
        clock: Clock,
        listeners: list[Callable[[Event], None]],
        retry_if: RetryPredicate | None,
        rng: random.Random | None,
    ) -> None:
        """Build what is not requests': shared by __init__ and unpickling."""
        self.config: Config = config
        self.clock: Clock = clock
        # Config listeners are imported now, so a bad path fails here.
        self._config_listeners = load_listeners(self.config.listeners)
        self._bus = EventBus([*self._config_listeners, *listeners])
        # Listeners of the test seam (`_watch_events`): never pickled.
        self._transient: list[Callable[[Event], None]] = []
        # urllib3 logs each request line, query included, at DEBUG.
        self._log_secrets = self.config.secrets if self.config.secrets.query else None
        if self._log_secrets is not None:
            install_log_filter()
        self._health: HealthTracker | None = None
        self._retry_if = retry_if
        self._rng = rng
        self._router = Router(self.config.endpoints, self.config.defaults, URLLIB3_FORM)
        self._lock = threading.Lock()
        self._endpoints = Endpoints(self._router, self.config.endpoints, self.clock,
                                    self._breaker_changed, self._build_retrying, self._lock,
                                    state_dir=self.config.state_dir, rng=rng)
        self._local = threading.local()
        self._environ = EnvironCache()

    def __getstate__(self) -> dict[str, Any]:
        # requests pickles its own attributes (adapters included); we add what
        # rebuilds ours. Endpoint state (breakers, budgets, bulkheads, the stale
        # cache) starts afresh, as requests' connection pools do.
        state = {attr: getattr(self, attr, None) for attr in self.__attrs__}  # as requests does
        # The first is the built-in log listener; config listeners are re-imported.
        listeners = [x for x in self._bus.listeners[1:]
                     if x not in self._config_listeners and x not in self._transient]
        state["_resilient"] = (self.config, self.clock, listeners, self._retry_if, self._rng)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        config, clock, listeners, retry_if, rng = state.pop("_resilient")
        for attr, value in state.items():  # as requests.Session.__setstate__ does
            setattr(self, attr, value)
        self._setup(config, clock, list(listeners), retry_if, rng)
        for prefix, adapter in self.adapters.items():
            equip(adapter, prefix)  # unpickled adapters built fresh pool managers
            if isinstance(adapter, DeadlineAdapter):
                self._own_adapter(adapter)
        LIVE_SESSIONS.add(self)

    # -- adapters: each one mounted keeps every guarantee it can have --------

    def mount(self, prefix: str | bytes, adapter: requests.adapters.BaseAdapter) -> None:
        """
        requests' ``mount``; an `HTTPAdapter` (any subclass) is equipped so
        that the ``total`` deadline bounds each of its socket reads, its own
        settings untouched. Any other adapter gets connect/read timeouts
        capped by the time left, and a warning, once.
        """
        super().mount(prefix, adapter)
        equip(adapter, prefix if isinstance(prefix, str) else prefix.decode("latin-1"))

    def _own_adapter(self, adapter: DeadlineAdapter) -> DeadlineAdapter:
        """*adapter*, sizing its pools by the running attempt's endpoint (``pool``)."""
        me = weakref.ref(self)  # the adapter must not keep the session alive

        def pool_size() -> int | None:
            session = me()
            call: Call | None = getattr(session._local, "attempt", None) if session else None
            return call.route.policy.pool_size if call is not None else None

        adapter.pool_size = pool_size
        return adapter

    def get_adapter(self, url: str) -> requests.adapters.BaseAdapter:
        """
        requests' own, equipping an adapter found unequipped: one put into
        ``self.adapters`` directly, or whose pool manager was rebuilt.
        """
        adapter = super().get_adapter(url)
        if not is_equipped(adapter):
            equip(adapter)  # warns at most once per adapter
        return adapter

    @classmethod
    def from_config(cls, source: ConfigSource, **kwargs: Any) -> ResilientSession:
        """
        The same as ``ResilientSession(source, **kwargs)``.

        .. versionadded:: 0.1.0
        """
        return cls(source, **kwargs)

    # -- public helpers ----------------------------------------------------

    def policy_for(self, method: str, url: str) -> Policy:
        """
        The policy that applies to *method* *url*.

        .. versionadded:: 0.1.0
        """
        return self.resolve(method, url).policy

    def resolve(self, method: str, url: str) -> Resolution:
        """
        Which rule applies to *method* *url* and why (``str()`` explains).

        .. versionadded:: 0.1.0
        """
        return self._router.resolve(method, url)

    def circuit(self, name_or_url: str, method: str = "GET") -> CircuitBreaker:
        """
        The breaker of an endpoint name, or of the endpoint a URL resolves to
        for *method* (rules limited to some ``methods`` match only those).

        Raises:
            KeyError: no such endpoint, or it has no breaker.

        .. versionadded:: 0.1.0
        """
        if "://" in name_or_url:
            route = self._route_for(method.upper(), name_or_url)
            state = route.state
        else:
            state = self._state_named(name_or_url)
        if state.breaker is None:
            raise KeyError(f"endpoint {state.name!r} has no breaker (breaker: null)")
        return state.breaker

    def overload(self, name_or_url: str, method: str = "GET") -> OverloadStatus:
        """
        The overload control of an endpoint name, or of the endpoint a URL
        resolves to: its adaptive concurrency limit, the throttle's reject
        rate and counts, and what is left of a Retry-After hold.

        Raises:
            KeyError: no such endpoint, or it has neither ``throttle`` nor ``concurrency``.

        .. versionadded:: 0.2.0
        """
        if "://" in name_or_url:
            state = self._route_for(method.upper(), name_or_url).state
        else:
            state = self._state_named(name_or_url)
        if state.overload is None:
            raise KeyError(f"endpoint {state.name!r} has no overload control "
                           "(throttle and concurrency: null)")
        return state.overload.status()

    def subscribe(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """
        Send every `Event` to *listener*; returns a function that unsubscribes it.

        .. versionadded:: 0.1.0
        """
        return self._bus.subscribe(listener)

    def health(self) -> Health:
        """
        Every endpoint's breaker state, bulkhead usage and recent error rate,
        and whether this service should be taken out of rotation. The error
        rate is counted from the first call of ``health()`` (or of
        `health_app`) on.

        .. versionadded:: 0.1.0
        """
        from ._health import collect

        return collect(self)

    # -- routing -----------------------------------------------------------

    def _route_for(self, method: str, url: str) -> Route:
        return self._endpoints.route_for(method, url)

    def _all_states(self) -> list[EndpointState]:
        """Every endpoint state this session keeps now: named endpoints, then origins."""
        return self._endpoints.all_states()

    def _state_named(self, name: str) -> EndpointState:
        return self._endpoints.state_named(name)

    def _build_retrying(self, policy: Policy) -> tenacity.Retrying | None:
        if policy.retry is None or policy.retry.attempts <= 1:
            return None
        return build_retrying(
            policy.retry,
            sleep=self.clock.sleep,
            before_sleep=self._before_sleep,
            predicate=self._retry_if,
            rng=self._rng,
        )

    # -- refusing early: before requests prepares the call --------------------

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        """
        requests' ``request``, plus ``policy=``: changes to the endpoint's
        policy for this call only, in the config file's own form (``{"retry":
        None}``, ``{"timeout": {"total": 2}}``); breaker, budget and bulkhead
        are the endpoint's and cannot change per call.

        A call to an endpoint whose breaker is open (and that has no fallback)
        is refused before requests prepares it: refusing costs microseconds,
        not a request's preparation.

        .. versionadded:: 0.2.0 ``policy=``
        """
        hop = getattr(self._local, "hop", None)
        if hop is not None:
            # A call made while requests prepares a redirect hop (a
            # rebuild_auth that fetches a token) is a call, not the hop.
            self._local.hop = None
            try:
                return self.request(method, url, *args, **kwargs)
            finally:
                self._local.hop = hop
        changes = kwargs.pop("policy", None)
        if changes is not None:
            # requests passes no extra argument from request() to send(): the
            # call's changes wait on this thread for the send it makes. (Such
            # a call may have a fallback its endpoint lacks: no early refusal.)
            # Nor the admission of a call being prepared around it (an auth
            # hook's call): its send asks overload control for its own.
            local = self._local
            local.call_policy, outer, local.admitted = changes, getattr(local, "admitted", None), None
            try:
                return self._request_prepared(method, url, args, kwargs)
            finally:
                local.call_policy, local.admitted = None, outer
        if isinstance(method, str) and isinstance(url, str):
            verb = method.upper()
            route = self._endpoints.route_for(verb, url)
            breaker = route.state.breaker
            if breaker is not None and route.policy.fallback is None and breaker.looks_open():
                try:
                    is_trial = breaker.before_call()
                except CircuitOpenError as exc:
                    tell_attempts(exc, 0)  # refused before any try, as the normal path says
                    shown = redact_url(url, self.config.secrets)
                    bus = self._bus
                    traced = bus.start_trace(route.name, verb, shown) if bus.tracing else None
                    try:
                        bus.emit(BreakerRejected(route.name, verb, shown,
                                                 exc._retry_at, exc.retry_in, breaker.scope))
                        if bus.wants_hot():
                            bus.emit(CallFinished(route.name, verb, shown, 0,
                                                  "circuit_open", None, 0.0, False))
                    finally:
                        if traced is not None:
                            self._bus.end_trace(traced)
                    raise
                if is_trial:
                    # The trial became possible meanwhile: the normal path takes it.
                    breaker.release_trial()
            overload = route.state.overload
            if overload is not None and route.policy.fallback is None:
                return self._request_admitted(route, overload, method, url, args, kwargs)
        return self._request_prepared(method, url, args, kwargs)

    def _request_admitted(
        self, route: Route, overload: Overload, method: str, url: str, args: Any, kwargs: dict[str, Any]
    ) -> requests.Response:
        """
        Overload control's refusals before requests prepares anything, as for
        an open breaker: shedding must cost far less than the call it sheds.
        An admitted call holds its place under the adaptive limit; the send
        it makes finds it admitted (`_overload_refusal`).
        """
        why = overload.admit()
        if why is not None:
            shown = redact_url(url, self.config.secrets)
            name, verb = route.name, method.upper()
            # The tracing listeners see the refusal as a call's span.
            traced = self._bus.start_trace(name, verb, shown)
            try:
                err: Throttled | BulkheadFull
                if why == LIMIT:
                    err = BulkheadFull(name, cast(Any, overload.limit).limit)
                    self._emit(CallThrottled(name, verb, shown, why, 0.0))
                else:
                    err = self._throttled(name, verb, shown, overload, why, None)
                tell_attempts(err, 0)
                if self._bus.wants_hot():
                    kind = "bulkhead_full" if why == LIMIT else "throttled"
                    self._emit(CallFinished(name, verb, shown, 0, kind, None, 0.0, False))
            finally:
                if traced is not None:
                    self._bus.end_trace(traced)
            raise err
        local = self._local
        # A call made while requests prepares this one (an auth hook fetching
        # a token) has its own admission: this one's waits for it, restored after.
        outer = getattr(local, "admitted", None)
        local.admitted = overload
        try:
            return self._request_prepared(method, url, args, kwargs)
        finally:
            if local.admitted is overload:
                # requests failed before sending it (a bad URL, a hook): give the place back.
                overload.finish(None, None)
            local.admitted = outer

    def _request_prepared(
        self, method: str | bytes, url: str | bytes, args: Any, kwargs: Any
    ) -> requests.Response:
        """requests' ``request``, with whatever leaves it redacted."""
        try:
            return super().request(method, url, *args, **kwargs)
        except Exception as exc:
            # Preparing the request (InvalidHeader quotes the header value,
            # MissingSchema the URL) runs before send() and its redaction.
            # Only a failed call pays for this; send()'s errors are scrubbed
            # again with what only the arguments tell (cookies, auth, params).
            # (The refusal above raises nothing that names the URL.)
            redact_exception(exc, call_secret_values(self.config.secrets, self, url, args, kwargs),
                             self.config.secrets)
            raise

    # -- requests' environment lookups, reused ------------------------------

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        """
        requests' own merge, with its environment lookups (proxies, CA
        bundle) reused per origin while ``os.environ`` is unchanged: the same
        result, a third of a loopback call cheaper (see `_environ`).
        """
        found = None
        # A per-call no_proxy changes the lookup: left to requests.
        if self.trust_env and isinstance(proxies, dict) and proxies.get("no_proxy") is None:
            found = self._environ.lookup(url)
        if found is None:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        env_proxies, ca_bundle = found
        # From here on, requests' code line by line.
        for k, v in env_proxies.items():
            proxies.setdefault(k, v)
        if verify is True or verify is None:
            verify = ca_bundle or verify
        return {
            "proxies": merge_proxies(proxies, self.proxies),
            "stream": _merge_setting(stream, self.stream),
            "verify": _merge_setting(verify, self.verify),
            "cert": _merge_setting(cert, self.cert),
        }

    # -- what requests does per call, made safe to repeat per attempt --------

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        """
        requests' own, and where the call's auth keeps state per call (digest
        auth counts its 401s and remembers the nonce), a note of it, so that
        every retry applies it afresh as a new call would. Stateless auth
        (basic, netrc) is already in the headers a retry resends.
        """
        # The policy= of the request() preparing this, taken before any code
        # of the caller's (auth) runs: a call that code makes is not this one.
        changes = getattr(self._local, "call_policy", None)
        if changes is not None:
            self._local.call_policy = None
        prepared = self._prepare(request)
        if changes is not None:
            setattr(prepared, _CALL_POLICY, changes)
        return prepared

    def _prepare(self, request: requests.Request) -> requests.PreparedRequest:
        try:
            auth = request.auth if request.auth is not None else self.auth
            if auth is None or isinstance(auth, (tuple, HTTPBasicAuth)):
                return super().prepare_request(request)
            # requests applies the auth half-way through preparing; the
            # wrapper keeps the request as it stood just before, for retries.
            keeper = PreAuth(auth)
            shallow = copy.copy(request)
            shallow.auth = keeper
            prepared = super().prepare_request(shallow)
        except Exception as exc:
            # Called directly (not through request()): InvalidHeader quotes
            # the header value, MissingSchema the URL.
            args = {"params": request.params, "headers": request.headers,
                    "cookies": request.cookies, "auth": request.auth}
            redact_exception(exc, call_secret_values(self.config.secrets, self, request.url, (), args),
                             self.config.secrets)
            raise
        setattr(prepared, REAUTH, keeper)
        return prepared

    def resolve_redirects(
        self, resp: requests.Response, req: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> Generator[Any, None, None]:
        """
        requests' own, with each hop it sends handed to `_send_hop` as part
        of the attempt running on this thread (see the module docstring).
        """
        call: Call | None = getattr(self._local, "attempt", None)
        hops = super().resolve_redirects(resp, req, *args, **kwargs)
        if call is None:
            # Called by the user outside our attempts: each hop is a call.
            yield from hops
            return
        traced = call.traced
        while True:
            # Only the next send this generator makes is the hop: a hook or a
            # listener running meanwhile makes calls of its own.
            self._local.hop = call
            if traced is not None:
                traced.redirected = resp.status_code  # what the hop's span closes the last one with
            try:
                resp = next(hops)
            except StopIteration:
                return
            finally:
                self._local.hop = None
            yield resp

    # -- the layers ---------------------------------------------------------

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """
        Send *request* through its endpoint's policy (requests' signature).
        """
        if not isinstance(request, requests.PreparedRequest):
            raise ValueError("You can only send PreparedRequests.")  # requests' own check and words
        hop: Call | None = getattr(self._local, "hop", None)
        if hop is not None:
            self._local.hop = None
            return self._send_hop_charged(request, kwargs, hop)
        route = self._route_for(request.method or "GET", request.url or "")
        changes = kwargs.pop("policy", None)
        if changes is None:
            changes = request.__dict__.get(_CALL_POLICY)  # request()'s, bound in prepare_request
        if changes is not None:
            route = self._endpoints.changed(route, changes)
        # Recency for the origin bound: a plain counter, racy on purpose.
        endpoints = self._endpoints
        endpoints.calls += 1
        route.state.used = endpoints.calls
        return self._send_with_fallback(request, kwargs, route)

    def _send_hop_charged(
        self, request: requests.PreparedRequest, kwargs: dict[str, Any], call: Call
    ) -> requests.Response:
        """
        A hop into another endpoint with overload control: its answer is that
        endpoint's (its Retry-After hold, throttle counts and limit signal),
        not the source's, which answered with a redirect.
        """
        target = self._route_for(request.method or "GET", request.url or "")
        overload = target.state.overload
        if overload is None or target.state is call.route.state:
            return self._send_hop(request, kwargs, call)
        held = held_redirect(target.name, overload)
        if held is not None:
            raise requests.ConnectionError(held, request=request)
        overload.enter()
        started = self.clock.monotonic()
        outcome: AttemptOutcome | None = None
        try:
            resp = self._send_hop(request, kwargs, call)
        except BaseException as exc:
            if call.hook_error is not exc:
                deadline = call.deadline
                outcome = classify_error(exc, reached_peer=True,
                                         deadline_passed=deadline is not None and deadline.expired())
            raise
        else:
            outcome = of_status(resp.status_code, target.policy.failure_status)
            proxy = target.policy.proxy_errors
            if proxy is not None and resp.status_code in (502, 503, 504) and proxy.header in resp.headers:
                outcome = of_proxy_status(resp.status_code)
            if resp.status_code in (429, 503) and not outcome.proxy:
                self._overload_signal(target, resp, overload)
            return resp
        finally:
            overload.finish(outcome, self.clock.monotonic() - started)

    def _send_hop(
        self, request: requests.PreparedRequest, kwargs: dict[str, Any], call: Call
    ) -> requests.Response:
        """
        A redirect hop of *call*'s running attempt: under the time left now,
        not the timeouts capped when the attempt began.
        """
        # The hop before this one was answered: the request reached the peer,
        # so a failure from here on is no longer "before send".
        call.reached_peer = True
        route: Route = call.route
        connect, read = call.timeouts
        breaker = None
        target = self._route_for(request.method or "GET", request.url or "")
        # Where this hop goes decides whose outcome the attempt ends with: the
        # source's (a bounce back, A -> B -> A) or another endpoint's.
        call.left_endpoint = target.state is not route.state
        if call.left_endpoint:
            # Into another endpoint: its timeouts (unless the call gave its
            # own) and its breaker; the source answered (with a redirect) and
            # is not blamed for the target.
            route, breaker = target, target.state.breaker
            if not call.timeout_given:
                connect, read = target.timeouts
        deadline = call.deadline
        if deadline is not None:
            left = deadline.remaining()
            if left <= 0:
                raise DeadlineExceeded(call.route.name, deadline.total, inherited=deadline.inherited,
                                       request=request)
            connect, read = min(connect, left), min(read, left)
            prop = call.route.policy.propagation
            if prop is not None:  # the hop is a copy requests made: ours to change
                request.headers[prop.deadline_header] = header_value(read if prop.per_attempt else left)
        kwargs["timeout"] = (connect, read)
        traced = call.traced
        if traced is not None:
            # Each request on the wire is a CLIENT span: the previous one got its answer.
            status = traced.redirected or 0
            traced.exit_attempt(status, of_status(status, route.policy.failure_status).kind, None)
        if breaker is None:
            self._trace_hop(call, route, request)
            return super().send(request, **kwargs)
        try:
            is_trial = breaker.before_call()
        except CircuitOpenError as exc:
            self._emit(BreakerRejected(route.name, request.method or "", self._url(request),
                                       exc._retry_at, exc.retry_in, breaker.scope))
            # Not CircuitOpenError: that promises nothing touched the network,
            # and the first hop did reach the peer (a write may have acted).
            raise requests.ConnectionError(
                f"not following the redirect into endpoint {route.name!r}: its breaker is open",
                request=request) from exc
        if call.hook_guard is not None:
            # The hop's hooks report to the target's breaker, not the source's.
            request.hooks = {**request.hooks, "response": [call.hook_guard.moved(breaker, is_trial,
                                                                                route.policy.failure_status)]}
        started = self.clock.monotonic()
        self._trace_hop(call, route, request)
        try:
            resp = super().send(request, **kwargs)
        except BaseException as exc:
            if call.hook_error is exc:
                raise  # a hook of ours recorded the status already: the caller's own error
            failed = classify_error(exc, deadline_passed=deadline is not None and deadline.expired()).failure
            if failed:
                breaker.record(success=False, is_trial=is_trial, duration=self.clock.monotonic() - started)
            elif is_trial:
                breaker.release_trial()
            raise
        breaker.record(success=not of_status(resp.status_code, route.policy.failure_status).failure,
                       is_trial=is_trial, duration=self.clock.monotonic() - started)
        return resp

    def _trace_hop(self, call: Call, route: Route, request: requests.PreparedRequest) -> None:
        """The hop's own CLIENT span, its trace context in the hop's headers."""
        if call.traced is not None:
            call.traced.enter_attempt(route.name, request.method or "", self._url(request),
                                      call.attempt, request.headers)

    def _send_with_fallback(
        self, request: requests.PreparedRequest, kwargs: dict[str, Any], route: Route
    ) -> requests.Response:
        policy = route.policy
        stream = bool(kwargs.get("stream", self.stream))
        # Our own total, or the deadline inherited from our caller (or from
        # the call whose hook or listener makes this one) if sooner.
        enclosing: Call | None = getattr(self._local, "call", None)
        deadline = call_deadline(self.clock, policy.timeout.total,
                                 enclosing.deadline if enclosing is not None else None)
        retry = policy.retry
        if (retry is not None and retry.mint_idempotency_key and request.method not in retry.methods
                and retry.key_header not in request.headers):
            # Once per call: every retry (and hedge) of it carries the same key.
            request = request.copy()
            request.headers[cast(str, retry.key_header)] = str(uuid.uuid4())
        call = Call(
            request,
            kwargs,
            deadline,
            route.state.budget,
            idempotent=self._idempotent(request, policy),
            replayable=is_replayable(request),
        )
        key = retry.key_header if retry is not None else None
        call.keyed = key is not None and key in request.headers
        given = kwargs.get("timeout")
        # The caller's own timeouts (timeout=, or policy= for this call) hold
        # on every hop, into whichever endpoint it goes.
        call.timeout_given = given is not None or route.own_timeouts
        call.timeouts = call_timeouts(route.timeouts, given)
        call.route = route
        call.stream = stream
        hot = self._bus.wants_hot()
        started = self.clock.monotonic() if hot else 0.0
        # What a listener, a fallback or a hook runs while this call is under
        # way is part of it: their calls inherit its deadline (see above).
        local = self._local
        local.call = call
        try:
            return self._send_and_report(call, hot, started)
        finally:
            local.call = enclosing

    def _send_and_report(self, call: Call, hot: bool, started: float) -> requests.Response:
        if not self._bus.tracing:
            return self._report(call, hot, started)
        # The tracing listeners hold the call's span open (and current) around it.
        traced = call.traced = self._bus.start_trace(call.route.name, call.request.method or "",
                                                     self._url(call.request))
        try:
            return self._report(call, hot, started)
        finally:
            self._bus.end_trace(cast("TracedCall", traced))

    def _report(self, call: Call, hot: bool, started: float) -> requests.Response:
        try:
            resp, failure = self._send_in_bulkhead(call)
        except Exception as exc:
            # Whatever leaves the session carries no secret, of this request or of
            # a redirect hop's (a secret first seen in a Location header).
            redact_exception(exc, self._secret_values(call), self.config.secrets)
            tell_attempts(exc, call.attempt)
            if hot:
                self._emit_call(call, None, exc, started)
            raise
        if hot:
            self._emit_call(call, resp, failure, started)
        return resp

    def _send_in_bulkhead(
        self, call: Call
    ) -> tuple[requests.Response, BaseException | requests.Response | None]:
        """The call in a bulkhead slot, or the fallback: (response, what a fallback replaced)."""
        route: Route = call.route
        request = call.request
        overload = route.state.overload
        admitted = 0.0
        if overload is not None:
            refused = self._overload_refusal(call, overload)
            if refused is not None:
                return self._fallback_or_raise(call, refused), refused
            admitted = self.clock.monotonic()
        bulkhead = route.state.bulkhead
        if bulkhead is not None and not bulkhead.try_acquire():
            if overload is not None:
                overload.finish(None, None)  # give back its place under the adaptive limit
            err = BulkheadFull(route.name, bulkhead.max_concurrent, request=request)
            self._emit(BulkheadRejected(route.name, request.method or "", self._url(request),
                                        bulkhead.max_concurrent, bulkhead.scope))
            return self._fallback_or_raise(call, err), err
        slot_held = bulkhead is not None
        try:
            try:
                resp = self._send_with_retries(call)
            except Exception as exc:
                outcome = call.outcome if call.error is exc and call.outcome else classify_error(exc)
                if not outcome.wants_fallback:
                    raise
                return self._fallback_or_raise(call, exc), exc
            policy = route.policy
            if policy.fallback is not None and cast(AttemptOutcome, call.outcome).failure:
                fb = self._fallback_or_none(call, resp)
                if fb is not None:
                    return fb, resp
            stale = route.state.stale
            if (
                stale is not None
                and not call.stream
                and 200 <= resp.status_code < 300
                and request.method in ("GET", "HEAD")
            ):
                stale.store(request.method, request.url or "", resp)
            if call.stream and slot_held:
                hand_slot_to(resp, cast(Bulkhead, bulkhead))
                slot_held = False
            return resp, None
        finally:
            if slot_held:
                cast(Bulkhead, bulkhead).release()
            if overload is not None:
                self._overload_finished(call, overload, admitted)

    def _overload_refusal(self, call: Call, overload: Overload) -> Throttled | BulkheadFull | None:
        """Ask the endpoint's overload control (`_overload`); the error refusing the call, if it does."""
        local = self._local
        if getattr(local, "admitted", None) is overload:
            local.admitted = None  # this call's only: not a nested call's
            return None
        why = overload.admit()
        if why is None:
            return None
        route: Route = call.route
        request = call.request
        method, url = request.method or "", self._url(request)
        if why == LIMIT:
            limit = cast(Any, overload.limit).limit
            self._emit(CallThrottled(route.name, method, url, why, 0.0))
            return BulkheadFull(route.name, limit, request=request)
        return self._throttled(route.name, method, url, overload, why, request)

    def _throttled(self, name: str, method: str, url: str, overload: Overload, why: str,
                   request: requests.PreparedRequest | None) -> Throttled:
        """The error (and event) of a call the hold or the throttle refused."""
        event = refusal_event(name, method, url, overload, why)
        self._emit(event)
        return Throttled(name, why, event.retry_in, request=request)

    def _overload_finished(self, call: Call, overload: Overload, admitted: float) -> None:
        """Tell overload control how the call it admitted went (per call, at its end)."""
        outcome = call.outcome if call.attempt else None
        for event in finished(call.route.name, overload, outcome, self.clock.monotonic() - admitted,
                              left_endpoint=call.left_endpoint, hot=self._bus.wants_hot()):
            self._emit(event)

    @staticmethod
    def _overload_signal(route: Route, resp: requests.Response, overload: Overload) -> None:
        """A 429 or 503 with Retry-After holds the whole endpoint, not only this call's retry."""
        hold_on(overload, route.policy, resp.headers.get("Retry-After"))

    def _send_with_retries(self, call: Call) -> requests.Response:
        route: Route = call.route
        retrying = route.retrying
        if retrying is not None and not retries_allowed():
            # This request is itself our caller's retry: retry at one layer only.
            retrying, call.stop_reason = None, "caller_retrying"
        hedged = (route.policy.hedge is not None and call.stop_reason != "caller_retrying"
                  and self._hedgeable(call))
        try:
            if retrying is None:
                resp = self._hedged_attempt(call) if hedged else self._attempt(call)
            elif hedged:
                resp = self._attempt_then_retrying(call, cast(tenacity.Retrying, retrying),
                                                   self._hedged_attempt)
            else:
                resp = self._attempt_then_retrying(call, cast(tenacity.Retrying, retrying))
        except DeadlineExceeded:
            self._emit(DeadlinePassed(route.name, call.request.method or "", self._url(call.request),
                                      call.deadline.total if call.deadline else 0.0, call.attempt))
            raise
        except Exception as exc:
            # A call refused before its first try gave nothing up (breaker_rejected says it);
            # one whose retries the breaker cut short did.
            if call.attempt:
                self._gave_up(call, classify_error(exc).kind)
            raise
        if call.keyed and resp.status_code == 422:
            # The key was reused with another payload: a bug of the caller's,
            # never retried, and said so.
            call.stop_reason = "idempotency_key_reused"
            self._gave_up(call, "status 422")
        elif cast(AttemptOutcome, call.outcome).failure or resp.status_code in (
            route.policy.retry.on_status if route.policy.retry else ()
        ) or (call.keyed and resp.status_code == 409):
            self._gave_up(call, f"status {resp.status_code}")
        if call.stream and call.arm is not None:
            disarm(call.arm)  # the body is the caller's now, bounded by the read timeout only
        mark(resp, call.attempt, is_fallback=False, stale_age=None, hedged=call.hedged)
        return resp

    def _attempt_then_retrying(
        self, call: Call, retrying: tenacity.Retrying,
        attempt: Callable[[Call], requests.Response] | None = None,
    ) -> requests.Response:
        """
        The first attempt, then tenacity only if that attempt's outcome may be retried.

        Entering tenacity costs more than the rest of our layers together, and
        most calls succeed at once. tenacity stays the only retry engine: when
        the first outcome might be retried, tenacity gets it replayed as its
        own first attempt, so every decision (retry, wait, stop, hooks, the
        final outcome) is tenacity's, exactly as if it had run the attempt.
        The shortcut asks the one retry verdict (`decide`), exactly as
        tenacity's `RetrySafely` would, and keeps the answer for it: on "no",
        tenacity would return that response, or raise that error as it is
        (``reraise=True``).
        """
        retry = cast(RetryPolicy, call.route.policy.retry)  # a Retrying exists only with one
        attempt = attempt or self._attempt  # or `_hedged_attempt`: each try a race of copies
        first: requests.Response | BaseException
        try:
            first = attempt(call)
        except BaseException as exc:  # tenacity catches everything too
            first = exc
        try:
            call.first_verdict = decide(call, first, retry, self._retry_if)
        except BaseException:
            if isinstance(first, requests.Response):
                discard(first)  # a retry_if that raised: nobody will read it
            raise
        if not call.first_verdict:
            if isinstance(first, BaseException):
                raise first  # what tenacity (reraise=True) would raise
            return first
        return retrying(ReplayFirst(first, attempt), call)

    # -- hedging: one attempt as a race of copies --------------------------------

    @staticmethod
    def _hedgeable(call: Call) -> bool:
        """A method in ``retry.methods`` (not a key alone), a replayable body, no stream."""
        retry = call.route.policy.retry
        return (retry is not None and not call.stream and call.replayable
                and call.request.method in retry.methods)

    def _hedged_attempt(self, call: Call) -> requests.Response:
        """
        One attempt as a race of copies on the hedge pool's threads: the
        first now, another each time ``delay`` passes with no answer (up to
        ``max_extra``; each draws on the budget and holds a bulkhead slot),
        the first acceptable answer taken and the others abandoned. To the
        retry layer it is one attempt whose outcome is the winner's or, when
        no copy answered acceptably, the first copy's; ``call.attempt``
        counts every copy sent.
        """
        route: Route = call.route
        policy = cast(HedgePolicy, route.policy.hedge)
        clock = self.clock
        pool = hedge_pool()
        race = Race()
        first = Copy(0, self._copy_of(call, 0), clock.monotonic())
        if not pool.try_submit(self._run_copy, first, race, None):
            self._hedge_skipped(call, "no_thread")
            return self._attempt(call)  # no worker free: this attempt goes unhedged
        copies = [first]
        window = route.state.latency
        delay = (window.value if window is not None
                 # A percentile asked for one call (policy=) on an endpoint that learns none.
                 else HEDGE_DELAY_CEILING if isinstance(policy.delay, str) else policy.delay)
        deadline = call.deadline
        can_hedge, pending = True, 1
        winner: Copy | None = None
        finished: list[Copy] = []
        try:
            while pending:
                wait: float | None = None
                if can_hedge and len(copies) <= policy.max_extra:
                    wait = max(0.0, copies[-1].started + delay - clock.monotonic())
                if deadline is not None:
                    left = deadline.remaining() + _HEDGE_GRACE
                    wait = left if wait is None else min(wait, left)
                done = race.next_finished(wait)
                if done is not None:
                    pending -= 1
                    finished.append(done)
                    if self._acceptable(done):
                        winner = done
                        break
                elif deadline is not None and deadline.remaining() <= -_HEDGE_GRACE + 0.001:
                    break  # the copies overran the deadline: abandon them
                elif can_hedge and len(copies) <= policy.max_extra:
                    hedge = self._send_hedge(call, len(copies), race, delay)
                    if hedge is None:
                        can_hedge = False
                    else:
                        copies.append(hedge)
                        pending += 1
        finally:
            finished.extend(race.close())
            now = clock.monotonic()
            for c in copies:
                if not c.done and c.call.abandon is not None:
                    c.call.abandon.abandon()
                    if window is not None:
                        # Censored: at least this slow, maybe much more. Counted as
                        # the ceiling, so a percentile below the delay stays exact.
                        window.record(max(now - c.started, HEDGE_DELAY_CEILING))
        # Every copy not done was abandoned above: `sent` is final for each.
        sent = sum(1 for c in copies if cast(Abandon, c.call.abandon).sent)
        chosen = winner if winner is not None else first
        if window is not None:
            for c in finished:
                if isinstance(c.result, requests.Response):
                    window.record(c.ended - c.started)
        for c in finished:
            if c is not chosen:
                _forget(c)
        call.attempt += sent
        if not chosen.done:
            # Every copy was still running past the deadline.
            call.outcome = _DEADLINE
            raise DeadlineExceeded(route.name, cast(Deadline, deadline).total, request=call.request)
        for name in _COPY_STATE:
            setattr(call, name, getattr(chosen.call, name))
        if winner is not None and winner.index:
            self._emit(HedgeWon(route.name, call.request.method or "", self._url(call.request),
                                winner.call.attempt, winner.ended - first.started))
        if isinstance(chosen.result, BaseException):
            raise chosen.result
        return cast(requests.Response, chosen.result)

    def _copy_of(self, call: Call, index: int) -> Call:
        copy_ = clone_call(call)
        copy_.attempt = call.attempt + index  # `_attempt` counts it on from there
        copy_.abandon = Abandon()
        return copy_

    def _send_hedge(self, call: Call, index: int, race: Race, delay: float) -> Copy | None:
        """Start copy number *index*, or None when the deadline, budget, breaker, bulkhead or pool says no."""
        route: Route = call.route
        deadline = call.deadline
        if deadline is not None and deadline.remaining() <= 0:
            return None
        breaker = route.state.breaker
        if breaker is not None and breaker.state is not BreakerState.CLOSED:
            return None  # open: no call at all; half-open: the first copy is the one trial
        bulkhead = route.state.bulkhead
        if bulkhead is not None and not bulkhead.try_acquire():
            self._hedge_skipped(call, "bulkhead")
            return None
        if call.budget is not None and not call.budget.try_spend():
            if bulkhead is not None:
                bulkhead.release()
            self._hedge_skipped(call, "budget")
            return None
        hedge = Copy(index, self._copy_of(call, index), self.clock.monotonic())
        if not hedge_pool().try_submit(self._run_copy, hedge, race, bulkhead):
            if bulkhead is not None:
                bulkhead.release()
            self._hedge_skipped(call, "no_thread")
            return None
        call.hedged = True
        self._emit(HedgeSent(route.name, call.request.method or "", self._url(call.request),
                             call.attempt + index + 1, delay))
        return hedge

    def _hedge_skipped(self, call: Call, reason: str) -> None:
        self._emit(HedgeSkipped(call.route.name, call.request.method or "", self._url(call.request), reason))

    def _run_copy(self, copy_: Copy, race: Race, bulkhead: Bulkhead | None) -> None:
        """A copy's attempt, on a hedge pool thread, carrying its call's context."""
        local = self._local
        local.call = copy_.call  # calls made by a hook or listener inherit its deadline
        result: requests.Response | BaseException
        try:
            result = self._attempt(copy_.call)
        except BaseException as exc:  # handed to the caller's thread, which raises it
            result = exc
        finally:
            local.call = None
            if bulkhead is not None:
                bulkhead.release()
        copy_.ended = self.clock.monotonic()
        if not race.finish(copy_, result):
            _forget(copy_)  # the race is over: nobody will read it

    @staticmethod
    def _acceptable(copy_: Copy) -> bool:
        """An answer the call would keep: no failure, nothing a retry would be asked about."""
        resp = copy_.result
        outcome = copy_.call.outcome
        if not isinstance(resp, requests.Response) or outcome is None or outcome.failure:
            return False
        retry = copy_.call.route.policy.retry
        return retry is None or resp.status_code not in retry.on_status

    def _attempt(self, call: Call) -> requests.Response:
        """One try: breaker, timeouts capped by the deadline, then requests' own send."""
        route: Route = call.route
        request = call.request
        deadline = call.deadline
        connect, read = call.timeouts
        if deadline is not None:
            left = deadline.remaining()
            if left <= 0:
                call.outcome = _DEADLINE
                raise DeadlineExceeded(route.name, deadline.total, inherited=deadline.inherited,
                                       request=request)
            connect, read = min(connect, left), min(read, left)
        call.reached_peer = call.left_endpoint = False
        call.hook_error = call.hook_guard = None
        if (call.attempt or call.abandon is not None) and hasattr(request, REAUTH):
            # A retry, or a hedged copy (the first too): each runs on a pool
            # thread where a thread-local auth state (digest) was never set up.
            request = reauthenticated(request)
        prop = route.policy.propagation
        if prop is not None and (deadline is not None or prop.per_attempt):
            # Tell the callee how long we will wait: what is left now, at each attempt.
            if request is call.request:
                request = request.copy()
            request.headers[prop.deadline_header] = header_value(read if prop.per_attempt else left)
        breaker = route.state.breaker
        is_trial = False
        if breaker is not None:
            try:
                is_trial = breaker.before_call()
            except CircuitOpenError as exc:
                call.outcome = _CIRCUIT_OPEN
                self._emit(BreakerRejected(route.name, request.method or "", self._url(request),
                                           exc._retry_at, exc.retry_in, breaker.scope))
                raise
        if call.abandon is not None and not call.abandon.start():
            # A hedged copy whose race was decided before it went out: never sent.
            if is_trial:
                cast(CircuitBreaker, breaker).release_trial()
            raise ConnectionAbortedError("hedged copy abandoned before it was sent")
        # Only a call the breaker let through is a try.
        call.attempt += 1
        if call.attempt == 1 and call.budget is not None:
            call.budget.record_request()
        header = route.policy.retry.attempt_header if route.policy.retry else None
        if header:
            if request is call.request:  # propagation may have copied it already
                request = request.copy()
            request.headers[header] = str(call.attempt)

        guard = None
        if request.hooks.get("response"):
            # A response hook is the caller's code running on the peer's
            # answer: whatever it raises is not a transport failure (no retry
            # resends what the peer answered, no fallback hides it), and the
            # breaker sees the attempt's status before the hook can raise.
            guard = HookGuard(request.hooks["response"], breaker, is_trial,
                               route.policy.failure_status, self.clock, call)
            if request is call.request:
                request = request.copy()
            request.hooks = {**request.hooks, "response": [guard]}

        kwargs = call.kwargs
        kwargs["timeout"] = (connect, read)
        started = self.clock.monotonic()
        if guard is not None:
            guard.started = started
            call.hook_guard = guard
        traced = call.traced
        if traced is not None:
            # The attempt's span: its trace context goes out in this attempt's headers.
            if traced.injects and request is call.request:
                request = request.copy()
            traced.enter_attempt(route.name, request.method or "", self._url(request),
                                 call.attempt, request.headers)
        a = None
        if deadline is not None or call.abandon is not None:
            a = arm(deadline, call.timeouts[1])
            a.abandon = call.abandon
        call.arm = a
        local = self._local
        outer = getattr(local, "attempt", None)  # a call made from inside another's attempt
        local.attempt = call
        outer_secrets = attempt_secrets(self._log_secrets) if self._log_secrets is not None else None
        try:
            resp = super().send(request, **kwargs)
        except BaseException as exc:
            if a is not None:
                disarm(a)  # nothing of this attempt will be read again
            duration = self.clock.monotonic() - started
            call.error = exc
            if call.abandon is not None and call.abandon.abandoned:
                # A hedged copy that lost, stopped by us: not the peer's failure,
                # yet a request on the wire, so its span ends and its event goes out.
                outcome = call.outcome = _ABANDONED
                if self._bus.wants_hot():
                    self._emit(AttemptFinished(route.name, request.method or "", self._url(request),
                                               call.attempt, outcome.kind, None,
                                               duration, type(exc).__name__))
                if is_trial:
                    cast(CircuitBreaker, breaker).release_trial()
                if traced is not None:
                    traced.exit_attempt(None, outcome.kind, type(exc).__name__)
                raise
            # Set by the hook guard during send (mypy cannot see that).
            hook_error: BaseException | None = getattr(call, "hook_error", None)
            if hook_error is exc:
                outcome = call.outcome = _HOOK_RAISED
            else:
                outcome = call.outcome = classify_error(
                    exc, reached_peer=call.reached_peer,
                    deadline_passed=deadline is not None and deadline.expired())
            # The attempt's event first, then what the breaker made of it.
            if self._bus.wants_hot():
                self._emit(AttemptFinished(route.name, request.method or "", self._url(request),
                                           call.attempt, outcome.kind, None,
                                           duration, type(exc).__name__))
            if breaker is not None and (hook_error is None or call.left_endpoint):
                if call.left_endpoint:
                    breaker.record(success=True, is_trial=is_trial, duration=duration)
                elif outcome.failure:
                    breaker.record(success=False, is_trial=is_trial, duration=duration)
                elif outcome.kind == "deadline" and _slow(route, duration):
                    # Cut by the deadline, yet already slower than
                    # slow_call_duration: a slow call whatever cut it (a
                    # drip-fed body never trips `read`, so this is the only
                    # way such a peer counts). The machine takes a slow
                    # success for a failure.
                    breaker.record(success=True, is_trial=is_trial, duration=duration)
                elif is_trial:
                    breaker.release_trial()
            if traced is not None:  # after the breaker's record, whatever the span does
                traced.exit_attempt(call.hook_status if hook_error is exc else None,
                                    outcome.kind, type(exc).__name__)
            if outcome.kind == "deadline" and not isinstance(exc, DeadlineExceeded):
                raise DeadlineExceeded(route.name, cast(Deadline, deadline).total,
                                       inherited=cast(Deadline, deadline).inherited, request=request) from exc
            raise
        finally:
            local.attempt = outer
            if self._log_secrets is not None:
                attempt_secrets(outer_secrets)
            if a is not None:
                # Responses built from now on on this thread must not pick
                # this arm up; a streamed body keeps reading against it until
                # the call hands the response over.
                release(a)
                if not call.stream:
                    disarm(a)
        duration = self.clock.monotonic() - started
        status = resp.status_code
        outcome = call.outcome = of_status(status, route.policy.failure_status)
        call.error = None
        if status >= 429 and (status == 429 or 502 <= status <= 504):
            proxy = route.policy.proxy_errors
            if proxy is not None and status != 429 and proxy.header in resp.headers:
                outcome = call.outcome = of_proxy_status(status)
            overload = route.state.overload
            if overload is not None and status in (429, 503) and not outcome.proxy and not call.left_endpoint:
                self._overload_signal(route, resp, overload)  # another endpoint's: its hop held it
        if self._bus.wants_hot():
            self._emit(AttemptFinished(route.name, request.method or "", self._url(request),
                                       call.attempt, outcome.kind, status, duration,
                                       proxy_error=outcome.proxy))
        if breaker is not None:
            breaker.record(success=call.left_endpoint or not outcome.failure, is_trial=is_trial,
                           duration=duration)
        if traced is not None:  # after the breaker's record, whatever the span does
            traced.exit_attempt(resp.status_code, outcome.kind, None)
        return resp

    # -- retry hooks ---------------------------------------------------------

    def _before_sleep(self, rs: RetryCallState) -> None:
        """Release the discarded attempt's connection, then say why we retry."""
        call: Call = rs.args[0]
        outcome = rs.outcome
        assert outcome is not None
        reason = retry_reason(rs, call.outcome.kind if call.outcome is not None else None)
        if not outcome.failed:
            discard(outcome.result())
        route: Route = call.route
        self._emit(RetryScheduled(route.name, call.request.method or "", self._url(call.request),
                                  call.attempt, rs.upcoming_sleep, reason))

    def _gave_up(self, call: Call, outcome: str) -> None:
        route: Route = call.route
        reason = gave_up_reason(call.stop_reason, outcome, route.retrying is not None)
        method, url = call.request.method or "", self._url(call.request)
        if reason == "budget":
            budget = route.state.budget
            self._emit(BudgetExhausted(route.name, method, url, call.attempt,
                                       "process" if budget is None else budget.scope))
        self._emit(GaveUp(route.name, method, url, call.attempt, reason, outcome))

    # -- fallbacks -----------------------------------------------------------

    def _fallback_or_raise(self, call: Call, exc: BaseException) -> requests.Response:
        resp = self._fallback_or_none(call, exc)
        if resp is None:
            raise exc
        return resp

    def _fallback_or_none(
        self, call: Call, failure: BaseException | requests.Response
    ) -> requests.Response | None:
        """The fallback's response for *failure*, or None when there is none to give."""
        route: Route = call.route
        fb = route.policy.fallback
        request = call.request
        if fb is None:
            return None
        if isinstance(fb, StaticFallback):
            resp = make_response(request, fb.status, fb.body, fb.headers)
            kind = "static"
        elif isinstance(fb, StaleFallback):
            stale = route.state.stale
            found = stale.response_for(request) if stale is not None else None
            if found is None:
                return None
            resp, kind = found, "stale"
        else:
            assert isinstance(fb, CallableFallback)
            kind = "callable"
            try:
                made: object = fb.function(request, failure)  # typed, but user code
            except Exception as fb_exc:
                if isinstance(failure, BaseException):
                    raise fb_exc from failure
                raise
            if not isinstance(made, requests.Response):
                # The fallback's mistake, said as such: not an AttributeError
                # from setting resp.attempts below.
                if isinstance(failure, requests.Response):
                    discard(failure)
                fn = fb.function
                module = getattr(fn, "__module__", None)
                name = getattr(fn, "__qualname__", None)
                # Never repr(): a partial's or an object's repr may show its arguments.
                shown = f"{module}.{name}" if module and name else type(fn).__qualname__
                err = TypeError(
                    f"the fallback of endpoint {route.name!r} ({shown}) returned "
                    f"{type(made).__name__}, expected a requests.Response"
                )
                if isinstance(failure, BaseException):
                    raise err from failure
                raise err
            resp = made
        if isinstance(failure, requests.Response) and failure is not resp:
            if call.stream:
                failure.close()  # its body is no longer under the deadline: never drain it
            else:
                discard(failure)
        mark(resp, call.attempt, is_fallback=True,
             stale_age=getattr(resp, "stale_age", None) if kind == "stale" else None, hedged=call.hedged)
        self._emit(FallbackServed(route.name, request.method or "", self._url(request), kind,
                                  self._describe(call, failure)))
        return resp

    # -- small helpers -------------------------------------------------------

    @staticmethod
    def _idempotent(request: requests.PreparedRequest, policy: Policy) -> bool:
        retry = policy.retry
        if retry is None:
            return False
        if request.method in retry.methods:
            return True
        return retry.key_header is not None and retry.key_header in request.headers

    def _breaker_changed(self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
        failures = breaker.stats().consecutive_failures
        self._emit(BreakerStateChanged(breaker.name, str(old), str(new), failures, breaker.scope))

    def _emit(self, event: Event) -> None:
        self._bus.emit(event)

    def _emit_call(
        self,
        call: Call,
        resp: requests.Response | None,
        failure: BaseException | requests.Response | None,
        started: float,
    ) -> None:
        """CallFinished: *resp* is what the caller got; *failure* what was raised or a fallback replaced."""
        route: Route = call.route
        if isinstance(failure, BaseException):
            outcome = classify_error(failure).kind
        elif failure is not None:
            outcome = "status"
        else:
            assert resp is not None
            outcome = of_status(resp.status_code, route.policy.failure_status).kind
        self._emit(CallFinished(route.name, call.request.method or "", self._url(call.request),
                                call.attempt, outcome, resp.status_code if resp is not None else None,
                                self.clock.monotonic() - started,
                                resp is not None and getattr(resp, "is_fallback", False)))

    def _url(self, request: requests.PreparedRequest) -> str:
        return redact_url(request.url or "", self.config.secrets)

    def _secret_values(self, call: Call) -> set[str]:
        return secret_values(call.request.url or "", call.request.headers, self.config.secrets)

    def _describe(self, call: Call, failure: BaseException | requests.Response) -> str:
        if isinstance(failure, requests.Response):
            return f"status {failure.status_code}"
        redact_exception(failure, self._secret_values(call), self.config.secrets)
        return f"{type(failure).__name__}: {failure}"

    def close(self) -> None:
        """requests' own, after writing host-shared throttle counts not yet in their file."""
        endpoints: Endpoints | None = getattr(self, "_endpoints", None)  # None: __init__ failed
        if endpoints is not None:
            endpoints.flush()
        super().close()

    def __repr__(self) -> str:
        return f"<ResilientSession endpoints={[e.name for e in self.config.endpoints]}>"

    # == The test seam ========================================================
    #
    # resilient_client.testing's only way into a session: nothing outside this
    # module touches a session's private attributes. The kit finds sessions
    # with `_live_sessions` (a module-level one built at import time included)
    # and hears of new ones with `_on_new_session`; it resets one with
    # `_forget_state`, moves it onto its fake clock with `_use_clock`, and
    # counts the calls the application makes with `_watch_calls`. Each change
    # comes with the function that undoes it, which holds the session weakly
    # (undoing for a session since collected does nothing): a test's leftover
    # sessions must stay collectable while a registry is active. Not for
    # production code.

    @staticmethod
    def _live_sessions() -> list[ResilientSession]:
        """Every session alive in this process, oldest first."""
        return LIVE_SESSIONS.snapshot()

    @staticmethod
    def _on_new_session(callback: Callable[[ResilientSession], None]) -> Callable[[], None]:
        """
        Call *callback* with every session built from now on (at the end of
        its ``__init__``, or when unpickled); returns what stops it.
        """
        return LIVE_SESSIONS.watch(callback)

    def _forget_state(self) -> None:
        """
        Start afresh: drop every endpoint state (breakers, budgets, bulkheads,
        stale caches), cached route and retry engine, and the health
        tracker's counts. Calls in flight finish on what they hold.
        """
        with self._lock:
            self._endpoints.forget(self.clock, self._rng)
            health, self._health = self._health, None
        if health is not None:
            # Subscribed by `health()`; the next call of it makes a new one.
            self._bus.subscribe(health)()  # the returned function removes every copy

    def _use_clock(self, clock: Clock | None, rng: random.Random | None) -> Callable[[], None]:
        """
        Read time from *clock* (None: keep this session's) and draw backoff
        jitter from *rng* unless the session was built with an ``rng`` of
        its own; returns what puts the old ones back.

        Both ways the state is forgotten (`_forget_state`): breakers, budgets
        and stale caches hold the clock they were made with, and each retry
        engine holds ``clock.sleep`` and the jitter source, so keeping them
        would mix two clocks. Routes, deadlines and attempts read
        ``self.clock`` afresh on every call.
        """
        with self._lock:
            old: list[Any] = [self.clock, self._rng]
            if clock is not None:
                self.clock = clock
            if rng is not None and self._rng is None:
                self._rng = rng
        self._forget_state()
        me = weakref.ref(self)  # see the section's comment: undoing holds no session

        def restore() -> None:
            session = me()
            if session is None or not old:
                return
            with session._lock:
                session.clock, session._rng = old
            old.clear()  # twice is once
            session._forget_state()

        return restore

    def _watch_events(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """
        `subscribe` for the test kit: the same, but the listener is this
        process's only and is never pickled with the session (the kit's
        recorder holds locks; an application's session must stay picklable
        under test).
        """
        transient = self._transient  # not self: undoing holds no session (see the seam's comment)
        transient.append(listener)
        unsubscribe = self.subscribe(listener)

        def undo() -> None:
            unsubscribe()
            if listener in transient:
                transient.remove(listener)

        return undo

    def _watch_calls(
        self,
        started: Callable[[requests.PreparedRequest], _T | None],
        ended: Callable[[_T, requests.Response | None, BaseException | None], None],
    ) -> Callable[[], None]:
        """
        Around every ``send`` of this session, call ``started(request)`` and,
        unless that gave None, ``ended(token, response, exception)``; returns
        what stops it. ``send`` is also how requests sends each redirect hop,
        so *started* sees those too and tells them apart.
        """
        inner = self.send  # the class's, or the watch before this one

        def send(request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
            token = started(request)
            if token is None:
                return inner(request, **kwargs)
            try:
                resp = inner(request, **kwargs)
            except BaseException as exc:
                ended(token, None, exc)
                raise
            ended(token, resp, None)
            return resp

        previous = vars(self).get("send")
        # An instance attribute: other sessions, and pickles (requests pickles
        # only its __attrs__), never see it.
        self.send = send  # type: ignore[method-assign]
        me, mine = weakref.ref(self), weakref.ref(send)
        before = weakref.ref(previous) if previous is not None else None

        def unwatch() -> None:
            session, installed = me(), mine()
            if session is None or installed is None or vars(session).get("send") is not installed:
                return  # gone, undone already, or watched again since: not ours to undo
            prior = before() if before is not None else None
            if prior is None:
                del session.send
            else:
                session.send = prior  # type: ignore[method-assign]

        return unwatch


def _forget(copy_: Copy) -> None:
    """
    Drop what a losing copy came to: its response's connection goes back
    (or is closed), and its error's traceback is cut, which would otherwise
    hold the copy, and through its frames the connection pool, in a
    reference cycle until the garbage collector runs: idle connections of a
    closed session would stay open that long.
    """
    result, copy_.result = copy_.result, None
    if isinstance(result, requests.Response):
        discard(result)
    elif isinstance(result, BaseException):
        copy_.call.error = None
        seen: set[int] = set()
        err: BaseException | None = result
        # urllib3's frames hold the error they raise (`err = e`): every link of the chain.
        while err is not None and id(err) not in seen:
            seen.add(id(err))
            err.__traceback__ = None
            err = err.__cause__ or err.__context__


# -- the registry behind the test seam ----------------------------------------



def _slow(route: Route, duration: float) -> bool:
    """Whether an attempt that lasted *duration* is a slow call for the route's breaker."""
    policy = route.policy.breaker
    slow = policy.slow_call_duration if policy is not None else None
    return slow is not None and duration > slow


def _forget_inherited_connections() -> None:
    """
    In the child of an ``os.fork()``: close this process's copy of every
    pooled connection of every live session's `HTTPAdapter`.

    A session used before the fork (gunicorn ``--preload`` with a warm-up
    call, a multiprocessing pool) hands its keep-alive sockets to every
    child; two processes writing requests on one socket read each other's
    answers. requests leaves this to the user ("do not share a session
    across fork"); a drop-in that keeps callers safe should not. Closing
    here closes the child's descriptors only (no shutdown, no TLS
    close_notify), so the parent's connections stay usable; the adapters
    open new pools on demand. Adapters that are not `HTTPAdapter`s are left
    alone: their ``close()`` may do anything.
    """
    for session in LIVE_SESSIONS.after_fork():
        for adapter in session.adapters.values():
            if isinstance(adapter, requests.adapters.HTTPAdapter):
                adapter.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_connections)
