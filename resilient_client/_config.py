"""
Reading configuration: a mapping, or a YAML, TOML or JSON file, into a
frozen `Config`.

The parser only maps keys onto the policy dataclasses of `_policy` (which
validate their own values), rejects unknown keys, merges each endpoint over
``defaults`` and prefixes the key path onto every `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

from ._errors import ConfigError
from ._events import check_listener_path
from ._policy import (
    BackoffPolicy,
    BreakerPolicy,
    BudgetPolicy,
    BulkheadPolicy,
    Fallback,
    Policy,
    PropagationPolicy,
    RetryPolicy,
    StaleFallback,
    StaticFallback,
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
        names = {
            _header_name(f"headers[{i}]", h).lower()
            for i, h in enumerate(_sequence("headers", self.headers))
        }
        object.__setattr__(self, "headers", frozenset(names | ALWAYS_SECRET_HEADERS))
        query = set()
        for i, q in enumerate(_sequence("query", self.query)):
            if not isinstance(q, str) or not q:
                raise ConfigError(f"query[{i}]", f"must be a query parameter name, got {q!r}")
            query.add(q.lower())
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
        m = self.match
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
        # A prefix is parsed as a URL by the front's router when the session
        # is built (a port out of range, a bad host: a ConfigError then).
        if self.methods is not None:
            methods = _methods("methods", self.methods)
            if not methods:
                raise ConfigError("methods", "must list at least one method (omit it to match every method)")
            object.__setattr__(self, "methods", methods)


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoints", tuple(self.endpoints))
        _check_shared_state(self.endpoints)
        listeners = tuple(_sequence("listeners", self.listeners))
        for i, spec in enumerate(listeners):
            check_listener_path(f"listeners[{i}]", spec)
        object.__setattr__(self, "listeners", listeners)

    @classmethod
    def load(cls, source: ConfigSource) -> Config:
        """
        Return the config from *source*: ``None`` (the defaults), a mapping,
        a path to a ``.yaml``/``.yml``, ``.toml`` or ``.json`` file, or a
        `Config` (returned as is).

        Raises:
            ConfigError: naming the key path and the bad value.
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
        return _parse(data)
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
            return json.loads(text)
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
    return yaml.load(text, Loader=_Loader)


# -- mappings ---------------------------------------------------------------

_TOP_KEYS = ("defaults", "secrets", "endpoints", "listeners")
_SECTION_KEYS = ("timeout", "retry", "budget", "failure_status", "breaker", "bulkhead", "fallback",
                 "critical", "propagation")
_ENDPOINT_KEYS = ("name", "match", "methods", *_SECTION_KEYS)
# Keys where TOML's `false` (it has no null) means "off", as null does elsewhere.
_NULLABLE = frozenset({"retry", "budget", "breaker", "bulkhead", "fallback", "propagation", "total",
                       "idempotency_header", "attempt_header", "slow_call_duration"})

_S = TypeVar("_S")


def _mapping(path: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        what = "the config" if not path else "a mapping"
        raise ConfigError(path, f"must be {what} of keys, got {value!r}")
    return value


def _check_keys(path: str, raw: Mapping[str, Any], allowed: Sequence[str]) -> None:
    for key in raw:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(where, f"unknown key; expected one of {', '.join(allowed)}")


def _given(raw: Mapping[str, Any], key: str, default: object) -> Any:
    """raw[key], or *default* when absent or null (not when merely falsy: [] is not a mapping)."""
    value = raw.get(key)
    return default if value is None else value


def _null(key: str, value: object) -> object:
    return None if value is False and key in _NULLABLE else value


def _parse(raw: object) -> Config:
    raw = _mapping("", raw)
    _check_keys("", raw, _TOP_KEYS)
    defaults_raw = _mapping("defaults", _given(raw, "defaults", {}))
    defaults = _policy("defaults", Policy(), defaults_raw, name="default")
    secrets = _secrets("secrets", raw.get("secrets"))
    endpoints_raw = _given(raw, "endpoints", [])
    endpoints = tuple(
        _endpoint(f"endpoints[{i}]", defaults, item)
        for i, item in enumerate(_sequence("endpoints", endpoints_raw))
    )
    listeners = raw.get("listeners") or ()
    try:
        return Config(defaults=defaults, endpoints=endpoints, secrets=secrets, listeners=listeners)
    except ConfigError as e:
        raise ConfigError(e.path, e.problem) from None


def _secrets(path: str, raw: object) -> Secrets:
    if raw is None:
        return Secrets()
    raw = _mapping(path, raw)
    _check_keys(path, raw, ("headers", "query"))
    return _build(path, Secrets, {k: v for k, v in raw.items()})


def _endpoint(path: str, defaults: Policy, raw: object) -> Endpoint:
    raw = _mapping(path, raw)
    _check_keys(path, raw, _ENDPOINT_KEYS)
    if "match" not in raw:
        raise ConfigError(f"{path}.match", "is required")
    match = raw["match"]
    if not isinstance(match, str) or not match:
        raise ConfigError(f"{path}.match", f"must be a URL prefix or glob, got {match!r}")
    name = raw.get("name", match)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}.name", f"must be a non-empty string, got {name!r}")
    sections = {k: v for k, v in raw.items() if k in _SECTION_KEYS}
    policy = _policy(path, defaults, sections, name=name)
    methods = raw.get("methods")
    return _build(path, Endpoint, {"match": raw["match"], "policy": policy, "methods": methods})


