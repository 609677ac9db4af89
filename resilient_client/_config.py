"""
Reading configuration: a mapping, or a YAML, TOML or JSON file, into a
frozen `Config`.

The parser only maps keys onto the policy dataclasses of `_policy` (which
validate their own values), rejects unknown keys, merges each endpoint over
``defaults`` and prefixes the key path onto every problem. It goes on past
a problem to find the others, and raises one `ConfigError` listing them
all, in the order of the document; it builds nothing when there is any. A
file's ``${VAR}`` references are replaced first (`_interpolation`).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

from ._errors import ConfigError, Problems
from ._events import check_listener_path, resolve_callable
from ._interpolation import expand_environment, scrub, shown_as_written
from ._policy import (
    BackoffPolicy,
    BreakerPolicy,
    BudgetPolicy,
    BulkheadPolicy,
    CallableFallback,
    ConcurrencyPolicy,
    Fallback,
    HedgePolicy,
    Policy,
    PoolPolicy,
    PropagationPolicy,
    ProxyErrorsPolicy,
    RetryPolicy,
    StaleFallback,
    StaticFallback,
    ThrottlePolicy,
    Timeouts,
    _header_name,
    _methods,
    _sequence,
)

__all__ = ["Config", "ConfigSource", "Endpoint", "Secrets", "load_config"]

#: Headers whose values are always redacted.
ALWAYS_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


@dataclass(frozen=True)
class Secrets:
    """
    Names whose values never appear in logs, events, errors or reprs.
    ``headers`` adds to Authorization, Proxy-Authorization, Cookie and
    Set-Cookie; ``query`` names query parameters. Both are matched
    case-insensitively and stored lower-cased.

    .. versionadded:: 0.1.0
    """

    headers: frozenset[str] = ALWAYS_SECRET_HEADERS
    query: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        p = Problems()
        names = set()
        with p.at():
            for i, h in enumerate(_sequence("headers", self.headers)):
                with p.at():
                    names.add(_header_name(f"headers[{i}]", h).lower())
        query = set()
        with p.at():
            for i, q in enumerate(_sequence("query", self.query)):
                if not isinstance(q, str) or not q:
                    p.add(f"query[{i}]", f"must be a query parameter name, got {q!r}")
                else:
                    query.add(q.lower())
        p.raise_if_any()
        object.__setattr__(self, "headers", frozenset(names | ALWAYS_SECRET_HEADERS))
        object.__setattr__(self, "query", frozenset(query))


_GLOB_CHARS = re.compile(r"[*?]")


@dataclass(frozen=True)
class Endpoint:
    """
    One rule of ``endpoints``: requests whose URL matches ``match`` (a
    prefix, or a glob with ``*`` and ``?`` that must match the whole URL
    without its query) and whose method is in ``methods`` (any method when
    ``None``) get ``policy``.

    .. versionadded:: 0.1.0
    """

    match: str
    policy: Policy = field(default_factory=Policy)
    methods: frozenset[str] | None = None

    @property
    def name(self) -> str:
        """The endpoint name: breaker, budget and bulkhead are per name."""
        return self.policy.name

    @property
    def is_glob(self) -> bool:
        """Whether ``match`` is a glob rather than a prefix."""
        return bool(_GLOB_CHARS.search(self.match))

    def __post_init__(self) -> None:
        p = Problems()
        with p.at():
            _check_match(self.match)
        # A prefix is parsed as a URL by the front's router when the session
        # is built (a port out of range, a bad host: a ConfigError then).
        if self.methods is not None:
            with p.at():
                methods = _methods("methods", self.methods)
                if not methods:
                    p.add("methods", "must list at least one method (omit it to match every method)")
                object.__setattr__(self, "methods", methods)
        p.raise_if_any()


def _check_match(m: object) -> None:
    if not isinstance(m, str) or not m:
        raise ConfigError("match", f"must be a URL prefix or glob, got {m!r}")
    if "[" in m or "]" in m:
        raise ConfigError("match", f"bad glob: only * and ? are supported, got {m!r}")
    scheme, sep, rest = m.partition("://")
    if not sep or not rest:
        raise ConfigError("match", f"must start with http:// or https://, got {m!r}")
    if scheme.lower() not in ("http", "https", "*", "http*"):
        raise ConfigError("match", f"must start with http:// or https://, got {m!r}")
    if any(c.isspace() for c in m):
        raise ConfigError("match", f"must not contain spaces, got {m!r}")


@dataclass(frozen=True)
class Config:
    """
    A validated configuration: ``defaults`` for every request, ``endpoints``
    in order (first match wins), session-wide ``secrets``, and
    ``listeners``: event listeners as dotted paths
    (``"package.module:listener"`` or ``"package.module.listener"``), or
    callables when built in Python. Paths are imported when a session is
    built from the config.

    Build it with `Config.load` from a mapping or a file, or in Python.

    .. versionadded:: 0.1.0
    """

    defaults: Policy = field(default_factory=Policy)
    endpoints: tuple[Endpoint, ...] = ()
    secrets: Secrets = field(default_factory=Secrets)
    listeners: tuple[str | Callable[..., Any], ...] = ()
    #: The directory of host-shared state files (``state: host``); ``None``
    #: is a per-user directory under ``$XDG_RUNTIME_DIR`` or ``/dev/shm``.
    state_dir: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoints", tuple(self.endpoints))
        p = Problems()
        if self.state_dir is not None and (
            not isinstance(self.state_dir, str) or not self.state_dir or "\0" in self.state_dir
        ):
            p.add("state_dir", f"must be a directory path or null, got {self.state_dir!r}")
        elif self.state_dir is not None and not os.path.isabs(self.state_dir):
            p.add("state_dir", f"must be an absolute path, got {self.state_dir!r}")
        p.extend(_shared_state_problems(enumerate(self.endpoints)))
        p.extend(_listener_problems(self.listeners))
        p.raise_if_any()
        object.__setattr__(self, "listeners", tuple(self.listeners))

    @classmethod
    def load(cls, source: ConfigSource) -> Config:
        """
        Return the config from *source*: ``None`` (the defaults), a mapping,
        a path to a ``.yaml``/``.yml``, ``.toml`` or ``.json`` file, or a
        `Config` (returned as is).

        In a file (not in a mapping), ``${VAR}`` and ``${VAR:-default}`` in
        string values are replaced from the environment; a value that is
        exactly one reference takes the type its key expects.

        Raises:
            ConfigError: listing every problem, each with its key path.
        """
        return load_config(source)


#: What a config may be given as.
ConfigSource = Union[Config, Mapping[str, Any], str, "os.PathLike[str]", None]


def load_config(source: ConfigSource) -> Config:
    """Implementation of `Config.load`."""
    if source is None:
        return Config()
    if isinstance(source, Config):
        return source
    if isinstance(source, Mapping):
        return _parse(source)
    if isinstance(source, (str, os.PathLike)):
        data = _read_file(Path(source))
        if not isinstance(data, Mapping):
            kind = type(data).__name__
            raise ConfigError("", f"{source}: the config must be a mapping of keys, got {kind}")
        # Read at load time, so that a process sees its own environment (see _interpolation).
        env_problems = Problems()
        data, written = expand_environment(data, os.environ, env_problems)
        return _parse(data, env_problems, written, base=Path(source).absolute().parent)
    raise ConfigError("", f"config must be a mapping, a file path or a Config, got {type(source).__name__}")


# -- files ------------------------------------------------------------------


def _read_file(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml", ".json"):
        raise ConfigError("", f"{path}: unknown config format {suffix!r}; use .yaml, .yml, .toml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError("", f"{path}: cannot read config file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError("", f"{path}: not UTF-8 text: {e}") from None
    if not text.strip():
        raise ConfigError("", f"{path}: config file is empty")
    try:
        if suffix == ".json":
            # A BOM is not JSON, but editors write one: as YAML does, read past it.
            return json.loads(text.removeprefix("\ufeff"), object_pairs_hook=_no_duplicates)
        if suffix == ".toml":
            return _toml_loads(text)
        return _yaml_loads(text)
    except ConfigError:
        raise
    except Exception as e:  # each parser has its own error class
        raise ConfigError("", f"{path}: invalid {suffix[1:].upper()}: {e}") from None


def _toml_loads(text: str) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError(
                "", "reading TOML on Python 3.10 needs tomli: pip install 'resilient_client[toml]'"
            ) from None
    return tomllib.loads(text)


def _yaml_loads(text: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise ConfigError("", "reading YAML needs PyYAML: pip install 'resilient_client[yaml]'") from None

    # PyYAML follows YAML 1.1, where `on`, `off`, `yes` and `no` are booleans:
    # `retry: {on: [...]}` would arrive as the key True. Read booleans the
    # YAML 1.2 way (true/false only) so every key of the contract means itself.
    class _Loader(yaml.SafeLoader):
        pass

    bool_tag = "tag:yaml.org,2002:bool"
    _Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != bool_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _Loader.add_implicit_resolver(
        bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )

    def mapping(loader: Any, node: Any) -> dict[Any, Any]:
        # PyYAML keeps the last of two equal keys: a later `breaker: null`
        # would silently switch a protection off. Refuse, with its line.
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError("", f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                                      f"(first at line {seen[key] + 1})")
            seen[key] = key_node.start_mark.line
        return dict(loader.construct_mapping(node, deep=True))

    _Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=_Loader)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON's object hook: two equal keys are a mistake, not "the last one wins"."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError("", f"duplicate key {key!r} in a JSON object")
        out[key] = value
    return out


# -- mappings ---------------------------------------------------------------
#
# Every function below records what is wrong in `Problems` and goes on with
# the next key, so that one `ConfigError` lists every problem of the
# document. A part that failed is left out (or replaced by its base value)
# only so that checking can go on: `_parse` builds nothing when any problem
# was recorded.

# Every key the loader accepts is named here or is a field of a section's
# dataclass: tests/test_config.py checks docs/configuration.md against them.
_TOP_KEYS = ("defaults", "secrets", "endpoints", "listeners", "state_dir")
_SECTION_KEYS = ("timeout", "retry", "budget", "failure_status", "breaker", "bulkhead", "fallback",
                 "critical", "propagation", "pool", "state", "throttle", "concurrency", "proxy_errors",
                 "hedge")
#: The sections that are a mapping of a dataclass's fields (retry.backoff is BackoffPolicy's).
_SECTION_KINDS: dict[str, type] = {
    "timeout": Timeouts, "retry": RetryPolicy, "budget": BudgetPolicy, "breaker": BreakerPolicy,
    "bulkhead": BulkheadPolicy, "propagation": PropagationPolicy, "pool": PoolPolicy,
    "throttle": ThrottlePolicy, "concurrency": ConcurrencyPolicy, "proxy_errors": ProxyErrorsPolicy,
    "hedge": HedgePolicy,
}
_ENDPOINT_KEYS = ("name", "match", "methods", *_SECTION_KEYS)
_SECRETS_KEYS = ("headers", "query")
#: The keys of each mapping form of `fallback` (besides the string `stale`).
_FALLBACK_FORMS = (("stale",), ("callable",), ("status", "json", "text", "headers"))
_STALE_KEYS = ("max_entries",)
# Keys where TOML's `false` (it has no null) means "off", as null does elsewhere.
_NULLABLE = frozenset({"retry", "budget", "breaker", "bulkhead", "fallback", "propagation", "pool", "total",
                       "throttle", "concurrency", "proxy_errors", "hedge",
                       "idempotency_header", "attempt_header", "slow_call_duration", "max_size"})

_S = TypeVar("_S")


def _mapping(p: Problems, path: str, value: object) -> Mapping[str, Any] | None:
    if not isinstance(value, Mapping):
        what = "the config" if not path else "a mapping"
        p.add(path, f"must be {what} of keys, got {value!r}")
        return None
    return value


def _known(p: Problems, path: str, raw: Mapping[str, Any], allowed: Sequence[str]) -> dict[str, Any]:
    """The keys of *raw* that are *allowed*; each other key is a problem."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in allowed:
            out[key] = value
        else:
            where = f"{path}.{key}" if path else str(key)
            p.add(where, f"unknown key; expected one of {', '.join(allowed)}")
    return out


