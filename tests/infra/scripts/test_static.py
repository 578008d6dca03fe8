"""Static checks of the scripts: shellcheck, strict mode, no GNU-only tools, template sizes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.support import REPO_ROOT

from .harness import (
    LIBRARIES,
    SCRIPTS,
)


def test_scripts_pass_shellcheck() -> None:
    """Real shellcheck (apt package shellcheck) on the three scripts and their libraries; -x
    follows the `source` into the libraries, so names they define count as defined in the
    scripts."""
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck; CI installs it)")
    result = subprocess.run(
        ["shellcheck", "-x", *SCRIPTS, *LIBRARIES],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_executable_with_strict_mode(script: str) -> None:
    """Each is run directly and sets the strict mode itself; the library it sources sets none."""
    path = REPO_ROOT / script
    assert os.access(path, os.X_OK)
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text


@pytest.mark.parametrize("script", [*SCRIPTS, *LIBRARIES])
def test_scripts_avoid_gnu_only_tools(script: str) -> None:
    """They must run on macOS (bash 3.2, BSD tools) as well as on Linux."""
    text = (REPO_ROOT / script).read_text()
    gnu_only = (
        r"sed -i", r"readlink -f", r"date -d", r"base64 -w", r"mktemp --", r"grep -P",
        r"declare -A", r"mapfile", r"readarray", r"\$\{\w+,,\}", r"\$\{\w+\^\^\}",
    )  # fmt: skip
    for pattern in gnu_only:
        assert not re.search(pattern, text), f"{script} uses {pattern}"


def test_templates_fit_the_template_body_limit() -> None:
    """deploy.sh passes every template as --template-body, which CloudFormation caps at 51,200
    bytes; a bigger one would need --template-url from the bucket."""
    for template in sorted((REPO_ROOT / "cfn").glob("*.yaml")):
        assert template.stat().st_size <= 51_200, f"{template.name} is too big for --template-body"
