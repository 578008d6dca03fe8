"""The Dockerfile read, not built: hadolint, checkov, and its base image."""

from __future__ import annotations

import json
import re

from tests.support import checkov_report, venv_tool

from .image import DOCKERFILE, base_images, run


def test_hadolint_has_no_findings() -> None:
    findings = json.loads(
        run([venv_tool("hadolint") or "hadolint", "--format", "json", str(DOCKERFILE)])
    )
    assert findings == []


def test_checkov_dockerfile_has_no_failed_checks() -> None:
    report = checkov_report(DOCKERFILE, "dockerfile")
    summary = report["summary"]
    assert summary["failed"] == 0, report["results"]["failed_checks"]
    assert summary["passed"] > 0


def test_dockerfile_uses_a_pinned_official_slim_python() -> None:
    bases = base_images(DOCKERFILE.read_text())
    assert len(bases) == 1, "builder and runtime should share one base"
    assert re.fullmatch(r"python:3\.1[2-9]-slim-[a-z]+", bases[0]), bases
