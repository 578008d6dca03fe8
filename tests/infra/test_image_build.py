"""The image built from the repo's Dockerfile on the stand-in base (tests/infra/image.py): its
configuration, its size, and a code change rebuilding only the app's layers.

The image size and build times are reported (build/image-report.json, junit properties, stdout).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

from .image import (
    ADDED_BYTES_BUDGET,
    IMAGE,
    IMAGE_BYTES_TARGET,
    REPORT,
    UID,
    Build,
    fully_qualified,
)

# Every test here shares the session's one build: xdist keeps them on one worker.
pytestmark = pytest.mark.xdist_group("image")


def test_image_config(image_build: Build) -> None:
    config = image_build.inspect["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert "8080/tcp" in config["ExposedPorts"]
    assert config["Cmd"] == ["gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
    assert not config.get("Entrypoint")
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert config["WorkingDir"] == "/app"
    # Docker image format only: OCI has no HEALTHCHECK, hence `--format docker` in bud.
    check = image_build.inspect["Healthcheck"]["Test"]
    assert check[0] == "CMD"
    assert "/healthz" in check[-1]
    assert "timeout=" in check[-1]


def test_image_size(image_build: Build, record_property: pytest.RecordProperty) -> None:
    """Reported, and checked twice: the whole image on the slim-sized stand-in, and what the
    Dockerfile adds on top of its base, which is what carries over to the official base."""
    image = image_build.image_bytes(IMAGE)
    base = image_build.image_bytes(fully_qualified(image_build.base_images[0]))
    report = {
        "image": IMAGE,
        "image_bytes": image,
        "standin_base_bytes": base,
        "added_by_dockerfile_bytes": image - base,
        "storage_driver": image_build.driver,
        "cold_build_seconds": round(image_build.build_seconds, 1),
        "debootstrap_seconds": (
            None
            if image_build.debootstrap_seconds is None
            else round(image_build.debootstrap_seconds, 1)
        ),
    }
    for key, value in report.items():
        record_property(key, value)
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nimage report: {json.dumps(report)}")
    assert image > base > 0
    assert image - base < ADDED_BYTES_BUDGET, report
    assert image < IMAGE_BYTES_TARGET, report


def build_steps(build_log: str) -> dict[str, bool]:
    """Each build step's instruction -> whether buildah reused a cached layer for it."""
    steps: dict[str, bool] = {}
    current: str | None = None
    for line in build_log.splitlines():
        step = re.match(r"^(?:\[\d+/\d+\] )?STEP \d+/\d+: (.*)", line)
        if step:
            current = step.group(1)
        elif current is not None and line.startswith("--> "):
            steps[current] = "Using cache" in line
            current = None
    return steps


def test_code_change_rebuilds_only_the_app_layers(
    image_build: Build, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    """The dependency layer comes before the code: a code change must reuse it."""
    context = tmp_path / "context"
    context.mkdir()
    for name in ("Dockerfile", ".dockerignore", "gunicorn.conf.py", "nginx.conf"):
        shutil.copy2(REPO_ROOT / name, context / name)
    (context / "requirements").mkdir()
    (context / "requirements" / "runtime.txt").write_bytes(image_build.runtime_lock)
    shutil.copytree(
        REPO_ROOT / "app", context / "app", ignore=shutil.ignore_patterns("__pycache__")
    )
    (context / "app" / "rebuild-probe.txt").write_text("a code change\n")
    log, seconds = image_build.bud(context, "localhost/message-app:rebuild")
    record_property("warm_build_seconds", round(seconds, 1))
    print(f"\nwarm rebuild after a code change: {seconds:.1f} s")
    steps = build_steps(log)
    pip_steps = [cached for step, cached in steps.items() if "pip install" in step]
    venv_copy = [cached for step, cached in steps.items() if step.startswith("COPY --from=builder")]
    app_copy = [cached for step, cached in steps.items() if step.startswith("COPY app/")]
    assert pip_steps == [True], log
    assert venv_copy == [True], log
    assert app_copy == [False], log
