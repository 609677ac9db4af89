"""
`ConfigError`, defined apart from the other exceptions so that the decision
core (policies, config, routing) can raise it without importing requests;
`resilient_client.exceptions` re-exports it, and that is its public home.

`Problems` collects the errors of one document (or one policy value) so
that they are all reported in one `ConfigError`: a file with five mistakes
should take one run to fix, not five.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import TracebackType

__all__ = ["ConfigError", "Problems"]


class ConfigError(ValueError):
    """
    Invalid configuration. The message names the key path and the bad value,
    e.g. ``endpoints[1].retry.attempts: must be an integer >= 1, got 0``.

    Every problem of a document is reported at once: with more than one, the
    message's first line says how many, then one ``path: problem`` per line.

    Attributes:
        path: the key path of the first problem (``""`` for the document itself).
        problem: the first problem, without its path.
        errors: every problem, as ``(path, problem)`` tuples, in the order of
            the document.

    .. versionadded:: 0.1.0
    """

    __module__ = "resilient_client.exceptions"  # its public home, shown in tracebacks

    def __init__(
        self, path: str, problem: str, *, errors: Sequence[tuple[str, str]] | None = None
    ) -> None:
        self.path = path
        self.problem = problem
        self.errors: list[tuple[str, str]] = list(errors) if errors else [(path, problem)]
        super().__init__(_message(self.errors))

    @classmethod
    def of(cls, errors: Sequence[tuple[str, str]]) -> ConfigError:
        """One error reporting every ``(path, problem)`` of *errors* (at least one)."""
        if not errors:
            raise ValueError("ConfigError.of needs at least one (path, problem)")
        path, problem = errors[0]
        return cls(path, problem, errors=errors)

    def prefixed(self, prefix: str) -> ConfigError:
        """This error with *prefix* put before every key path (``retry`` -> ``defaults.retry``)."""
        return ConfigError.of([(_join(prefix, p), problem) for p, problem in self.errors])

    def __reduce__(self) -> tuple[object, ...]:
        # The default pickles self.args (the message), which __init__ does not take.
        return (_rebuild, (self.errors,))


def _rebuild(errors: list[tuple[str, str]]) -> ConfigError:
    return ConfigError.of(errors)


def _line(path: str, problem: str) -> str:
    return f"{path}: {problem}" if path else problem


def _message(errors: Sequence[tuple[str, str]]) -> str:
    if len(errors) == 1:
        return _line(*errors[0])
    lines = [f"{len(errors)} problems in the configuration:"]
    lines.extend(f"  {_line(path, problem)}" for path, problem in errors[:_SHOWN])
    if len(errors) > _SHOWN:
        # A message is read by a person; `.errors` keeps every one.
        lines.append(f"  ... and {len(errors) - _SHOWN} more (all of them are in .errors)")
    return "\n".join(lines)


_SHOWN = 50


def _join(prefix: str, path: str) -> str:
    """``prefix.path``; an index (``[2]...``) or an empty side joins without the dot."""
    if not prefix:
        return path
    if not path:
        return prefix
    return f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"


class Problems:
    """
    The problems found so far in one document or value. ``with problems.at(path):``
    records a `ConfigError` raised inside (its paths prefixed with *path*)
    instead of letting it escape, so that checking goes on to the next key.
    """

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    def __bool__(self) -> bool:
        return bool(self.errors)

    def add(self, path: str, problem: str) -> None:
        self.errors.append((path, problem))

    def extend(self, errors: Iterable[tuple[str, str]]) -> None:
        self.errors.extend(errors)

    def at(self, path: str = "") -> _Recorder:
        return _Recorder(self, path)

    def failed(self, *names: str) -> bool:
        """Whether a problem was recorded at any of the keys *names* (or under them)."""
        return any(_top(p) in names for p, _ in self.errors)

    def raise_if_any(self) -> None:
        if self.errors:
            raise ConfigError.of(self.errors)


def _top(path: str) -> str:
    """The first key of a path: ``headers`` for ``headers.X-A``, ``on`` for ``on[1]``."""
    end = len(path)
    for sep in ".[":
        i = path.find(sep)
        if i != -1:
            end = min(end, i)
    return path[:end]


class _Recorder:
    __slots__ = ("_path", "_problems")

    def __init__(self, problems: Problems, path: str) -> None:
        self._problems = problems
        self._path = path

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if isinstance(exc, ConfigError):
            self._problems.extend(exc.prefixed(self._path).errors if self._path else exc.errors)
            return True
        return False
