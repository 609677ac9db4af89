"""
Every ```python block of docs/testing.md runs here.

* A block with ``title="name.py"`` is a file of the tutorial: a module is
  written next to the tests, and blocks titled ``test_*.py`` are appended to
  that test file, in order, as the tutorial grows it.
* An untitled block that defines tests (functions or a unittest.TestCase)
  is a test file of its own.
* Any other block is executed as a script.

Test files run in a fresh pytest (pytester, in-process), with the plugin
loaded through its entry point as a user gets it; every test they define
must pass.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

# The async client and httpcore (which httpx imports only when it first
# builds a transport) are imported here, not first by an inner run: pytester
# drops from sys.modules what an inner run imported, and a second copy of
# httpcore raises exceptions httpx no longer maps to its own.
if importlib.util.find_spec("httpx") is not None:
    import httpcore  # noqa: F401

    import resilient_client._async_client  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "testing.md"
FENCE = re.compile(r"^```(\S*)([^\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
TITLE = re.compile(r'title="([^"]+)"')
# As in test_testing_plugin: the plugin through its entry point, other plugins off.
OTHER_PLUGINS = [
    arg
    for ep in entry_points(group="pytest11")
    if ep.name != "resilient_client.testing"
    for arg in ("-p", f"no:{ep.name}")
]


def python_blocks():
    """(line, title or None, source) of every python block of the page."""
    text = PAGE.read_text(encoding="utf-8")
    blocks = []
    for m in FENCE.finditer(text):
        lang, info, source = m.group(1), m.group(2), m.group(3)
        if lang.lower() in ("python", "py", "python3", "pycon"):
            title = TITLE.search(info)
            line = text.count("\n", 0, m.start()) + 1
            blocks.append((line, title.group(1) if title else None, source))
    return blocks


def count_tests(source):
    """Test functions and test methods that *source* defines."""
    count = 0
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            count += 1
        elif isinstance(node, ast.ClassDef):
            count += sum(
                isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test")
                for n in node.body
            )
    return count


BLOCKS = python_blocks()
MODULES = {title: src for _, title, src in BLOCKS if title and not title.startswith("test_")}
TUTORIAL_FILES: dict[str, list[tuple[int, str]]] = {}
for _line, _title, _src in BLOCKS:
    if _title and _title.startswith("test_"):
        TUTORIAL_FILES.setdefault(_title, []).append((_line, _src))
TEST_BLOCKS = [(line, src) for line, title, src in BLOCKS if title is None and count_tests(src)]
SCRIPT_BLOCKS = [
    (line, src) for line, title, src in BLOCKS if title is None and not count_tests(src)
]


@pytest.fixture
def docs_dir(pytester):
    """A pytester directory holding the page's modules, importable by the blocks."""
    for title, source in MODULES.items():
        pytester.makepyfile(**{title[:-3]: source})
    pytester.syspathinsert()
    return pytester


def runs_per_test(source):
    """anyio's plugin runs an async test once per backend installed (asyncio, and trio if present)."""
    if "pytest.mark.anyio" not in source:
        return 1
    return 1 + (importlib.util.find_spec("trio") is not None)


def run_tests(pytester, name, source):
    pytester.makepyfile(**{name: source})
    plugins = OTHER_PLUGINS
    if "pytest.mark.anyio" in source:  # an async client's test: anyio's plugin runs it
        names = [p for p in OTHER_PLUGINS[1::2] if p != "no:anyio"]
        plugins = [arg for p in names for arg in ("-p", p)]
    return pytester.runpytest_inprocess(f"{name}.py", "-p", "no:cacheprovider", *plugins)


class TestDocsTesting:
    def test_every_python_block_is_run_by_this_file(self):
        """Each python block falls in exactly one of the kinds run below, so none is skipped."""
        run = (
            len(MODULES)
            + sum(len(v) for v in TUTORIAL_FILES.values())
            + len(TEST_BLOCKS)
            + len(SCRIPT_BLOCKS)
        )
        assert run == len(BLOCKS) >= 15
        # The fence pattern saw every fence of the page (none indented or malformed).
        fence_lines = [
            line for line in PAGE.read_text().splitlines() if line.lstrip().startswith("```")
        ]
        assert len(fence_lines) == 2 * len(FENCE.findall(PAGE.read_text()))

    def test_tutorial_service_is_the_example_module(self):
        """The tutorial's service is examples/inventory_service.py, word for word."""
        assert (
            MODULES["inventory_service.py"]
            == (ROOT / "examples" / "inventory_service.py").read_text()
        )

    def test_tutorial_service_builds_its_session_at_import_time(self, docs_dir):
        """The first example is the hard case: a module-level session, which no step hands to the kit."""
        tree = ast.parse(MODULES["inventory_service.py"])
        module_level = [
            node for node in tree.body
            if isinstance(node, ast.Assign) and "ResilientSession(" in ast.unparse(node.value)
        ]
        assert len(module_level) == 1
        steps = "\n\n".join(src for _, src in TUTORIAL_FILES["test_inventory_service.py"])
        assert "attach(" not in steps and "ResilientSession" not in steps
        assert "session(" not in steps  # not even fake_peers.session()

    def test_tutorial_steps_pass_in_reverse_order(self, docs_dir):
        """No step depends on what another left in the module's session (step 4 opens its breaker)."""
        source = "\n\n".join(src for _, src in TUTORIAL_FILES["test_inventory_service.py"])
        names = [
            node.name for node in ast.parse(source).body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test")
        ]
        docs_dir.makepyfile(test_inventory_service=source)
        result = docs_dir.runpytest_inprocess(
            *[f"test_inventory_service.py::{n}" for n in reversed(names)],
            "-v", "-p", "no:cacheprovider", *OTHER_PLUGINS,
        )
        result.assert_outcomes(passed=len(names))
        ran = [line.split("::")[1].split()[0] for line in result.outlines if " PASSED" in line]
        assert ran == list(reversed(names))

    @pytest.mark.parametrize("name", sorted(TUTORIAL_FILES))
    def test_tutorial_file_passes(self, docs_dir, name):
        """The tutorial's test file, assembled from its steps, passes every test."""
        source = "\n\n".join(src for _, src in TUTORIAL_FILES[name])
        result = run_tests(docs_dir, name[:-3], source)
        result.assert_outcomes(passed=count_tests(source))

    @pytest.mark.parametrize(
        ("line", "source"), TEST_BLOCKS, ids=[f"line{line}" for line, _ in TEST_BLOCKS]
    )
    def test_test_block_passes(self, docs_dir, line, source):
        """A block of tests passes every test it defines."""
        result = run_tests(docs_dir, f"test_docs_line{line}", source)
        result.assert_outcomes(passed=count_tests(source) * runs_per_test(source))

    @pytest.mark.parametrize(
        ("line", "source"), SCRIPT_BLOCKS, ids=[f"line{line}" for line, _ in SCRIPT_BLOCKS]
    )
    def test_script_block_runs(self, docs_dir, line, source):
        """A block that is not a test runs without error."""
        exec(compile(source, f"{PAGE}:{line}", "exec"), {"__name__": "__docs__"})
