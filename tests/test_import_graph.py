"""
The package's shape, checked from its source with `ast` (nothing is
imported): no import cycles, the tools out of the core's import path, and no
module past ~400 lines without a stated reason.

Each check has an explicit allow-list for what is known today. An entry that
no longer holds fails the test too, so the lists only shrink: whoever fixes a
cycle or splits a module deletes its line.
"""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "resilient_client"
TOOLS = f"{PACKAGE}.tools"

#: Module-level import cycles allowed today, each with the change that removes it.
IMPORT_TIME_CYCLES: dict[frozenset[str], str] = {}

#: Cycles once imports inside functions count too: the same dependency,
#: postponed to call time. TYPE_CHECKING imports still do not count (types only).
DEFERRED_CYCLES: dict[frozenset[str], str] = {
    **IMPORT_TIME_CYCLES,
}

#: Modules over LONG_MODULE lines that say nothing about it, allowed today; a
#: module leaves the list when it is split, or when its docstring says why
#: it is long (a paragraph starting with LONG_REASON).
LONG_MODULES: dict[str, str] = {
    "_policy": "every policy dataclass with its validation",
    "_config": "the parser of the config file",
    "_events": "the event classes, the bus and the log listener",
    "_propagation": "deadline propagation: context, header and both middlewares",
    "_metrics": "the Prometheus and OpenTelemetry listeners",
}
LONG_MODULE = 400
LONG_REASON = "Why it is long:"

#: The decision core (STYLE.md's layout): policies, config, routing, the
#: attempt outcome and retry verdict, budget, bulkhead, clock and deadlines,
#: deadline propagation, events. It knows no HTTP client: the requests front
#: (and the httpx front next) builds on it. Importing a submodule still runs
#: the package's __init__, which loads the public exceptions (requests' tree):
#: this checks the core's own code and what it imports, not that side effect.
CORE = frozenset({
    "_clock", "_errors", "_policy", "_config", "_interpolation", "_routing", "_verdict", "_budget",
    "_bulkhead", "_events", "_traced", "_propagation", "_breaker_machine", "_breaker_store", "_latency",
    "_retry_after", "_retry_core",
})
HTTP_CLIENTS = frozenset({"requests", "urllib3", "httpx"})

#: Core modules allowed to import from resilient_client.tools, and why.
TOOLS_IMPORTERS: dict[str, str] = {
    "__main__": "python -m resilient_client is the command",
    # Type-only re-exports of check_haproxy and Finding, deprecated at the root
    # for one release: this entry goes with them.
    "__init__": "deprecated check_haproxy and Finding, for one release",
}


@dataclass(frozen=True)
class Edge:
    """One import statement from a module of the package to another."""

    source: str
    target: str
    line: int
    deferred: bool  # inside a function: runs when called, not when imported
    type_only: bool  # under `if TYPE_CHECKING:`