def _given(raw: Mapping[str, Any], key: str, default: object) -> Any:
    """raw[key], or *default* when absent or null (not when merely falsy: [] is not a mapping)."""
    value = raw.get(key)
    return default if value is None else value


def _null(key: str, value: object) -> object:
    return None if value is False and key in _NULLABLE else value


def _parse(
    raw: object, env_problems: Problems | None = None, written: Mapping[str, str] | None = None,
    base: Path | None = None,
) -> Config:
    """*base*: the config file's directory, which a relative ``state_dir`` is relative to."""
    p = Problems()
    config = _document(p, raw, base)
    errors = list(env_problems.errors) if env_problems else []
    if p:
        # A value whose variable was missing is reported once, for that: not
        # again as a bad value (it is still the `${...}` text there).
        missing = [path for path, _ in errors]
        for path, problem in p.errors:
            if not any(path == m or path.startswith((f"{m}.", f"{m}[")) for m in missing):
                if written:
                    problem = shown_as_written(problem, path, written, _value_at(raw, path))
                errors.append((path, problem))
    if errors:
        if written:
            # A variable's value may be a secret: no message quotes it, at
            # whatever key (a parent's "must be a mapping, got [...]") it shows.
            errors = [(path, scrub(problem, written, os.environ)) for path, problem in errors]
        # Listed in the order of the file, whichever check found each one.
        errors.sort(key=lambda error: _position(raw, error[0]))
        raise ConfigError.of(errors)
    assert config is not None  # built exactly when nothing was wrong
    return config


