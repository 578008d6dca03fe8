"""The unit layer: the app in-process on fakeredis, and pure functions. Seconds for all of it.

Every test here is marked ``unit``; nothing here starts a server or a process.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

import fakeredis
import pytest

from app import create_app
from app.config import Settings
from tests.support import mark_layer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_layer(items, Path(__file__).parent, pytest.mark.unit)


@pytest.fixture
def fake_server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def fake_redis(fake_server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    """The tests' own client of the fake server the app uses."""
    return fakeredis.FakeRedis(server=fake_server)


@pytest.fixture
def connect_fake(fake_server: fakeredis.FakeServer):
    """What the app connects with in unit tests: every client it makes is a fake one on the
    same fake server."""
    return functools.partial(fakeredis.FakeRedis, server=fake_server)


@pytest.fixture
def app(settings: Settings, connect_fake):
    return create_app(settings, connect_redis=connect_fake)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def make_app(settings: Settings, connect_fake):
    """An app with some settings changed, on the same fake Redis."""

    def make(**changes):
        return create_app(replace(settings, **changes), connect_redis=connect_fake)

    return make
