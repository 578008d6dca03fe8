"""The lock files: every range in pyproject.toml is met by a hashed pin, and the locks agree.

requirements/lock regenerates them; a change to pyproject.toml's dependencies without a re-lock
fails here, naming the package.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path
from typing import NamedTuple

import pytest
from packaging.markers import Marker, default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support import REPO_ROOT

PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
NAME = canonicalize_name(PROJECT["name"])
LOCKS = REPO_ROOT / "requirements"
# Environments the locks must serve: CI and development here (3.11), the image (3.13).
PYTHONS = ["3.11", "3.13"]


class Pin(NamedTuple):
    version: str
    marker: str | None
    hashes: list[str]


def parse_lock(path: Path) -> dict[str, list[Pin]]:
    """name -> its pins, from pip's requirements format as uv writes it: a universal lock may pin
    one package twice, under markers that split the Pythons (numpy for < 3.12 and >= 3.12)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    pins: dict[str, list[Pin]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split(" --")
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)\s*(?:;\s*(.+))?", requirement.strip())
        assert match, f"{path.name}: not an exact pin: {line}"
        hashes = [o.removeprefix("hash=") for o in options if o.startswith("hash=")]
        name = canonicalize_name(match.group(1))
        pins.setdefault(name, []).append(Pin(match.group(2), match.group(3), hashes))
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


def pinned(pins: dict[str, list[Pin]], name: str, python: str) -> str | None:
    """The version the lock installs of ``name`` on this Python, if any."""
    versions = [
        pin.version
        for pin in pins.get(name, [])
        if pin.marker is None or Marker(pin.marker).evaluate(environment(python))
    ]
    assert len(versions) <= 1, f"{name}: two pins for Python {python}: {versions}"
    return versions[0] if versions else None


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
        version = pinned(pins, name, python)
        if version is None:
            problems.append(f"{text}: not in the lock for Python {python}")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{text}: locked at {version} for Python {python}")
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


@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("lock", SUBSETS.values(), ids=SUBSETS.keys())
def test_the_locks_agree_on_every_shared_package(lock: dict, python: str) -> None:
    pairs = {name: (pinned(lock, name, python), pinned(TEST, name, python)) for name in lock}
    differ = {n: (ours, tests) for n, (ours, tests) in pairs.items() if ours not in (None, tests)}
    assert differ == {}
    assert set(lock) <= set(TEST), "the test lock installs what the others do"


@pytest.mark.parametrize("lock", [*SUBSETS.values(), TEST], ids=[*SUBSETS, "test"])
def test_every_pin_has_hashes_and_the_project_is_not_pinned(lock: dict) -> None:
    every = [(name, pin) for name, pins in lock.items() for pin in pins]
    assert [name for name, pin in every if not pin.hashes] == []
    assert all(h.startswith("sha256:") for _, pin in every for h in pin.hashes)
    assert NAME not in lock  # run from the checkout, never installed


def test_the_uv_lock_holds_uv_alone_as_the_test_lock_pins_it() -> None:
    """The test command's first step installs it with pip: uv alone (it has no dependencies of
    its own), the very files the test lock allows."""
    assert list(UV) == ["uv"]
    [pin] = UV["uv"]
    [tested] = TEST["uv"]
    assert (pin.version, sorted(pin.hashes)) == (tested.version, sorted(tested.hashes))


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
