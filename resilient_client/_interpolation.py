"""
Environment variables in config files: ``${VAR}`` and ``${VAR:-default}``.

Done on the parsed document (YAML, TOML and JSON alike), in string values
only, never in keys. A value that is exactly one ``${...}`` takes the type
its key expects (``read: ${READ:-2.0}`` is the number 2.0), found from the
policy dataclasses' own field types, so a new field needs nothing here.

Decisions:

- **Files only.** A mapping built in Python is not interpolated: its author
  holds ``os.environ`` already, and a value there may rightly contain
  ``${`` (a fallback's text). A file is what is deployed unchanged to every
  environment, and what needs the environment's values.
- **Shell semantics for the default.** ``${VAR:-default}`` takes the default
  when VAR is unset *or empty*, as every shell and docker compose do: an
  empty ``READ=`` line in an env file means "not given".
- **One pass.** A variable's value is never itself interpolated, so a
  value holding ``${`` is taken as it is.
- **``$${`` is a literal ``${``.** A ``$`` anywhere else is itself.
- **Values are not shown.** A string taken from the environment may be a
  secret (a Redis password in a URL): `ConfigError` shows it as written in
  the file (``'redis://:${REDIS_PASSWORD}@redis.internal'``), never
  substituted. Numbers and booleans, which are not secrets, are shown.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import Problems
from ._policy import Policy

__all__ = ["expand_environment", "shown_as_written"]

# `$${` (a literal `${`), a well-formed reference, or any other `${` (malformed).
_TOKEN = re.compile(
    r"\$\$\{|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|\$\{"
)
_WHOLE_ANYWHERE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)")
_WHOLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")

#: The strings that are YAML 1.2 booleans (the loader reads YAML that way too).
_TRUE = ("true", "True", "TRUE")
_FALSE = ("false", "False", "FALSE")


@dataclass(frozen=True)
class _Expect:
    """What a key takes: a scalar type (``object``: anything, left a string)."""

    kind: type = object
    nullable: bool = False
    is_list: bool = False


_ANY = _Expect()
_STR = _Expect(str)
_STR_LIST = _Expect(str, is_list=True)

#: Keys of the fallback forms (`stale`, fixed response, callable).
_FALLBACK_KEYS: dict[str, _Expect] = {
    "status": _Expect(int), "text": _STR, "headers": _STR, "json": _ANY, "callable": _STR,
    "max_entries": _Expect(int),
}


def expand_environment(
    data: Any, environ: Mapping[str, str], problems: Problems
) -> tuple[Any, dict[str, str]]:
    """
    *data* with every ``${...}`` in its string values replaced from
    *environ*, and, for each key path whose string came from the
    environment, the text as written (for `shown_as_written`). Problems
    (an unset variable, a malformed reference) are recorded at their key
    path, and the value is left as written.
    """
    written: dict[str, str] = {}
    # A config is small: a "billion laughs" of YAML aliases, or nesting a
    # thousand deep, is refused instead of walked (exponential time, or a
    # RecursionError instead of a ConfigError).
    budget = [_MAX_NODES]

    def walk(value: Any, keys: tuple[str | int, ...]) -> Any:
        budget[0] -= 1
        if budget[0] < 0 or len(keys) > _MAX_DEPTH:
            raise _TooBig
        if isinstance(value, Mapping):
            return {k: walk(v, (*keys, str(k))) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*keys, i)) for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            return _expand(value, keys, environ, problems, written)
        return value

    try:
        return walk(data, ()), written
    except _TooBig:
        problems.add("", f"the configuration is too large or too deeply nested (more than "
                         f"{_MAX_NODES} values, or {_MAX_DEPTH} levels; YAML aliases count each time)")
        return {}, written


class _TooBig(Exception):
    pass


_MAX_NODES = 100_000
_MAX_DEPTH = 64


def scrub(problem: str, written: Mapping[str, str], environ: Mapping[str, str]) -> str:
    """
    *problem* without the value of any variable the file referenced (it may be
    a secret), wherever the message quotes it: each is shown as ``${NAME}``.
    """
    for template in set(written.values()):
        for m in _WHOLE_ANYWHERE.finditer(template):
            value = environ.get(m.group("name"))
            if value and len(value) >= 3:
                problem = problem.replace(value, "${" + m.group("name") + "}")
    return problem


def shown_as_written(problem: str, path: str, written: Mapping[str, str], value: object) -> str:
    """*problem* with the repr of *value* (a string from the environment) replaced by its text as written."""
    template = written.get(path)
    if template is None or not isinstance(value, str):
        return problem
    return problem.replace(repr(value), repr(template))


def _path(keys: tuple[str | int, ...]) -> str:
    out = ""
    for k in keys:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else k)
    return out


def _expand(
    text: str,
    keys: tuple[str | int, ...],
    environ: Mapping[str, str],
    problems: Problems,
    written: dict[str, str],
) -> Any:
    path = _path(keys)
    before = len(problems.errors)

    def substitute(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "$${":
            return "${"
        name = m.group("name")
        if name is None:
            problems.add(path, f"bad environment reference in {text!r}: write ${{NAME}} or "
                               "${NAME:-default} (and $${ for a literal ${)")
            return token
        value = environ.get(name)
        if value:
            return value
        default = m.group("default")
        if default is not None:
            return default
        if value is None:
            problems.add(path, f"environment variable {name} is not set "
                               f"(and no ${{{name}:-default}} given)")
            return token
        return value  # set and empty, with no default: empty, as in a shell

    expanded = _TOKEN.sub(substitute, text)
    if len(problems.errors) != before:
        return text
    if expanded != text or "${" in text:
        written[path] = text
    if _WHOLE.fullmatch(text) is None:
        return expanded
    value = _coerce(expanded, _expected(keys))
    if isinstance(value, list):
        # Items are checked, and shown, on their own paths.
        for i in range(len(value)):
            written[f"{path}[{i}]"] = text
    return value


# -- what each key expects ---------------------------------------------------


def _coerce(text: str, expect: _Expect) -> Any:
    if expect.nullable and text == "null":
        return None
    if expect.is_list:
        parts = [part.strip() for part in text.split(",")] if text.strip() else []
        return [_scalar(part, expect.kind) for part in parts]
    return _scalar(text, expect.kind)


def _scalar(text: str, kind: type) -> Any:
    """*text* as *kind* when it reads as one; else the text, for the validator to name."""
    if kind is bool:
        return True if text in _TRUE else False if text in _FALSE else text
    if kind in (int, float):
        for parse in (int, float):
            try:
                return parse(text)
            except ValueError:
                pass
    return text


def _expected(keys: tuple[str | int, ...]) -> _Expect:
    """What the key at *keys* takes (the item's kind for a list index)."""
    if keys and isinstance(keys[-1], int):
        parent = _expected(keys[:-1])
        return dataclasses.replace(parent, is_list=False, nullable=False) if parent.is_list else _ANY
    names = [k for k in keys if isinstance(k, str)]
    if not names:
        return _ANY
    top, rest = names[0], names[1:]
    if top == "listeners" and not rest:
        return _STR_LIST
    if top == "secrets":
        return _STR_LIST if len(rest) == 1 else _ANY
    if top == "endpoints":
        if rest and rest[0] in ("match", "name"):
            return _STR if len(rest) == 1 else _ANY
        if rest and rest[0] == "methods":
            return _STR_LIST if len(rest) == 1 else _ANY
        return _in_policy(rest)
    if top == "defaults":
        return _in_policy(rest)
    return _ANY


def _in_policy(names: list[str]) -> _Expect:
    if not names:
        return _ANY
    if names[0] == "fallback":
        if len(names) == 1:
            return _Expect(str, nullable=True)  # `stale` or null
        if names[1] == "headers":
            return _STR if len(names) == 3 else _ANY
        if names[1] == "json":
            return _ANY
        return _FALLBACK_KEYS.get(names[-1], _ANY) if len(names) <= 3 else _ANY
    return _from_hint(Policy, names)


def _from_hint(owner: type, names: list[str]) -> _Expect:
    hint: Any = _hints(owner).get(names[0])
    if hint is None:
        return _ANY  # an unknown key: reported by the loader
    nullable = False
    args = typing.get_args(hint)
    if args and typing.get_origin(hint) in (typing.Union, types.UnionType):
        nullable = type(None) in args
        rest = [a for a in args if a is not type(None)]
        # `float | str` (hedge.delay: seconds or "p95"): a number when it reads as one.
        hint = rest[0] if len(rest) == 1 else float if float in rest else object
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _from_hint(hint, names[1:]) if len(names) > 1 else _Expect(dict, nullable=nullable)
    if len(names) > 1:
        return _ANY
    if typing.get_origin(hint) in (frozenset, set, list, tuple):
        (item,) = typing.get_args(hint)[:1]
        return _Expect(_scalar_kind(item), nullable=nullable, is_list=True)
    return _Expect(_scalar_kind(hint), nullable=nullable)


def _scalar_kind(hint: Any) -> type:
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return str
    if hint in (bool, int, float, str):
        return typing.cast(type, hint)
    return object


@functools.cache
def _hints(owner: type) -> dict[str, Any]:
    # The policy modules use `from __future__ import annotations`: resolve the strings once.
    return typing.get_type_hints(owner)
