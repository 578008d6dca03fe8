"""The guards in tests/conftest.py, in one process and under pytest-xdist (as the suite runs):
with CI=true a skipped test fails the run, without it is a skip; and a test module outside the
layer folders stops the run, naming it."""

from __future__ import annotations

import os
import shutil
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


# In one process, and on two xdist workers, where the hooks run in the workers and the
# controller sees only their reports.
WORKERS = ["-n0", "-n2"]


def run_pytest(
    folder: Path, ci: str | None, workers: str, *plugins: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", workers, "-p", "no:cacheprovider"),
            *(arg for plugin in plugins for arg in ("-p", plugin)),
            # The repository's settings (markers, addopts), the folder as the root.
            *("-c", str(REPO_ROOT / "pyproject.toml"), "--rootdir", str(folder)),
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("how", "workers"),
    # Each way in one process; under xdist a skip in a test (reported by a worker) and a whole
    # module skipped at collection (seen by the controller's summary only).
    [*((how, "-n0") for how in sorted(SKIPS)), ("in_a_test", "-n2"), ("a_whole_module", "-n2")],
)
def test_a_skip_fails_the_run_in_ci_only(tmp_path: Path, how: str, workers: str) -> None:
    (tmp_path / "test_skipping.py").write_text(SKIPS[how])
    (tmp_path / "test_passing.py").write_text("def test_ok():\n    pass\n")
    local = run_pytest(tmp_path, None, workers, "tests.conftest")
    assert local.returncode == 0, local.stdout + local.stderr
    assert "1 skipped" in local.stdout
    in_ci = run_pytest(tmp_path, "true", workers, "tests.conftest")
    assert in_ci.returncode == 1, in_ci.stdout + in_ci.stderr


@pytest.mark.parametrize("workers", WORKERS)
def test_a_module_outside_the_layer_folders_stops_the_run(tmp_path: Path, workers: str) -> None:
    """A copy of the tests' conftest and the unit layer's, with a module beside the layers."""
    tests = tmp_path / "tests"
    (tests / "unit").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "tests" / "conftest.py", tests / "conftest.py")
    shutil.copy(REPO_ROOT / "tests" / "unit" / "conftest.py", tests / "unit" / "conftest.py")
    (tests / "unit" / "test_placed.py").write_text("def test_ok():\n    pass\n")
    placed = run_pytest(tmp_path, None, workers)
    assert placed.returncode == 0, placed.stdout + placed.stderr
    (tests / "test_stray.py").write_text("def test_ok():\n    pass\n")
    stray = run_pytest(tmp_path, None, workers)
    assert stray.returncode == pytest.ExitCode.USAGE_ERROR, stray.stdout + stray.stderr
    assert "no layer marker" in stray.stderr and "tests/test_stray.py" in stray.stderr
