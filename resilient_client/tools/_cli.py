"""
The ``resilient-client`` command (also ``python -m resilient_client``).

    resilient-client check CONFIG                 validate; print every policy
    resilient-client get URL [--config FILE]      one call, each event printed live
    resilient-client status [--config FILE]       breakers, bulkheads, health, host state
    resilient-client reset NAME [--config FILE]   clear an endpoint's host-shared state
    resilient-client reset --stale [--idle H]     delete state files unused for H hours
    resilient-client demo [...]                   the cascade demo

Exit codes: 0 fine; 1 the call failed (``get``) or the service is unhealthy
(``status``); 2 bad usage or a bad config (the `ConfigError` is printed).

Why it is long: one parser and one short runner per command (check, get,
status, demo), and the table and event printers they share. A module per
command would split those printers from their only callers.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib
import json
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import requests

from .._config import Config, Secrets
from .._events import (
    AttemptFinished,
    BreakerRejected,
    BreakerStateChanged,
    BudgetExhausted,
    BulkheadRejected,
    CallFinished,
    DeadlinePassed,
    Event,
    FallbackServed,
    GaveUp,
    RetryScheduled,
    format_event,
    load_listeners,
)
from .._health import is_critical
from .._policy import CallableFallback, HedgePolicy, Policy, StaleFallback, StaticFallback
from .._redact import redact_headers, redact_url
from .._version import __version__
from ..exceptions import ConfigError
from ._haproxy import check_haproxy
from ._host_status import (
    check_host_policies,
    elsewhere,
    host_names,
    host_state,
    read_only,
    remove_stale,
    reset_endpoint,
    state_dir_for,
)
from ._host_status import table as host_table

__all__ = ["main"]

PROG = "resilient-client"


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the command line with *argv* (default: ``sys.argv[1:]``); return the
    exit code.

    .. versionadded:: 0.1.0
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["demo"]:
        # Everything after "demo" is the demo's own: argparse must not read it.
        return _demo(args_list[1:])
    parser = _parser()
    args = parser.parse_args(args_list)
    command: Callable[[argparse.Namespace], int] | None = getattr(args, "run", None)
    if command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return command(args)
    except ConfigError as e:
        print(f"{PROG}: invalid config: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


_CONFIG_HELP = "config file (default: built-in defaults)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Check a resilient_client config, exercise its policy, "
        "or look at breaker states.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser(
        "check", help="validate a config file and print the policy of every endpoint")
    p.add_argument("config", metavar="CONFIG", help="a .yaml, .yml, .toml or .json file")
    p.add_argument("--width", type=int, default=None, help="table width (default: the terminal's)")
    p.add_argument("--haproxy", metavar="HAPROXY_CFG",
                   help="also check the client policy against this haproxy.cfg "
                        "(timeouts, stacked retries); exit 1 on an error finding")
    p.set_defaults(run=_check)

    p = sub.add_parser(
        "get", help="make one call, printing each event (attempt, backoff, breaker, fallback) live")
    p.add_argument("url", metavar="URL")
    p.add_argument("-c", "--config", metavar="FILE", help=_CONFIG_HELP)
    p.add_argument("-X", "--method", default="GET", help="HTTP method (default GET)")
    p.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="request header; repeatable")
    p.add_argument("-d", "--data", help="request body")
    p.add_argument("--timeout", type=float, help="per-call connect and read timeout, seconds")
    p.add_argument("-n", "--count", type=int, default=1, help="make the call N times (default 1)")
    p.add_argument("--interval", type=float, default=0.0, help="seconds between calls (default 0)")
    p.add_argument("--body", action="store_true", help="print the response body")
    p.set_defaults(run=_get)

    p = sub.add_parser(
        "status", help="breaker states (shared ones read from Redis) and bulkhead usage")
    p.add_argument("-c", "--config", metavar="FILE", help=_CONFIG_HELP)
    p.add_argument("--from", dest="source", metavar="URL",
                   help="read a running service's health view (health_app) instead")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--state-dir", help="host-shared state to show (default: the config's state_dir)")
    p.set_defaults(run=_status)

    p = sub.add_parser("reset", help="clear an endpoint's host-shared state (state: host), for every process")
    p.add_argument("name", metavar="NAME", nargs="?", help="the endpoint name (or origin)")
    p.add_argument("--stale", action="store_true",
                   help="instead of NAME: delete the state files nobody wrote for --idle hours "
                        "and no live process has a row in (origins called once and forgotten)")
    p.add_argument("--idle", type=float, default=24.0, metavar="HOURS", help="for --stale (default 24)")
    p.add_argument("-c", "--config", metavar="FILE", help=_CONFIG_HELP)
    p.add_argument("--state-dir", help="default: the config's state_dir")
    p.set_defaults(run=_reset)

    sub.add_parser("demo", help="run the cascade demo (its own options follow)", add_help=False)
    return parser


# -- host state -------------------------------------------------------------


def _reset(args: argparse.Namespace) -> int:
    from .._config import load_config

    config = load_config(args.config)
    state_dir, how = state_dir_for(args.state_dir, config)
    if args.stale == (args.name is not None):
        print(f"{PROG}: reset takes NAME or --stale", file=sys.stderr)
        return 2
    if args.stale:
        removed = remove_stale(state_dir, args.idle * 3600.0)
        print(f"removed {len(removed)} state file(s) unused for {args.idle:g} h from {state_dir} ({how})")
        return 0
    if not reset_endpoint(state_dir, args.name):
        print(f"{PROG}: no host-shared state for {args.name!r} in {state_dir} ({how}); nothing "
              "cleared", file=sys.stderr)
        for other in elsewhere([args.name], state_dir):
            print(f"  {other} has a state file for {args.name!r}: pass --state-dir {other}",
                  file=sys.stderr)
        if not args.state_dir and not args.config:
            print("  a service whose config names state_dir keeps its state there: pass its "
                  "config (-c FILE) or --state-dir DIR", file=sys.stderr)
        return 1
    print(f"cleared the host-shared state of {args.name!r} in {state_dir} ({how})")
    return 0


def _host_notes(names: list[str], state_dir: str, how: str, missing: list[str]) -> None:
    """Warn when the config's host endpoints have no state file where status looked."""
    if not missing:
        return
    print(f"{PROG}: warning: no state file in {state_dir} ({how}) for {', '.join(missing)}: "
          "either no process has used them there yet, or the service keeps its state in another "
          "directory (its environment's $XDG_RUNTIME_DIR or $RESILIENT_CLIENT_STATE_DIR); "
          "their rows below are a new process's view, not the service's", file=sys.stderr)
    for other, found in elsewhere(missing, state_dir).items():
        print(f"  {other} has state files for {', '.join(found)}: pass --state-dir {other}",
              file=sys.stderr)


