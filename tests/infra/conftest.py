"""The infrastructure layer: the image built and run, the Kubernetes manifests, the
CloudFormation templates, the deploy scripts under moto, and the lint, style and lock checks.

Every test here is marked ``infra`` and ``slow`` (``pytest -m "not slow"`` leaves it out).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import mark_layer

from .cfn import TEMPLATE_NAMES, load, load_path
from .image import Build, built_image, skip_without_container_tools


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_layer(items, Path(__file__).parent, pytest.mark.infra, pytest.mark.slow)


@pytest.fixture(scope="module")
def template(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The template a module is about (its ``TEMPLATE`` path), parsed once per module."""
    return load_path(request.module.TEMPLATE)


@pytest.fixture(scope="session")
def templates() -> dict[str, dict[str, Any]]:
    """Every template in cfn/, parsed once (tests/infra/cfn.py)."""
    return {name: load(name) for name in TEMPLATE_NAMES}


@pytest.fixture(scope="session")
def image_build() -> Iterator[Build]:
    """One stand-in base and one real build of the Dockerfile for the session
    (tests/infra/image.py): the tests that look at the image and those that run it share it."""
    skip_without_container_tools()
    # A short path of its own (removed by built_image): podman refuses a --runroot over 50
    # characters, which a worker's pytest temp dir under xdist is.
    with built_image(Path(tempfile.mkdtemp(prefix="image-"))) as build:
        yield build
