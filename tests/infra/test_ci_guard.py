"""The CI guard in conftest.py: with CI=true a skipped test fails the run; without, it is a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

SKIPS = {
    "in_a_test": "import pytest\n\ndef test_x():\n    pytest.skip('tool missing')\n",
    "by_a_marker": "import pytest\n\n@pytest.mark.skipif(True, reason='no')\ndef test_x(): pass\n",
    "a_whole_module": "import pytest\n\npytest.skip('no', allow_module_level=True)\n",
}


def run_pytest(folder: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("how", sorted(SKIPS))
def test_a_skip_fails_the_run_in_ci_only(tmp_path: Path, how: str) -> None:
    (tmp_path / "test_skipping.py").write_text(SKIPS[how])
    (tmp_path / "test_passing.py").write_text("def test_ok():\n    pass\n")
    local = run_pytest(tmp_path, None)
    assert local.returncode == 0, local.stdout + local.stderr
    assert "1 skipped" in local.stdout
    in_ci = run_pytest(tmp_path, "true")
    assert in_ci.returncode == 1, in_ci.stdout + in_ci.stderr