# -- check -------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    config = Config.load(args.config)
    load_listeners(config.listeners)  # a path that cannot be imported is a config error too
    out = sys.stdout
    print(f"{args.config}: valid", file=out)
    print(file=out)
    if config.endpoints:
        print("Endpoints, first match wins:", file=out)
        rows = [["#", "name", "match", "methods"]]
        for i, ep in enumerate(config.endpoints):
            methods = ", ".join(sorted(ep.methods)) if ep.methods else "any"
            rows.append([str(i), ep.name, ep.match, methods])
        _table(rows, out)
    else:
        print("Endpoints: none", file=out)
    print("Unmatched URLs get the defaults, with breaker, budget and bulkhead per origin.",
          file=out)
    print(file=out)

    secrets = config.secrets
    names = ["defaults", *dict.fromkeys(ep.name for ep in config.endpoints)]
    policies = [config.defaults]
    seen: set[str] = set()
    for ep in config.endpoints:
        if ep.name not in seen:
            seen.add(ep.name)
            policies.append(ep.policy)
    flat = [_flatten(p, secrets_headers=secrets.headers) for p in policies]
    keys: list[str] = []
    for k in _flatten(_FULL_POLICY, secrets_headers=secrets.headers):
        # A section off by default (throttle...) that some policy turns on: a row per key.
        keys.extend(dict.fromkeys(x for f in flat for x in f if x.startswith(k + ".")) or [k])
    width = args.width or shutil.get_terminal_size((100, 24)).columns
    # Split wide configs into several tables that fit, the key column repeated.
    key_width = max(len(k) for k in keys) + 2
    groups: list[list[int]] = [[]]
    used = key_width
    for i in range(len(names)):
        col = max(len(names[i]), *(min(_CELL, len(flat[i].get(k, "")) + 2) for k in keys)) + 2
        if groups[-1] and used + col > width:
            groups.append([])
            used = key_width
        groups[-1].append(i)
        used += col
    print("Resolved policies (* differs from defaults):", file=out)
    for g in groups:
        rows = [["", *(names[i] for i in g)]]
        for k in keys:
            row = [k]
            for i in g:
                v = _cell(flat[i], k)
                row.append(v + (" *" if i and v != _cell(flat[0], k) else ""))
            rows.append(row)
        _table(rows, out)
        print(file=out)
    print(f"Secrets: headers {', '.join(sorted(secrets.headers))}; "
          f"query {', '.join(sorted(secrets.query)) or '(none)'}", file=out)
    listeners = ", ".join(map(_spec_name, config.listeners)) or "(none besides logging)"
    print(f"Listeners: {listeners}", file=out)
    if any(p.state == "host" for p in policies):
        state_dir, how = state_dir_for(None, config)
        print(f"Host-shared state (state: host) in: {state_dir} ({how})", file=out)
    return _coherence(config, args.haproxy, out)


