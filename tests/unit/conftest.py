"""The unit layer: the app in-process on fakeredis, and pure functions. Seconds for all of it.

Every test here is marked ``unit``; nothing here starts a server or a process.
"""

from __future__ import annotations

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
def fake_redis() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


@pytest.fixture
def app(settings: Settings, fake_redis: fakeredis.FakeRedis):
    return create_app(settings, redis_client=fake_redis)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def make_app(settings: Settings, fake_redis: fakeredis.FakeRedis):
    """An app with some settings changed, on the same fake Redis."""

    def make(**changes):
        return create_app(replace(settings, **changes), redis_client=fake_redis)

    return make
