"""
The state a session keeps per endpoint, and the cache of routes to it.

`EndpointState` is what every call to one endpoint name (or, for a URL no
rule matches, one origin) shares: its breaker, retry budget, bulkhead and
stale cache. `Route` is what the hot path needs for one URL shape, resolved
once. `Endpoints` owns both maps and their bounds, behind one lock taken
only when a route is new.

Why unmatched origins are bounded (`MAX_ORIGIN_STATES`) and how: a service
that calls ever new origins (a crawler, a webhook sender) must not grow
without bound. Past the bound, the least recently *used* origins that are
idle (no call in flight, breaker not open) are forgotten, a quarter of the
bound at a time, so one scan serves many new origins; when nothing is idle,
the bound gives way to protection and the next scan waits for a quarter
more. Recency is a plain call counter, racy on purpose: eviction needs an
approximate order, not a lock on the hot path.
"""

from __future__ import annotations

import dataclasses
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import tenacity

from ._breaker import BreakerState, CircuitBreaker
from ._budget import RetryBudget
from ._bulkhead import Bulkhead
from ._clock import Clock
from ._config import Endpoint, call_policy
from ._fallback import StaleCache
from ._latency import LatencyWindow
from ._overload import Overload
from ._policy import Policy, StaleFallback
from ._routing import Resolution, Router

__all__ = ["MAX_ORIGIN_STATES", "EndpointState", "Endpoints", "Route"]

_ROUTE_CACHE_SIZE = 4096
#: Unmatched URLs keep breaker, budget and bulkhead per origin, for at most
#: this many origins (see the module docstring); name an endpoint to keep
#: its state for good.
MAX_ORIGIN_STATES = 256

_StateChanged = Callable[[CircuitBreaker, BreakerState, BreakerState], None]
_BuildRetrying = Callable[[Policy], "tenacity.BaseRetrying | None"]


