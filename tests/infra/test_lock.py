"""The lock files: every range in pyproject.toml is met by a hashed pin, and the locks agree.

requirements/lock regenerates them; a change to pyproject.toml's dependencies without a re-lock
fails here, naming the package.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support import REPO_ROOT

PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
NAME = canonicalize_name(PROJECT["name"])
LOCKS = REPO_ROOT / "requirements"
# Environments the locks must serve: CI and development here (3.11), the image (3.13).
PYTHONS = ["3.11", "3.13"]


def parse_lock(path: Path) -> dict[str, tuple[str, str | None, list[str]]]:
    """name -> (version, marker, hashes), from pip's requirements format as uv writes it."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    pins: dict[str, tuple[str, str | None, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split(" --")
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)\s*(?:;\s*(.+))?", requirement.strip())
        assert match, f"{path.name}: not an exact pin: {line}"
        hashes = [o.removeprefix("hash=") for o in options if o.startswith("hash=")]
        pins[canonicalize_name(match.group(1))] = (match.group(2), match.group(3), hashes)
    return pins


RUNTIME = parse_lock(LOCKS / "runtime.txt")
LOCAL = parse_lock(LOCKS / "local.txt")
VERIFY = parse_lock(LOCKS / "verify.txt")
DRILL = parse_lock(LOCKS / "drill.txt")
TEST = parse_lock(LOCKS / "test.txt")
UV = parse_lock(LOCKS / "uv.txt")
# The locks made from the test lock as constraints (requirements/lock): each a subset of it.
SUBSETS = {"runtime": RUNTIME, "local": LOCAL, "verify": VERIFY, "drill": DRILL, "uv": UV}


def environment(python: str) -> dict[str, str]:
    return {**default_environment(), "python_version": python, "python_full_version": python + ".0"}


def unmet(
    requirements: list[str], pins: dict, python: str, seen: set[str] | None = None
) -> list[str]:
    """Each requirement (and the project's own extras it names) that the pins do not meet."""
    seen = set() if seen is None else seen
    problems = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(environment(python)):
            continue
        name = canonicalize_name(req.name)
        if name == NAME:  # "flask-eks-sessions[local]": the project's own extra
            for extra in sorted(req.extras - seen):
                seen.add(extra)
                problems += unmet(PROJECT["optional-dependencies"][extra], pins, python, seen)
            continue
        if name not in pins:
            problems.append(f"{text}: not in the lock")
        elif not req.specifier.contains(pins[name][0], prereleases=True):
            problems.append(f"{text}: locked at {pins[name][0]}")
    return problems


@pytest.mark.parametrize("python", PYTHONS)
def test_runtime_lock_meets_the_dependencies(python: str) -> None:
    assert unmet(PROJECT["dependencies"], RUNTIME, python) == []


@pytest.mark.parametrize("python", PYTHONS)
def test_local_lock_meets_the_dependencies_and_the_local_extra(python: str) -> None:
    wanted = PROJECT["dependencies"] + PROJECT["optional-dependencies"]["local"]
    assert unmet(wanted, LOCAL, python) == []


@pytest.mark.parametrize("python", PYTHONS)
def test_verify_lock_meets_the_verify_extra(python: str) -> None:
    assert unmet(PROJECT["optional-dependencies"]["verify"], VERIFY, python) == []


@pytest.mark.parametrize("python", PYTHONS)
def test_drill_lock_meets_the_verify_and_drill_extras(python: str) -> None:
    extras = PROJECT["optional-dependencies"]
    assert unmet(extras["verify"] + extras["drill"], DRILL, python) == []


@pytest.mark.parametrize("python", PYTHONS)
def test_test_lock_meets_the_dependencies_and_the_test_extra(python: str) -> None:
    wanted = PROJECT["dependencies"] + PROJECT["optional-dependencies"]["test"]
    assert unmet(wanted, TEST, python) == []


@pytest.mark.parametrize("lock", SUBSETS.values(), ids=SUBSETS.keys())
def test_the_locks_agree_on_every_shared_package(lock: dict) -> None:
    differ = {n: (v[0], TEST[n][0]) for n, v in lock.items() if n in TEST and TEST[n][0] != v[0]}
    assert differ == {}
    assert set(lock) <= set(TEST), "the test lock installs what the others do"


@pytest.mark.parametrize("lock", [*SUBSETS.values(), TEST], ids=[*SUBSETS, "test"])
def test_every_pin_has_hashes_and_the_project_is_not_pinned(lock: dict) -> None:
    assert [n for n, (_, _, hashes) in lock.items() if not hashes] == []
    assert all(h.startswith("sha256:") for _, _, hashes in lock.values() for h in hashes)
    assert NAME not in lock  # run from the checkout, never installed


def test_the_uv_lock_holds_uv_alone_as_the_test_lock_pins_it() -> None:
    """The test command's first step installs it with pip: uv alone (it has no dependencies of
    its own), the very files the test lock allows."""
    assert list(UV) == ["uv"]
    assert UV["uv"][0] == TEST["uv"][0]
    assert sorted(UV["uv"][2]) == sorted(TEST["uv"][2])


def test_the_extras_dependencies_are_locked_too() -> None:
    """redis[hiredis] needs hiredis pinned, not only redis."""
    assert "hiredis" in RUNTIME


def test_the_lock_script_is_clean_shell() -> None:
    result = subprocess.run(
        ["shellcheck", str(LOCKS / "lock")], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout
    usage = subprocess.run(
        [str(LOCKS / "lock"), "-h"], capture_output=True, text=True, timeout=60, check=True
    )
    assert usage.stdout.startswith("usage: requirements/lock")