_STEP = re.compile(r"\[(\d+)\]|\.?([^.\[]+)")


def _position(raw: object, path: str) -> tuple[int, ...]:
    """Where the key path *path* is in *raw*: the index of each step (as far as it exists)."""
    out: list[int] = []
    value = raw
    for index, key in _STEP.findall(path):
        if index and isinstance(value, list) and int(index) < len(value):
            out.append(int(index))
            value = value[int(index)]
        elif key and isinstance(value, Mapping):
            keys = [str(k) for k in value]
            if key not in keys:
                break
            out.append(keys.index(key))
            value = value[list(value)[out[-1]]]
        else:
            break
    return tuple(out)


def _value_at(raw: object, path: str) -> object:
    """The value of *raw* at the key path *path* (None when there is none)."""
    value = raw
    for index, key in _STEP.findall(path):
        if index and isinstance(value, list) and int(index) < len(value):
            value = value[int(index)]
        elif key and isinstance(value, Mapping) and key in value:
            value = value[key]
        else:
            return None
    return value


def _document(p: Problems, raw: object, base: Path | None = None) -> Config | None:
    doc = _mapping(p, "", raw)
    if doc is None:
        return None
    for key in doc:
        if key in _SECTION_KEYS:  # a section at the top: say where it goes
            p.add(str(key), f"unknown key at the top level; {key} is per endpoint: put it under "
                  "defaults (for every endpoint) or under an endpoint")
    doc = _known(p, "", {k: v for k, v in doc.items() if k not in _SECTION_KEYS}, _TOP_KEYS)
    defaults_raw = _mapping(p, "defaults", _given(doc, "defaults", {})) or {}
    defaults = _policy(p, "defaults", Policy(), defaults_raw, name="default")
    secrets = _secrets(p, "secrets", doc.get("secrets"))
    items: list[Any] = []
    with p.at():
        items = _sequence("endpoints", _given(doc, "endpoints", []))
    endpoints: list[tuple[int, Endpoint]] = []
    for i, item in enumerate(items):
        before = len(p.errors)
        endpoint = _endpoint(p, f"endpoints[{i}]", defaults, item)
        if endpoint is not None and len(p.errors) == before:
            endpoints.append((i, endpoint))
    # Only endpoints that are themselves valid are compared: one whose breaker
    # was wrong would otherwise also "differ" from its namesakes.
    p.extend(_shared_state_problems(endpoints))
    listeners = doc.get("listeners") or ()
    p.extend(_listener_problems(listeners))
    state_dir = doc.get("state_dir")
    if state_dir is not None and (not isinstance(state_dir, str) or not state_dir):
        p.add("state_dir", f"must be a directory path or null, got {state_dir!r}")
    elif state_dir is not None and not os.path.isabs(state_dir):
        if base is None:
            p.add("state_dir", f"must be an absolute path (a relative one is only allowed in a "
                  f"config file, relative to the file's directory), got {state_dir!r}")
        else:  # relative to the file, not to whatever directory the process starts in
            state_dir = os.path.normpath(base / state_dir)
    if p:
        return None
    with p.at():
        return Config(defaults=defaults, endpoints=tuple(e for _, e in endpoints), secrets=secrets,
                      listeners=listeners, state_dir=state_dir)
    return None