class EndpointState:
    """What is shared by every request to one endpoint name (or origin)."""

    __slots__ = ("breaker", "budget", "bulkhead", "latency", "name", "overload", "policy", "route_keys",
                 "stale", "used")

    def __init__(
        self, name: str, policy: Policy, clock: Clock, on_state_change: _StateChanged,
        state_dir: str | None = None, match: str = "",
        rand: Callable[[], float] | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        if policy.host_shared:
            self._host(name, policy, clock, on_state_change, state_dir, match, rand)
            return
        self.breaker: CircuitBreaker | None = (
            CircuitBreaker(name, policy.breaker, clock=clock, on_state_change=on_state_change)
            if policy.breaker is not None
            else None
        )
        self.budget: RetryBudget | None = (
            RetryBudget(policy.budget, clock) if policy.budget is not None else None)
        self.bulkhead: Bulkhead | None = (
            Bulkhead(name, policy.bulkhead) if policy.bulkhead is not None else None)
        #: Throttle, adaptive limit and Retry-After hold; None when both are off.
        self.overload: Overload | None = (Overload(policy, clock, rand=rand)
                                          if policy.overload_control else None)
        self._rest()

    def _host(
        self, name: str, policy: Policy, clock: Clock, on_state_change: _StateChanged,
        state_dir: str | None, match: str, rand: Callable[[], float] | None = None,
    ) -> None:
        """``state: host`` or Redis: budget and bulkhead (and for host, the breaker) in the host file."""
        from ._host_dir import effective_state_dir
        from ._host_file import host_file  # only host state opens files
        from ._host_state import HostBudget, HostBulkhead, HostStore, check_policy

        # One HostFile per file in the process: sessions share its descriptor and lock.
        file = host_file(effective_state_dir(state_dir), name)
        check_policy(file, (policy.breaker, policy.budget, policy.bulkhead), match)
        self.breaker = None
        if policy.breaker is not None:
            redis = policy.state != "host"
            self.breaker = CircuitBreaker(
                name, dataclasses.replace(policy.breaker, storage=policy.state) if redis else policy.breaker,
                clock=clock, on_state_change=on_state_change,
                store=None if redis else HostStore(file, clock),
            )
            if redis:
                # The Redis snapshot cached in the host file: one Redis read
                # per refresh interval for the host, whatever its worker count.
                from ._breaker_redis import RedisStore
                from ._host_redis import RedisHostCache

                store = self.breaker._store
                if isinstance(store, RedisStore):
                    store.host = RedisHostCache(file)
        budget = HostBudget(policy.budget, clock, file) if policy.budget is not None else None
        self.budget = budget
        self.bulkhead = (HostBulkhead(name, policy.bulkhead, file)
                         if policy.bulkhead is not None else None)
        self.overload = (self._host_overload(name, policy, clock, state_dir, rand)
                         if policy.overload_control else None)
        self._rest()

    @staticmethod
    def _host_overload(name: str, policy: Policy, clock: Clock, state_dir: str | None,
                       rand: Callable[[], float] | None) -> Overload:
        """The throttle's counts shared on the host (its own file); the adaptive limit stays per process."""
        throttle = None
        if policy.throttle is not None:
            from ._host_dir import default_state_dir  # only host state opens files
            from ._host_throttle import HostThrottle

            throttle = HostThrottle(policy.throttle, clock, state_dir or default_state_dir(), name, rand)
        return Overload(policy, clock, throttle)

    def _rest(self) -> None:
        self.stale: StaleCache | None = None
        hedge = self.policy.hedge
        percentile = hedge.percentile if hedge is not None else None
        #: Recent latencies, for a hedge delay given as a percentile.
        self.latency = LatencyWindow(percentile) if percentile is not None else None
        #: The route-cache keys that lead here, dropped with this state.
        self.route_keys: list[tuple[str, str]] = []
        #: When a call last used it, on the call counter (for LRU).
        self.used = 0

    def idle(self) -> bool:
        """
        Safe to forget: no call in flight and a breaker that is not open.
        Counts and a stale cache may go (recency keeps the origins in use).
        """
        if self.bulkhead is not None and self.bulkhead.in_flight:
            return False
        # Half-open with no call in flight: its reset_timeout passed and
        # nobody came back for the trial. Only an open breaker protects.
        return self.breaker is None or self.breaker.state is not BreakerState.OPEN


class Route:
    """Everything the hot path needs for one URL shape, resolved once."""

    __slots__ = ("name", "own_timeouts", "policy", "resolution", "retrying", "state", "timeouts")

    def __init__(
        self,
        resolution: Resolution,
        state: EndpointState,
        retrying: tenacity.BaseRetrying | None,
    ) -> None:
        self.resolution = resolution
        self.policy = resolution.policy
        self.name = resolution.key
        self.state = state
        self.retrying = retrying
        self.timeouts = (self.policy.timeout.connect, self.policy.timeout.read)
        #: The call changed the timeouts (policy=): they hold on every hop.
        self.own_timeouts = False


class Endpoints:
    """
    A session's endpoint states and route cache.

    Args:
        router: the compiled endpoint rules.
        endpoints: the config's endpoints (for states asked by name).
        clock: the session's clock, for breakers, budgets and stale caches.
        on_state_change: told of every breaker transition.
        build_retrying: the retry engine for a policy (None: no retry).
        state_dir: the config's ``state_dir``, for ``state: host``.
        rng: the throttle's random source (None: `random.random`).
    """

    def __init__(
        self,
        router: Router,
        endpoints: Sequence[Endpoint],
        clock: Clock,
        on_state_change: _StateChanged,
        build_retrying: _BuildRetrying,
        lock: Any,
        state_dir: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._state_dir = state_dir
        self._rng = rng
        self._router = router
        self._endpoints = endpoints
        self._clock = clock
        self._on_state_change = on_state_change
        self._build_retrying = build_retrying
        self._lock = lock
        self._routes: dict[tuple[str, str], Route] = {}
        self._states: dict[str, EndpointState] = {}
        # Unmatched origins (bounded: MAX_ORIGIN_STATES).
        self._origins: OrderedDict[str, EndpointState] = OrderedDict()
        self._retryings: dict[int, tenacity.BaseRetrying | None] = {}
        self._next_scan = 0
        #: Calls made, for recency (racy on purpose, see the module docstring).
        self.calls = 0

    def route_for(self, method: str, url: str) -> Route:
        """The route of *method* *url*, from the cache when its shape was seen."""
        q = url.find("?")
        key = (method, url if q < 0 else url[:q])
        route = self._routes.get(key)
        if route is None:
            route = self._new_route(method, url)
            if len(self._routes) >= _ROUTE_CACHE_SIZE:
                self._routes.clear()  # bounded: URLs with ids in the path must not grow it forever
                for st in self.all_states():
                    st.route_keys.clear()
            self._routes[key] = route
            route.state.route_keys.append(key)
        return route

    def changed(self, route: Route, changes: Any) -> Route:
        """*route* with a call's ``policy=`` changes: same endpoint state, another policy."""
        policy = call_policy(route.policy, changes)
        res = route.resolution
        changed = Route(Resolution(policy, res.endpoint, res.index, res.key), route.state,
                        self._build_retrying(policy))
        changed.own_timeouts = "timeout" in changes
        return changed

    def all_states(self) -> list[EndpointState]:
        """Every endpoint state kept now: named endpoints, then origins."""
        with self._lock:
            return [*self._states.values(), *self._origins.values()]

    def state_named(self, name: str) -> EndpointState:
        """The state of the endpoint called *name*; KeyError naming the known ones."""
        with self._lock:
            state = self._states.get(name)
            if state is not None:
                return state
            for ep in self._endpoints:
                if ep.name == name:
                    state = self._states[name] = self._new_state(name, ep.policy, ep.match)
                    return state
        known = sorted({e.name for e in self._endpoints})
        raise KeyError(f"no endpoint named {name!r}; known: {known}")

    def forget(self, clock: Clock, rng: random.Random | None = None) -> None:
        """
        Drop every route, state and retry engine (the caller holds the lock);
        new states read *clock* (the session's, which a test may have moved)
        and draw from *rng*.
        """
        self._clock, self._rng = clock, rng
        self._routes.clear()
        self._states.clear()
        self._origins.clear()
        self._retryings.clear()
        self._next_scan = 0

    def _new_state(self, name: str, policy: Policy, match: str = "") -> EndpointState:
        return EndpointState(name, policy, self._clock, self._on_state_change, self._state_dir, match,
                             self._rng.random if self._rng is not None else None)

    def _new_route(self, method: str, url: str) -> Route:
        res = self._router.resolve(method, url)
        policy = res.policy if res.endpoint is not None else res.policy.replace(name=res.key)
        res = Resolution(policy, res.endpoint, res.index, res.key)
        with self._lock:
            if res.endpoint is None:
                state = self._origin_state(res.key, policy)
            elif res.key in self._states:
                state = self._states[res.key]
            else:
                state = self._states[res.key] = self._new_state(res.key, policy, res.endpoint.match)
            if isinstance(policy.fallback, StaleFallback) and state.stale is None:
                state.stale = StaleCache(policy.fallback, self._clock)
            slot = -1 if res.index is None else res.index
            if slot not in self._retryings:
                self._retryings[slot] = self._build_retrying(policy)
            retrying = self._retryings[slot]
        return Route(res, state, retrying)

    def _origin_state(self, origin: str, policy: Policy) -> EndpointState:
        """An unmatched origin's state, within MAX_ORIGIN_STATES (lock held)."""
        origins = self._origins
        state = origins.get(origin)
        if state is not None:
            origins.move_to_end(origin)
            return state
        if len(origins) >= max(MAX_ORIGIN_STATES, self._next_scan):
            idle = sorted((st.used, k) for k, st in origins.items() if st.idle())
            for _, k in idle[: len(origins) - MAX_ORIGIN_STATES * 3 // 4]:
                for key in origins.pop(k).route_keys:
                    self._routes.pop(key, None)
            self._next_scan = len(origins) + MAX_ORIGIN_STATES // 4
        state = origins[origin] = self._new_state(origin, _process_local(policy))
        return state


def _process_local(policy: Policy) -> Policy:
    """
    An unmatched origin's state stays in the process under ``state: host``
    (or Redis): a file per origin ever called would pile up in ``state_dir``
    (origins are forgotten here, files would not be). A Redis breaker stays in Redis.
    """
    if not policy.host_shared:
        return policy
    breaker = policy.breaker
    if breaker is not None and policy.state != "host":
        breaker = dataclasses.replace(breaker, storage=policy.state)
    return dataclasses.replace(policy, state="memory", breaker=breaker)