def _policy(path: str, base: Policy, raw: Mapping[str, Any], *, name: str) -> Policy:
    _check_keys(path, raw, _SECTION_KEYS)
    changes: dict[str, Any] = {"name": name}
    for key, value in raw.items():
        value = _null(key, value)
        where = f"{path}.{key}"
        if key == "failure_status" or key == "critical":
            changes[key] = value
        elif key == "fallback":
            changes[key] = _fallback(where, value)
        elif key == "timeout":
            if value is None or value is False:
                raise ConfigError(where, "cannot be switched off: connect and read timeouts are mandatory")
            changes[key] = _section(where, Timeouts, base.timeout, value)
        elif value is None:
            changes[key] = None
        elif key == "retry":
            changes[key] = _retry(where, base.retry, value)
        else:
            kind = {"budget": BudgetPolicy, "breaker": BreakerPolicy, "bulkhead": BulkheadPolicy,
                    "propagation": PropagationPolicy}[key]
            changes[key] = _section(where, kind, getattr(base, key), value)
    return _build(path, Policy, changes, base=base)


def _retry(path: str, base: RetryPolicy | None, raw: object) -> RetryPolicy:
    raw = _mapping(path, raw)
    base = base or RetryPolicy()
    extra: dict[str, Any] = {}
    if "backoff" in raw:
        extra["backoff"] = _section(f"{path}.backoff", BackoffPolicy, base.backoff, raw["backoff"])
    rest = {k: v for k, v in raw.items() if k != "backoff"}
    return _section(path, RetryPolicy, base, rest, extra=extra, allowed=_field_names(RetryPolicy))


def _fallback(path: str, raw: object) -> Fallback | None:
    if raw is None:
        return None
    if raw == "stale":
        return StaleFallback()
    if isinstance(raw, str):
        raise ConfigError(
            path, f"must be 'stale', null or a mapping with status and json or text, got {raw!r}"
        )
    raw = _mapping(path, raw)
    if "stale" in raw:
        _check_keys(path, raw, ("stale",))
        stale = _mapping(f"{path}.stale", _given(raw, "stale", {}))
        _check_keys(f"{path}.stale", stale, ("max_entries",))
        return _build(f"{path}.stale", StaleFallback, dict(stale))
    _check_keys(path, raw, ("status", "json", "text", "headers"))
    if "json" in raw and "text" in raw:
        raise ConfigError(path, "give json or text, not both")
    status = raw.get("status", 200)
    headers = _given(raw, "headers", {})
    try:
        StaticFallback(status=status, headers=_mapping("headers", headers))
        if "json" in raw:
            return StaticFallback.from_json(status, raw["json"], headers)
        if "text" in raw:
            return StaticFallback.from_text(status, raw["text"], headers)
        return StaticFallback(status=status, headers=headers)
    except ConfigError as e:
        raise ConfigError(f"{path}.{e.path}", e.problem) from None


def _field_names(kind: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(kind))


def _section(
    path: str,
    kind: type[_S],
    base: _S | None,
    raw: object,
    *,
    extra: Mapping[str, Any] | None = None,
    allowed: Sequence[str] | None = None,
) -> _S:
    """Merge *raw* over *base* (or the built-in defaults of *kind*) key by key."""
    raw = _mapping(path, raw)
    _check_keys(path, raw, allowed or _field_names(kind))
    changes = {k: _null(k, v) for k, v in raw.items()}
    changes.update(extra or {})
    return _build(path, kind, changes, base=base if base is not None else kind())


def _build(path: str, kind: type[_S], changes: dict[str, Any], *, base: _S | None = None) -> _S:
    try:
        if base is not None:
            return dataclasses.replace(base, **changes)  # type: ignore[type-var]
        return kind(**changes)
    except ConfigError as e:
        raise ConfigError(f"{path}.{e.path}" if path else e.path, e.problem) from None


def _check_shared_state(endpoints: Sequence[Endpoint]) -> None:
    """Endpoints sharing a name share breaker, budget and bulkhead: they must agree."""
    seen: dict[str, tuple[int, Policy]] = {}
    for i, ep in enumerate(endpoints):
        first = seen.setdefault(ep.name, (i, ep.policy))
        if first[0] == i:
            continue
        for section in ("breaker", "budget", "bulkhead"):
            if getattr(first[1], section) != getattr(ep.policy, section):
                raise ConfigError(
                    f"endpoints[{i}].{section}",
                    f"endpoint name {ep.name!r} is also used by endpoints[{first[0]}] with a "
                    f"different {section}; endpoints sharing a name share its state, so give "
                    "them the same settings or different names",
                )


#: What one call may change of its endpoint's policy (``session.get(url,
#: policy={...})``): how this call is made, not the endpoint's shared state.
CALL_SECTIONS = ("timeout", "retry", "fallback", "propagation")


def call_policy(base: Policy, changes: Mapping[str, Any]) -> Policy:
    """
    *base* with the sections in *changes* merged over it, as an endpoint's
    are over ``defaults`` (``null`` switches a section off for the call).

    Raises:
        ConfigError: a key that is not a section one call may change (the
            breaker, budget and bulkhead are the endpoint's, shared by every
            call), or a bad value; the path starts with ``policy``.
    """
    raw = _mapping("policy", changes)
    for key in raw:
        if key not in CALL_SECTIONS:
            why = ("is the endpoint's shared state, not one call's" if key in _SECTION_KEYS
                   else "is not a policy section")
            raise ConfigError(f"policy.{key}", f"cannot be changed for one call: {key!r} {why} "
                                               f"(allowed: {', '.join(CALL_SECTIONS)})")
    return _policy("policy", base, raw, name=base.name)