def _coherence(config: Config, haproxy_path: str | None, out: TextIO) -> int:
    """Print what contradicts itself in the policy (and with HAProxy); 1 on an error."""
    haproxy_text = ""
    if haproxy_path is not None:
        try:
            haproxy_text = Path(haproxy_path).read_text(encoding="utf-8")
        except OSError as e:
            print(f"{haproxy_path}: cannot read: {e.strerror or e}", file=sys.stderr)
            return 2
    findings = check_haproxy(config, haproxy_text) + check_host_policies(config)
    print(file=out)
    what = f"with {haproxy_path}" if haproxy_path else "(client policy alone; --haproxy adds the proxy)"
    if not findings:
        print(f"Coherence {what}: nothing contradicts itself", file=out)
        return 0
    print(f"Coherence {what}:", file=out)
    for f in findings:
        print(f"  {f}", file=out)
    return 1 if any(f.severity == "error" for f in findings) else 0


def _spec_name(spec: object) -> str:
    return spec if isinstance(spec, str) else getattr(spec, "__qualname__", repr(spec))


# Every section present: its flattened keys are the rows of the table.
_FULL_POLICY = Policy(fallback=StaleFallback(), hedge=HedgePolicy())


def _flatten(policy: Policy, *, secrets_headers: frozenset[str]) -> dict[str, str]:
    """Every setting of *policy* as ``section.key`` -> text; a section that is off, ``off``."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: object, template: object) -> None:
        if template is None and dataclasses.is_dataclass(value) and not isinstance(value, type):
            template = value  # a section off by default (throttle, propagation...), on here: its keys
        if isinstance(template, (StaticFallback, StaleFallback, CallableFallback)):
            out[prefix] = "none" if value is None else _fallback_text(value, secrets_headers)
        elif dataclasses.is_dataclass(template) and not isinstance(template, type):
            for f in dataclasses.fields(template):
                walk(f"{prefix}.{f.name}", None if value is None else getattr(value, f.name),
                     getattr(template, f.name))
        else:
            off = value is None and template is not None
            out[prefix] = "off" if off else _value_text(prefix, value)

    for f in dataclasses.fields(policy):
        if f.name != "name":
            walk(f.name, getattr(policy, f.name), getattr(_FULL_POLICY, f.name))
    # `state` decides where the breaker lives: breaker.storage (its older
    # spelling) must not read "memory" beside "state host".
    if policy.state != "memory" and policy.breaker is not None:
        out["breaker.storage"] = f"{redact_url(policy.state)} (from state)"
    # Unset, `critical` follows the fallback: show what it resolves to, and why.
    if policy.critical is None:
        out["critical"] = "yes (no fallback)" if is_critical(policy) else "no (fallback)"
    return out


def _cell(flat: dict[str, str], key: str) -> str:
    """*key*'s text in one policy's column: ``off`` for a key of a section it has off."""
    return flat.get(key, "off" if key.split(".")[0] in flat else "-")


def _value_text(key: str, value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (frozenset, set, tuple, list)):
        return ", ".join(str(v) for v in sorted(value, key=str)) or "(none)"
    if isinstance(value, str) and key.endswith("storage"):
        return redact_url(value)
    return str(value)


def _fallback_text(fb: object, secrets_headers: frozenset[str]) -> str:
    if isinstance(fb, StaleFallback):
        return f"stale (last 2xx GET/HEAD, {fb.max_entries} URLs)"
    if isinstance(fb, StaticFallback):
        headers = redact_headers(fb.headers, Secrets(headers=secrets_headers))
        kind = headers.get("Content-Type", "no body" if not fb.body else "body")
        return f"static {fb.status} ({kind}, {len(fb.body)} bytes)"
    assert isinstance(fb, CallableFallback)
    return f"callable {getattr(fb.function, '__qualname__', repr(fb.function))}"


#: Cells longer than this wrap onto more lines (lists break after a comma).
_CELL = 30


def _wrap(cell: str) -> list[str]:
    if len(cell) <= _CELL:
        return [cell]
    return textwrap.wrap(cell, _CELL, break_long_words=False, break_on_hyphens=False) or [""]


def _table(rows: list[list[str]], out: TextIO) -> None:
    wrapped = [[_wrap(c) for c in row] for row in rows]
    widths = [max(len(line) for r in wrapped for line in r[i]) for i in range(len(rows[0]))]
    for n, row in enumerate(wrapped):
        for k in range(max(len(c) for c in row)):
            line = "  ".join(
                (c[k] if k < len(c) else "").ljust(w) for c, w in zip(row, widths, strict=True))
            print("  " + line.rstrip(), file=out)
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths), file=out)


# -- get ---------------------------------------------------------------------


class _LivePrinter:
    """A listener printing each event as it happens, timed from the call's start."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.started = time.monotonic()

    def __call__(self, event: Event) -> None:
        t = time.monotonic() - self.started
        print(f"  +{t:7.3f}s  {describe(event)}", file=self.out, flush=True)