def _short(module: str) -> str:
    """``resilient_client._session`` -> ``_session``; the package's own ``__init__`` is ``__init__``."""
    return module.removeprefix(PACKAGE).removeprefix(".") or "__init__"


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(
    body: list[ast.stmt], *, deferred: bool = False, type_only: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """Every import statement in *body*, with whether it is deferred or type-only."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, deferred, type_only
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _imports(node.body, deferred=True, type_only=type_only)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _imports(node.body, deferred=deferred, type_only=True)
            yield from _imports(node.orelse, deferred=deferred, type_only=type_only)
        else:
            # Class bodies, try/except/else/finally, with, other ifs: they run
            # when their enclosing code runs, so they inherit its kind.
            for field in ("body", "orelse", "finalbody", "handlers"):
                block = getattr(node, field, None)
                if isinstance(block, list):
                    stmts = [s for s in block if isinstance(s, ast.stmt)]
                    handlers = [h for h in block if isinstance(h, ast.ExceptHandler)]
                    yield from _imports(stmts, deferred=deferred, type_only=type_only)
                    for h in handlers:
                        yield from _imports(h.body, deferred=deferred, type_only=type_only)


def _edges() -> list[Edge]:
    edges: list[Edge] = []
    for module, path in MODULES.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, deferred, type_only in _imports(tree.body):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                # `from pkg import name` imports pkg, and pkg.name when that is a module.
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            for target in targets:
                if target in MODULES and target != module:
                    edges.append(Edge(module, target, node.lineno, deferred, type_only))
    return edges


EDGES = _edges()


def _graph(*, deferred: bool) -> dict[str, dict[str, Edge]]:
    graph: dict[str, dict[str, Edge]] = {m: {} for m in MODULES}
    for e in EDGES:
        if e.type_only or (e.deferred and not deferred):
            continue
        graph[e.source].setdefault(e.target, e)
    return graph


def _cycles(graph: dict[str, dict[str, Edge]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _describe(component: list[str], graph: dict[str, dict[str, Edge]]) -> str:
    """One concrete loop through *component*, each step with its file and line."""
    members = set(component)
    start = component[0]
    path = [start]
    seen = {start}
    # Walk inside the component until the walk comes back to a module already on it.
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in members)
        back = [w for w in nxt if w in seen]
        step = back[0] if back else nxt[0]
        path.append(step)
        if step in seen:
            break
        seen.add(step)
    loop = path[path.index(path[-1]):]
    steps = []
    for a, b in itertools.pairwise(loop):
        e = graph[a][b]
        where = MODULES[a].relative_to(ROOT) if a in MODULES else a
        steps.append(f"  {a} -> {b}   ({where}:{e.line}{', in a function' if e.deferred else ''})")
    return f"{{{', '.join(_short(m) for m in component)}}}:\n" + "\n".join(steps)


def _check_cycles(*, deferred: bool, allowed: dict[frozenset[str], str]) -> None:
    graph = _graph(deferred=deferred)
    found = {frozenset(_short(m) for m in c): c for c in _cycles(graph)}
    new = [c for key, c in found.items() if key not in allowed]
    gone = [sorted(key) for key in allowed if key not in found]
    problems = []
    if new:
        problems.append("import cycles:\n" + "\n".join(_describe(c, graph) for c in new))
    if gone:
        problems.append(f"allow-listed cycles that no longer exist, delete them from the list: {gone}")
    assert not problems, "\n".join(problems)


class TestImportCycles:
    def test_no_cycle_at_import_time(self) -> None:
        """No module-level import cycle beyond the allow-list (TYPE_CHECKING, in-function imports aside)."""
        _check_cycles(deferred=False, allowed=IMPORT_TIME_CYCLES)

    def test_no_cycle_postponed_into_a_function(self) -> None:
        """An import moved into a function to dodge a cycle is still that cycle (allow-list aside)."""
        _check_cycles(deferred=True, allowed=DEFERRED_CYCLES)

    def test_the_checker_finds_a_cycle_and_prints_it(self) -> None:
        """The cycle finder reports a loop with the file and line of each import."""
        e = Edge(f"{PACKAGE}._a", f"{PACKAGE}._b", 3, deferred=False, type_only=False)
        graph = {e.source: {e.target: e}, e.target: {e.source: e}, f"{PACKAGE}._c": {}}
        assert _cycles(graph) == [[e.source, e.target]]
        text = _describe([e.source, e.target], graph)
        assert text.startswith("{_a, _b}:")
        assert f"{e.source} -> {e.target}   ({e.source}:3)" in text


class TestLayers:
    def test_the_core_never_imports_the_tools(self) -> None:
        """Only the command (and, for one release, the deprecated root names) import the tools."""
        importers = {
            _short(e.source) for e in EDGES
            if (e.target == TOOLS or e.target.startswith(TOOLS + "."))
            and not (e.source == TOOLS or e.source.startswith(TOOLS + "."))
        }
        assert importers == set(TOOLS_IMPORTERS)


def _external_imports(module: str) -> dict[str, int]:
    """The top-level names of packages outside ours that *module* imports (not type-only): line."""
    path = MODULES[module]
    found: dict[str, int] = {}
    for node, _deferred, type_only in _imports(ast.parse(path.read_text(encoding="utf-8")).body):
        if type_only or (isinstance(node, ast.ImportFrom) and node.level):
            continue
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        for name in names:
            found.setdefault(name.partition(".")[0], node.lineno)
    return found


class TestCore:
    def test_the_core_imports_no_http_client(self) -> None:
        """No core module, nor anything it imports (even inside a function), imports requests or urllib3."""
        problems = []
        for short in sorted(CORE):
            seen, todo = set(), [f"{PACKAGE}.{short}"]
            while todo:
                module = todo.pop()
                if module in seen:
                    continue
                seen.add(module)
                if _short(module) not in CORE:
                    problems.append(f"{short} reaches {_short(module)}, which is not core")
                    continue
                for name, line in _external_imports(module).items():
                    if name in HTTP_CLIENTS:
                        problems.append(f"{_short(module)}:{line} imports {name} (reached from {short})")
                todo.extend(e.target for e in EDGES if e.source == module and not e.type_only)
        assert not problems, "\n".join(sorted(set(problems)))

    def test_the_check_finds_an_http_client_import(self) -> None:
        """The check sees a front module's requests import (so it is not vacuous)."""
        assert "requests" in _external_imports(f"{PACKAGE}._outcome")
        assert "urllib3" in _external_imports(f"{PACKAGE}._urls")


#: The httpx front: the only modules that may import httpx.
HTTPX_FRONT = frozenset({"_async_client", "_async_errors", "_async_hooks", "_async_parts", "_async_retry",
                         "_async_hops", "_async_seam", "_async_verbs", "testing._httpx_transport"})


class TestHttpxFront:
    def test_only_the_httpx_front_imports_httpx(self) -> None:
        """httpx is imported by the async client's modules and by nothing the package root loads."""
        importers = {_short(m) for m in MODULES if "httpx" in _external_imports(m)}
        assert importers <= HTTPX_FRONT, sorted(importers - HTTPX_FRONT)
        assert "_async_client" in importers  # the check sees it (not vacuous)
        # Nothing else imports the front at module level: __init__ looks a name up on first
        # use; the testing kit's registry imports its httpx transport inside the function
        # that wires an async client (which exists, so httpx is imported already).
        reached = {e.target for e in EDGES
                   if _short(e.source) not in HTTPX_FRONT and not e.type_only and not e.deferred}
        assert not {_short(t) for t in reached} & HTTPX_FRONT

    def test_import_resilient_client_never_imports_httpx(self) -> None:
        """`import resilient_client` loads no httpx; the async client's name does."""
        code = ("import sys, resilient_client\n"
                "print('httpx' in sys.modules, 'anyio' in sys.modules)\n"
                "resilient_client.AsyncResilientClient\n"
                "print('httpx' in sys.modules)\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             timeout=60, cwd=ROOT).stdout.split()
        assert out == ["False", "False", "True"]


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""


class TestModuleSize:
    def test_long_modules_say_why_or_are_listed(self) -> None:
        """A module over 400 lines states why in its docstring, or is on the known list."""
        unexplained = {}
        for module, path in MODULES.items():
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > LONG_MODULE and LONG_REASON not in _docstring(path):
                unexplained[_short(module)] = lines
        stale = set(LONG_MODULES) - set(unexplained)
        assert set(unexplained) <= set(LONG_MODULES), (
            f"modules over {LONG_MODULE} lines: split them, or add a paragraph starting "
            f"{LONG_REASON!r} to the docstring: "
            f"{ {m: n for m, n in unexplained.items() if m not in LONG_MODULES} }"
        )
        assert not stale, f"no longer long (or now explained), delete from LONG_MODULES: {sorted(stale)}"
