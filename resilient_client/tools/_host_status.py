"""
``resilient-client status`` (its host part) and ``resilient-client reset``:
the host-shared state files of a ``state_dir``, read and cleared from the
command line.

Reading takes each file's lock for one ``pread`` (a consistent view) and
writes nothing; a file that is not ours is listed as unreadable, never
changed. ``reset NAME`` clears an endpoint's breaker, budget and leases in
place under the lock (a damaged file is laid out afresh, never unlinked), as
an operator's ``close()`` would for every process at once.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import _host_dir
from .._config import Config
from .._host_dir import (
    STATE_DIR_ENV,
    TEST_STATE_DIR_ENV,
    alive,
    candidate_state_dirs,
    default_state_dir,
)
from .._host_file import (
    BREAKER,
    BREAKER_AT,
    BUCKETS,
    BUDGET,
    BUDGET_AT,
    MAX_PROCESSES,
    ROW,
    ROW0,
    ROWS_AT,
    SIZE,
    breaker_fields,
    path_for,
    reset_in_place,
)
from .._host_state import policy_checksum, recorded_policy
from ._findings import Finding

__all__ = [
    "check_host_policies", "elsewhere", "host_names", "host_state", "read_only", "remove_stale",
    "reset_endpoint", "state_dir_for", "table",
]

_STATES = ("closed", "open", "half-open")
_HEADER = struct.Struct("<8sII48s")


def state_dir_for(given: str | None, config: Config) -> tuple[str, str]:
    """The ``state_dir`` the command looks at (``--state-dir`` *given*, else the config's), and why."""
    if given:
        return os.path.abspath(given), "--state-dir"
    if os.environ.get(TEST_STATE_DIR_ENV):
        return os.environ[TEST_STATE_DIR_ENV], f"${TEST_STATE_DIR_ENV}"
    if config.state_dir:
        return config.state_dir, "the config's state_dir"
    if os.environ.get(STATE_DIR_ENV):
        return default_state_dir(), f"${STATE_DIR_ENV}"
    via = "from $XDG_RUNTIME_DIR" if os.environ.get("XDG_RUNTIME_DIR") else "without $XDG_RUNTIME_DIR"
    return default_state_dir(), f"the default state_dir here, {via}"


def host_names(config: Config) -> list[str]:
    """The configured endpoints whose state is ``host`` (each name once)."""
    return list(dict.fromkeys(ep.name for ep in config.endpoints if ep.policy.state == "host"))


def elsewhere(names: list[str], state_dir: str) -> dict[str, list[str]]:
    """The other default directories that hold a file for some of *names*: dir -> those names."""
    out: dict[str, list[str]] = {}
    for other in candidate_state_dirs():
        if os.path.realpath(other) != os.path.realpath(state_dir):
            found = [n for n in names if os.path.exists(path_for(other, n))]
            if found:
                out[other] = found
    return out


@contextlib.contextmanager
def read_only(missing_paths: list[str]) -> Iterator[None]:
    """
    Host files opened read-only, nothing created, while the block runs:
    ``status`` must not leave a directory or file behind (one made by root
    would lock the service's user out). A missing file is reported by the
    command itself, not logged as damage.
    """
    previous = _host_dir.READ_ONLY
    _host_dir.READ_ONLY = True
    for path in missing_paths:
        _host_dir.mark_warned(path)
    try:
        yield
    finally:
        _host_dir.READ_ONLY = previous


def host_state(state_dir: str, window: float = 10.0) -> list[dict[str, Any]]:
    """
    One entry per state file in *state_dir*: name, breaker, budget, leases.
    The budget counts are those of the last *window* seconds (the budget's).
    """
    out: list[dict[str, Any]] = []
    base = Path(state_dir)
    if not base.is_dir():
        return out
    for path in sorted(base.glob("*.state"))[:1000]:  # bounded, whatever is in the directory
        out.append(_describe(path, window))
    return out


def _describe(path: Path, window: float = 10.0) -> dict[str, Any]:
    entry: dict[str, Any] = {"file": str(path)}
    try:
        with open(path, "rb") as f:
            raw = f.read(SIZE)
    except OSError as exc:
        return {**entry, "error": str(exc)}
    if len(raw) != SIZE:
        return {**entry, "error": "truncated"}
    magic, version, _, name = _HEADER.unpack_from(raw)
    if not magic.startswith(b"RCHOST"):
        return {**entry, "error": "not a resilient_client state file"}
    entry["name"] = name.rstrip(b"\0").decode("utf-8", "replace")
    entry["version"] = version
    fields = breaker_fields(raw[BREAKER_AT:BREAKER_AT + BREAKER.size + 4])
    if fields is None:
        entry["breaker"] = None  # damaged: the next process to lock it resets it
    else:
        state, forced, failures, _, _, trial_pid, _, _, _ = fields
        entry["breaker"] = {
            "state": _STATES[state] if state < 3 else "?", "forced": bool(forced),
            "consecutive_failures": failures,
            "trial_pid": trial_pid or None,
        }
    first, retries = _budget_in_window(BUDGET.unpack_from(raw, BUDGET_AT), window)
    entry["budget"] = {"first_tries": first, "retries": retries, "window": window}
    (n,) = struct.unpack_from("<I", raw, ROWS_AT)
    rows = [ROW.unpack_from(raw, ROW0 + i * ROW.size) for i in range(min(n, MAX_PROCESSES))]
    held = [(pid, count, alive(pid, token, ns)) for pid, count, _, token, ns in rows if count]
    # A holder in another pid namespace cannot be checked from here: counted as alive.
    gone = sorted({p for p, _, live in held if live is False})
    entry["bulkhead"] = {
        "in_flight": sum(c for p, c, live in held if live is not False),
        "held_by_gone_processes": sum(c for p, c, live in held if live is False),
        "processes": sorted(p for p, _, _ in held),
        "gone_processes": gone,
    }
    return entry


def check_host_policies(config: Config) -> list[Finding]:
    """
    ``host-policy-mismatch``: an endpoint shared on the host (``state: host``
    or ``redis://``) whose file in ``state_dir`` records another breaker,
    budget or bulkhead policy than *config*'s, i.e. the processes already
    running with it apply other thresholds to the same shared state.
    Reads only: a file that does not exist or is not ours says nothing.
    """
    state_dir, _ = state_dir_for(None, config)
    found: list[Finding] = []
    seen: set[str] = set()
    for ep in config.endpoints:
        policy = ep.policy
        if ep.name in seen or not policy.host_shared:
            continue
        seen.add(ep.name)
        path = path_for(state_dir, ep.name)
        try:
            with open(path, "rb") as f:
                raw = f.read(SIZE)
        except OSError:
            continue  # no process has used it yet (or it is not readable): nothing to compare
        if len(raw) != SIZE or not raw.startswith(b"RCHOST"):
            continue  # not ours: `status` lists it as unreadable
        recorded = recorded_policy(raw)
        if recorded not in (0, policy_checksum((policy.breaker, policy.budget, policy.bulkhead))):
            found.append(Finding(
                "warning", "host-policy-mismatch", ep.name, None,
                f"{path} was set up by a process whose breaker, budget or bulkhead policy for "
                f"{ep.name!r} differs from this config's; each process applies its own thresholds "
                "to the shared state: give namesakes one policy, or this service its own state_dir"))
    return found


def remove_stale(state_dir: str, idle: float) -> list[str]:
    """
    Delete the state files of *state_dir* nobody wrote for *idle* seconds
    and whose bulkhead rows name no live process (an origin's state of
    unmatched URLs, called once, stays otherwise): each under its lock,
    one that is locked is skipped. Returns the paths removed.
    """
    import fcntl

    removed: list[str] = []
    base = Path(state_dir)
    if not base.is_dir():
        return removed
    now = time.time()
    for path in sorted(base.glob("*.state"))[:10_000]:  # bounded, whatever is in the directory
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # in use this very moment
            if now - os.fstat(fd).st_mtime < idle:
                continue
            raw = os.pread(fd, SIZE, 0)
            if raw.startswith(b"RCHOST") and len(raw) == SIZE:
                (n,) = struct.unpack_from("<I", raw, ROWS_AT)
                rows = [ROW.unpack_from(raw, ROW0 + i * ROW.size) for i in range(min(n, MAX_PROCESSES))]
                # Alive, or in another pid namespace (unknowable from here): kept.
                if any(pid > 0 and alive(pid, token, ns) is not False for pid, _, _, token, ns in rows):
                    continue  # a live process has a row here: it may come back to it
            os.unlink(path)
            removed.append(str(path))
        finally:
            os.close(fd)
    return removed


def _budget_in_window(values: tuple[Any, ...], window: float) -> tuple[int, int]:
    """First tries and retries of the buckets still in the window now (as `HostBudget` slides them)."""
    epoch, requests, retries = values[0], values[1:1 + BUCKETS], values[1 + BUCKETS:]
    now = int(time.monotonic() / (window / BUCKETS))
    if now - epoch >= BUCKETS or epoch > now + BUCKETS:
        return 0, 0
    # Buckets after the epoch (up to now) have left the window: HostBudget zeroes them on its next write.
    stale = {b % BUCKETS for b in range(epoch + 1, now + 1)}
    return (sum(v for i, v in enumerate(requests) if i not in stale),
            sum(v for i, v in enumerate(retries) if i not in stale))


def reset_endpoint(state_dir: str, name: str) -> bool:
    """Clear endpoint *name*'s host state; False when it has no file there."""
    if not os.path.exists(path_for(state_dir, name)):
        return False
    # In place, never unlinked: running processes keep sharing the same file
    # (a new file would split the host in two), and those that stopped
    # sharing it because it was damaged share it again within seconds.
    reset_in_place(state_dir, name)
    return True


def table(entries: list[dict[str, Any]]) -> list[list[str]]:
    """The rows ``status`` prints for *entries*."""
    window = next((e["budget"]["window"] for e in entries if "budget" in e), 10.0)
    rows = [["endpoint", "breaker", "failures", "trial pid", "in flight", "processes",
             f"first tries ({window:g}s)", f"retries ({window:g}s)"]]
    for e in entries:
        if "error" in e:
            rows.append([Path(e["file"]).name, f"unreadable: {e['error']}", "", "", "", "", "", ""])
            continue
        b, bh, bu = e["breaker"] or {}, e["bulkhead"], e["budget"]
        state = b.get("state", "damaged") + (" (forced)" if b.get("forced") else "")
        rows.append([
            e["name"], state, str(b.get("consecutive_failures", "-")), str(b.get("trial_pid") or "-"),
            str(bh["in_flight"]) + (f" (+{bh['held_by_gone_processes']} gone)"
                                    if bh["held_by_gone_processes"] else ""),
            ",".join(f"{p} (gone)" if p in bh["gone_processes"] else str(p)
                     for p in bh["processes"]) or "-",
            str(bu["first_tries"]), str(bu["retries"]),
        ])
    return rows