def describe(event: Event) -> str:
    """One line for a person: what happened, with its timing."""
    if isinstance(event, AttemptFinished):
        if event.outcome == "deadline":
            # `error` is the socket error the deadline was enforced with (a
            # ReadTimeout, or a ConnectionError for a body cut off mid-read):
            # naming it would send the reader after a read timeout or a broken
            # peer, when what ended the attempt is the call's `total`.
            what = "deadline (DeadlineExceeded: the call's total ran out" + (
                f" after status {event.status})" if event.status is not None else ")")
        elif event.status is not None:
            what = f"{event.outcome} {event.status}"
        else:
            what = f"{event.outcome} ({event.error})"
        return f"attempt {event.attempt}: {what} in {event.duration:.3f}s"
    if isinstance(event, RetryScheduled):
        return (f"backoff: retry in {event.delay:.3f}s after {event.reason} "
                f"(attempt {event.attempt})")
    if isinstance(event, GaveUp):
        return (f"gave up after {event.attempts} attempt(s): {event.reason}, "
                f"last outcome {event.outcome}")
    if isinstance(event, BudgetExhausted):
        return f"retry budget of {event.endpoint!r} spent: no retry after attempt {event.attempt}"
    if isinstance(event, BreakerStateChanged):
        return (f"breaker {event.endpoint!r}: {event.old} -> {event.new} "
                f"({event.failures} consecutive failures)")
    if isinstance(event, BreakerRejected):
        return f"breaker {event.endpoint!r} is open: call refused without touching the network"
    if isinstance(event, FallbackServed):
        return f"fallback ({event.fallback}) served instead of: {event.error}"
    if isinstance(event, BulkheadRejected):
        return f"bulkhead {event.endpoint!r} full ({event.max_concurrent} in flight): call refused"
    if isinstance(event, DeadlinePassed):
        return f"deadline of {event.total:g}s passed during attempt {event.attempts}"
    if isinstance(event, CallFinished):
        fb = ", fallback" if event.fallback else ""
        status = f" {event.status}" if event.status is not None else ""
        return (f"call finished: {event.outcome}{status}{fb}, {event.attempts} attempt(s), "
                f"{event.duration:.3f}s")
    return format_event(event)


