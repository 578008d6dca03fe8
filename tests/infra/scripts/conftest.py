"""Fixtures of the script tests: one moto server for the folder, reset by each test's World."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from localservers.ports import free_port
from localservers.waits import wait_until

from .harness import MOTO_SERVER, World, _reset, make_world


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
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="package")
def validate_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """moto's validate-template answers by template content, shared by the folder's tests."""
    return tmp_path_factory.mktemp("validate-template")


@pytest.fixture
def world(tmp_path: Path, moto_url: str, validate_cache: Path) -> World:
    """A fresh moto, a committed copy of the repository, and an assumed-role profile `ci`."""
    return make_world(tmp_path, moto_url, validate_cache)


@pytest.fixture(scope="module")
def shared_world(
    tmp_path_factory: pytest.TempPathFactory, moto_url: str, validate_cache: Path
) -> World:
    """One world for the tests that only parse options and check prerequisites: they make no AWS
    call that reads or changes moto (at most the local `aws configure get region`), so they need
    no fresh copy each."""
    return make_world(tmp_path_factory.mktemp("shared"), moto_url, validate_cache)
