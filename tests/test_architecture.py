"""The layering rules of the project, read from the source (no import is executed).

* ``clickloop/`` (the domain core) imports neither Dagster nor ``assets``, ``resources``,
  ``pipelines`` or ``bench``;
* ``resources/`` never imports ``assets``, ``pipelines`` or ``bench``;
* ``assets/`` never imports ``pipelines`` or ``bench``; nothing installed imports ``bench``;
* the project's modules import each other without a cycle;
* no module is much over 500 lines;
* the README's picture of the layout names every module of the core and the Dagster layers.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("clickloop", "assets", "resources", "pipelines", "bench")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "clickloop": ("dagster", "dagster_postgres", "assets", "resources", "pipelines", "bench"),
    "resources": ("assets", "pipelines", "bench"),
    "assets": ("pipelines", "bench"),
    "pipelines": ("bench",),
}
MAX_LINES = 500


def modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield name, path


def imported(name: str, path: Path) -> set[str]:
    """Every module a file imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _top(module: str) -> str:
    return module.split(".", 1)[0]


ALL = dict(modules())


@pytest.mark.parametrize("name", sorted(ALL))
def test_layers_import_only_what_they_may(name: str) -> None:
    forbidden = FORBIDDEN.get(_top(name), ())
    bad = sorted(m for m in imported(name, ALL[name]) if _top(m) in forbidden)
    assert not bad, f"{ALL[name].relative_to(ROOT)} imports {bad}, which its layer may not import"


def test_no_import_cycle() -> None:
    graph = {name: {m for m in imported(name, path) if m in ALL and m != name} for name, path in ALL.items()}
    # a package's __init__ importing its submodules is not a cycle with them
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in done:
            return
        if node in visiting:
            cycle = visiting[visiting.index(node) :] + [node]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        visiting.append(node)
        for child in sorted(graph[node]):
            if not (node + ".").startswith(child + ".") and not child.startswith(node + "."):
                visit(child)
        visiting.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)


@pytest.mark.parametrize("name", sorted(ALL))
def test_modules_stay_short(name: str) -> None:
    lines = len(ALL[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{ALL[name].relative_to(ROOT)} has {lines} lines (at most {MAX_LINES})"


def test_the_core_is_importable_without_dagster() -> None:
    """Importing every core module loads no Dagster module (checked in a fresh interpreter)."""
    import subprocess
    import sys

    core = sorted(n for n in ALL if _top(n) == "clickloop")
    code = (
        "import importlib, sys\n"
        f"for name in {core!r}:\n    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'assets', 'resources', 'pipelines'))\n"
        "print(bad)\nraise SystemExit(1 if bad else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


#: Libraries that take seconds to import, loaded only where their work is done: every process that
#: loads the code location (the webserver's and the daemon's code servers, each run and each step
#: process, every Celery worker) would otherwise pay for them before doing anything.
LAZY_LIBRARIES = ("evidently", "great_expectations", "mlflow")


def test_loading_the_code_location_leaves_the_heavy_libraries_unimported() -> None:
    """``pipelines.definitions`` (every asset, resource, sensor and job) imports none of them, while
    the functions that use them still work (the tiers that compute drift, validate suites and
    track models import them on the way)."""
    import subprocess
    import sys

    code = (
        "import sys\nimport pipelines.definitions\n"
        f"loaded = sorted(m for m in {LAZY_LIBRARIES!r} if m in sys.modules)\n"
        "print(loaded)\nraise SystemExit(1 if loaded else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def readme_tree() -> str:
    """The README's picture of the layout (the code block of *Architecture*)."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```\nclickloop/", text.index("## Architecture"))
    return text[start : text.index("```", start + 3)]


def test_the_readme_layout_names_every_module_of_the_core_and_of_the_dagster_layers() -> None:
    words = set(re.findall(r"\w+", readme_tree()))
    folders = ("clickloop", "assets", "resources", "pipelines", "pipelines/cli")
    names = {p.stem for folder in folders for p in (ROOT / folder).glob("*.py")} - {"__init__"}
    names |= {p.name for p in (ROOT / "clickloop").iterdir() if (p / "__init__.py").exists()}
    missing = sorted(names - words)
    assert not missing, f"README.md's Architecture tree does not name {missing}"
