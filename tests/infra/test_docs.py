"""The documentation's references hold: every test file it names and every relative link in
README.md and docs/*.md point at something that exists (files move; prose is not updated by the
move), and a link's #anchor names a heading of its target."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

DOCS = sorted([REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md")])
# A test module named in prose or code spans: tests/infra/test_cfn.py, tests/system/cluster.py.
TEST_PATH = re.compile(r"(?<![\w/.-])(tests/[\w/.-]+?\.py)\b")
# Inline markdown links and images: [text](target) or ![alt](target); target without spaces.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation but hyphens dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*$", FENCE.sub("", markdown), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def _links(path: Path) -> list[str]:
    """The relative link targets of one file (web, mail and code-block links left out)."""
    text = FENCE.sub("", path.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_named_test_file_exists(doc: Path) -> None:
    missing = sorted(
        {p for p in TEST_PATH.findall(doc.read_text()) if not (REPO_ROOT / p).is_file()}
    )
    assert missing == [], f"{doc.name} names test files that do not exist"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = []
    for target in _links(doc):
        file_part, _, anchor = target.partition("#")
        resolved = (doc.parent / file_part).resolve() if file_part else doc
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved.read_text()):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert broken == [], f"{doc.name} has broken links"


def test_the_checks_find_links_and_test_paths() -> None:
    """The patterns match what the docs write, so an empty finding is not a pattern that
    matches nothing."""
    sample = (
        "See [cost](deploy-aws.md#the-cache-in-each-mode) and ![d](dashboard.png), "
        "[web](https://example.com/x), `tests/infra/test_cfn.py` and tests/system/cluster.py."
    )
    assert [t for t in LINK.findall(sample) if ":" not in t] == [
        "deploy-aws.md#the-cache-in-each-mode",
        "dashboard.png",
    ]
    assert TEST_PATH.findall(sample) == ["tests/infra/test_cfn.py", "tests/system/cluster.py"]
    assert "cloudwatch-logs-container-insights-alarms-dashboard" in _anchors(
        "## CloudWatch: logs, Container Insights, alarms, dashboard\n"
    )
    assert sum(len(_links(d)) for d in DOCS) > 20
