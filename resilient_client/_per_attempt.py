"""
What requests does once per call, redone safely for every attempt: the
call's auth and its response hooks.

* **Stateful auth** (digest counts its 401s and remembers the nonce): requests
  applies the auth half-way through preparing a request, so a retry that
  resends the prepared request resends a spent auth. `PreAuth` keeps the
  request as it stood just before the auth; `reauthenticated` starts each
  retry from there, as a new call would. Stateless auth (basic, netrc) is in
  the headers a retry resends and needs none of this.
* **Response hooks** are the caller's code running on the peer's answer.
  `HookGuard` runs them in requests' order, and when one raises it first
  records the status in the breaker (a ``raise_for_status`` hook must not
  hide 5xx from it) and marks the exception as the caller's own, so it is
  never taken for a transport failure: not retried, not hidden by a fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import requests
from requests.hooks import default_hooks

from ._clock import SYSTEM_CLOCK, Clock
from ._verdict import of_status

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker
    from ._retry import Call

__all__ = ["REAUTH", "HookGuard", "PreAuth", "reauthenticated"]

#: The attribute `ResilientSession.prepare_request` leaves on a request whose
#: auth keeps state per call: a `PreAuth`.
REAUTH = "_resilient_reauth"


class PreAuth:
    """
    Wraps a stateful auth for `prepare_request`: applies it, and keeps the
    request as it was before (`before`) and the hooks the auth registered
    (`hooks`), so that a retry can apply it afresh to the same starting point.
    """

    __slots__ = ("auth", "before", "hooks")

    def __init__(self, auth: Callable[[requests.PreparedRequest], requests.PreparedRequest]) -> None:
        self.auth = auth
        self.before: requests.PreparedRequest | None = None
        self.hooks: dict[str, list[Any]] = {}

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        self.before = r.copy()
        self.before.hooks = default_hooks()  # requests registers hooks after the auth
        out = self.auth(r)
        # Only the auth's own hooks are registered yet.
        self.hooks = {event: list(hooks) for event, hooks in out.hooks.items()}
        return out


def reauthenticated(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """
    The request as requests would prepare it anew: its state before the
    stateful auth, the auth applied afresh (its hooks first), then the hooks
    the request carries now that are not the auth's (those added after
    preparing included).
    """
    keeper: PreAuth = getattr(request, REAUTH)
    if keeper.before is None:
        return request
    fresh = keeper.before.copy()
    fresh.hooks = default_hooks()
    fresh.prepare_auth(keeper.auth)
    for event, hooks in request.hooks.items():
        auth_hooks = keeper.hooks.get(event, ())
        fresh.hooks.setdefault(event, []).extend(h for h in hooks if h not in auth_hooks)
    return fresh


class HookGuard:
    """
    The attempt's response hooks, run in order as requests runs them. When a
    hook raises, the guard records the status it was looking at in the
    breaker first, and marks the exception as the caller's own on the call
    (``call.hook_error``), so the session can tell it from a transport failure.
    """

    __slots__ = ("breaker", "call", "clock", "failure_status", "hooks", "is_trial", "started")

    def __init__(
        self, hooks: list[Callable[..., Any]], breaker: CircuitBreaker | None, is_trial: bool,
        failure_status: frozenset[int], clock: Clock, call: Call | None = None,
    ) -> None:
        # A request sent again (``session.send(resp.request)``) carries the
        # guard of its first send: unwrap it, so it is not counted twice.
        self.hooks: list[Callable[..., Any]] = []
        for hook in hooks:
            self.hooks.extend(hook.hooks if isinstance(hook, HookGuard) else (hook,))
        self.breaker = breaker
        self.is_trial = is_trial
        self.failure_status = failure_status
        self.clock = clock
        self.call = call
        self.started = 0.0

    def moved(
        self, breaker: CircuitBreaker | None, is_trial: bool, failure_status: frozenset[int]
    ) -> HookGuard:
        """The same hooks, reporting to another endpoint's breaker (a redirect hop into it)."""
        guard = HookGuard(self.hooks, breaker, is_trial, failure_status, self.clock, self.call)
        guard.started = self.clock.monotonic()
        return guard

    def __call__(self, resp: requests.Response, **kwargs: Any) -> requests.Response:
        call = self.call
        traced = call.traced if call is not None else None
        if traced is None:
            return self._run(resp, kwargs)
        # The hooks are the application's code: under the attempt's span, but
        # not hidden from other HTTP instrumentation as the send itself is.
        tokens = traced.enter_hooks()
        try:
            return self._run(resp, kwargs)
        finally:
            traced.exit_hooks(tokens)

    def _run(self, resp: requests.Response, kwargs: dict[str, Any]) -> requests.Response:
        for hook in self.hooks:
            try:
                out = hook(resp, **kwargs)
            except BaseException as exc:
                call = self.call
                if call is not None and call.hook_error is None:
                    call.hook_error = exc
                    call.hook_status = resp.status_code
                    if self.breaker is not None:
                        failed = of_status(resp.status_code, self.failure_status).failure
                        self.breaker.record(success=not failed, is_trial=self.is_trial,
                                            duration=self.clock.monotonic() - self.started)
                raise
            if out is not None:
                resp = out
        return resp

    def __reduce__(self) -> tuple[Any, ...]:
        # A response's request keeps its hooks: pickled (or deep-copied), the
        # guard is just the user's hooks again, without breaker or call.
        return (HookGuard, (self.hooks, None, False, frozenset(), SYSTEM_CLOCK))
