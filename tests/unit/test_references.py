"""The app's comments and docstrings name real things, and its per-app objects are reached one
way: read from the source, so that a rename cannot leave a pointer to nothing behind."""

from __future__ import annotations

import ast
import importlib
import io
import re
import tokenize
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

APP = REPO_ROOT / "app"
SOURCES = sorted([*APP.glob("*.py"), REPO_ROOT / "gunicorn.conf.py"])
MODULES = sorted(p.stem for p in APP.glob("*.py") if not p.stem.startswith("__"))
# `module.name` or `module.Class.name`, for the app's own modules: store.SessionStore.
CITED_NAME = re.compile(rf"(?<![\w./])({'|'.join(MODULES)})((?:\.[A-Za-z_]\w*)+)")
# Words that read like a cited module but are not one: a redis-py connection's attribute.
NOT_MODULES = ("connection._parser",)
# A repository path: docs/observability.md, tests/unit/test_csrf.py, app/templates/base.html.
CITED_PATH = re.compile(r"(?<![\w/.-])((?:app|docs|tests|k8s|cfn|bench|ops)/[\w./-]*\w)")


def prose(path: Path) -> str:
    """The comments and docstrings of one source file."""
    source = path.read_text()
    comments = [
        token.string
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    ]
    docstrings = [
        ast.get_docstring(node) or ""
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    return "\n".join(comments + docstrings)


def resolves(module: str, attributes: str) -> bool:
    if attributes == ".py":  # a file name: config.py
        return (APP / f"{module}.py").is_file()
    target: object = importlib.import_module(f"app.{module}")
    for name in attributes.strip(".").split("."):
        if not hasattr(target, name):
            return False
        target = getattr(target, name)
    return True


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_cited_name_and_path_exists(path: Path) -> None:
    text = prose(path)
    cited = [m for m in CITED_NAME.finditer(text) if not m.group(0).startswith(NOT_MODULES)]
    names = [m.group(0) for m in cited if not resolves(*m.groups())]
    paths = [p for p in CITED_PATH.findall(text) if not (REPO_ROOT / p).exists()]
    assert names + paths == [], f"{path.name} cites what does not exist"


def test_the_checks_find_what_the_comments_write() -> None:
    sample = (
        "see store.SessionStore, read_cache.ReadCache, csrf.CsrfSecrets.reuse_token, config.py;"
        " docs/observability.md and tests/unit/test_csrf.py. Not flask.g or self._store.call."
    )
    assert [m.group(0) for m in CITED_NAME.finditer(sample)] == [
        "store.SessionStore",
        "read_cache.ReadCache",
        "csrf.CsrfSecrets.reuse_token",
        "config.py",
    ]
    assert all(resolves(*m.groups()) for m in CITED_NAME.finditer(sample))
    assert not resolves("connection", ".cluster_mode")
    assert CITED_PATH.findall(sample) == ["docs/observability.md", "tests/unit/test_csrf.py"]
    assert sum(len(CITED_NAME.findall(prose(p))) for p in SOURCES) > 20


def test_only_the_accessors_read_current_app() -> None:
    """Per-app objects are reached through config.current_settings and context.py's accessors."""
    readers = sorted(p.name for p in APP.glob("*.py") if "current_app" in p.read_text())
    assert readers == ["config.py", "context.py"]