def _secrets(p: Problems, path: str, raw: object) -> Secrets:
    if raw is None:
        return Secrets()
    given = _mapping(p, path, raw)
    if given is None:
        return Secrets()
    changes = _known(p, path, given, _SECRETS_KEYS)
    return _build(p, path, Secrets, changes) or Secrets()


def _endpoint(p: Problems, path: str, defaults: Policy, raw: object) -> Endpoint | None:
    given = _mapping(p, path, raw)
    if given is None:
        return None
    given = _known(p, path, given, _ENDPOINT_KEYS)
    match = given.get("match")
    if "match" not in given:
        p.add(f"{path}.match", "is required")
    elif not isinstance(match, str) or not match:
        p.add(f"{path}.match", f"must be a URL prefix or glob, got {match!r}")
    name = given.get("name", match)
    if "name" in given and (not isinstance(name, str) or not name):
        p.add(f"{path}.name", f"must be a non-empty string, got {name!r}")
    elif isinstance(name, str) and not name.isprintable():
        # Every log line and metric label carries it: no line breaks in them.
        p.add(f"{path}.name", f"must not contain control characters, got {name!r}")
    if not isinstance(name, str) or not name:
        name = "endpoint"  # a stand-in, so that the sections are still checked
    sections = {k: v for k, v in given.items() if k in _SECTION_KEYS}
    policy = _policy(p, path, defaults, sections, name=name)
    if not isinstance(match, str) or not match:
        return None
    return _build(p, path, Endpoint, {"match": match, "policy": policy, "methods": given.get("methods")})


