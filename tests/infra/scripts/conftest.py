"""Fixtures of the script tests: one moto server for the folder, reset by each test's World; and
the tools every script test drives for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from localservers.ports import free_port
from localservers.processes import stop_process
from localservers.waits import wait_until
from tests.stubs import awsfork
from tests.support import mark_layer

from .harness import AWSFORK, MOTO_SERVER, REAL_AWS, World, _reset, make_world

# The scripts run the real AWS CLI, jq and kubectl: without one, every test here is skipped
# (which CI, where .ci/run installs them, turns into a failure).
NEEDS = (
    pytest.mark.skipif(not REAL_AWS.exists(), reason="AWS CLI (pip package awscli) not installed"),
    pytest.mark.skipif(shutil.which("jq") is None, reason="jq not installed (apt-get install jq)"),
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed"),
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_layer(items, Path(__file__).parent, *NEEDS)


@pytest.hookimpl(tryfirst=True)  # before tests/conftest.py puts it in its module's group
def pytest_itemcollected(item: pytest.Item) -> None:
    """Under xdist a script test shares nothing but the folder's moto server (one per worker),
    so each may run on either worker: the suite's longest tests spread over both. Those on
    the module's shared World stay together, in their module's group."""
    if "shared_world" not in getattr(item, "fixturenames", ("shared_world",)):
        item.add_marker(pytest.mark.xdist_group(item.nodeid))


@pytest.fixture(scope="package")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One moto server for the folder (it starts in about a second); tests reset it instead."""
    if not MOTO_SERVER.exists():
        pytest.skip("moto_server (pip package moto[server]) not installed")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,  # moto may write scratch files into its working directory
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _reset(url), timeout=30, what="moto server")
        yield url
    finally:
        stop_process(proc, timeout=10)


@pytest.fixture(scope="package")
def aws_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real AWS CLI, imported once, forked for each call the stand-in passes on (the socket's
    path; tests/stubs/awsfork.py says why)."""
    folder = tmp_path_factory.mktemp("aws")
    path = folder / "aws.sock"
    with (folder / "awsfork.log").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(AWSFORK), str(path), str(REAL_AWS)],
            # What the scripts' environment fixes at start (make_world): awsfork.FIXED_AT_START.
            env={"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8"},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
    try:
        wait_until(lambda: awsfork.accepts(str(path)), timeout=30, what="AWS CLI fork server")
        yield str(path)
    finally:
        stop_process(proc, timeout=10)


@pytest.fixture(scope="package")
def validate_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """moto's validate-template answers by template content, shared by the folder's tests and,
    under xdist, by every worker: the run's temp root holds each worker's (answers are written
    whole and renamed into place, so two workers may write one at once)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    cache = root / "validate-template"
    cache.mkdir(exist_ok=True)
    return cache


@pytest.fixture
def world(tmp_path: Path, moto_url: str, validate_cache: Path, aws_server: str) -> World:
    """A fresh moto, a committed copy of the repository, and an assumed-role profile `ci`."""
    return make_world(tmp_path, moto_url, validate_cache, aws_server)


@pytest.fixture(scope="module")
def shared_world(
    tmp_path_factory: pytest.TempPathFactory, moto_url: str, validate_cache: Path, aws_server: str
) -> World:
    """One world for the tests that only parse options and check prerequisites: they make no AWS
    call that reads or changes moto (at most the local `aws configure get region`), so they need
    no fresh copy each."""
    return make_world(tmp_path_factory.mktemp("shared"), moto_url, validate_cache, aws_server)