def _get(args: argparse.Namespace) -> int:
    from .._session import ResilientSession

    if args.count < 1:
        print(f"{PROG}: --count must be >= 1", file=sys.stderr)
        return 2
    headers: dict[str, str] = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            print(f"{PROG}: bad header {name.strip()!r}: expected 'Name: value'", file=sys.stderr)
            return 2
        headers[name.strip()] = value.strip()
    out = sys.stdout
    printer = _LivePrinter(out)
    session = ResilientSession(args.config, listeners=[printer])
    secrets = session.config.secrets
    shown = redact_url(args.url, secrets)
    method = args.method.upper()
    try:
        resolution = session.resolve(method, args.url)
    except Exception as e:  # a URL requests itself would refuse
        print(f"{PROG}: bad URL {shown!r}: {e}", file=sys.stderr)
        return 2
    t = resolution.policy.timeout
    retry = resolution.policy.retry
    print(f"{method} {shown}", file=out)
    print(f"  policy: {resolution}", file=out)
    print(f"  timeouts: connect {t.connect:g}s, read {t.read:g}s, total "
          f"{'none' if t.total is None else f'{t.total:g}s'}; "
          f"retry: {'off' if retry is None else f'{retry.attempts} attempts'}", file=out)
    failed = 0
    with session:
        for n in range(args.count):
            if n:
                time.sleep(max(0.0, args.interval))
                print(file=out)
            printer.started = time.monotonic()
            try:
                resp = session.request(method, args.url, headers=headers, data=args.data,
                                       timeout=args.timeout)
            except requests.RequestException as e:
                # Already redacted by the session.
                print(f"=> error: {type(e).__name__}: {e}", file=out)
                failed += 1
                continue
            tag = " (fallback)" if getattr(resp, "is_fallback", False) else ""
            print(f"=> {resp.status_code} {resp.reason}{tag}, {getattr(resp, 'attempts', '?')} "
                  f"attempt(s), {time.monotonic() - printer.started:.3f}s", file=out)
            if args.body:
                print(resp.text, file=out)
            if resp.status_code >= 400:
                failed += 1
    if args.count > 1:
        print(f"\n{args.count} calls, {args.count - failed} ok, {failed} failed", file=out)
    return 1 if failed else 0


# -- status ------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    host_dir = how = ""
    if args.source:
        try:
            r = requests.get(args.source, timeout=(2.0, 5.0))
            data = r.json()
        except (requests.RequestException, ValueError) as e:
            print(f"{PROG}: cannot read the health view at {args.source}: {e}", file=sys.stderr)
            return 2
        origin = f"service at {args.source}"
        config: Config | None = None
    else:
        from .._config import load_config
        from .._host_file import path_for
        from .._session import ResilientSession

        config = load_config(args.config)
        host_dir, how = state_dir_for(args.state_dir, config)
        names = host_names(config)
        missing = [n for n in names if not os.path.exists(path_for(host_dir, n))]
        _host_notes(names, host_dir, how, missing)
        # Read-only: status creates no directory and no file.
        with read_only([path_for(host_dir, n) for n in missing]):
            config = dataclasses.replace(config, state_dir=host_dir)
            data = session_health = ResilientSession(config).health().as_dict()
        for ep in session_health["endpoints"]:
            if ep["name"] in missing and ep.get("breaker"):
                ep["breaker"]["storage"] = "host (no state file)"
        origin = "a new session from " + (args.config or "the built-in defaults")
        budget = config.defaults.budget
        data["state_dir"] = host_dir
        data["host"] = host_state(host_dir, budget.window if budget is not None else 10.0)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0 if data.get("healthy") else 1
    if not data.get("endpoints"):
        # An empty table would read as "all is well"; say what was looked at instead.
        _nothing_to_show(args, config, sys.stdout)
        print(f"\nstatus: {data.get('status')} ({'healthy' if data.get('healthy') else 'UNHEALTHY'})")
        return 0 if data.get("healthy") else 1
    rows = [["endpoint", "critical", "breaker", "failures", "retry in", "storage", "bulkhead",
             "errors"]]
    overload = any(ep.get("overload") for ep in data.get("endpoints", []))
    if overload:
        rows[0].append("overload")
    memory_only = False
    for ep in data.get("endpoints", []):
        b = ep.get("breaker") or {}
        bh = ep.get("bulkhead") or {}
        rec = ep.get("recent") or {}
        storage = b.get("storage") or "-"
        memory_only = memory_only or storage == "memory"
        rate = rec.get("error_rate")
        rows.append([
            str(ep.get("name")),
            "yes" if ep.get("critical") else "no",
            b.get("state") or "none",
            str(b.get("consecutive_failures", "-")) if b else "-",
            f"{b['retry_in']:.1f}s" if b.get("retry_in") is not None else "-",
            storage,
            f"{bh.get('in_flight')}/{bh.get('max_concurrent')}" if bh else "unlimited",
            "-" if rate is None else f"{rate:.0%} of {rec.get('attempts')}",
        ])
        if overload:
            rows[-1].append(_overload_cell(ep.get("overload")))
    print(f"Health of {origin}:")
    _table(rows, sys.stdout)
    if data.get("host"):
        print(f"\nHost-shared state (state: host) in {host_dir} ({how}):")
        _table(host_table(data["host"]), sys.stdout)
    elif host_dir:
        print(f"\nHost-shared state (state: host): no state file in {host_dir} ({how})")
    print(f"\nstatus: {data.get('status')} ({'healthy' if data.get('healthy') else 'UNHEALTHY'})")
    if memory_only and not args.source:
        print("note: 'memory' breakers live inside each process, so a new one starts closed; "
              "read a running service with --from http://HOST:PORT/health")
    return 0 if data.get("healthy") else 1