def _policy(p: Problems, path: str, base: Policy, raw: Mapping[str, Any], *, name: str) -> Policy:
    raw = _known(p, path, raw, _SECTION_KEYS)
    changes: dict[str, Any] = {"name": name}
    for key, value in raw.items():
        value = _null(key, value)
        where = f"{path}.{key}"
        section: object = None
        if key in ("failure_status", "critical", "state"):
            changes[key] = value
            continue
        if key == "fallback":
            with p.at(where):
                changes[key] = _fallback(value)
            continue
        if key == "timeout":
            if value is None or value is False:
                p.add(where, "cannot be switched off: connect and read timeouts are mandatory")
                continue
            section = _section(p, where, Timeouts, base.timeout, value)
        elif value is None:
            changes[key] = None
            continue
        elif key == "retry":
            section = _retry(p, where, base.retry, value)
        else:
            section = _section(p, where, _SECTION_KINDS[key], getattr(base, key), value)
        if section is not None:  # else: a problem was recorded; the base's stands in
            changes[key] = section
    policy = _build(p, path, Policy, changes, base=base)
    if (
        policy is not None
        and raw.get("state") == "memory"
        and policy.breaker is not None
        and policy.breaker.storage != "memory"
    ):
        # `state: memory` written here, yet the breaker is in Redis: both
        # spellings given, and they disagree (only `state`'s default is quiet).
        p.add(f"{path}.state", f"'memory' disagrees with breaker.storage "
                               f"{policy.breaker.storage!r}; give one of them, or the same value")
    return policy or base


def _retry(p: Problems, path: str, base: RetryPolicy | None, raw: object) -> RetryPolicy | None:
    given = _mapping(p, path, raw)
    if given is None:
        return None
    base = base or RetryPolicy()
    extra: dict[str, Any] = {}
    if "backoff" in given:
        backoff = _section(p, f"{path}.backoff", BackoffPolicy, base.backoff, given["backoff"])
        if backoff is not None:
            extra["backoff"] = backoff
    rest = {k: v for k, v in given.items() if k != "backoff"}
    return _section(p, path, RetryPolicy, base, rest, extra=extra, allowed=_field_names(RetryPolicy))


def _fallback(raw: object) -> Fallback | None:
    """The fallback *raw* describes; `ConfigError` (every problem) when it is wrong."""
    if raw is None:
        return None
    if raw == "stale":
        return StaleFallback()
    if callable(raw) and not isinstance(raw, (str, Mapping)):
        raw = {"callable": raw}  # a function given in Python: shorthand for {"callable": fn}
    if isinstance(raw, str):
        raise ConfigError(
            "", "must be 'stale', null or a mapping (with status and json or text, or with "
            f"callable: 'package.module:function'), got {raw!r}"
        )
    p = Problems()
    given = _mapping(p, "", raw)
    p.raise_if_any()
    assert given is not None
    if "stale" in given:
        _known(p, "", given, _FALLBACK_FORMS[0])
        stale = _mapping(p, "stale", _given(given, "stale", {}))
        p.raise_if_any()
        assert stale is not None
        changes = _known(p, "stale", stale, _STALE_KEYS)
        built = _build(p, "stale", StaleFallback, changes)
        p.raise_if_any()
        return built
    if "callable" in given:
        _known(p, "", given, _FALLBACK_FORMS[1])
        # Imported now, so that a bad path fails at load, not at the first failure.
        with p.at():
            function = resolve_callable("callable", given["callable"], what="fallback")
            try:
                # Called as fn(request, failure): a wrong signature fails now too.
                inspect.signature(function).bind(None, None)
            except TypeError as e:
                p.add("callable", f"must take (request, failure): {e}")
            except ValueError:
                pass  # no signature to read (a builtin): trust it
        p.raise_if_any()
        return CallableFallback(function)
    given = _known(p, "", given, _FALLBACK_FORMS[2])
    if "json" in given and "text" in given:
        p.add("", "give json or text, not both")
    status = given.get("status", 200)
    headers = _mapping(p, "headers", _given(given, "headers", {}))
    with p.at():
        StaticFallback(status=status, headers=headers or {})
    if "json" in given:
        with p.at():
            StaticFallback.from_json(200, given["json"])
    if "text" in given:
        with p.at():
            StaticFallback.from_text(200, given["text"])
    p.raise_if_any()
    if "json" in given:
        return StaticFallback.from_json(status, given["json"], headers)
    if "text" in given:
        return StaticFallback.from_text(status, given["text"], headers)
    return StaticFallback(status=status, headers=headers or {})


