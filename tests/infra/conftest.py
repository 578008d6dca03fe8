"""The infrastructure layer: the image built and run, the Kubernetes manifests, the
CloudFormation templates, the deploy scripts under moto, and the lint, style and lock checks.

Every test here is marked ``infra`` and ``slow`` (``pytest -m "not slow"`` leaves it out).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import mark_layer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_layer(items, Path(__file__).parent, pytest.mark.infra, pytest.mark.slow)
