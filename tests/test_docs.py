"""What the documents cite exists: every test named in ``docs/ML_TEST_SCORE.md`` (and the README)
is a test function of the file it names (a score backed by a renamed or deleted test is a score of
nothing), every source or test file they name is there, and every ``make`` target the README names
is a target of the Makefile.

A citation is ``tests/<path>.py::<name>``, then ``::<other>`` for further tests of the same file.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCORE = ROOT / "docs" / "ML_TEST_SCORE.md"
DOCUMENTS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
CITATION = re.compile(r"`(tests/[\w/]+\.py)?::(\w+)`")
SOURCE_FILE = re.compile(r"\b((?:tests|clickloop|assets|resources|pipelines|bench)/[\w/]+\.py)\b")


@cache
def defined_tests(path: Path) -> frozenset[str]:
    """The test functions (module level and in classes) of a test file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    )


def citations(text: str) -> list[tuple[int, str, str]]:
    """(line, file, test) of every cited test; ``::name`` belongs to the file cited before it on
    its line."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        current = None
        for match in CITATION.finditer(line):
            current = match.group(1) or current
            found.append((number, current or "", match.group(2)))
    return found


def test_citations_are_read_with_their_file() -> None:
    line = "`tests/core/test_a.py::test_x`, `::test_y` and `tests/core/test_b.py::test_z`"
    assert citations(line) == [
        (1, "tests/core/test_a.py", "test_x"),
        (1, "tests/core/test_a.py", "test_y"),
        (1, "tests/core/test_b.py", "test_z"),
    ]


def test_every_cited_test_exists() -> None:
    assert len(citations(SCORE.read_text())) > 28, "the score cites a test for most rows"
    missing = [
        f"{doc.name} line {line}: {file or '(no file before it)'}::{name}"
        for doc in DOCUMENTS
        for line, file, name in citations(doc.read_text())
        if not file or not (ROOT / file).is_file() or name not in defined_tests(ROOT / file)
    ]
    assert not missing, "the documents cite tests that do not exist:\n" + "\n".join(missing)


def test_every_file_the_documents_name_exists() -> None:
    missing = [
        f"{doc.name}: {name}"
        for doc in DOCUMENTS
        for name in sorted(set(SOURCE_FILE.findall(doc.read_text())))
        if not (ROOT / name).is_file()
    ]
    assert not missing, "the documents name files that do not exist:\n" + "\n".join(missing)


def test_every_make_target_the_readme_names_exists() -> None:
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))
    named = set(re.findall(r"`make ([\w-]+)", (ROOT / "README.md").read_text()))
    assert {"run", "test"} <= named
    assert named - targets == set(), f"README.md names make targets the Makefile lacks: {named - targets}"