def _overload_cell(o: dict[str, Any] | None) -> str:
    """The adaptive limit and the throttle's refusal rate, for the status table."""
    if not o:
        return "-"
    parts = []
    if o.get("concurrency_limit") is not None:
        parts.append(f"limit {o['concurrency_limit']}")
    if o.get("throttle_reject_rate") is not None:
        parts.append(f"refusing {o['throttle_reject_rate']:.0%}")
    return ", ".join(parts)


def _nothing_to_show(args: argparse.Namespace, config: Config | None, out: TextIO) -> None:
    """What `status` looked at when it found no endpoint, and where to look instead."""
    width = min(100, shutil.get_terminal_size((100, 24)).columns)

    def say(text: str, first: str = "", rest: str = "") -> None:
        print(textwrap.fill(text, width, initial_indent=first, subsequent_indent=rest), file=out)

    if config is None:
        say(f"The service at {args.source} reports no endpoint: it configures none, and its "
            "session has called no URL since its health view started.")
        return
    say(f"Nothing to show from {args.config or 'the built-in defaults (no --config given)'}:")
    say("it configures no endpoint;", "  - ", "    ")
    say("unmatched URLs get the defaults, with a breaker, budget and bulkhead per origin that "
        "exist only once a process calls that origin, and this new session has called none;",
        "  - ", "    ")
    d = config.defaults
    t = d.timeout
    total = "none" if t.total is None else f"{t.total:g}s"
    retry = "off" if d.retry is None else f"{d.retry.attempts} attempts"
    if d.breaker is None:
        breaker = "off"
    else:
        breaker = (f"opens after {d.breaker.failure_threshold} failures for "
                   f"{d.breaker.reset_timeout:g}s, storage {redact_url(d.breaker.storage)}")
    say(f"the defaults: timeouts connect {t.connect:g}s, read {t.read:g}s, total {total}; "
        f"retry {retry}; breaker {breaker}.", "  - ", "    ")
    say("To see breakers: `status --from http://HOST:PORT/health` reads a running service's "
        "health view (health_app); `status --config FILE` shows the endpoints FILE configures, "
        "with the state every process shares for those whose breaker storage is redis://.")


# -- demo --------------------------------------------------------------------


#: The demo's modules: a distribution may leave them out (the command says so).
_DEMO_MODULES = ("resilient_client.tools._demo_command", "resilient_client.tools._demo",
                 "resilient_client.tools._demo_fleet")


def _demo(argv: list[str]) -> int:
    try:
        module: Any = importlib.import_module(_DEMO_MODULES[0])
    except ModuleNotFoundError as e:
        if e.name not in _DEMO_MODULES:
            raise  # the demo exists but needs something missing: show that
        print(f"{PROG} demo: the demo is not part of this installation "
              "(resilient_client/tools/_demo.py is missing)", file=sys.stderr)
        return 2
    return int(module.main(argv) or 0)
