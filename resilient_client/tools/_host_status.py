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

import os
import struct
from pathlib import Path
from typing import Any

from .._config import Config
from .._host_dir import alive, default_state_dir
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

__all__ = ["check_host_policies", "host_state", "remove_stale", "reset_endpoint"]

_STATES = ("closed", "open", "half-open")
_HEADER = struct.Struct("<8sII48s")


def host_state(state_dir: str) -> list[dict[str, Any]]:
    """One entry per state file in *state_dir*: name, breaker, budget, leases."""
    out: list[dict[str, Any]] = []
    base = Path(state_dir)
    if not base.is_dir():
        return out
    for path in sorted(base.glob("*.state"))[:1000]:  # bounded, whatever is in the directory
        out.append(_describe(path))
    return out


def _describe(path: Path) -> dict[str, Any]:
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
    budget = BUDGET.unpack_from(raw, BUDGET_AT)
    entry["budget"] = {"first_tries": sum(budget[1:1 + BUCKETS]), "retries": sum(budget[1 + BUCKETS:])}
    (n,) = struct.unpack_from("<I", raw, ROWS_AT)
    rows = [ROW.unpack_from(raw, ROW0 + i * ROW.size) for i in range(min(n, MAX_PROCESSES))]
    # A holder in another pid namespace cannot be checked from here: counted as alive.
    held = [(pid, count, alive(pid, token, ns) is not False) for pid, count, _, token, ns in rows if count]
    entry["bulkhead"] = {
        "in_flight": sum(c for p, c, live in held if live),
        "held_by_gone_processes": sum(c for p, c, live in held if not live),
        "processes": sorted(p for p, _, _ in held),
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
    state_dir = config.state_dir or default_state_dir()
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
    import time

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
    rows = [["endpoint", "breaker", "failures", "trial pid", "in flight", "processes", "first tries",
             "retries"]]
    for e in entries:
        if "error" in e:
            rows.append([Path(e["file"]).name, f"unreadable: {e['error']}", "", "", "", "", "", ""])
            continue
        b, bh, bu = e["breaker"] or {}, e["bulkhead"], e["budget"]
        state = b.get("state", "damaged") + (" (forced)" if b.get("forced") else "")
        rows.append([
            e["name"], state, str(b.get("consecutive_failures", "-")), str(b.get("trial_pid") or "-"),
            str(bh["in_flight"]), ",".join(map(str, bh["processes"])) or "-",
            str(bu["first_tries"]), str(bu["retries"]),
        ])
    return rows