def _field_names(kind: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(kind))


def _section(
    p: Problems,
    path: str,
    kind: type[_S],
    base: _S | None,
    raw: object,
    *,
    extra: Mapping[str, Any] | None = None,
    allowed: Sequence[str] | None = None,
) -> _S | None:
    """Merge *raw* over *base* (or the built-in defaults of *kind*) key by key."""
    given = _mapping(p, path, raw)
    if given is None:
        return None
    given = _known(p, path, given, allowed or _field_names(kind))
    changes = {k: _null(k, v) for k, v in given.items()}
    changes.update(extra or {})
    return _build(p, path, kind, changes, base=base if base is not None else kind())


def _build(
    p: Problems, path: str, kind: type[_S], changes: dict[str, Any], *, base: _S | None = None
) -> _S | None:
    """*kind* built from *changes* (over *base*), or None with its problems recorded at *path*."""
    with p.at(path):
        if base is not None:
            return dataclasses.replace(base, **changes)  # type: ignore[type-var]
        return kind(**changes)
    return None


def _listener_problems(listeners: object) -> list[tuple[str, str]]:
    p = Problems()
    with p.at():
        for i, spec in enumerate(_sequence("listeners", listeners)):
            with p.at():
                check_listener_path(f"listeners[{i}]", spec)
    return p.errors


def _shared_state_problems(endpoints: Iterable[tuple[int, Endpoint]]) -> list[tuple[str, str]]:
    """Endpoints sharing a name share breaker, budget and bulkhead: they must agree."""
    problems: list[tuple[str, str]] = []
    seen: dict[str, tuple[int, Policy]] = {}
    for i, ep in endpoints:
        first = seen.setdefault(ep.name, (i, ep.policy))
        if first[0] == i:
            continue
        for section in ("breaker", "budget", "bulkhead", "state", "throttle", "concurrency"):
            if getattr(first[1], section) != getattr(ep.policy, section):
                problems.append((
                    f"endpoints[{i}].{section}",
                    f"endpoint name {ep.name!r} is also used by endpoints[{first[0]}] with a "
                    f"different {section}; endpoints sharing a name share its state, so give "
                    "them the same settings or different names",
                ))
    return problems


#: What one call may change of its endpoint's policy (``session.get(url,
#: policy={...})``): how this call is made, not the endpoint's shared state.
CALL_SECTIONS = ("timeout", "retry", "fallback", "propagation", "hedge")


def call_policy(base: Policy, changes: Mapping[str, Any]) -> Policy:
    """
    *base* with the sections in *changes* merged over it, as an endpoint's
    are over ``defaults`` (``null`` switches a section off for the call).

    Raises:
        ConfigError: keys that are not sections one call may change (the
            breaker, budget and bulkhead are the endpoint's, shared by every
            call), or bad values, all at once; paths start with ``policy``.
    """
    p = Problems()
    raw = _mapping(p, "policy", changes)
    if raw is None:
        p.raise_if_any()
    assert raw is not None
    for key in raw:
        if key not in CALL_SECTIONS:
            why = ("is the endpoint's shared state, not one call's" if key in _SECTION_KEYS
                   else "is not a policy section")
            p.add(f"policy.{key}", f"cannot be changed for one call: {key!r} {why} "
                                   f"(allowed: {', '.join(CALL_SECTIONS)})")
    p.raise_if_any()
    policy = _policy(p, "policy", base, raw, name=base.name)
    p.raise_if_any()
    return policy
