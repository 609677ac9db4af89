"""
The ```python blocks of docs/asyncio.md run as written: a block that
defines tests is a test file of its own, run in a fresh pytest (pytester,
in-process, with the plugins a user has installed: anyio's, pytest-asyncio
in its default strict mode), and every test it defines must pass; any
other block is executed (they define what a reader copies). A block
preceded by ``<!-- no-run: why -->`` needs what the suite does not install.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

PAGE = Path(__file__).resolve().parent.parent / "docs" / "asyncio.md"
BLOCK = re.compile(r"(?:<!--\s*(?P<directive>[^>]*?)\s*-->\s*\n)?```python\n(?P<code>.*?)^```", re.S | re.M)


def _blocks() -> list[tuple[int, str, str]]:
    text = PAGE.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group("directive") or "", m.group("code"))
            for m in BLOCK.finditer(text)]


def _defines_tests(source: str) -> bool:
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test")
               for node in ast.parse(source).body)


BLOCKS = [(line, code) for line, directive, code in _blocks() if not directive.startswith("no-run")]
TESTS = [(line, code) for line, code in BLOCKS if _defines_tests(code)]
SCRIPTS = [(line, code) for line, code in BLOCKS if not _defines_tests(code)]


def test_the_page_has_a_test_block_and_examples() -> None:
    assert TESTS and SCRIPTS


@pytest.mark.parametrize(("line", "source"), TESTS, ids=[f"line{line}" for line, _ in TESTS])
def test_a_documented_test_file_passes_as_written(pytester: pytest.Pytester, line: int, source: str) -> None:
    pytester.makepyfile(test_from_docs=source)
    result = pytester.runpytest_inprocess("test_from_docs.py", "-p", "no:cacheprovider")
    defined = sum(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test")
                  for n in ast.parse(source).body)
    outcomes = result.parseoutcomes()
    assert not (outcomes.get("failed") or outcomes.get("errors") or outcomes.get("skipped")), outcomes
    assert outcomes.get("passed", 0) >= defined, outcomes  # each test ran (once per anyio backend)


@pytest.mark.parametrize(("line", "source"), SCRIPTS, ids=[f"line{line}" for line, _ in SCRIPTS])
def test_an_example_block_runs(line: int, source: str) -> None:
    exec(compile(source, f"asyncio.md:{line}", "exec"), {"__name__": f"docs_asyncio_{line}"})
